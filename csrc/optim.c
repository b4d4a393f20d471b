/* Fused optimizer updates (formulas in optim.h). One loop body per update,
 * instantiated for each ISA by inlining it into functions compiled with that
 * target, so the compiler vectorises the same arithmetic at each width. */
#include <math.h>
#include "optim.h"
#include "kernels.h"

/* Below this many elements one thread is faster than waking a second one. */
#define PARALLEL_MIN_ELEMENTS 32768
/* The same for the rows of a row-sparse update, which comes between other
 * small kernels of a training step: by then the second thread sleeps, and
 * waking it costs more than it saves until the rows are many. */
#define PARALLEL_MIN_ROW_ELEMENTS 262144
/* Rows of a row-sparse update per parallel task. */
#define ROW_BLOCK 256
#define CHUNK 8192

#define ALWAYS_INLINE static inline __attribute__((always_inline))

ALWAYS_INLINE void sgd_range(ptrdiff_t n, float *restrict p, const float *restrict g,
                             float *restrict b, float lr, float mu, float wd, int nesterov)
{
    if (mu == 0.0f) {
        for (ptrdiff_t i = 0; i < n; i++) p[i] -= lr * (g[i] + wd * p[i]);
    } else if (nesterov) {
        for (ptrdiff_t i = 0; i < n; i++) {
            float d = g[i] + wd * p[i];
            float v = mu * b[i] + d;
            b[i] = v;
            p[i] -= lr * (d + mu * v);
        }
    } else {
        for (ptrdiff_t i = 0; i < n; i++) {
            float v = mu * b[i] + (g[i] + wd * p[i]);
            b[i] = v;
            p[i] -= lr * v;
        }
    }
}

ALWAYS_INLINE void adam_range(ptrdiff_t n, float *restrict p, const float *restrict g,
                              float *restrict m, float *restrict v, float decay,
                              float grad_wd, float b1, float b2, float eps,
                              float step_size, float bc2_sqrt)
{
    const float one_minus_b1 = 1.0f - b1, one_minus_b2 = 1.0f - b2;
    for (ptrdiff_t i = 0; i < n; i++) {
        float w = p[i] * decay;
        float gi = g[i] + grad_wd * w;
        float mi = m[i] + one_minus_b1 * (gi - m[i]);
        float vi = b2 * v[i] + one_minus_b2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = w - step_size * (mi / (sqrtf(vi) / bc2_sqrt + eps));
    }
}

/* The same updates over rows[0 .. count) of tensors with `width` elements
 * per row, asking for each row's lines a few rows ahead. */
ALWAYS_INLINE void sgd_rows(const int64_t *rows, ptrdiff_t count, ptrdiff_t width,
                            float *p, const float *g, float *b, float lr, float mu, float wd,
                            int nesterov)
{
    for (ptrdiff_t r = 0; r < count; r++) {
        if (r + PYNN_ROW_PREFETCH_AHEAD < count) {
            ptrdiff_t ahead = rows[r + PYNN_ROW_PREFETCH_AHEAD] * width;
            PYNN_PREFETCH_ROW(p + ahead, width, 1);
            PYNN_PREFETCH_ROW(g + ahead, width, 0);
            if (b) PYNN_PREFETCH_ROW(b + ahead, width, 1);
        }
        ptrdiff_t start = rows[r] * width;
        sgd_range(width, p + start, g + start, b ? b + start : NULL, lr, mu, wd, nesterov);
    }
}

ALWAYS_INLINE void adam_rows(const int64_t *rows, ptrdiff_t count, ptrdiff_t width,
                             float *p, const float *g, float *m, float *v, float decay,
                             float grad_wd, float b1, float b2, float eps, float step_size,
                             float bc2_sqrt)
{
    for (ptrdiff_t r = 0; r < count; r++) {
        if (r + PYNN_ROW_PREFETCH_AHEAD < count) {
            ptrdiff_t ahead = rows[r + PYNN_ROW_PREFETCH_AHEAD] * width;
            PYNN_PREFETCH_ROW(p + ahead, width, 1);
            PYNN_PREFETCH_ROW(g + ahead, width, 0);
            PYNN_PREFETCH_ROW(m + ahead, width, 1);
            PYNN_PREFETCH_ROW(v + ahead, width, 1);
        }
        ptrdiff_t start = rows[r] * width;
        adam_range(width, p + start, g + start, m + start, v + start, decay, grad_wd, b1, b2,
                   eps, step_size, bc2_sqrt);
    }
}

