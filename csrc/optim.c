/* Fused optimizer updates (formulas in optim.h). One loop body per update,
 * instantiated for each ISA by inlining it into functions compiled with that
 * target, so the compiler vectorises the same arithmetic at each width. */
#include <math.h>
#include <string.h>
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

/* Runs `update(n, offset)` over elements [0, count) (rows == NULL) or over
 * each of rows[0 .. count) of `width` elements, asking for the lines of
 * `prefetch(offset)` a few rows ahead. */
#define OVER_ROWS_OR_RANGE(rows, count, width, prefetch, update)                      \
    do {                                                                             \
        if (!(rows)) {                                                               \
            update((count), 0);                                                      \
            break;                                                                   \
        }                                                                            \
        for (ptrdiff_t r = 0; r < (count); r++) {                                    \
            if (r + PYNN_ROW_PREFETCH_AHEAD < (count))                               \
                prefetch((rows)[r + PYNN_ROW_PREFETCH_AHEAD] * (width));             \
            update((width), (rows)[r] * (width));                                    \
        }                                                                            \
    } while (0)

/* Constant `centered` and `use_momentum` at each call, so each of the four
 * loops is compiled (and vectorised) without branches. */
ALWAYS_INLINE void rmsprop_range(ptrdiff_t n, float *restrict p, const float *restrict g,
                                 float *restrict s, float *restrict m, float *restrict c,
                                 const pynn_rmsprop_options *o, int centered, int use_momentum)
{
    const float lr = o->lr, alpha = o->alpha, one_minus_alpha = o->one_minus_alpha;
    const float eps = o->eps, wd = o->weight_decay, mu = o->momentum;
    for (ptrdiff_t i = 0; i < n; i++) {
        float gi = g[i] + wd * p[i];
        float si = s[i] * alpha + one_minus_alpha * gi * gi;
        s[i] = si;
        float avg;
        if (centered) {
            float ci = c[i] + one_minus_alpha * (gi - c[i]);
            c[i] = ci;
            avg = sqrtf(si - ci * ci) + eps;
        } else {
            avg = sqrtf(si) + eps;
        }
        if (use_momentum) {
            float mi = m[i] * mu + gi / avg;
            m[i] = mi;
            p[i] -= lr * mi;
        } else {
            p[i] -= lr * gi / avg;
        }
    }
}

ALWAYS_INLINE void rmsprop_any(ptrdiff_t n, float *p, const float *g, float *s, float *m,
                               float *c, const pynn_rmsprop_options *o)
{
    if (o->centered) {
        if (o->momentum != 0.0f) rmsprop_range(n, p, g, s, m, c, o, 1, 1);
        else rmsprop_range(n, p, g, s, m, c, o, 1, 0);
    } else {
        if (o->momentum != 0.0f) rmsprop_range(n, p, g, s, m, c, o, 0, 1);
        else rmsprop_range(n, p, g, s, m, c, o, 0, 0);
    }
}

ALWAYS_INLINE void adagrad_range(ptrdiff_t n, float *restrict p, const float *restrict g,
                                 float *restrict s, float clr, float wd, float eps)
{
    for (ptrdiff_t i = 0; i < n; i++) {
        float gi = g[i] + wd * p[i];
        float si = s[i] + gi * gi;
        s[i] = si;
        p[i] -= clr * gi / (sqrtf(si) + eps);
    }
}

enum norm_kind { NORM_SQUARES, NORM_ABS, NORM_MAX, NORM_POWER };

/* This range's share of a norm: sum g^2, sum |g|, max |g| (NaN if any is
 * NaN) or sum |g|^q, in eight independent lanes so it vectorises without
 * reassociating. The maximum compares the bits of |g| as integers, which
 * order as the floats do and put every NaN above infinity. */
