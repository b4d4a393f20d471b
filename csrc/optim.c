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

typedef void (*sgd_fn)(ptrdiff_t, float *, const float *, float *, float, float, float, int);
typedef void (*adam_fn)(ptrdiff_t, float *, const float *, float *, float *, float, float,
                        float, float, float, float, float);

struct pynn_optim_kernels {
    sgd_fn sgd;
    adam_fn adam;
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
    const struct pynn_optim_kernels pynn_optim_##suffix = {sgd_##suffix, adam_##suffix};

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

/* Every tensor's chunks, run by each thread of a team: each thread takes its
 * share of every tensor's chunks and moves on without waiting (nowait), so a
 * step costs one fork/join however many tensors the model has. Outside a
 * parallel region the one thread runs every chunk. */
static void sgd_tensors(sgd_fn step, ptrdiff_t count, const ptrdiff_t *sizes,
                        const pynn_row_subset *subsets, float *const *params,
                        const float *const *grads,
                        float *const *momentum_buffers, float lr, float momentum,
                        float weight_decay, int nesterov)
{
    for (ptrdiff_t i = 0; i < count; i++) {
        const pynn_row_subset subset = subsets[i];
        /* a subset's rows are the chunks: whole rows apart, never shared */
        ptrdiff_t n = sizes[i], chunks = subset.rows ? subset.count : (n + CHUNK - 1) / CHUNK;
#ifdef _OPENMP
#pragma omp for schedule(static) nowait
#endif
        for (ptrdiff_t c = 0; c < chunks; c++) {
            ptrdiff_t start = subset.rows ? subset.rows[c] * subset.row_size : c * CHUNK;
            ptrdiff_t length = subset.rows    ? subset.row_size
                               : n - start < CHUNK ? n - start
                                                   : CHUNK;
            if (subset.rows && c + PYNN_ROW_PREFETCH_AHEAD < chunks) {
                ptrdiff_t ahead = subset.rows[c + PYNN_ROW_PREFETCH_AHEAD] * length;
                PYNN_PREFETCH_ROW(params[i] + ahead, length, 1);
                PYNN_PREFETCH_ROW(grads[i] + ahead, length, 0);
                if (momentum_buffers[i]) PYNN_PREFETCH_ROW(momentum_buffers[i] + ahead, length, 1);
            }
            step(length, params[i] + start, grads[i] + start,
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
    sgd_fn step = ctx->kernels->optim->sgd;
    PYNN_TEAM(ctx, threads_wanted(ctx, count, sizes, subsets), {
        sgd_tensors(step, count, sizes, subsets, params, grads, momentum_buffers, lr, momentum,
                    weight_decay, nesterov);
    });
}

/* As sgd_tensors. */
static void adam_tensors(adam_fn step, ptrdiff_t count, const ptrdiff_t *sizes,
                         const pynn_row_subset *subsets, float *const *params,
                        const float *const *grads,
                         float *const *exp_avgs, float *const *exp_avg_sqs,
                         const float *step_sizes, const float *bias_corrections2_sqrt,
                         float decay, float grad_weight_decay, float beta1, float beta2,
                         float eps)
{
    for (ptrdiff_t i = 0; i < count; i++) {
        const pynn_row_subset subset = subsets[i];
        ptrdiff_t n = sizes[i], chunks = subset.rows ? subset.count : (n + CHUNK - 1) / CHUNK;
#ifdef _OPENMP
#pragma omp for schedule(static) nowait
#endif
        for (ptrdiff_t c = 0; c < chunks; c++) {
            ptrdiff_t start = subset.rows ? subset.rows[c] * subset.row_size : c * CHUNK;
            ptrdiff_t length = subset.rows    ? subset.row_size
                               : n - start < CHUNK ? n - start
                                                   : CHUNK;
            if (subset.rows && c + PYNN_ROW_PREFETCH_AHEAD < chunks) {
                ptrdiff_t ahead = subset.rows[c + PYNN_ROW_PREFETCH_AHEAD] * length;
                PYNN_PREFETCH_ROW(params[i] + ahead, length, 1);
                PYNN_PREFETCH_ROW(grads[i] + ahead, length, 0);
                PYNN_PREFETCH_ROW(exp_avgs[i] + ahead, length, 1);
                PYNN_PREFETCH_ROW(exp_avg_sqs[i] + ahead, length, 1);
            }
            step(length, params[i] + start, grads[i] + start, exp_avgs[i] + start,
                 exp_avg_sqs[i] + start, decay, grad_weight_decay, beta1, beta2, eps,
                 step_sizes[i], bias_corrections2_sqrt[i]);
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
    adam_fn step = ctx->kernels->optim->adam;
    PYNN_TEAM(ctx, threads_wanted(ctx, count, sizes, subsets), {
        adam_tensors(step, count, sizes, subsets, params, grads, exp_avgs, exp_avg_sqs, step_sizes,
                     bias_corrections2_sqrt, decay, grad_weight_decay, beta1, beta2, eps);
    });
}
