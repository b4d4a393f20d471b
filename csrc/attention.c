/* Scaled dot-product attention (contracts in attention.h). A block of query
 * rows is one unit: its scores come from one product into this thread's
 * buffer (or the kept probabilities' rows), the masked softmax runs over them
 * in place with the vector exp of vmath.h (one copy per ISA), and a second
 * product multiplies by V. The products are the path's own register-tiled
 * kernel where it has one (against the head's Kᵀ, packed once per head and
 * thread), else GEMM calls on one thread each; the threads split the units. */
#include <math.h>
#include <stdatomic.h>
#include <string.h>
#include "attention.h"
#include "gemm.h"
#include "kernels.h"
#include "scratch.h"
#include "vmath.h"

/* A block's scores hold about BLOCK_FLOATS floats (two such buffers stay in
 * L2 in backward), as MIN_BLOCK_ROWS to MAX_BLOCK_ROWS query rows. */
#define BLOCK_FLOATS 8192
#define MIN_BLOCK_ROWS 8
#define MAX_BLOCK_ROWS 64
/* Multiply-adds from which a call splits its units across threads. */
#define PARALLEL_MIN_WORK 262144.0

/* One block of query rows of one (batch, head): what its rows may see. */
typedef struct {
    ptrdiff_t first;  /* its first query row */
    ptrdiff_t keys;   /* score columns computed: no row sees a key from here on */
    int causal;
    const unsigned char *allowed;  /* at (n, h, first, 0), or NULL */
    const float *bias;             /* at (n, h, first, 0), or NULL */
    ptrdiff_t query_stride, key_stride;
} attention_block;

struct pynn_attention_kernels {
    /* c[rows, cols] = alpha a[rows, depth] b[depth, cols], every matrix
     * row-major with its own row stride, each sum in order of depth; NULL on
     * paths that call the GEMM instead */
    void (*product)(ptrdiff_t rows, ptrdiff_t cols, ptrdiff_t depth, float alpha, const float *a,
                    ptrdiff_t lda, const float *b, ptrdiff_t ldb, float *c, ptrdiff_t ldc);
    /* scores -> softmax(score + mask) in place, zeros past each row's keys;
     * inverse_sums and, unless NULL, log_sum_exp per row (0 and -inf for a
     * row with no key) */
    void (*softmax_rows)(const attention_block *block, ptrdiff_t rows, float *scores,
                         ptrdiff_t ld, float *inverse_sums, float *log_sum_exp);
    /* scores -> exp(score + mask - log_sum_exp) in place: the forward's
     * probabilities again */
    void (*probability_rows)(const attention_block *block, ptrdiff_t rows, float *scores,
                             ptrdiff_t ld, const float *log_sum_exp);
    /* gradient = scale P ∘ (gradient - delta), row by row */
    void (*score_gradient_rows)(ptrdiff_t rows, ptrdiff_t keys, const float *probabilities,
                                ptrdiff_t probabilities_ld, float *gradient, ptrdiff_t ld,
                                const float *deltas, float scale);
};

/* keys row i of the block sees: the causal ones up to its own position */
PYNN_INLINE ptrdiff_t row_width(const attention_block *b, ptrdiff_t i)
{
    const ptrdiff_t causal_width = b->first + i + 1;
    return b->causal && causal_width < b->keys ? causal_width : b->keys;
}

PYNN_INLINE void mask_row(const attention_block *b, ptrdiff_t i, float *restrict s,
                          ptrdiff_t width)
{
    const ptrdiff_t step = b->key_stride;
    if (b->allowed) {
        const unsigned char *allowed = b->allowed + i * b->query_stride;
        if (step == 1)
            for (ptrdiff_t j = 0; j < width; j++) s[j] = allowed[j] ? s[j] : -INFINITY;
        else
            for (ptrdiff_t j = 0; j < width; j++) s[j] = allowed[j * step] ? s[j] : -INFINITY;
    }
    if (b->bias) {
        const float *bias = b->bias + i * b->query_stride;
        if (step == 1)
            for (ptrdiff_t j = 0; j < width; j++) s[j] += bias[j];
        else
            for (ptrdiff_t j = 0; j < width; j++) s[j] += bias[j * step];
    }
}