ALWAYS_INLINE double norm_range(ptrdiff_t n, const float *restrict g, int kind, double q)
{
    double lanes[8] = {0.0};
    ptrdiff_t i = 0;
    if (kind == NORM_MAX) {
        uint32_t top = 0;
        for (; i < n; i++) {
            uint32_t bits;
            memcpy(&bits, g + i, sizeof bits);
            bits &= 0x7fffffffu;
            top = bits > top ? bits : top;
        }
        float largest;
        memcpy(&largest, &top, sizeof largest);
        return (double)largest;
    }
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) {
            double a = (double)g[i + j];
            lanes[j] += kind == NORM_SQUARES ? a * a : kind == NORM_ABS ? fabs(a) : pow(fabs(a), q);
        }
    for (; i < n; i++) {
        double a = (double)g[i];
        lanes[0] += kind == NORM_SQUARES ? a * a : kind == NORM_ABS ? fabs(a) : pow(fabs(a), q);
    }
    return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) +
           ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

ALWAYS_INLINE double norm_kind_range(ptrdiff_t n, const float *g, int kind, double q)
{
    switch (kind) {
    case NORM_SQUARES: return norm_range(n, g, NORM_SQUARES, q);
    case NORM_ABS: return norm_range(n, g, NORM_ABS, q);
    case NORM_MAX: return norm_range(n, g, NORM_MAX, q);
    default: return norm_range(n, g, NORM_POWER, q);
    }
}

ALWAYS_INLINE void scale_range(ptrdiff_t n, float *restrict g, float factor)
{
    for (ptrdiff_t i = 0; i < n; i++) g[i] *= factor;
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
/* The kernels below take (rows, count, width): rows == NULL means elements
 * [0, count) of the pointers given, else those rows of `width` elements. */
typedef void (*rmsprop_fn)(const int64_t *, ptrdiff_t, ptrdiff_t, float *, const float *,
                           float *, float *, float *, const pynn_rmsprop_options *);
typedef void (*adagrad_fn)(const int64_t *, ptrdiff_t, ptrdiff_t, float *, const float *,
                           float *, float, float, float);
typedef double (*norm_fn)(const int64_t *, ptrdiff_t, ptrdiff_t, const float *, int, double);
typedef void (*scale_fn)(const int64_t *, ptrdiff_t, ptrdiff_t, float *, float);

struct pynn_optim_kernels {
    sgd_fn sgd;
    adam_fn adam;
    sgd_rows_fn sgd_rows;
    adam_rows_fn adam_rows;
    rmsprop_fn rmsprop;
    adagrad_fn adagrad;
    norm_fn norm;
    scale_fn scale;
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
    attribute static void rmsprop_##suffix(const int64_t *rows, ptrdiff_t count,            \
                                           ptrdiff_t width, float *p, const float *g,       \
                                           float *s, float *m, float *c,                    \
                                           const pynn_rmsprop_options *o)                   \
    {                                                                                       \
        OVER_ROWS_OR_RANGE(rows, count, width, RMSPROP_PREFETCH, RMSPROP_UPDATE);           \
    }                                                                                       \
    attribute static void adagrad_##suffix(const int64_t *rows, ptrdiff_t count,            \
                                           ptrdiff_t width, float *p, const float *g,       \
                                           float *s, float clr, float wd, float eps)        \
    {                                                                                       \
        OVER_ROWS_OR_RANGE(rows, count, width, ADAGRAD_PREFETCH, ADAGRAD_UPDATE);           \
    }                                                                                       \
    attribute static double norm_##suffix(const int64_t *rows, ptrdiff_t count,             \
                                          ptrdiff_t width, const float *g, int kind,        \
                                          double q)                                         \
    {                                                                                       \
        double total = 0.0;                                                                 \
        OVER_ROWS_OR_RANGE(rows, count, width, NORM_PREFETCH, NORM_UPDATE);                 \
        return total;                                                                       \
    }                                                                                       \
    attribute static void scale_##suffix(const int64_t *rows, ptrdiff_t count,              \
                                         ptrdiff_t width, float *g, float factor)           \
    {                                                                                       \
        OVER_ROWS_OR_RANGE(rows, count, width, SCALE_PREFETCH, SCALE_UPDATE);               \
    }                                                                                       \
    const struct pynn_optim_kernels pynn_optim_##suffix = {                                 \
        sgd_##suffix, adam_##suffix, sgd_rows_##suffix, adam_rows_##suffix,                \
        rmsprop_##suffix, adagrad_##suffix, norm_##suffix, scale_##suffix};

