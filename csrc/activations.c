/* Activation kernels (formulas in activations.h). tanh and sigmoid run in
 * float arithmetic, gelu in double, each rounded once (vmath.h). */
#include <math.h>
#include "activations.h"
#include "vmath.h"

#define SQRT_HALF 0.70710678118654752
#define INV_SQRT_2PI 0.39894228040143268
#define GELU_TANH_SCALE 0.79788456080286536 /* sqrt(2 / pi) */
#define GELU_TANH_CUBIC 0.044715

/* 1 / (1 + e^-x) as e^-|x| / (1 + e^-|x|) for negative x, so the exponential
 * never exceeds 1 and tiny results keep their precision (within 3 ulp). */
PYNN_INLINE float sigmoid_f(float x)
{
    float e = pynn_exp_nonpositive_f(x < 0.0f ? x : -x);
    float r = 1.0f / (1.0f + e);
    return x < 0.0f ? e * r : r;
}

PYNN_INLINE double gelu_tanh_d(double x)
{
    double u = GELU_TANH_SCALE * (x + GELU_TANH_CUBIC * x * x * x);
    return 0.5 * x * (1.0 + pynn_tanh_d(u));
}

PYNN_INLINE double gelu_tanh_derivative_d(double x)
{
    double u = GELU_TANH_SCALE * (x + GELU_TANH_CUBIC * x * x * x);
    double t = pynn_tanh_d(u);
    double du = GELU_TANH_SCALE * (1.0 + 3.0 * GELU_TANH_CUBIC * x * x);
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du;
}

PYNN_INLINE double gelu_derivative_d(double x)
{
    double cdf = 0.5 * (1.0 + pynn_erf_d(x * SQRT_HALF));
    return cdf + x * INV_SQRT_2PI * pynn_exp_d(-0.5 * x * x);
}

PYNN_ELEMENTWISE(relu, PYNN_CHEAP_PARALLEL, A < 0.0f ? 0.0f : A)
PYNN_ELEMENTWISE(relu_backward, PYNN_CHEAP_PARALLEL, B > 0.0f ? A : 0.0f)
PYNN_ELEMENTWISE(leaky_relu, PYNN_CHEAP_PARALLEL, A > 0.0f ? A : A * p)
PYNN_ELEMENTWISE(leaky_relu_backward, PYNN_CHEAP_PARALLEL, B > 0.0f ? A : A * p)
PYNN_ELEMENTWISE(sigmoid, PYNN_COSTLY_PARALLEL, sigmoid_f(A))
PYNN_ELEMENTWISE(sigmoid_backward, PYNN_CHEAP_PARALLEL, A * (B * (1.0f - B)))
PYNN_ELEMENTWISE(tanh, PYNN_COSTLY_PARALLEL, pynn_tanh_f(A))
PYNN_ELEMENTWISE(tanh_backward, PYNN_CHEAP_PARALLEL, A * (1.0f - B * B))
PYNN_ELEMENTWISE(gelu, PYNN_COSTLY_PARALLEL, (float)(0.5 * A * (1.0 + pynn_erf_d(A * SQRT_HALF))))
PYNN_ELEMENTWISE(gelu_backward, PYNN_COSTLY_PARALLEL, (float)(A * gelu_derivative_d(B)))
PYNN_ELEMENTWISE(gelu_tanh, PYNN_COSTLY_PARALLEL, (float)gelu_tanh_d(A))
PYNN_ELEMENTWISE(gelu_tanh_backward, PYNN_COSTLY_PARALLEL, (float)(A * gelu_tanh_derivative_d(B)))
/* Inverted dropout, forward and backward alike: B holds uniform draws in
 * [0, 1), an element is kept when its draw is >= p and scaled by 1 / (1 - p). */
PYNN_ELEMENTWISE(dropout, PYNN_CHEAP_PARALLEL, B >= p ? A * (1.0f / (1.0f - p)) : 0.0f)

/* One softmax row of `length` elements `stride` apart. The exponentials are
 * written to y first, then scaled: one exp per element. A NaN anywhere, or an
 * infinite maximum, makes the whole row NaN, as in PyTorch. The body is a
 * macro so the contiguous copy (stride the literal 1) is compiled apart from
 * the strided one and vectorises. */