/* The largest score, NaN ignored (a NaN still reaches the row through its
 * exponential); one copy per ISA, since the compiler keeps a float maximum
 * scalar for NaN's sake: portable below, vector ones after it. */
static inline float row_max_generic(const float *restrict s, ptrdiff_t n)
{
    float max = -INFINITY;
    for (ptrdiff_t j = 0; j < n; j++) max = s[j] > max ? s[j] : max;
    return max;
}

#if defined(PYNN_X86_64)
static inline PYNN_TARGET_AVX2 float row_max_avx2(const float *restrict s, ptrdiff_t n)
{
    __m256 lanes = _mm256_set1_ps(-INFINITY);
    ptrdiff_t j = 0;
    for (; j + 8 <= n; j += 8) lanes = _mm256_max_ps(_mm256_loadu_ps(s + j), lanes);
    float partial[8];
    _mm256_storeu_ps(partial, lanes);
    float max = row_max_generic(partial, 8);
    for (; j < n; j++) max = s[j] > max ? s[j] : max;
    return max;
}

static inline PYNN_TARGET_AVX512 float row_max_avx512(const float *restrict s, ptrdiff_t n)
{
    __m512 lanes = _mm512_set1_ps(-INFINITY);
    ptrdiff_t j = 0;
    for (; j + 16 <= n; j += 16) lanes = _mm512_max_ps(_mm512_loadu_ps(s + j), lanes);
    const __mmask16 tail = pynn_first_lanes16(n - j);
    lanes = _mm512_mask_max_ps(lanes, tail, _mm512_maskz_loadu_ps(tail, s + j), lanes);
    return _mm512_reduce_max_ps(lanes);
}

/* Eight rows by two vectors of c (columns masked by m0, m1) in registers, as
 * the product field says; rows past `rows` repeat the last one unstored. */
