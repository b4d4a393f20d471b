/* Layer normalisation (contracts in layernorm.h). A row's statistics are
 * two passes over it in double (the mean, then the centred squares), each
 * with 16 partial sums combined in a fixed order (vmath.h); the element
 * loops run in float, centring by the mean as two floats (x - high is exact
 * near the mean, low holds what high's rounding lost, which matters where
 * the mean is large beside the spread). One copy of the row loops per ISA. */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include "layernorm.h"
#include "kernels.h"
#include "vmath.h"

/* A backward pass splits its rows across threads from this many floats, a
 * forward pass (one read of the rows fewer) from FORWARD_PARALLEL_MIN_FLOATS. */
#define PARALLEL_MIN_FLOATS 65536
#define FORWARD_PARALLEL_MIN_FLOATS 16384
/* Rows split into at most MAX_BLOCKS blocks of at least MIN_BLOCK_ROWS rows,
 * by the row count alone: the units of the threads and of the weight and
 * bias gradients' partial sums. */
#define MAX_BLOCKS 64
#define MIN_BLOCK_ROWS 8
/* Within a block the weight and bias gradients' terms are summed in float
 * over groups of GROUP_ROWS rows, each group's sums then added in double. */
#define GROUP_ROWS 8

struct pynn_layernorm_kernels {
    void (*forward_rows)(ptrdiff_t first, ptrdiff_t last, ptrdiff_t length, const float *x,
                         const float *weight, const float *bias, double eps, float *y,
                         double *stats);
    void (*backward_rows)(ptrdiff_t first, ptrdiff_t last, ptrdiff_t length, const float *dy,
                          const float *x, const float *weight, double eps, const double *stats,
                          float *dx, double *weight_sums, double *bias_sums, float *weight_group,
                          float *bias_group);
};

/* Σ (x - centre)² in double */
PYNN_INLINE double centred_squares(const float *restrict x, double centre, ptrdiff_t n)
{
    double partial[PYNN_LANES] = {0.0};
    ptrdiff_t i = 0;
    for (; i + PYNN_LANES <= n; i += PYNN_LANES)
        for (int k = 0; k < PYNN_LANES; k++) {
            double c = (double)x[i + k] - centre;
            partial[k] += c * c;
        }
    double sum = 0.0;
    for (int k = 0; k < PYNN_LANES; k++) sum += partial[k];
    for (; i < n; i++) sum += ((double)x[i] - centre) * ((double)x[i] - centre);
    return sum;
}

/* Σ dy w and Σ dy w (x - centre) in double (w NULL: 1), each summed as
 * pynn_row_sum sums (the same partial sums in the same order), in one pass;
 * one accumulator array per sum, the form the compiler vectorises */
PYNN_INLINE void gradient_sums(const float *restrict dy, const float *restrict w,
                               const float *restrict x, double centre, ptrdiff_t n,
                               double *grad_sum, double *grad_dot)
{
    double sums[PYNN_LANES] = {0.0}, dots[PYNN_LANES] = {0.0};
    ptrdiff_t i = 0;
    if (w)
        for (; i + PYNN_LANES <= n; i += PYNN_LANES)
            for (int k = 0; k < PYNN_LANES; k++) {
                sums[k] += (double)dy[i + k] * w[i + k];
                dots[k] += (double)dy[i + k] * w[i + k] * ((double)x[i + k] - centre);
            }
    else
        for (; i + PYNN_LANES <= n; i += PYNN_LANES)
            for (int k = 0; k < PYNN_LANES; k++) {
                sums[k] += (double)dy[i + k];
                dots[k] += (double)dy[i + k] * ((double)x[i + k] - centre);
            }
    double sum = 0.0, dot = 0.0;
    for (int k = 0; k < PYNN_LANES; k++) sum += sums[k];
    for (int k = 0; k < PYNN_LANES; k++) dot += dots[k];
    for (; i < n; i++) {
        sum += w ? (double)dy[i] * w[i] : (double)dy[i];
        dot += (double)dy[i] * (w ? w[i] : 1.0f) * ((double)x[i] - centre);
    }
    *grad_sum = sum;
    *grad_dot = dot;
}

PYNN_INLINE void row_statistics(const float *restrict x, ptrdiff_t n, double eps, double *mean,
                                double *invstd)
{
    *mean = pynn_row_sum(x, NULL, n) / (double)n;
    *invstd = 1.0 / sqrt(centred_squares(x, *mean, n) / (double)n + eps);
}

/* stats, when not NULL, receives the row's mean and 1 / √(var + eps) */
PYNN_INLINE void forward_row(ptrdiff_t n, const float *restrict x, const float *restrict weight,
                             const float *restrict bias, double eps, float *restrict y,
                             double *restrict stats)
{
    double mean, invstd;
    row_statistics(x, n, eps, &mean, &invstd);
    if (stats) {
        stats[0] = mean;
        stats[1] = invstd;
    }
    const float high = (float)mean, low = (float)(mean - high), scale = (float)invstd;
    if (weight && bias)
        for (ptrdiff_t i = 0; i < n; i++) y[i] = (x[i] - high - low) * scale * weight[i] + bias[i];
    else if (weight)
        for (ptrdiff_t i = 0; i < n; i++) y[i] = (x[i] - high - low) * scale * weight[i];
    else if (bias)
        for (ptrdiff_t i = 0; i < n; i++) y[i] = (x[i] - high - low) * scale + bias[i];
    else
        for (ptrdiff_t i = 0; i < n; i++) y[i] = (x[i] - high - low) * scale;
}