#define SOFTMAX_ROW_BODY(stride, max_expression, sum_of)                                     \
    float max = (max_expression);                                                            \
    for (ptrdiff_t i = 0; i < length; i++)                                                   \
        y[i * (stride)] = pynn_exp_nonpositive_f(x[i * (stride)] - max);                     \
    double sum = sum_of(y);                                                                  \
    if (log_domain) {                                                                        \
        double shift = (double)max + log(sum);                                               \
        for (ptrdiff_t i = 0; i < length; i++)                                               \
            y[i * (stride)] = (float)((double)x[i * (stride)] - shift);                      \
    } else {                                                                                 \
        float scale = (float)(1.0 / sum);                                                    \
        for (ptrdiff_t i = 0; i < length; i++) y[i * (stride)] *= scale;                     \
    }

/* softmax:     dx = y (dy - sum(dy y));  log_softmax: dx = dy - e^y sum(dy) */
#define SOFTMAX_BACKWARD_ROW_BODY(stride, sum_of)                                            \
    if (log_domain) {                                                                        \
        float total = (float)sum_of(dy, NULL);                                               \
        for (ptrdiff_t i = 0; i < length; i++)                                               \
            dx[i * (stride)] = dy[i * (stride)]                                              \
                               - pynn_exp_nonpositive_f(y[i * (stride)]) * total;            \
    } else {                                                                                 \
        float dot = (float)sum_of(dy, y);                                                    \
        for (ptrdiff_t i = 0; i < length; i++)                                               \
            dx[i * (stride)] = y[i * (stride)] * (dy[i * (stride)] - dot);                   \
    }

PYNN_INLINE double strided_sum(const float *a, const float *b, ptrdiff_t length, ptrdiff_t stride)
{
    double sum = 0.0;
    for (ptrdiff_t i = 0; i < length; i++)
        sum += b ? (double)a[i * stride] * b[i * stride] : (double)a[i * stride];
    return sum;
}

PYNN_INLINE float strided_max(const float *x, ptrdiff_t length, ptrdiff_t stride)
{
    float max = x[0];
    for (ptrdiff_t i = 1; i < length; i++) max = x[i * stride] > max ? x[i * stride] : max;
    return max;
}

PYNN_INLINE void softmax_row(ptrdiff_t length, const float *restrict x, float *restrict y,
                             int log_domain)
{
#define CONTIGUOUS_SUM(a) pynn_row_sum(a, NULL, length)
    SOFTMAX_ROW_BODY(1, pynn_row_max(x, length), CONTIGUOUS_SUM)
#undef CONTIGUOUS_SUM
}

PYNN_INLINE void softmax_row_strided(ptrdiff_t length, ptrdiff_t stride, const float *restrict x,
                                     float *restrict y, int log_domain)
{
#define STRIDED_SUM(a) strided_sum(a, NULL, length, stride)
    SOFTMAX_ROW_BODY(stride, strided_max(x, length, stride), STRIDED_SUM)
#undef STRIDED_SUM
}

PYNN_INLINE void softmax_backward_row(ptrdiff_t length, const float *restrict dy,
                                      const float *restrict y, float *restrict dx, int log_domain)
{
#define CONTIGUOUS_SUM(a, b) pynn_row_sum(a, b, length)
    SOFTMAX_BACKWARD_ROW_BODY(1, CONTIGUOUS_SUM)
#undef CONTIGUOUS_SUM
}

PYNN_INLINE void softmax_backward_row_strided(ptrdiff_t length, ptrdiff_t stride,
                                              const float *restrict dy, const float *restrict y,
                                              float *restrict dx, int log_domain)
{
#define STRIDED_SUM(a, b) strided_sum(a, b, length, stride)
    SOFTMAX_BACKWARD_ROW_BODY(stride, STRIDED_SUM)
#undef STRIDED_SUM
}

/* Rows are independent, so threads split them and results do not depend on
 * the thread count. A row of a non-last axis is strided: row r of [outer,
 * length, inner] starts at (r / inner) length inner + r % inner. */