static inline PYNN_TARGET_AVX512 void product_tile_avx512(ptrdiff_t rows, __mmask16 m0, __mmask16 m1,
                                                          ptrdiff_t depth, float alpha,
                                                          const float *a, ptrdiff_t lda,
                                                          const float *b, ptrdiff_t ldb, float *c,
                                                          ptrdiff_t ldc)
{
    const float *row[8];
    __m512 acc[8][2];
#pragma GCC unroll 8
    for (int r = 0; r < 8; r++) {
        row[r] = a + (r < rows ? r : rows - 1) * lda;
        acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    }
    for (ptrdiff_t p = 0; p < depth; p++) {
        const __m512 b0 = _mm512_maskz_loadu_ps(m0, b + p * ldb);
        const __m512 b1 = _mm512_maskz_loadu_ps(m1, b + p * ldb + 16);
#pragma GCC unroll 8
        for (int r = 0; r < 8; r++) {
            const __m512 x = _mm512_set1_ps(row[r][p]);
            acc[r][0] = _mm512_fmadd_ps(x, b0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(x, b1, acc[r][1]);
        }
    }
    const __m512 scale = _mm512_set1_ps(alpha);
#pragma GCC unroll 8
    for (int r = 0; r < 8; r++)
        if (r < rows) {
            _mm512_mask_storeu_ps(c + r * ldc, m0, _mm512_mul_ps(acc[r][0], scale));
            _mm512_mask_storeu_ps(c + r * ldc + 16, m1, _mm512_mul_ps(acc[r][1], scale));
        }
}

static PYNN_TARGET_AVX512 void product_avx512(ptrdiff_t rows, ptrdiff_t cols, ptrdiff_t depth,
                                              float alpha, const float *a, ptrdiff_t lda,
                                              const float *b, ptrdiff_t ldb, float *c,
                                              ptrdiff_t ldc)
{
    for (ptrdiff_t j = 0; j < cols; j += 32) {
        const __mmask16 m0 = pynn_first_lanes16(cols - j), m1 = pynn_first_lanes16(cols - j - 16);
        for (ptrdiff_t i = 0; i < rows; i += 8)
            product_tile_avx512(rows - i < 8 ? rows - i : 8, m0, m1, depth, alpha, a + i * lda, lda,
                                b + j, ldb, c + i * ldc + j, ldc);
    }
}
#endif

/* s = exp(s - shift) over n scores; returns their sum, in double */
PYNN_INLINE double exponentials(float *restrict s, ptrdiff_t n, float shift)
{
    double partial[PYNN_LANES] = {0.0};
    ptrdiff_t j = 0;
    for (; j + PYNN_LANES <= n; j += PYNN_LANES)
        for (int k = 0; k < PYNN_LANES; k++) {
            const float e = pynn_exp_nonpositive_f(s[j + k] - shift);
            s[j + k] = e;
            partial[k] += (double)e;
        }
    double sum = 0.0;
    for (int k = 0; k < PYNN_LANES; k++) sum += partial[k];
    for (; j < n; j++) {
        s[j] = pynn_exp_nonpositive_f(s[j] - shift);
        sum += (double)s[j];
    }
    return sum;
}

/* The masked row's softmax from its maximum: -inf scores (masked keys) give
 * exactly 0; a row with no key (maximum -inf) gives zeros, and inverse sum
 * 0, unless a NaN hides in it (then NaN throughout). */
PYNN_INLINE void softmax_row(const attention_block *b, float *restrict s, ptrdiff_t width,
                             float max, float *inverse_sum, float *log_sum_exp)
{
    if (max == -INFINITY) {
        float hidden = 0.0f;
        for (ptrdiff_t j = 0; j < width; j++) hidden = s[j] != s[j] ? s[j] : hidden;
        for (ptrdiff_t j = 0; j < width; j++) s[j] = hidden;
        for (ptrdiff_t j = width; j < b->keys; j++) s[j] = 0.0f;
        *inverse_sum = hidden;
        if (log_sum_exp)
            *log_sum_exp = hidden != hidden ? hidden : -INFINITY;
        return;
    }
    const double sum = exponentials(s, width, max);
    const float inverse = (float)(1.0 / sum);
    for (ptrdiff_t j = 0; j < width; j++) s[j] *= inverse;
    for (ptrdiff_t j = width; j < b->keys; j++) s[j] = 0.0f;
    *inverse_sum = inverse;
    if (log_sum_exp)
        *log_sum_exp = (float)((double)max + log(sum));
}

PYNN_INLINE void probability_row(const attention_block *b, ptrdiff_t i, float *restrict s,
                                 float log_sum_exp)
{
    ptrdiff_t width = row_width(b, i);
    if (log_sum_exp == -INFINITY) width = 0;
    mask_row(b, i, s, width);
    for (ptrdiff_t j = 0; j < width; j++) s[j] = pynn_exp_nonpositive_f(s[j] - log_sum_exp);
    for (ptrdiff_t j = width; j < b->keys; j++) s[j] = 0.0f;
}

#define ATTENTION_VARIANT(suffix, attribute)                                                   \
    attribute static void softmax_rows_##suffix(const attention_block *block, ptrdiff_t rows,  \
                                                float *scores, ptrdiff_t ld,                   \
                                                float *inverse_sums, float *log_sum_exp)       \
    {                                                                                          \
        for (ptrdiff_t i = 0; i < rows; i++) {                                                 \
            float *s = scores + i * ld;                                                        \
            const ptrdiff_t width = row_width(block, i);                                       \
            mask_row(block, i, s, width);                                                      \
            softmax_row(block, s, width, row_max_##suffix(s, width), inverse_sums + i,         \
                        log_sum_exp ? log_sum_exp + i : NULL);                                 \
        }                                                                                      \
    }                                                                                          \
    attribute static void probability_rows_##suffix(const attention_block *block,              \
                                                    ptrdiff_t rows, float *scores,             \
                                                    ptrdiff_t ld, const float *log_sum_exp)    \
    {                                                                                          \
        for (ptrdiff_t i = 0; i < rows; i++)                                                   \
            probability_row(block, i, scores + i * ld, log_sum_exp[i]);                        \
    }                                                                                          \
    attribute static void score_gradient_rows_##suffix(                                        \
        ptrdiff_t rows, ptrdiff_t keys, const float *probabilities,                            \
        ptrdiff_t probabilities_ld, float *gradient, ptrdiff_t ld, const float *deltas,        \
        float scale)                                                                           \
    {                                                                                          \
        for (ptrdiff_t i = 0; i < rows; i++) {                                                 \
            const float *restrict p = probabilities + i * probabilities_ld;                    \
            float *restrict g = gradient + i * ld;                                             \
            const float delta = deltas[i];                                                     \
            for (ptrdiff_t j = 0; j < keys; j++) g[j] = scale * p[j] * (g[j] - delta);         \
        }                                                                                      \
    }                                                                                          \
    const struct pynn_attention_kernels pynn_attention_##suffix = {                            \
        PRODUCT_##suffix, softmax_rows_##suffix, probability_rows_##suffix,                    \
        score_gradient_rows_##suffix};