#define RMSPROP_PREFETCH(at)                                                           \
    do {                                                                             \
        PYNN_PREFETCH_ROW(p + (at), width, 1);                                        \
        PYNN_PREFETCH_ROW(g + (at), width, 0);                                        \
        PYNN_PREFETCH_ROW(s + (at), width, 1);                                        \
    } while (0)
#define RMSPROP_UPDATE(n, at) \
    rmsprop_any((n), p + (at), g + (at), s + (at), m ? m + (at) : NULL, c ? c + (at) : NULL, o)
#define ADAGRAD_PREFETCH(at)                                                           \
    do {                                                                             \
        PYNN_PREFETCH_ROW(p + (at), width, 1);                                        \
        PYNN_PREFETCH_ROW(g + (at), width, 0);                                        \
        PYNN_PREFETCH_ROW(s + (at), width, 1);                                        \
    } while (0)
#define ADAGRAD_UPDATE(n, at) adagrad_range((n), p + (at), g + (at), s + (at), clr, wd, eps)
#define NORM_PREFETCH(at) PYNN_PREFETCH_ROW(g + (at), width, 0)
#define NORM_UPDATE(n, at)                                                             \
    do {                                                                             \
        double part = norm_kind_range((n), g + (at), kind, q);                         \
        total = kind == NORM_MAX ? (part > total || part != part ? part : total)      \
                                 : total + part;                                      \
    } while (0)
#define SCALE_PREFETCH(at) PYNN_PREFETCH_ROW(g + (at), width, 1)
#define SCALE_UPDATE(n, at) scale_range((n), g + (at), factor)

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

#ifdef _OPENMP
#define OMP_FOR_NOWAIT PYNN_PRAGMA(omp for schedule(static) nowait)
#else
#define OMP_FOR_NOWAIT
#endif

/* As sgd_tensors, for the kernels taking (rows, count, width): runs the
 * statements given with i (the tensor), rows (NULL or the chunk's rows),
 * length (its elements, or rows), start (its first element, or 0 for rows)
 * and chunk (its index over every tensor's chunks, in order). */
#define FOR_EACH_CHUNK(count, sizes, subsets, ...)                                    \
    do {                                                                             \
        ptrdiff_t first_chunk = 0;                                                   \
        for (ptrdiff_t i = 0; i < (count); i++) {                                    \
            const pynn_row_subset subset = (subsets)[i];                             \
            ptrdiff_t n = subset.rows ? subset.count : (sizes)[i];                   \
            ptrdiff_t block = subset.rows ? ROW_BLOCK : CHUNK;                       \
            ptrdiff_t chunks = (n + block - 1) / block;                              \
            OMP_FOR_NOWAIT                                                           \
            for (ptrdiff_t c = 0; c < chunks; c++) {                                 \
                ptrdiff_t offset = c * block;                                        \
                ptrdiff_t length = n - offset < block ? n - offset : block;          \
                const int64_t *rows = subset.rows ? subset.rows + offset : NULL;     \
                ptrdiff_t start = subset.rows ? 0 : offset;                          \
                ptrdiff_t width = subset.rows ? subset.row_size : 1;                 \
                ptrdiff_t chunk = first_chunk + c;                                   \
                (void)chunk;                                                         \
                (void)width;                                                         \
                __VA_ARGS__                                                          \
            }                                                                        \
            first_chunk += chunks;                                                   \
        }                                                                            \
    } while (0)

