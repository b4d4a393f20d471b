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
    /* Σ x, and with `squares` Σ (x - centre)² */
    void (*sums)(ptrdiff_t n, ptrdiff_t c, ptrdiff_t s, ptrdiff_t j, const float *x,
                 double centre, double *sum, double *squares);
    /* y = x scale + shift */
    void (*affine)(ptrdiff_t n, ptrdiff_t c, ptrdiff_t s, ptrdiff_t j, const float *x,
                   float scale, float shift, float *y);
    /* Σ dy and Σ dy (x - centre) inverse */
    void (*gradient_sums)(ptrdiff_t n, ptrdiff_t c, ptrdiff_t s, ptrdiff_t j, const float *dy,
                          const float *x, double centre, double inverse, double *grad_sum,
                          double *grad_dot);
    /* dx = scale (dy - mean_grad - (x - centre) slope) */
    void (*input_gradient)(ptrdiff_t n, ptrdiff_t c, ptrdiff_t s, ptrdiff_t j, const float *dy,
                           const float *x, float centre, float scale, float mean_grad,
                           float slope, float *dx);
};

PYNN_INLINE double lanes_total(const double *partial)
{
    double total = 0.0;
    for (int lane = 0; lane < PYNN_LANES; lane++) total += partial[lane];
    return total;
}

PYNN_INLINE void channel_sums(ptrdiff_t n, ptrdiff_t c, ptrdiff_t s, ptrdiff_t j, const float *x,
                              double centre, double *sum, double *squares)
{
    double partial[PYNN_LANES] = {0.0}, partial_squares[PYNN_LANES] = {0.0};
    for (ptrdiff_t i = 0; i < n; i++) {
        const float *restrict row = x + (i * c + j) * s;
        ptrdiff_t k = 0;
        for (; k + PYNN_LANES <= s; k += PYNN_LANES) {
            for (int lane = 0; lane < PYNN_LANES; lane++) {
                const double value = row[k + lane], centred = value - centre;
                partial[lane] += value;
                partial_squares[lane] += centred * centred;
            }
        }
        for (; k < s; k++) {
            const double value = row[k], centred = value - centre;
            partial[k % PYNN_LANES] += value;
            partial_squares[k % PYNN_LANES] += centred * centred;
        }
    }
    *sum = lanes_total(partial);
    if (squares) *squares = lanes_total(partial_squares);
}

PYNN_INLINE void channel_affine(ptrdiff_t n, ptrdiff_t c, ptrdiff_t s, ptrdiff_t j, const float *x,
                                float scale, float shift, float *y)
{
    for (ptrdiff_t i = 0; i < n; i++) {
        const float *restrict row = x + (i * c + j) * s;
        float *restrict out = y + (i * c + j) * s;
        for (ptrdiff_t k = 0; k < s; k++) out[k] = row[k] * scale + shift;
    }
}

PYNN_INLINE void channel_gradient_sums(ptrdiff_t n, ptrdiff_t c, ptrdiff_t s, ptrdiff_t j,
                                       const float *dy, const float *x, double centre,
                                       double inverse, double *grad_sum, double *grad_dot)
{
    double partial[PYNN_LANES] = {0.0}, partial_dot[PYNN_LANES] = {0.0};
    for (ptrdiff_t i = 0; i < n; i++) {
        const float *restrict g = dy + (i * c + j) * s, *restrict row = x + (i * c + j) * s;
        ptrdiff_t k = 0;
        for (; k + PYNN_LANES <= s; k += PYNN_LANES) {
            for (int lane = 0; lane < PYNN_LANES; lane++) {
                partial[lane] += g[k + lane];
                partial_dot[lane] += g[k + lane] * ((row[k + lane] - centre) * inverse);
            }
        }
        for (; k < s; k++) {
            partial[k % PYNN_LANES] += g[k];
            partial_dot[k % PYNN_LANES] += g[k] * ((row[k] - centre) * inverse);
        }
    }
    *grad_sum = lanes_total(partial);
    *grad_dot = lanes_total(partial_dot);
}

PYNN_INLINE void channel_input_gradient(ptrdiff_t n, ptrdiff_t c, ptrdiff_t s, ptrdiff_t j,
                                        const float *dy, const float *x, float centre,
                                        float scale, float mean_grad, float slope, float *dx)
{
    for (ptrdiff_t i = 0; i < n; i++) {
        const float *restrict g = dy + (i * c + j) * s, *restrict row = x + (i * c + j) * s;
        float *restrict out = dx + (i * c + j) * s;
        for (ptrdiff_t k = 0; k < s; k++)
            out[k] = scale * (g[k] - mean_grad - (row[k] - centre) * slope);
    }
}