#define PRODUCT_generic NULL
#define PRODUCT_avx2 NULL
#define PRODUCT_avx512 product_avx512
PYNN_EACH_ISA(ATTENTION_VARIANT)

static ptrdiff_t round_up(ptrdiff_t x, ptrdiff_t step) { return (x + step - 1) / step * step; }

/* Query rows per block, by the key count alone, so that backward's blocks
 * recompute exactly the forward's scores. */
static ptrdiff_t block_rows(ptrdiff_t keys)
{
    const ptrdiff_t rows = BLOCK_FLOATS / (keys > 1 ? keys : 1);
    return rows < MIN_BLOCK_ROWS ? MIN_BLOCK_ROWS : rows > MAX_BLOCK_ROWS ? MAX_BLOCK_ROWS : rows;
}

static attention_block block_at(const pynn_attention_shape *s, const pynn_attention_mask *m,
                                ptrdiff_t n, ptrdiff_t h, ptrdiff_t first, ptrdiff_t rows)
{
    ptrdiff_t keys = s->keys;
    if (m->key_counts) {
        const int64_t count = m->key_counts[n];
        keys = count < 0 ? 0 : count < keys ? (ptrdiff_t)count : keys;
    }
    if (m->causal && first + rows < keys) keys = first + rows;
    const ptrdiff_t at = n * m->batch_stride + h * m->head_stride + first * m->query_stride;
    attention_block b = {first, keys, m->causal, m->allowed ? m->allowed + at : NULL,
                         m->bias ? m->bias + at : NULL, m->query_stride, m->key_stride};
    return b;
}

PYNN_INLINE const float *input_at(pynn_attention_input x, ptrdiff_t n, ptrdiff_t h,
                                  ptrdiff_t t)
{
    return x.data + n * x.batch_stride + h * x.head_stride + t * x.token_stride;
}

PYNN_INLINE float *output_at(pynn_attention_output x, ptrdiff_t n, ptrdiff_t h, ptrdiff_t t)
{
    return x.data + n * x.batch_stride + h * x.head_stride + t * x.token_stride;
}

static void zero_rows(pynn_attention_output x, ptrdiff_t n, ptrdiff_t h, ptrdiff_t first,
                      ptrdiff_t rows, ptrdiff_t features)
{
    for (ptrdiff_t t = first; t < first + rows; t++)
        memset(output_at(x, n, h, t), 0, (size_t)features * sizeof(float));
}

/* the GEMM on this thread only: the units are what the threads share */
static pynn_context one_thread(const pynn_context *ctx)
{
    pynn_context one = *ctx;
    one.num_threads = 1;
    return one;
}

static int threads_for(const pynn_context *ctx, ptrdiff_t units, const pynn_attention_shape *s)
{
    const double work = (double)s->batch * (double)s->heads * (double)s->queries
                        * (double)s->keys * (double)(s->head_dim + s->value_dim);
    return units > 1 && work >= PARALLEL_MIN_WORK ? ctx->num_threads : 1;
}