void pynn_rmsprop_step(const pynn_context *ctx, ptrdiff_t count, const ptrdiff_t *sizes,
                       const pynn_row_subset *subsets, float *const *params,
                       const float *const *grads, float *const *square_avgs,
                       float *const *momentum_buffers, float *const *grad_avgs,
                       const pynn_rmsprop_options *options)
{
    const struct pynn_optim_kernels *kernels = ctx->kernels->optim;
    PYNN_TEAM(ctx, threads_wanted(ctx, count, sizes, subsets), {
        FOR_EACH_CHUNK(count, sizes, subsets, {
            float *m = momentum_buffers[i], *c_avg = grad_avgs[i];
            kernels->rmsprop(rows, length, width, params[i] + start, grads[i] + start,
                             square_avgs[i] + start, m ? m + start : NULL,
                             c_avg ? c_avg + start : NULL, options);
        });
    });
}

void pynn_adagrad_step(const pynn_context *ctx, ptrdiff_t count, const ptrdiff_t *sizes,
                       const pynn_row_subset *subsets, float *const *params,
                       const float *const *grads, float *const *sums, const float *clrs,
                       float weight_decay, float eps)
{
    const struct pynn_optim_kernels *kernels = ctx->kernels->optim;
    PYNN_TEAM(ctx, threads_wanted(ctx, count, sizes, subsets), {
        FOR_EACH_CHUNK(count, sizes, subsets, {
            kernels->adagrad(rows, length, width, params[i] + start, grads[i] + start,
                             sums[i] + start, clrs[i], weight_decay, eps);
        });
    });
}

ptrdiff_t pynn_grad_norm_chunks(ptrdiff_t count, const ptrdiff_t *sizes,
                                const pynn_row_subset *subsets)
{
    ptrdiff_t chunks = 0;
    for (ptrdiff_t i = 0; i < count; i++) {
        ptrdiff_t n = subsets[i].rows ? subsets[i].count : sizes[i];
        ptrdiff_t block = subsets[i].rows ? ROW_BLOCK : CHUNK;
        chunks += (n + block - 1) / block;
    }
    return chunks;
}

double pynn_grad_norm(const pynn_context *ctx, ptrdiff_t count, const ptrdiff_t *sizes,
                      const pynn_row_subset *subsets, const float *const *grads,
                      double norm_type, double *partials)
{
    const struct pynn_optim_kernels *kernels = ctx->kernels->optim;
    int kind = isinf(norm_type) ? NORM_MAX : norm_type == 2.0 ? NORM_SQUARES
               : norm_type == 1.0 ? NORM_ABS : NORM_POWER;
    PYNN_TEAM(ctx, threads_wanted(ctx, count, sizes, subsets), {
        FOR_EACH_CHUNK(count, sizes, subsets, {
            partials[chunk] = kernels->norm(rows, length, width, grads[i] + start, kind,
                                            norm_type);
        });
    });
    ptrdiff_t chunks = pynn_grad_norm_chunks(count, sizes, subsets);
    double total = 0.0;
    for (ptrdiff_t c = 0; c < chunks; c++) {
        if (kind == NORM_MAX) total = partials[c] > total || partials[c] != partials[c]
                                          ? partials[c] : total;
        else total += partials[c];
    }
    if (kind == NORM_MAX || kind == NORM_ABS) return total;
    return kind == NORM_SQUARES ? sqrt(total) : pow(total, 1.0 / norm_type);
}

void pynn_grad_scale(const pynn_context *ctx, ptrdiff_t count, const ptrdiff_t *sizes,
                     const pynn_row_subset *subsets, float *const *grads, float factor)
{
    const struct pynn_optim_kernels *kernels = ctx->kernels->optim;
    PYNN_TEAM(ctx, threads_wanted(ctx, count, sizes, subsets), {
        FOR_EACH_CHUNK(count, sizes, subsets, {
            kernels->scale(rows, length, width, grads[i] + start, factor);
        });
    });
}