/* dx = invstd g - invstd mean(g) - (x - mean) invstd³ mean(g (x - mean)),
 * from the forward's statistics when stats is not NULL (else recomputed:
 * the same doubles); dx, the weight group and the bias group in one pass
 * when all three are asked for. */
PYNN_INLINE void backward_row(ptrdiff_t n, const float *restrict dy, const float *restrict x,
                              const float *restrict weight, double eps,
                              const double *restrict stats, float *restrict dx,
                              float *restrict weight_group, float *restrict bias_group)
{
    double mean, invstd;
    if (stats) {
        mean = stats[0];
        invstd = stats[1];
    } else {
        row_statistics(x, n, eps, &mean, &invstd);
    }
    const float high = (float)mean, low = (float)(mean - high), scale = (float)invstd;
    float shift = 0.0f, tilt = 0.0f;
    if (dx) {
        double grad_sum, grad_dot;
        /* NULL spelt out, so each inlined copy knows its w and vectorises */
        if (weight)
            gradient_sums(dy, weight, x, mean, n, &grad_sum, &grad_dot);
        else
            gradient_sums(dy, NULL, x, mean, n, &grad_sum, &grad_dot);
        shift = (float)(invstd * grad_sum / (double)n);
        tilt = (float)(invstd * invstd * invstd * grad_dot / (double)n);
    }
    if (dx && weight && weight_group && bias_group) {
        for (ptrdiff_t i = 0; i < n; i++) {
            const float centred = x[i] - high - low;
            dx[i] = scale * (dy[i] * weight[i]) - shift - centred * tilt;
            weight_group[i] += dy[i] * (centred * scale);
            bias_group[i] += dy[i];
        }
        return;
    }
    if (dx) {
        if (weight)
            for (ptrdiff_t i = 0; i < n; i++)
                dx[i] = scale * (dy[i] * weight[i]) - shift - (x[i] - high - low) * tilt;
        else
            for (ptrdiff_t i = 0; i < n; i++)
                dx[i] = scale * dy[i] - shift - (x[i] - high - low) * tilt;
    }
    if (weight_group)
        for (ptrdiff_t i = 0; i < n; i++) weight_group[i] += dy[i] * ((x[i] - high - low) * scale);
    if (bias_group)
        for (ptrdiff_t i = 0; i < n; i++) bias_group[i] += dy[i];
}

/* sums += group, group = 0 */
PYNN_INLINE void flush_group(ptrdiff_t n, float *restrict group, double *restrict sums)
{
    for (ptrdiff_t i = 0; i < n; i++) {
        sums[i] += (double)group[i];
        group[i] = 0.0f;
    }
}

