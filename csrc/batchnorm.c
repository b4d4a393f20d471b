/* Batch normalisation (contracts in batchnorm.h). Channels are independent:
 * threads split them, and each channel's sums run in one fixed order, so the
 * results do not depend on the thread count. Sums are kept in double. */
#include <math.h>
#include "batchnorm.h"

/* A pass over x splits its channels across threads from this many floats. */
#define PARALLEL_MIN_FLOATS 65536
/* Sums over a channel keep this many partial sums, element k of a row in
 * partial k mod LANES, added up in order at the end: independent additions
 * the compiler vectorises, where one running sum waits on each addition. */
#define LANES 16

/* Σ x and Σ (x - centre)² over channel j: the second only with `squares`. */
static void channel_sums(ptrdiff_t n, ptrdiff_t c, ptrdiff_t s, ptrdiff_t j, const float *x,
                         double centre, double *sum, double *squares)
{
    double partial[LANES] = {0.0}, partial_squares[LANES] = {0.0};
    for (ptrdiff_t i = 0; i < n; i++) {
        const float *row = x + (i * c + j) * s;
        ptrdiff_t k = 0;
        for (; k + LANES <= s; k += LANES) {
            for (int lane = 0; lane < LANES; lane++) {
                const double value = row[k + lane], centred = value - centre;
                partial[lane] += value;
                partial_squares[lane] += centred * centred;
            }
        }
        for (; k < s; k++) {
            const double value = row[k], centred = value - centre;
            partial[k % LANES] += value;
            partial_squares[k % LANES] += centred * centred;
        }
    }
    double total = 0.0, total_squares = 0.0;
    for (int lane = 0; lane < LANES; lane++) {
        total += partial[lane];
        total_squares += partial_squares[lane];
    }
    *sum = total;
    if (squares) *squares = total_squares;
}

/* Σ dy and Σ dy (x - centre) inverse over channel j. */
static void channel_gradient_sums(ptrdiff_t n, ptrdiff_t c, ptrdiff_t s, ptrdiff_t j,
                                  const float *dy, const float *x, double centre, double inverse,
                                  double *grad_sum, double *grad_dot)
{
    double partial[LANES] = {0.0}, partial_dot[LANES] = {0.0};
    for (ptrdiff_t i = 0; i < n; i++) {
        const float *g = dy + (i * c + j) * s, *row = x + (i * c + j) * s;
        ptrdiff_t k = 0;
        for (; k + LANES <= s; k += LANES) {
            for (int lane = 0; lane < LANES; lane++) {
                partial[lane] += g[k + lane];
                partial_dot[lane] += g[k + lane] * ((row[k + lane] - centre) * inverse);
            }
        }
        for (; k < s; k++) {
            partial[k % LANES] += g[k];
            partial_dot[k % LANES] += g[k] * ((row[k] - centre) * inverse);
        }
    }
    double total = 0.0, total_dot = 0.0;
    for (int lane = 0; lane < LANES; lane++) {
        total += partial[lane];
        total_dot += partial_dot[lane];
    }
    *grad_sum = total;
    *grad_dot = total_dot;
}

/* y = (x - centre) inverse weight + bias over channel j, as one multiply-add. */
static inline void normalise_channel(ptrdiff_t n, ptrdiff_t c, ptrdiff_t s, ptrdiff_t j,
                                     const float *x, double centre, double inverse,
                                     float weight, float bias, float *y)
{
    const float scale = (float)(inverse * weight);
    const float shift = (float)(bias - centre * inverse * weight);
    for (ptrdiff_t i = 0; i < n; i++) {
        const float *row = x + (i * c + j) * s;
        float *out = y + (i * c + j) * s;
        for (ptrdiff_t k = 0; k < s; k++) out[k] = row[k] * scale + shift;
    }
}

void pynn_batchnorm_train_forward(const pynn_context *ctx, ptrdiff_t n, ptrdiff_t c,
                                  ptrdiff_t s, const float *x, const float *weight,
                                  const float *bias, float eps, float factor,
                                  float *running_mean, float *running_var,
                                  float *mean, float *invstd, float *y)
{
    const ptrdiff_t count = n * s;
    PYNN_TEAM_FOR(ctx, c > 1 && count * c >= PARALLEL_MIN_FLOATS ? ctx->num_threads : 1, j, c, {
        double sum, squares;
        channel_sums(n, c, s, j, x, 0.0, &sum, NULL);
        const double average = count ? sum / (double)count : 0.0;
        channel_sums(n, c, s, j, x, average, &sum, &squares);
        const double variance = count ? squares / (double)count : 0.0;
        const double inverse = 1.0 / sqrt(variance + (double)eps);
        mean[j] = (float)average;
        invstd[j] = (float)inverse;
        if (running_mean) {
            double unbiased = count > 1 ? squares / (double)(count - 1) : variance;
            running_mean[j] = (float)((1.0 - factor) * running_mean[j] + factor * average);
            running_var[j] = (float)((1.0 - factor) * running_var[j] + factor * unbiased);
        }
        normalise_channel(n, c, s, j, x, average, inverse, weight[j], bias[j], y);
    });
}

void pynn_batchnorm_eval_forward(const pynn_context *ctx, ptrdiff_t n, ptrdiff_t c,
                                 ptrdiff_t s, const float *x, const float *weight,
                                 const float *bias, float eps, const float *running_mean,
                                 const float *running_var, float *y)
{
    PYNN_TEAM_FOR(ctx, c > 1 && n * s * c >= PARALLEL_MIN_FLOATS ? ctx->num_threads : 1, j, c, {
        const double inverse = 1.0 / sqrt((double)running_var[j] + (double)eps);
        normalise_channel(n, c, s, j, x, running_mean[j], inverse, weight[j], bias[j], y);
    });
}

void pynn_batchnorm_backward(const pynn_context *ctx, ptrdiff_t n, ptrdiff_t c, ptrdiff_t s,
                             const float *dy, const float *x, const float *weight,
                             const float *mean, const float *invstd,
                             float *dx, float *dweight, float *dbias)
{
    const ptrdiff_t count = n * s;
    PYNN_TEAM_FOR(ctx, c > 1 && count * c >= PARALLEL_MIN_FLOATS ? ctx->num_threads : 1, j, c, {
        double grad_sum, grad_dot;
        const double centre = mean[j], inverse = invstd[j];
        channel_gradient_sums(n, c, s, j, dy, x, centre, inverse, &grad_sum, &grad_dot);
        if (dbias) dbias[j] = (float)grad_sum;
        if (dweight) dweight[j] = (float)grad_dot;
        if (!dx || !count) continue;
        const float scale = (float)(weight[j] * inverse);
        const float mean_grad = (float)(grad_sum / (double)count);
        const float slope = (float)(grad_dot / (double)count * inverse);
        const float centre_f = (float)centre;
        for (ptrdiff_t i = 0; i < n; i++) {
            const float *g = dy + (i * c + j) * s, *row = x + (i * c + j) * s;
            float *out = dx + (i * c + j) * s;
            for (ptrdiff_t k = 0; k < s; k++)
                out[k] = scale * (g[k] - mean_grad - (row[k] - centre_f) * slope);
        }
    });
}