/* The head's Kᵀ [head_dim][keys], the product kernel's right operand. */
static void pack_keys(const pynn_attention_shape *s, pynn_attention_input k, ptrdiff_t n,
                      ptrdiff_t h, float *packed)
{
    const float *head = input_at(k, n, h, 0);
    for (ptrdiff_t j = 0; j < s->keys; j++)
        for (ptrdiff_t d = 0; d < s->head_dim; d++)
            packed[d * s->keys + j] = head[j * k.token_stride + d];
}

/* scores[rows, keys] = scale Q Kᵀ for the query rows from `first`, against
 * the packed Kᵀ where the path has a product kernel; forward and backward
 * both take this one, so backward recomputes the forward's very scores. */
static void block_scores(const pynn_context *one, const pynn_attention_shape *s,
                         pynn_attention_input q, pynn_attention_input k, const float *packed_keys,
                         ptrdiff_t n, ptrdiff_t h, ptrdiff_t first, ptrdiff_t rows, ptrdiff_t keys,
                         float *scores, ptrdiff_t ld)
{
    const struct pynn_attention_kernels *kernels = one->kernels->attention;
    if (kernels->product)
        kernels->product(rows, keys, s->head_dim, s->scale, input_at(q, n, h, first), q.token_stride,
                         packed_keys, s->keys, scores, ld);
    else
        pynn_sgemm(one, 0, 1, rows, keys, s->head_dim, s->scale, input_at(q, n, h, first),
                   q.token_stride, input_at(k, n, h, 0), k.token_stride, 0.0f, scores, ld, NULL);
}

/* One block of query rows: scores, softmax, times V (a row with no key
 * written as zeros). The scores go to the kept probabilities' rows when
 * given (zeros past the block's keys), else to the scratch buffer. */
static void forward_block(const pynn_context *one, const pynn_attention_shape *s,
                          pynn_attention_input q, pynn_attention_input k,
                          pynn_attention_input v, const pynn_attention_mask *mask,
                          pynn_attention_output out, float *log_sum_exp, float *kept,
                          ptrdiff_t n, ptrdiff_t h, ptrdiff_t first, ptrdiff_t rows,
                          const float *packed_keys, float *scratch)
{
    const attention_block b = block_at(s, mask, n, h, first, rows);
    const ptrdiff_t ld = kept ? s->keys : round_up(b.keys, 16);
    float *scores = kept ? kept : scratch, *inverse_sums = kept ? scratch : scratch + rows * ld;
    if (kept && b.keys < s->keys)
        for (ptrdiff_t i = 0; i < rows; i++)
            memset(kept + i * ld + b.keys, 0, (size_t)(s->keys - b.keys) * sizeof(float));
    if (b.keys == 0) {
        zero_rows(out, n, h, first, rows, s->value_dim);
        for (ptrdiff_t i = 0; log_sum_exp && i < rows; i++) log_sum_exp[i] = -INFINITY;
        return;
    }
    const struct pynn_attention_kernels *kernels = one->kernels->attention;
    block_scores(one, s, q, k, packed_keys, n, h, first, rows, b.keys, scores, ld);
    kernels->softmax_rows(&b, rows, scores, ld, inverse_sums, log_sum_exp);
    float *o = output_at(out, n, h, first);
    if (kernels->product)
        kernels->product(rows, s->value_dim, b.keys, 1.0f, scores, ld, input_at(v, n, h, 0),
                         v.token_stride, o, out.token_stride);
    else
        pynn_sgemm(one, 0, 0, rows, s->value_dim, b.keys, 1.0f, scores, ld, input_at(v, n, h, 0),
                   v.token_stride, 0.0f, o, out.token_stride, NULL);
    for (ptrdiff_t i = 0; i < rows; i++)
        if (inverse_sums[i] == 0.0f)  /* no key: zeros even where V holds Inf */
            memset(o + i * out.token_stride, 0, (size_t)s->value_dim * sizeof(float));
}