#define LAYERNORM_VARIANT(suffix, attribute)                                                   \
    attribute static void forward_rows_##suffix(ptrdiff_t first, ptrdiff_t last,               \
                                                ptrdiff_t length, const float *x,              \
                                                const float *weight, const float *bias,        \
                                                double eps, float *y, double *stats)           \
    {                                                                                          \
        for (ptrdiff_t r = first; r < last; r++)                                               \
            forward_row(length, x + r * length, weight, bias, eps, y + r * length,             \
                        stats ? stats + 2 * r : NULL);                                         \
    }                                                                                          \
    attribute static void backward_rows_##suffix(                                              \
        ptrdiff_t first, ptrdiff_t last, ptrdiff_t length, const float *dy, const float *x,    \
        const float *weight, double eps, const double *stats, float *dx, double *weight_sums,  \
        double *bias_sums, float *weight_group, float *bias_group)                             \
    {                                                                                          \
        if (weight_sums) memset(weight_sums, 0, (size_t)length * sizeof(double));              \
        if (bias_sums) memset(bias_sums, 0, (size_t)length * sizeof(double));                  \
        if (weight_group) memset(weight_group, 0, (size_t)length * sizeof(float));             \
        if (bias_group) memset(bias_group, 0, (size_t)length * sizeof(float));                 \
        for (ptrdiff_t r = first; r < last; r++) {                                             \
            backward_row(length, dy + r * length, x + r * length, weight, eps,                 \
                         stats ? stats + 2 * r : NULL, dx ? dx + r * length : NULL,            \
                         weight_group, bias_group);                                            \
            if ((r - first) % GROUP_ROWS == GROUP_ROWS - 1 || r == last - 1) {                 \
                if (weight_group) flush_group(length, weight_group, weight_sums);              \
                if (bias_group) flush_group(length, bias_group, bias_sums);                    \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
    const struct pynn_layernorm_kernels pynn_layernorm_##suffix = {forward_rows_##suffix,      \
                                                                   backward_rows_##suffix};

PYNN_EACH_ISA(LAYERNORM_VARIANT)

static ptrdiff_t block_count(ptrdiff_t rows)
{
    ptrdiff_t blocks = rows / MIN_BLOCK_ROWS;
    return blocks < 1 ? 1 : blocks > MAX_BLOCKS ? MAX_BLOCKS : blocks;
}

static int threads_for(const pynn_context *ctx, ptrdiff_t blocks, ptrdiff_t rows, ptrdiff_t length,
                       ptrdiff_t min_floats)
{
    return blocks > 1 && rows * length >= min_floats ? ctx->num_threads : 1;
}

void pynn_layer_norm_forward(const pynn_context *ctx, ptrdiff_t rows, ptrdiff_t length,
                             const float *x, const float *weight, const float *bias, double eps,
                             float *y)
{
    pynn_layer_norm_forward_keeping(ctx, rows, length, x, weight, bias, eps, y, NULL);
}

void pynn_layer_norm_forward_keeping(const pynn_context *ctx, ptrdiff_t rows, ptrdiff_t length,
                                     const float *x, const float *weight, const float *bias,
                                     double eps, float *y, double *stats)
{
    const struct pynn_layernorm_kernels *kernels = ctx->kernels->layernorm;
    if (rows == 0 || length == 0) return;
    const ptrdiff_t blocks = block_count(rows);
    PYNN_TEAM_FOR(ctx, threads_for(ctx, blocks, rows, length, FORWARD_PARALLEL_MIN_FLOATS), b, blocks, {
        kernels->forward_rows(rows * b / blocks, rows * (b + 1) / blocks, length, x, weight, bias,
                              eps, y, stats);
    });
}

int pynn_layer_norm_residual_forward(const pynn_context *ctx, ptrdiff_t rows, ptrdiff_t length,
                                     const float *x, const float *other, const float *weight,
                                     const float *bias, double eps, float *y)
{
    const struct pynn_layernorm_kernels *kernels = ctx->kernels->layernorm;
    if (rows == 0 || length == 0) return 0;
    const ptrdiff_t blocks = block_count(rows);
    atomic_int failed = 0;
    /* each row's sum in a buffer of the block's, then normalised from there */
    PYNN_TEAM_FOR(ctx, threads_for(ctx, blocks, rows, length, FORWARD_PARALLEL_MIN_FLOATS), b, blocks, {
        float *sum = malloc((size_t)length * sizeof(float));
        for (ptrdiff_t r = rows * b / blocks; sum && r < rows * (b + 1) / blocks; r++) {
            for (ptrdiff_t i = 0; i < length; i++) sum[i] = x[r * length + i] + other[r * length + i];
            kernels->forward_rows(0, 1, length, sum, weight, bias, eps, y + r * length, NULL);
        }
        if (!sum) atomic_store(&failed, 1);
        free(sum);
    });
    return atomic_load(&failed) ? -1 : 0;
}

int pynn_layer_norm_backward(const pynn_context *ctx, ptrdiff_t rows, ptrdiff_t length,
                             const float *dy, const float *x, const float *weight, double eps,
                             const double *stats, float *dx, float *dweight, float *dbias)
{
    const struct pynn_layernorm_kernels *kernels = ctx->kernels->layernorm;
    if (length == 0) return 0;
    const ptrdiff_t blocks = block_count(rows);
    /* per block: the weight gradient's sums, then the bias gradient's, in
     * double; after all blocks' sums, the float group sums in the same layout */
    const ptrdiff_t weight_at = 0, bias_at = dweight ? length : 0;
    const ptrdiff_t stride = (dweight ? length : 0) + (dbias ? length : 0);
    double *sums = NULL;
    float *groups = NULL;
    if (stride) {
        sums = malloc((size_t)(blocks * stride) * (sizeof(double) + sizeof(float)));
        if (!sums) return -1;
        groups = (float *)(sums + blocks * stride);
    }
    PYNN_TEAM_FOR(ctx, threads_for(ctx, blocks, rows, length, PARALLEL_MIN_FLOATS), b, blocks, {
        double *block = sums ? sums + b * stride : NULL;
        float *group = groups ? groups + b * stride : NULL;
        kernels->backward_rows(rows * b / blocks, rows * (b + 1) / blocks, length, dy, x, weight,
                               eps, stats, dx, dweight ? block + weight_at : NULL,
                               dbias ? block + bias_at : NULL, dweight ? group + weight_at : NULL,
                               dbias ? group + bias_at : NULL);
    });
    if (!sums) return 0;
    for (ptrdiff_t b = 1; b < blocks; b++)
        for (ptrdiff_t j = 0; j < stride; j++) sums[j] += sums[b * stride + j];
    for (ptrdiff_t j = 0; j < length; j++) {
        if (dweight) dweight[j] = (float)sums[weight_at + j];
        if (dbias) dbias[j] = (float)sums[bias_at + j];
    }
    free(sums);
    return 0;
}
