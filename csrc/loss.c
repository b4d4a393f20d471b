/* Fused losses (formulas in loss.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "loss.h"
#include "vmath.h"

#define PARALLEL_MIN_ELEMENTS 65536

/* One counted row's loss; its gradient row (if wanted) as loss.h states it.
 * logsumexp - x[c] is formed as (max - x[c]) + log(sum) so logits of +-1e4
 * lose nothing to cancellation. weight_total is sum_c w_c. */
PYNN_INLINE double cross_entropy_row(ptrdiff_t classes, const float *restrict x, int64_t target,
                                     const float *restrict weight, double smoothing,
                                     double weight_total, float *restrict grad, double inv_denominator)
{
    float max = pynn_row_max(x, classes);
    double sum = 0.0;
    if (grad) {
        for (ptrdiff_t j = 0; j < classes; j++) grad[j] = pynn_exp_nonpositive_f(x[j] - max);
        sum = pynn_row_sum(grad, NULL, classes);
    } else {
        for (ptrdiff_t j = 0; j < classes; j++) sum += pynn_exp_nonpositive_f(x[j] - max);
    }
    double log_sum = log(sum);
    double hard = (1.0 - smoothing) * (weight ? weight[target] : 1.0); /* the target's share */
    double spread = smoothing / (double)classes;                       /* every class's share */
    double loss = hard * (((double)max - x[target]) + log_sum);
    if (smoothing != 0.0) {
        double weighted_gap = 0.0; /* sum_c w_c (max - x_c) */
        if (weight)
            for (ptrdiff_t j = 0; j < classes; j++) weighted_gap += (double)weight[j] * ((double)max - x[j]);
        else
            for (ptrdiff_t j = 0; j < classes; j++) weighted_gap += (double)max - x[j];
        loss += spread * (weighted_gap + weight_total * log_sum);
    }
    if (grad) {
        float scale = (float)((hard + spread * weight_total) * inv_denominator / sum);
        float offset = (float)(spread * inv_denominator);
        if (smoothing == 0.0)
            for (ptrdiff_t j = 0; j < classes; j++) grad[j] *= scale;
        else if (weight)
            for (ptrdiff_t j = 0; j < classes; j++) grad[j] = grad[j] * scale - offset * weight[j];
        else
            for (ptrdiff_t j = 0; j < classes; j++) grad[j] = grad[j] * scale - offset;
        grad[target] -= (float)(hard * inv_denominator);
    }
    return loss;
}

typedef void (*cross_entropy_rows_fn)(ptrdiff_t first, ptrdiff_t last, ptrdiff_t classes,
                                      const float *logits, const int64_t *target,
                                      const pynn_class_loss_options *options, double weight_total,
                                      float *grad, double inv_denominator, double *row_loss);

struct pynn_loss_kernels {
    cross_entropy_rows_fn rows;         /* rows of at least wide_from classes */
    cross_entropy_rows_fn narrow_rows;  /* shorter rows */
    ptrdiff_t wide_from;
};

#define CROSS_ENTROPY_VARIANT(suffix, attribute)                                                 \
    attribute static void cross_entropy_rows_##suffix(                                           \
        ptrdiff_t first, ptrdiff_t last, ptrdiff_t classes, const float *logits,                 \
        const int64_t *target, const pynn_class_loss_options *options, double weight_total,      \
        float *grad, double inv_denominator, double *row_loss)                                   \
    {                                                                                            \
        for (ptrdiff_t i = first; i < last; i++) {                                               \
            float *grad_row = grad ? grad + i * classes : NULL;                                  \
            if (target[i] == options->ignore_index) {                                            \
                row_loss[i - first] = 0.0;                                                       \
                if (grad_row) memset(grad_row, 0, (size_t)classes * sizeof(float));              \
                continue;                                                                        \
            }                                                                                    \
            row_loss[i - first] = cross_entropy_row(classes, logits + i * classes, target[i],   \
                                                    options->weight, options->label_smoothing,   \
                                                    weight_total, grad_row, inv_denominator);    \
        }                                                                                        \
    }

PYNN_EACH_ISA(CROSS_ENTROPY_VARIANT)

const struct pynn_loss_kernels pynn_loss_generic = {cross_entropy_rows_generic, cross_entropy_rows_generic, 0};
#if defined(PYNN_X86_64)
const struct pynn_loss_kernels pynn_loss_avx2 = {cross_entropy_rows_avx2, cross_entropy_rows_avx2, 0};
/* A row shorter than one 512-bit vector never enters the wide code's vector
 * loops, only their scalar tails; the 256-bit code fills a vector with it. */
const struct pynn_loss_kernels pynn_loss_avx512 = {cross_entropy_rows_avx512, cross_entropy_rows_avx2, 16};
#endif

/* The mean's denominator: the summed weights of the counted rows' targets. */
static double counted_weight(ptrdiff_t n, const int64_t *target, const pynn_class_loss_options *options)
{
    double total = 0.0;
    for (ptrdiff_t i = 0; i < n; i++)
        if (target[i] != options->ignore_index) total += options->weight ? options->weight[target[i]] : 1.0;
    return total;
}

#define ROWS_PER_BLOCK 256

