/* Batch normalisation (contracts in batchnorm.h). Channels are independent:
 * threads split them, and each channel's sums run in one fixed order, so the
 * results do not depend on the thread count. Sums are kept in double, in
 * PYNN_LANES partial sums (element k of a row in partial k mod PYNN_LANES,
 * added up in order at the end): independent additions the compiler
 * vectorises for each path, where one running sum waits on each addition. */
#include <math.h>
#include "batchnorm.h"
#include "kernels.h"
#include "vmath.h"

/* A pass over x splits its channels across threads from this many floats. */
#define PARALLEL_MIN_FLOATS 65536

/* Per path, the passes over one channel j of x [n, c, s]. */
struct pynn_batchnorm_kernels {
    /* Σ (x - pivot) and Σ (x - pivot)² */
    void (*sums)(ptrdiff_t n, ptrdiff_t c, ptrdiff_t s, ptrdiff_t j, const float *x,
                 double pivot, double *sum, double *squares);
    /* y = x scale + shift, with `relu` max(that, 0) */
    void (*affine)(ptrdiff_t n, ptrdiff_t c, ptrdiff_t s, ptrdiff_t j, const float *x,
                   float scale, float shift, int relu, float *y);
    /* Σ g and Σ g (x - centre), g = dy, or with `relu` dy where
     * x scale + shift > 0 and 0 elsewhere */
    void (*gradient_sums)(ptrdiff_t n, ptrdiff_t c, ptrdiff_t s, ptrdiff_t j, const float *dy,
                          const float *x, double centre, int relu, float scale, float shift,
                          double *grad_sum, double *grad_dot);
    /* dx = gain (g - mean_grad - (x - centre) slope), g as in gradient_sums */
    void (*input_gradient)(ptrdiff_t n, ptrdiff_t c, ptrdiff_t s, ptrdiff_t j, const float *dy,
                           const float *x, float centre, float gain, float mean_grad,
                           float slope, int relu, float scale, float shift, float *dx);
};

PYNN_INLINE double lanes_total(const double *partial)
{
    double total = 0.0;
    for (int lane = 0; lane < PYNN_LANES; lane++) total += partial[lane];
    return total;
}

/* The normalised output before the ReLU: forward and backward compute it
 * alike, so the backward's mask is exactly the forward's y > 0. */
PYNN_INLINE float affine_value(float x, float scale, float shift)
{
    return x * scale + shift;
}

/* A ReLU's gradient mask, or dy itself without one. */
PYNN_INLINE float masked(float dy, float x, int relu, float scale, float shift)
{
    return relu && !(affine_value(x, scale, shift) > 0.0f) ? 0.0f : dy;
}

PYNN_INLINE void channel_sums(ptrdiff_t n, ptrdiff_t c, ptrdiff_t s, ptrdiff_t j, const float *x,
                              double pivot, double *sum, double *squares)
{
    double partial[PYNN_LANES] = {0.0}, partial_squares[PYNN_LANES] = {0.0};
    for (ptrdiff_t i = 0; i < n; i++) {
        const float *restrict row = x + (i * c + j) * s;
        ptrdiff_t k = 0;
        for (; k + PYNN_LANES <= s; k += PYNN_LANES) {
            for (int lane = 0; lane < PYNN_LANES; lane++) {
                const double shifted = (double)row[k + lane] - pivot;
                partial[lane] += shifted;
                partial_squares[lane] += shifted * shifted;
            }
        }
        for (; k < s; k++) {
            const double shifted = (double)row[k] - pivot;
            partial[k % PYNN_LANES] += shifted;
            partial_squares[k % PYNN_LANES] += shifted * shifted;
        }
    }
    *sum = lanes_total(partial);
    *squares = lanes_total(partial_squares);
}

PYNN_INLINE void channel_affine(ptrdiff_t n, ptrdiff_t c, ptrdiff_t s, ptrdiff_t j, const float *x,
                                float scale, float shift, int relu, float *y)
{
    for (ptrdiff_t i = 0; i < n; i++) {
        const float *restrict row = x + (i * c + j) * s;
        float *restrict out = y + (i * c + j) * s;
        if (relu) {
            for (ptrdiff_t k = 0; k < s; k++) {
                const float value = affine_value(row[k], scale, shift);
                out[k] = value > 0.0f ? value : 0.0f;
            }
        } else {
            for (ptrdiff_t k = 0; k < s; k++) out[k] = affine_value(row[k], scale, shift);
        }
    }
}