#define BATCHNORM_VARIANT(suffix, attribute)                                                  \
    attribute static void sums_##suffix(ptrdiff_t n, ptrdiff_t c, ptrdiff_t s, ptrdiff_t j,    \
                                        const float *x, double centre, double *sum,            \
                                        double *squares)                                       \
    {                                                                                         \
        channel_sums(n, c, s, j, x, centre, sum, squares);                                    \
    }                                                                                         \
    attribute static void affine_##suffix(ptrdiff_t n, ptrdiff_t c, ptrdiff_t s, ptrdiff_t j,  \
                                          const float *x, float scale, float shift, float *y)  \
    {                                                                                         \
        channel_affine(n, c, s, j, x, scale, shift, y);                                       \
    }                                                                                         \
    attribute static void gradient_sums_##suffix(                                             \
        ptrdiff_t n, ptrdiff_t c, ptrdiff_t s, ptrdiff_t j, const float *dy, const float *x,   \
        double centre, double inverse, double *grad_sum, double *grad_dot)                     \
    {                                                                                         \
        channel_gradient_sums(n, c, s, j, dy, x, centre, inverse, grad_sum, grad_dot);        \
    }                                                                                         \
    attribute static void input_gradient_##suffix(                                            \
        ptrdiff_t n, ptrdiff_t c, ptrdiff_t s, ptrdiff_t j, const float *dy, const float *x,   \
        float centre, float scale, float mean_grad, float slope, float *dx)                    \
    {                                                                                         \
        channel_input_gradient(n, c, s, j, dy, x, centre, scale, mean_grad, slope, dx);       \
    }                                                                                         \
    const struct pynn_batchnorm_kernels pynn_batchnorm_##suffix = {                           \
        sums_##suffix, affine_##suffix, gradient_sums_##suffix, input_gradient_##suffix};

PYNN_EACH_ISA(BATCHNORM_VARIANT)

void pynn_batchnorm_train_forward(const pynn_context *ctx, ptrdiff_t n, ptrdiff_t c,
                                  ptrdiff_t s, const float *x, const float *weight,
                                  const float *bias, float eps, float factor,
                                  float *running_mean, float *running_var,
                                  float *mean, float *invstd, float *y)
{
    const struct pynn_batchnorm_kernels *kernels = ctx->kernels->batchnorm;
    const ptrdiff_t count = n * s;
    PYNN_TEAM_FOR(ctx, c > 1 && count * c >= PARALLEL_MIN_FLOATS ? ctx->num_threads : 1, j, c, {
        double sum, squares;
        kernels->sums(n, c, s, j, x, 0.0, &sum, NULL);
        const double average = count ? sum / (double)count : 0.0;
        kernels->sums(n, c, s, j, x, average, &sum, &squares);
        const double variance = count ? squares / (double)count : 0.0;
        const double inverse = 1.0 / sqrt(variance + (double)eps);
        mean[j] = (float)average;
        invstd[j] = (float)inverse;
        if (running_mean) {
            double unbiased = count > 1 ? squares / (double)(count - 1) : variance;
            running_mean[j] = (float)((1.0 - factor) * running_mean[j] + factor * average);
            running_var[j] = (float)((1.0 - factor) * running_var[j] + factor * unbiased);
        }
        kernels->affine(n, c, s, j, x, (float)(inverse * weight[j]),
                        (float)(bias[j] - average * inverse * weight[j]), y);
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
                        (float)(bias[j] - running_mean[j] * inverse * weight[j]), y);
    });
}

void pynn_batchnorm_backward(const pynn_context *ctx, ptrdiff_t n, ptrdiff_t c, ptrdiff_t s,
                             const float *dy, const float *x, const float *weight,
                             const float *mean, const float *invstd,
                             float *dx, float *dweight, float *dbias)
{
    const struct pynn_batchnorm_kernels *kernels = ctx->kernels->batchnorm;
    const ptrdiff_t count = n * s;
    PYNN_TEAM_FOR(ctx, c > 1 && count * c >= PARALLEL_MIN_FLOATS ? ctx->num_threads : 1, j, c, {
        double grad_sum, grad_dot;
        const double centre = mean[j], inverse = invstd[j];
        kernels->gradient_sums(n, c, s, j, dy, x, centre, inverse, &grad_sum, &grad_dot);
        if (dbias) dbias[j] = (float)grad_sum;
        if (dweight) dweight[j] = (float)grad_dot;
        if (!dx || !count) continue;
        kernels->input_gradient(n, c, s, j, dy, x, (float)centre, (float)(weight[j] * inverse),
                                (float)(grad_sum / (double)count),
                                (float)(grad_dot / (double)count * inverse), dx);
    });
}