int pynn_attention_forward(const pynn_context *ctx, const pynn_attention_shape *s,
                           pynn_attention_input q, pynn_attention_input k,
                           pynn_attention_input v, const pynn_attention_mask *mask,
                           pynn_attention_output out, float *log_sum_exp, float *probabilities)
{
    const ptrdiff_t heads = s->batch * s->heads;
    if (heads == 0 || s->queries == 0) return 0;
    const ptrdiff_t rows = block_rows(s->keys);
    const ptrdiff_t blocks = (s->queries + rows - 1) / rows, units = heads * blocks;
    /* the packed Kᵀ, the scores' rows unless kept, then the inverse sums */
    const ptrdiff_t packed_floats = ctx->kernels->attention->product ? s->head_dim * s->keys : 0;
    const ptrdiff_t scratch_floats =
        packed_floats + (probabilities ? 0 : rows * round_up(s->keys, 16)) + rows;
    const pynn_context one = one_thread(ctx);
    const int parts = threads_for(ctx, units, s);
    atomic_int failed = 0;
    /* each part a run of consecutive units, so a head's blocks share its packed Kᵀ */
    PYNN_TEAM_FOR(ctx, parts, part, parts, {
        float *buffer = pynn_scratch(PYNN_SCRATCH_ATTENTION, scratch_floats);
        float *packed = buffer, *scratch = buffer + packed_floats;
        ptrdiff_t packed_head = -1;
        for (ptrdiff_t unit = units * part / parts; buffer && unit < units * (part + 1) / parts; unit++) {
            const ptrdiff_t head = unit / blocks, first = unit % blocks * rows;
            const ptrdiff_t count = s->queries - first < rows ? s->queries - first : rows;
            if (packed_floats && head != packed_head) {
                pack_keys(s, k, head / s->heads, head % s->heads, packed);
                packed_head = head;
            }
            float *row_log_sum_exp = log_sum_exp ? log_sum_exp + head * s->queries + first : NULL;
            float *kept = probabilities ? probabilities + (head * s->queries + first) * s->keys
                                        : NULL;
            forward_block(&one, s, q, k, v, mask, out, row_log_sum_exp, kept, head / s->heads,
                          head % s->heads, first, count, packed, scratch);
        }
        if (!buffer)
            atomic_store(&failed, 1);
    });
    return atomic_load(&failed) ? -1 : 0;
}

/* One (batch, head): its query blocks in order, each adding into dK and dV. */
static void backward_head(const pynn_context *one, const pynn_attention_shape *s,
                          pynn_attention_input dout, pynn_attention_input q,
                          pynn_attention_input k, pynn_attention_input v,
                          pynn_attention_input out, const float *log_sum_exp,
                          const float *kept, const pynn_attention_mask *mask,
                          pynn_attention_output dq, pynn_attention_output dk,
                          pynn_attention_output dv, ptrdiff_t n, ptrdiff_t h, ptrdiff_t rows,
                          float *packed_keys, float *scratch)
{
    const struct pynn_attention_kernels *kernels = one->kernels->attention;
    const ptrdiff_t capacity = rows * round_up(s->keys, 16);
    float *gradient = scratch, *deltas = scratch + capacity;
    if (!kept && kernels->product)
        pack_keys(s, k, n, h, packed_keys);
    zero_rows(dk, n, h, 0, s->keys, s->head_dim);
    zero_rows(dv, n, h, 0, s->keys, s->value_dim);
    const float *k_head = input_at(k, n, h, 0), *v_head = input_at(v, n, h, 0);
    float *dk_head = output_at(dk, n, h, 0), *dv_head = output_at(dv, n, h, 0);
    for (ptrdiff_t first = 0; first < s->queries; first += rows) {
        const ptrdiff_t count = s->queries - first < rows ? s->queries - first : rows;
        const attention_block b = block_at(s, mask, n, h, first, count);
        if (b.keys == 0) {
            zero_rows(dq, n, h, first, count, s->head_dim);
            continue;
        }
        const ptrdiff_t ld = round_up(b.keys, 16);
        const float *q_rows = input_at(q, n, h, first), *dout_rows = input_at(dout, n, h, first);
        for (ptrdiff_t i = 0; i < count; i++)
            deltas[i] = (float)pynn_row_sum(dout_rows + i * dout.token_stride,
                                            input_at(out, n, h, first + i), s->value_dim);
        const ptrdiff_t row_at = (n * s->heads + h) * s->queries + first;
        const float *probabilities = kept ? kept + row_at * s->keys : gradient + capacity + rows;
        const ptrdiff_t p_ld = kept ? s->keys : ld;
        if (!kept) {
            float *recomputed = gradient + capacity + rows;
            block_scores(one, s, q, k, packed_keys, n, h, first, count, b.keys, recomputed, ld);
            kernels->probability_rows(&b, count, recomputed, ld, log_sum_exp + row_at);
        }
        /* dV += Pᵀ dO */
        pynn_sgemm(one, 1, 0, b.keys, s->value_dim, count, 1.0f, probabilities, p_ld, dout_rows,
                   dout.token_stride, 1.0f, dv_head, dv.token_stride, NULL);
        /* dP = dO Vᵀ, then dS = scale P ∘ (dP - δ) in its place */
        pynn_sgemm(one, 0, 1, count, b.keys, s->value_dim, 1.0f, dout_rows, dout.token_stride,
                   v_head, v.token_stride, 0.0f, gradient, ld, NULL);
        kernels->score_gradient_rows(count, b.keys, probabilities, p_ld, gradient, ld, deltas,
                                     s->scale);
        /* dQ = dS K, dK += dSᵀ Q */
        pynn_sgemm(one, 0, 0, count, s->head_dim, b.keys, 1.0f, gradient, ld, k_head,
                   k.token_stride, 0.0f, output_at(dq, n, h, first), dq.token_stride, NULL);
        pynn_sgemm(one, 1, 0, b.keys, s->head_dim, count, 1.0f, gradient, ld, q_rows,
                   q.token_stride, 1.0f, dk_head, dk.token_stride, NULL);
    }
}

