/* Activation kernels (formulas in activations.h). Transcendentals are taken in
 * double precision (vmath.h) and rounded once. */
#include <math.h>
#include "activations.h"
#include "vmath.h"

/* Cheap kernels are memory-bound: a second thread only pays off on large arrays. */
#define CHEAP_PARALLEL 262144
#define COSTLY_PARALLEL 32768

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

PYNN_ELEMENTWISE(relu, CHEAP_PARALLEL, A < 0.0f ? 0.0f : A)
PYNN_ELEMENTWISE(relu_backward, CHEAP_PARALLEL, B > 0.0f ? A : 0.0f)
PYNN_ELEMENTWISE(leaky_relu, CHEAP_PARALLEL, A > 0.0f ? A : A * p)
PYNN_ELEMENTWISE(leaky_relu_backward, CHEAP_PARALLEL, B > 0.0f ? A : A * p)
PYNN_ELEMENTWISE(sigmoid, COSTLY_PARALLEL, sigmoid_f(A))
PYNN_ELEMENTWISE(sigmoid_backward, CHEAP_PARALLEL, A * (B * (1.0f - B)))
PYNN_ELEMENTWISE(tanh, COSTLY_PARALLEL, pynn_tanh_f(A))
PYNN_ELEMENTWISE(tanh_backward, CHEAP_PARALLEL, A * (1.0f - B * B))
PYNN_ELEMENTWISE(gelu, COSTLY_PARALLEL, (float)(0.5 * A * (1.0 + pynn_erf_d(A * SQRT_HALF))))
PYNN_ELEMENTWISE(gelu_backward, COSTLY_PARALLEL, (float)(A * gelu_derivative_d(B)))
PYNN_ELEMENTWISE(gelu_tanh, COSTLY_PARALLEL, (float)gelu_tanh_d(A))
PYNN_ELEMENTWISE(gelu_tanh_backward, COSTLY_PARALLEL, (float)(A * gelu_tanh_derivative_d(B)))
/* Inverted dropout, forward and backward alike: B holds uniform draws in
 * [0, 1), an element is kept when its draw is >= p and scaled by 1 / (1 - p). */
PYNN_ELEMENTWISE(dropout, CHEAP_PARALLEL, B >= p ? A * (1.0f / (1.0f - p)) : 0.0f)

/* One softmax row of `length` elements `stride` apart. The exponentials are
 * written to y first, then scaled: one exp per element. A NaN anywhere, or an
 * infinite maximum, makes the whole row NaN, as in PyTorch. */
PYNN_INLINE void softmax_row(ptrdiff_t length, ptrdiff_t stride, const float *restrict x,
                             float *restrict y, int log_domain)
{
    float max = x[0];
    for (ptrdiff_t i = 1; i < length; i++) max = x[i * stride] > max ? x[i * stride] : max;
    double sum = 0.0;
    if (stride == 1) {
        for (ptrdiff_t i = 0; i < length; i++) y[i] = (float)pynn_exp_d((double)x[i] - max);
    } else {
        for (ptrdiff_t i = 0; i < length; i++)
            y[i * stride] = (float)pynn_exp_d((double)x[i * stride] - max);
    }
    for (ptrdiff_t i = 0; i < length; i++) sum += y[i * stride];
    if (log_domain) {
        double shift = (double)max + log(sum);
        for (ptrdiff_t i = 0; i < length; i++) y[i * stride] = (float)((double)x[i * stride] - shift);
    } else {
        float scale = (float)(1.0 / sum);
        for (ptrdiff_t i = 0; i < length; i++) y[i * stride] *= scale;
    }
}

PYNN_INLINE void softmax_backward_row(ptrdiff_t length, ptrdiff_t stride,
                                      const float *restrict dy, const float *restrict y,
                                      float *restrict dx, int log_domain)
{
    double dot = 0.0;
    if (log_domain) {
        for (ptrdiff_t i = 0; i < length; i++) dot += dy[i * stride];
        for (ptrdiff_t i = 0; i < length; i++)
            dx[i * stride] = (float)(dy[i * stride] - pynn_exp_d(y[i * stride]) * dot);
    } else {
        for (ptrdiff_t i = 0; i < length; i++) dot += (double)dy[i * stride] * y[i * stride];
        for (ptrdiff_t i = 0; i < length; i++)
            dx[i * stride] = (float)(y[i * stride] * (dy[i * stride] - dot));
    }
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
            softmax_row(length, inner, x + start, y + start, log_domain);                    \
        }                                                                                    \
    }                                                                                        \
    attribute static void softmax_backward_rows_##suffix(                                    \
        ptrdiff_t first, ptrdiff_t last, ptrdiff_t length, ptrdiff_t inner, const float *dy, \
        const float *y, float *dx, int log_domain)                                           \
    {                                                                                        \
        for (ptrdiff_t r = first; r < last; r++) {                                           \
            ptrdiff_t start = (r / inner) * length * inner + r % inner;                      \
            softmax_backward_row(length, inner, dy + start, y + start, dx + start,           \
                                 log_domain);                                                \
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
    ptrdiff_t rows = COSTLY_PARALLEL / 4 / (length > 0 ? length : 1);
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
    #pragma omp parallel for num_threads(ctx->num_threads) if(tasks > 1 && rows * length >= COSTLY_PARALLEL)
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
    #pragma omp parallel for num_threads(ctx->num_threads) if(tasks > 1 && rows * length >= COSTLY_PARALLEL)
#endif
    for (ptrdiff_t t = 0; t < tasks; t++) {
        ptrdiff_t first = t * step, last = first + step < rows ? first + step : rows;
        rows_fn(first, last, length, inner, dy, y, dx, log_domain);
    }
}