#define SOFTMAX_VARIANT(suffix, attribute)                                                   \
    attribute static void softmax_rows_##suffix(ptrdiff_t first, ptrdiff_t last,             \
                                                ptrdiff_t length, ptrdiff_t inner,           \
                                                const float *x, float *y, int log_domain)    \
    {                                                                                        \
        for (ptrdiff_t r = first; r < last; r++) {                                           \
            ptrdiff_t start = (r / inner) * length * inner + r % inner;                      \
            if (inner == 1) softmax_row(length, x + start, y + start, log_domain);           \
            else softmax_row_strided(length, inner, x + start, y + start, log_domain);       \
        }                                                                                    \
    }                                                                                        \
    attribute static void softmax_backward_rows_##suffix(                                    \
        ptrdiff_t first, ptrdiff_t last, ptrdiff_t length, ptrdiff_t inner, const float *dy, \
        const float *y, float *dx, int log_domain)                                           \
    {                                                                                        \
        for (ptrdiff_t r = first; r < last; r++) {                                           \
            ptrdiff_t start = (r / inner) * length * inner + r % inner;                      \
            if (inner == 1)                                                                  \
                softmax_backward_row(length, dy + start, y + start, dx + start, log_domain); \
            else                                                                             \
                softmax_backward_row_strided(length, inner, dy + start, y + start,           \
                                             dx + start, log_domain);                        \
        }                                                                                    \
    }

SOFTMAX_VARIANT(generic, )
#if defined(PYNN_X86_64)
SOFTMAX_VARIANT(avx2, PYNN_TARGET_AVX2)
SOFTMAX_VARIANT(avx512, PYNN_TARGET_AVX512)
#endif

typedef void (*softmax_rows_fn)(ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t, const float *,
                                float *, int);
typedef void (*softmax_backward_rows_fn)(ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t,
                                         const float *, const float *, float *, int);

/* Rows per parallel task: enough elements to amortise waking a thread. */
static ptrdiff_t rows_per_task(ptrdiff_t length)
{
    ptrdiff_t rows = PYNN_COSTLY_PARALLEL / 4 / (length > 0 ? length : 1);
    return rows > 0 ? rows : 1;
}

void pynn_softmax(const pynn_context *ctx, ptrdiff_t outer, ptrdiff_t length, ptrdiff_t inner,
                  const float *x, float *y, int log_domain)
{
    softmax_rows_fn rows_fn = PYNN_PICK(ctx->isa, softmax_rows);
    ptrdiff_t rows = outer * inner;
    if (rows == 0 || length == 0) return;
    ptrdiff_t step = rows_per_task(length);
    ptrdiff_t tasks = (rows + step - 1) / step;
#ifdef _OPENMP
    #pragma omp parallel for num_threads(ctx->num_threads) if(tasks > 1 && rows * length >= PYNN_COSTLY_PARALLEL)
#endif
    for (ptrdiff_t t = 0; t < tasks; t++) {
        ptrdiff_t first = t * step, last = first + step < rows ? first + step : rows;
        rows_fn(first, last, length, inner, x, y, log_domain);
    }
}

void pynn_softmax_backward(const pynn_context *ctx, ptrdiff_t outer, ptrdiff_t length,
                           ptrdiff_t inner, const float *dy, const float *y, float *dx,
                           int log_domain)
{
    softmax_backward_rows_fn rows_fn = PYNN_PICK(ctx->isa, softmax_backward_rows);
    ptrdiff_t rows = outer * inner;
    if (rows == 0 || length == 0) return;
    ptrdiff_t step = rows_per_task(length);
    ptrdiff_t tasks = (rows + step - 1) / step;
#ifdef _OPENMP
    #pragma omp parallel for num_threads(ctx->num_threads) if(tasks > 1 && rows * length >= PYNN_COSTLY_PARALLEL)
#endif
    for (ptrdiff_t t = 0; t < tasks; t++) {
        ptrdiff_t first = t * step, last = first + step < rows ? first + step : rows;
        rows_fn(first, last, length, inner, dy, y, dx, log_domain);
    }
}