PYNN_INLINE void channel_gradient_sums(ptrdiff_t n, ptrdiff_t c, ptrdiff_t s, ptrdiff_t j,
                                       const float *dy, const float *x, double centre,
                                       int relu, float scale, float shift, double *grad_sum,
                                       double *grad_dot)
{
    double partial[PYNN_LANES] = {0.0}, partial_dot[PYNN_LANES] = {0.0};
    for (ptrdiff_t i = 0; i < n; i++) {
        const float *restrict g = dy + (i * c + j) * s, *restrict row = x + (i * c + j) * s;
        ptrdiff_t k = 0;
        for (; k + PYNN_LANES <= s; k += PYNN_LANES) {
            for (int lane = 0; lane < PYNN_LANES; lane++) {
                const double grad = masked(g[k + lane], row[k + lane], relu, scale, shift);
                partial[lane] += grad;
                partial_dot[lane] += grad * (row[k + lane] - centre);
            }
        }
        for (; k < s; k++) {
            const double grad = masked(g[k], row[k], relu, scale, shift);
            partial[k % PYNN_LANES] += grad;
            partial_dot[k % PYNN_LANES] += grad * (row[k] - centre);
        }
    }
    *grad_sum = lanes_total(partial);
    *grad_dot = lanes_total(partial_dot);
}

PYNN_INLINE void channel_input_gradient(ptrdiff_t n, ptrdiff_t c, ptrdiff_t s, ptrdiff_t j,
                                        const float *dy, const float *x, float centre,
                                        float gain, float mean_grad, float slope, int relu,
                                        float scale, float shift, float *dx)
{
    for (ptrdiff_t i = 0; i < n; i++) {
        const float *restrict g = dy + (i * c + j) * s, *restrict row = x + (i * c + j) * s;
        float *restrict out = dx + (i * c + j) * s;
        for (ptrdiff_t k = 0; k < s; k++)
            out[k] = gain * (masked(g[k], row[k], relu, scale, shift) - mean_grad
                             - (row[k] - centre) * slope);
    }
}

#define BATCHNORM_VARIANT(suffix, attribute)                                                  \
    attribute static void sums_##suffix(ptrdiff_t n, ptrdiff_t c, ptrdiff_t s, ptrdiff_t j,    \
                                        const float *x, double pivot, double *sum,             \
                                        double *squares)                                       \
    {                                                                                         \
        channel_sums(n, c, s, j, x, pivot, sum, squares);                                     \
    }                                                                                         \
    attribute static void affine_##suffix(ptrdiff_t n, ptrdiff_t c, ptrdiff_t s, ptrdiff_t j,  \
                                          const float *x, float scale, float shift, int relu,  \
                                          float *y)                                            \
    {                                                                                         \
        channel_affine(n, c, s, j, x, scale, shift, relu, y);                                 \
    }                                                                                         \
    attribute static void gradient_sums_##suffix(                                             \
        ptrdiff_t n, ptrdiff_t c, ptrdiff_t s, ptrdiff_t j, const float *dy, const float *x,   \
        double centre, int relu, float scale, float shift, double *grad_sum, double *grad_dot) \
    {                                                                                         \
        channel_gradient_sums(n, c, s, j, dy, x, centre, relu, scale, shift, grad_sum,        \
                              grad_dot);                                                       \
    }                                                                                         \
    attribute static void input_gradient_##suffix(                                            \
        ptrdiff_t n, ptrdiff_t c, ptrdiff_t s, ptrdiff_t j, const float *dy, const float *x,   \
        float centre, float gain, float mean_grad, float slope, int relu, float scale,         \
        float shift, float *dx)                                                                \
    {                                                                                         \
        channel_input_gradient(n, c, s, j, dy, x, centre, gain, mean_grad, slope, relu,       \
                               scale, shift, dx);                                              \
    }                                                                                         \
    const struct pynn_batchnorm_kernels pynn_batchnorm_##suffix = {                           \
        sums_##suffix, affine_##suffix, gradient_sums_##suffix, input_gradient_##suffix};

PYNN_EACH_ISA(BATCHNORM_VARIANT)

/* The training forward's y = x scale + shift of channel j, from the saved
 * statistics, so that the backward recomputes the same values. */