int pynn_attention_backward(const pynn_context *ctx, const pynn_attention_shape *s,
                            pynn_attention_input dout, pynn_attention_input q,
                            pynn_attention_input k, pynn_attention_input v,
                            pynn_attention_input out, const float *log_sum_exp,
                            const float *probabilities, const pynn_attention_mask *mask,
                            pynn_attention_output dq, pynn_attention_output dk,
                            pynn_attention_output dv)
{
    const ptrdiff_t heads = s->batch * s->heads;
    if (heads == 0) return 0;
    const ptrdiff_t rows = block_rows(s->keys);
    /* the packed Kᵀ unless P is kept, dS's rows and δ; then, unless kept, P's rows */
    const ptrdiff_t packed_floats =
        !probabilities && ctx->kernels->attention->product ? s->head_dim * s->keys : 0;
    const ptrdiff_t scratch_floats =
        packed_floats + (probabilities ? 1 : 2) * rows * round_up(s->keys, 16) + rows;
    const pynn_context one = one_thread(ctx);
    atomic_int failed = 0;
    PYNN_TEAM_FOR(ctx, threads_for(ctx, heads, s), head, heads, {
        float *scratch = pynn_scratch(PYNN_SCRATCH_ATTENTION, scratch_floats);
        if (!scratch)
            atomic_store(&failed, 1);
        else
            backward_head(&one, s, dout, q, k, v, out, log_sum_exp, probabilities, mask, dq, dk, dv,
                          head / s->heads, head % s->heads, rows, scratch,
                          scratch + packed_floats);
    });
    return atomic_load(&failed) ? -1 : 0;
}

int pynn_attention_key_counts(ptrdiff_t rows, ptrdiff_t keys, const unsigned char *padding,
                              const float *bias, int64_t *counts)
{
    for (ptrdiff_t n = 0; n < rows; n++) {
        ptrdiff_t s = 0;
        if (padding) {
            const unsigned char *row = padding + n * keys;
            while (s < keys && !row[s]) s++;
            counts[n] = s;
            for (; s < keys; s++)
                if (!row[s]) return 0;
        } else {
            const float *row = bias + n * keys;
            while (s < keys && row[s] == 0.0f) s++;
            counts[n] = s;
            for (; s < keys; s++)
                if (!(isinf(row[s]) && row[s] < 0.0f)) return 0;
        }
    }
    return 1;
}