typedef void (*sgd_fn)(ptrdiff_t, float *, const float *, float *, float, float, float, int);
typedef void (*adam_fn)(ptrdiff_t, float *, const float *, float *, float *, float, float,
                        float, float, float, float, float);
typedef void (*sgd_rows_fn)(const int64_t *, ptrdiff_t, ptrdiff_t, float *, const float *,
                            float *, float, float, float, int);
typedef void (*adam_rows_fn)(const int64_t *, ptrdiff_t, ptrdiff_t, float *, const float *,
                             float *, float *, float, float, float, float, float, float, float);

struct pynn_optim_kernels {
    sgd_fn sgd;
    adam_fn adam;
    sgd_rows_fn sgd_rows;
    adam_rows_fn adam_rows;
};

#define OPTIM_VARIANT(suffix, attribute)                                                    \
    attribute static void sgd_##suffix(ptrdiff_t n, float *p, const float *g, float *b,     \
                                       float lr, float mu, float wd, int nesterov)          \
    { sgd_range(n, p, g, b, lr, mu, wd, nesterov); }                                        \
    attribute static void adam_##suffix(ptrdiff_t n, float *p, const float *g, float *m,    \
                                        float *v, float decay, float grad_wd, float b1,     \
                                        float b2, float eps, float step_size,               \
                                        float bc2_sqrt)                                     \
    { adam_range(n, p, g, m, v, decay, grad_wd, b1, b2, eps, step_size, bc2_sqrt); }        \
    attribute static void sgd_rows_##suffix(const int64_t *rows, ptrdiff_t count,           \
                                            ptrdiff_t width, float *p, const float *g,      \
                                            float *b, float lr, float mu, float wd,         \
                                            int nesterov)                                   \
    { sgd_rows(rows, count, width, p, g, b, lr, mu, wd, nesterov); }                        \
    attribute static void adam_rows_##suffix(const int64_t *rows, ptrdiff_t count,          \
                                             ptrdiff_t width, float *p, const float *g,     \
                                             float *m, float *v, float decay,               \
                                             float grad_wd, float b1, float b2, float eps,  \
                                             float step_size, float bc2_sqrt)               \
    { adam_rows(rows, count, width, p, g, m, v, decay, grad_wd, b1, b2, eps, step_size,     \
                bc2_sqrt); }                                                                \
    const struct pynn_optim_kernels pynn_optim_##suffix = {                                 \
        sgd_##suffix, adam_##suffix, sgd_rows_##suffix, adam_rows_##suffix};

PYNN_EACH_ISA(OPTIM_VARIANT)

/* The threads a step over these tensors wants. */
static int threads_wanted(const pynn_context *ctx, ptrdiff_t count, const ptrdiff_t *sizes,
                          const pynn_row_subset *subsets)
{
    ptrdiff_t elements = 0, row_elements = 0;
    for (ptrdiff_t i = 0; i < count; i++) {
        if (subsets[i].rows) row_elements += subsets[i].count * subsets[i].row_size;
        else elements += sizes[i];
    }
    return elements >= PARALLEL_MIN_ELEMENTS || row_elements >= PARALLEL_MIN_ROW_ELEMENTS
               ? ctx->num_threads : 1;
}

/* Every tensor's chunks (a row-sparse tensor's blocks of rows), run by each
 * thread of a team: each thread takes its share of every tensor's chunks and
 * moves on without waiting (nowait), so a step costs one fork/join however
 * many tensors the model has. Outside a parallel region the one thread runs
 * every chunk. */