PYNN_INLINE void training_affine(const float *weight, const float *bias, const float *mean,
                                 const float *invstd, ptrdiff_t j, float *scale, float *shift)
{
    const double gain = (double)invstd[j] * weight[j];
    *scale = (float)gain;
    *shift = (float)(bias[j] - (double)mean[j] * gain);
}

void pynn_batchnorm_train_forward(const pynn_context *ctx, ptrdiff_t n, ptrdiff_t c,
                                  ptrdiff_t s, const float *x, const float *weight,
                                  const float *bias, float eps, float factor,
                                  float *running_mean, float *running_var,
                                  float *mean, float *invstd, int relu, float *y)
{
    const struct pynn_batchnorm_kernels *kernels = ctx->kernels->batchnorm;
    const ptrdiff_t count = n * s;
    PYNN_TEAM_FOR(ctx, c > 1 && count * c >= PARALLEL_MIN_FLOATS ? ctx->num_threads : 1, j, c, {
        /* sums about the channel's first value, near the mean for any data
         * a network sees: one pass, without the cancellation of Σ x² - (Σ x)² / M */
        const double pivot = count ? x[j * s] : 0.0;
        double sum = 0.0, squares = 0.0;
        if (count) kernels->sums(n, c, s, j, x, pivot, &sum, &squares);
        const double offset = count ? sum / (double)count : 0.0;
        const double centred = count ? squares - sum * offset : 0.0;
        const double variance = count && centred > 0.0 ? centred / (double)count : 0.0;
        const double average = pivot + offset;
        mean[j] = (float)average;
        invstd[j] = (float)(1.0 / sqrt(variance + (double)eps));
        if (running_mean) {
            double unbiased = count > 1 ? variance * (double)count / (double)(count - 1) : variance;
            running_mean[j] = (float)((1.0 - factor) * running_mean[j] + factor * average);
            running_var[j] = (float)((1.0 - factor) * running_var[j] + factor * unbiased);
        }
        float scale, shift;
        training_affine(weight, bias, mean, invstd, j, &scale, &shift);
        kernels->affine(n, c, s, j, x, scale, shift, relu, y);
    });
}

void pynn_batchnorm_eval_forward(const pynn_context *ctx, ptrdiff_t n, ptrdiff_t c,
                                 ptrdiff_t s, const float *x, const float *weight,
                                 const float *bias, float eps, const float *running_mean,
                                 const float *running_var, float *y)
{
    const struct pynn_batchnorm_kernels *kernels = ctx->kernels->batchnorm;
    PYNN_TEAM_FOR(ctx, c > 1 && n * s * c >= PARALLEL_MIN_FLOATS ? ctx->num_threads : 1, j, c, {
        const double inverse = 1.0 / sqrt((double)running_var[j] + (double)eps);
        kernels->affine(n, c, s, j, x, (float)(inverse * weight[j]),
                        (float)(bias[j] - running_mean[j] * inverse * weight[j]), 0, y);
    });
}

void pynn_batchnorm_backward(const pynn_context *ctx, ptrdiff_t n, ptrdiff_t c, ptrdiff_t s,
                             const float *dy, const float *x, const float *weight,
                             const float *bias, const float *mean, const float *invstd,
                             int relu, float *dx, float *dweight, float *dbias)
{
    const struct pynn_batchnorm_kernels *kernels = ctx->kernels->batchnorm;
    const ptrdiff_t count = n * s;
    PYNN_TEAM_FOR(ctx, c > 1 && count * c >= PARALLEL_MIN_FLOATS ? ctx->num_threads : 1, j, c, {
        double grad_sum, grad_dot;
        const double centre = mean[j], inverse = invstd[j];
        float scale = 0.0f, shift = 0.0f;
        if (relu) training_affine(weight, bias, mean, invstd, j, &scale, &shift);
        kernels->gradient_sums(n, c, s, j, dy, x, centre, relu, scale, shift, &grad_sum,
                               &grad_dot);
        grad_dot *= inverse;  /* Σ g x̂, the factor taken out of the sum */
        if (dbias) dbias[j] = (float)grad_sum;
        if (dweight) dweight[j] = (float)grad_dot;
        if (!dx || !count) continue;
        kernels->input_gradient(n, c, s, j, dy, x, (float)centre, (float)(weight[j] * inverse),
                                (float)(grad_sum / (double)count),
                                (float)(grad_dot / (double)count * inverse), relu, scale, shift,
                                dx);
    });
}
