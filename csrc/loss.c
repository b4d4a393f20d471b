/* Fused losses (formulas in loss.h). */
#include <math.h>
#include <stdlib.h>
#include "loss.h"
#include "vmath.h"

#define PARALLEL_MIN_ELEMENTS 65536

/* One row's loss; its gradient row (if wanted) holds softmax(x) / n, less 1/n
 * at the target. logsumexp - x[t] is formed as (max - x[t]) + log(sum) so
 * logits of +-1e4 lose nothing to cancellation. */
PYNN_INLINE double cross_entropy_row(ptrdiff_t classes, const float *restrict x, int64_t target,
                                     float *restrict grad, double inv_n)
{
    float max = pynn_row_max(x, classes);
    double sum = 0.0;
    if (grad) {
        for (ptrdiff_t j = 0; j < classes; j++) grad[j] = pynn_exp_nonpositive_f(x[j] - max);
        sum = pynn_row_sum(grad, NULL, classes);
        float scale = (float)(inv_n / sum);
        for (ptrdiff_t j = 0; j < classes; j++) grad[j] *= scale;
        grad[target] -= (float)inv_n;
    } else {
        for (ptrdiff_t j = 0; j < classes; j++) sum += pynn_exp_nonpositive_f(x[j] - max);
    }
    return ((double)max - x[target]) + log(sum);
}

struct pynn_loss_kernels {
    void (*cross_entropy_rows)(ptrdiff_t first, ptrdiff_t last, ptrdiff_t classes,
                               const float *logits, const int64_t *target, float *grad,
                               double inv_n, double *row_loss);
};

#define CROSS_ENTROPY_VARIANT(suffix, attribute)                                            \
    attribute static void cross_entropy_rows_##suffix(                                      \
        ptrdiff_t first, ptrdiff_t last, ptrdiff_t classes, const float *logits,            \
        const int64_t *target, float *grad, double inv_n, double *row_loss)                 \
    {                                                                                       \
        for (ptrdiff_t i = first; i < last; i++)                                            \
            row_loss[i - first] = cross_entropy_row(classes, logits + i * classes,          \
                                                    target[i],                              \
                                                    grad ? grad + i * classes : NULL, inv_n); \
    }                                                                                       \
    const struct pynn_loss_kernels pynn_loss_##suffix = {cross_entropy_rows_##suffix};

PYNN_EACH_ISA(CROSS_ENTROPY_VARIANT)

#define ROWS_PER_BLOCK 256

int pynn_cross_entropy(const pynn_context *ctx, ptrdiff_t n, ptrdiff_t classes,
                       const float *logits, const int64_t *target, float *grad, double *loss)
{
    *loss = NAN;
    if (n == 0) return 0;
    const struct pynn_loss_kernels *kernels = ctx->kernels->loss;
    double inv_n = 1.0 / (double)n;
    /* Per-row losses are summed afterwards in row order, so the total does
     * not depend on how rows were shared among threads. */
    double *row_loss = malloc((size_t)n * sizeof(double));
    if (!row_loss) return -1;
    ptrdiff_t blocks = (n + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK;
    const int wanted = blocks > 1 && n * classes >= PARALLEL_MIN_ELEMENTS ? ctx->num_threads : 1;
    PYNN_TEAM_FOR(ctx, wanted, b, blocks, {
        ptrdiff_t first = b * ROWS_PER_BLOCK;
        ptrdiff_t last = first + ROWS_PER_BLOCK < n ? first + ROWS_PER_BLOCK : n;
        kernels->cross_entropy_rows(first, last, classes, logits, target, grad, inv_n, row_loss + first);
    });
    double total = 0.0;
    for (ptrdiff_t i = 0; i < n; i++) total += row_loss[i];
    free(row_loss);
    *loss = total * inv_n;
    return 0;
}

double pynn_mse(const pynn_context *ctx, ptrdiff_t count, const float *pred,
                const float *target, float *grad)
{
    (void)ctx;
    if (count == 0) return NAN;
    double total = 0.0;
    float scale = (float)(2.0 / (double)count);
    for (ptrdiff_t i = 0; i < count; i++) {
        double diff = (double)pred[i] - target[i];
        total += diff * diff;
        if (grad) grad[i] = (float)diff * scale;
    }
    return total / (double)count;
}

double pynn_bce_with_logits(const pynn_context *ctx, ptrdiff_t count, const float *logits,
                            const float *target, float *grad)
{
    (void)ctx;
    if (count == 0) return NAN;
    double total = 0.0;
    double inv_count = 1.0 / (double)count;
    for (ptrdiff_t i = 0; i < count; i++) {
        double x = logits[i], t = target[i];
        total += (x > 0.0 ? x : 0.0) - x * t + log1p(exp(-fabs(x)));
        if (grad) grad[i] = (float)((pynn_sigmoid_d(x) - t) * inv_count);
    }
    return total * inv_count;
}