static void sgd_tensors(const struct pynn_optim_kernels *kernels, ptrdiff_t count,
                        const ptrdiff_t *sizes, const pynn_row_subset *subsets,
                        float *const *params, const float *const *grads,
                        float *const *momentum_buffers, float lr, float momentum,
                        float weight_decay, int nesterov)
{
    for (ptrdiff_t i = 0; i < count; i++) {
        const pynn_row_subset subset = subsets[i];
        ptrdiff_t n = subset.rows ? subset.count : sizes[i];
        ptrdiff_t block = subset.rows ? ROW_BLOCK : CHUNK, chunks = (n + block - 1) / block;
#ifdef _OPENMP
#pragma omp for schedule(static) nowait
#endif
        for (ptrdiff_t c = 0; c < chunks; c++) {
            ptrdiff_t start = c * block, length = n - start < block ? n - start : block;
            if (subset.rows)
                kernels->sgd_rows(subset.rows + start, length, subset.row_size, params[i],
                                  grads[i], momentum_buffers[i], lr, momentum, weight_decay,
                                  nesterov);
            else
                kernels->sgd(length, params[i] + start, grads[i] + start,
                             momentum_buffers[i] ? momentum_buffers[i] + start : NULL,
                             lr, momentum, weight_decay, nesterov);
        }
    }
}

void pynn_sgd_step(const pynn_context *ctx, ptrdiff_t count, const ptrdiff_t *sizes,
                   const pynn_row_subset *subsets, float *const *params,
                   const float *const *grads, float *const *momentum_buffers, float lr,
                   float momentum, float weight_decay, int nesterov)
{
    const struct pynn_optim_kernels *kernels = ctx->kernels->optim;
    PYNN_TEAM(ctx, threads_wanted(ctx, count, sizes, subsets), {
        sgd_tensors(kernels, count, sizes, subsets, params, grads, momentum_buffers, lr,
                    momentum, weight_decay, nesterov);
    });
}

/* As sgd_tensors. */
static void adam_tensors(const struct pynn_optim_kernels *kernels, ptrdiff_t count,
                         const ptrdiff_t *sizes, const pynn_row_subset *subsets,
                         float *const *params, const float *const *grads,
                         float *const *exp_avgs, float *const *exp_avg_sqs,
                         const float *step_sizes, const float *bias_corrections2_sqrt,
                         float decay, float grad_weight_decay, float beta1, float beta2,
                         float eps)
{
    for (ptrdiff_t i = 0; i < count; i++) {
        const pynn_row_subset subset = subsets[i];
        ptrdiff_t n = subset.rows ? subset.count : sizes[i];
        ptrdiff_t block = subset.rows ? ROW_BLOCK : CHUNK, chunks = (n + block - 1) / block;
#ifdef _OPENMP
#pragma omp for schedule(static) nowait
#endif
        for (ptrdiff_t c = 0; c < chunks; c++) {
            ptrdiff_t start = c * block, length = n - start < block ? n - start : block;
            if (subset.rows)
                kernels->adam_rows(subset.rows + start, length, subset.row_size, params[i],
                                   grads[i], exp_avgs[i], exp_avg_sqs[i], decay,
                                   grad_weight_decay, beta1, beta2, eps, step_sizes[i],
                                   bias_corrections2_sqrt[i]);
            else
                kernels->adam(length, params[i] + start, grads[i] + start, exp_avgs[i] + start,
                              exp_avg_sqs[i] + start, decay, grad_weight_decay, beta1, beta2,
                              eps, step_sizes[i], bias_corrections2_sqrt[i]);
        }
    }
}

void pynn_adam_step(const pynn_context *ctx, ptrdiff_t count, const ptrdiff_t *sizes,
                    const pynn_row_subset *subsets, float *const *params,
                    const float *const *grads, float *const *exp_avgs,
                    float *const *exp_avg_sqs, const float *step_sizes,
                    const float *bias_corrections2_sqrt, float decay, float grad_weight_decay,
                    float beta1, float beta2, float eps)
{
    const struct pynn_optim_kernels *kernels = ctx->kernels->optim;
    PYNN_TEAM(ctx, threads_wanted(ctx, count, sizes, subsets), {
        adam_tensors(kernels, count, sizes, subsets, params, grads, exp_avgs, exp_avg_sqs,
                     step_sizes, bias_corrections2_sqrt, decay, grad_weight_decay, beta1, beta2,
                     eps);
    });
}