int pynn_cross_entropy(const pynn_context *ctx, ptrdiff_t n, ptrdiff_t classes,
                       const float *logits, const int64_t *target,
                       const pynn_class_loss_options *options, float *grad, double *loss)
{
    *loss = options->mean ? NAN : 0.0;
    if (n == 0) return 0;
    const struct pynn_loss_kernels *kernels = ctx->kernels->loss;
    const cross_entropy_rows_fn rows = classes < kernels->wide_from ? kernels->narrow_rows : kernels->rows;
    double weight_total = (double)classes;
    if (options->weight) {
        weight_total = 0.0;
        for (ptrdiff_t j = 0; j < classes; j++) weight_total += options->weight[j];
    }
    /* with every row ignored the mean is 0 / 0 (NaN) and no row uses the scale */
    double denominator = options->mean ? counted_weight(n, target, options) : 1.0;
    double inv_denominator = 1.0 / denominator;
    /* Per-row losses are summed afterwards in row order, so the total does
     * not depend on how rows were shared among threads. */
    double *row_loss = malloc((size_t)n * sizeof(double));
    if (!row_loss) return -1;
    ptrdiff_t blocks = (n + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK;
    const int wanted = blocks > 1 && n * classes >= PARALLEL_MIN_ELEMENTS ? ctx->num_threads : 1;
    PYNN_TEAM_FOR(ctx, wanted, b, blocks, {
        ptrdiff_t first = b * ROWS_PER_BLOCK;
        ptrdiff_t last = first + ROWS_PER_BLOCK < n ? first + ROWS_PER_BLOCK : n;
        rows(first, last, classes, logits, target, options, weight_total, grad,
             inv_denominator, row_loss + first);
    });
    double total = 0.0;
    for (ptrdiff_t i = 0; i < n; i++) total += row_loss[i];
    free(row_loss);
    *loss = total / denominator;
    return 0;
}

double pynn_nll_loss(const pynn_context *ctx, ptrdiff_t n, ptrdiff_t classes,
                     const float *log_probs, const int64_t *target,
                     const pynn_class_loss_options *options, float *grad)
{
    (void)ctx;
    if (grad) memset(grad, 0, (size_t)(n * classes) * sizeof(float));
    double total = 0.0;
    for (ptrdiff_t i = 0; i < n; i++) {
        if (target[i] == options->ignore_index) continue;
        double weight = options->weight ? options->weight[target[i]] : 1.0;
        total -= weight * log_probs[i * classes + target[i]];
    }
    double denominator = options->mean ? counted_weight(n, target, options) : 1.0;
    if (grad)
        for (ptrdiff_t i = 0; i < n; i++) {
            if (target[i] == options->ignore_index) continue;
            double weight = options->weight ? options->weight[target[i]] : 1.0;
            grad[i * classes + target[i]] = (float)(-weight / denominator);
        }
    return total / denominator;
}

/* The loss's reduction of a sum over count elements, and the gradient's factor. */
PYNN_INLINE double reduced(double total, ptrdiff_t count, int mean)
{
    return mean ? total / (double)count : total;
}

PYNN_INLINE double gradient_factor(ptrdiff_t count, int mean)
{
    return mean ? 1.0 / (double)count : 1.0;
}

double pynn_mse(const pynn_context *ctx, ptrdiff_t count, const float *pred,
                const float *target, float *grad, int mean)
{
    (void)ctx;
    if (count == 0) return mean ? NAN : 0.0;
    double total = 0.0;
    float scale = (float)(2.0 * gradient_factor(count, mean));
    for (ptrdiff_t i = 0; i < count; i++) {
        double diff = (double)pred[i] - target[i];
        total += diff * diff;
        if (grad) grad[i] = (float)diff * scale;
    }
    return reduced(total, count, mean);
}

double pynn_l1_loss(const pynn_context *ctx, ptrdiff_t count, const float *pred,
                    const float *target, float *grad, int mean)
{
    (void)ctx;
    if (count == 0) return mean ? NAN : 0.0;
    double total = 0.0;
    float scale = (float)gradient_factor(count, mean);
    for (ptrdiff_t i = 0; i < count; i++) {
        double diff = (double)pred[i] - target[i];
        total += fabs(diff);
        if (grad) grad[i] = diff > 0.0 ? scale : diff < 0.0 ? -scale : 0.0f;
    }
    return reduced(total, count, mean);
}

double pynn_huber_loss(const pynn_context *ctx, ptrdiff_t count, const float *pred,
                       const float *target, float *grad, int mean, double delta)
{
    (void)ctx;
    if (count == 0) return mean ? NAN : 0.0;
    double total = 0.0, factor = gradient_factor(count, mean);
    for (ptrdiff_t i = 0; i < count; i++) {
        double diff = (double)pred[i] - target[i], size = fabs(diff);
        total += size < delta ? 0.5 * diff * diff : delta * (size - 0.5 * delta);
        if (grad) grad[i] = (float)((diff <= -delta ? -delta : diff >= delta ? delta : diff) * factor);
    }
    return reduced(total, count, mean);
}

/* The loss.h formulas rearranged so that without pos_weight they are the
 * plain ones: loss = max(x, 0) - x t + log(1 + e^-|x|) + (pw - 1) t softplus(-x),
 * dx = sigmoid(x) - t - (pw - 1) t sigmoid(-x). */
double pynn_bce_with_logits(const pynn_context *ctx, ptrdiff_t count, const float *logits,
                            const float *target, const float *pos_weight, ptrdiff_t period,
                            float *grad, int mean)
{
    (void)ctx;
    if (count == 0) return mean ? NAN : 0.0;
    double total = 0.0, factor = gradient_factor(count, mean);
    for (ptrdiff_t i = 0; i < count; i++) {
        double x = logits[i], t = target[i], log_term = log1p(exp(-fabs(x)));
        double extra = pos_weight ? ((double)pos_weight[i % period] - 1.0) * t : 0.0;
        total += (x > 0.0 ? x : 0.0) - x * t + log_term;
        if (extra != 0.0) total += extra * ((x < 0.0 ? -x : 0.0) + log_term);
        if (grad) {
            double slope = pynn_sigmoid_d(x) - t;
            if (extra != 0.0) slope -= extra * pynn_sigmoid_d(-x);
            grad[i] = (float)(slope * factor);
        }
    }
    return reduced(total, count, mean);
}
