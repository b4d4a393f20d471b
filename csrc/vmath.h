/* Vectorisable float math and the machinery for element-wise kernels.
 *
 * exp, erf and the logistic function are evaluated in double precision on
 * float inputs, then rounded once: the double result is within ~5e-9
 * relative of the truth, so the float result is within half an ulp plus that
 * (<= 2e-7 relative), subnormal results round correctly, and overflow, NaN
 * and +-Inf come out as numpy's. tanh, whose range is bounded, is evaluated
 * in float arithmetic (twice the lanes) with an error budget kept below 2e-7
 * (worst seen over every float in [1e-4, 10]: 1.2e-7). The functions are
 * branch-free inline code, so a loop over them vectorises at whatever width
 * the function it is inlined into is compiled for (PYNN_ELEMENTWISE below,
 * one copy per ISA). */
#ifndef PYNN_VMATH_H
#define PYNN_VMATH_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "cpu.h"

#define PYNN_INLINE static inline __attribute__((always_inline))

#if defined(PYNN_X86_64)
#include <immintrin.h>
#define PYNN_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define PYNN_TARGET_AVX512 __attribute__((target("avx512f")))

/* The mask of the first `count` of sixteen lanes: none for count <= 0, all
 * from 16 on (the tails of AVX-512 loops). */
static inline PYNN_TARGET_AVX512 __mmask16 pynn_first_lanes16(ptrdiff_t count)
{
    if (count <= 0) return 0;
    if (count >= 16) return 0xFFFF;
    return (__mmask16)((1u << count) - 1u);
}
#endif

PYNN_INLINE double pynn_bits_to_double(int64_t bits) { double d; memcpy(&d, &bits, 8); return d; }
PYNN_INLINE int64_t pynn_double_to_bits(double d) { int64_t b; memcpy(&b, &d, 8); return b; }

/* e^x = 2^n e^r with n = round(x / ln2), |r| <= ln2/2, e^r by its Taylor
 * polynomial to degree 7 (truncation < 5e-9 relative, far below float's
 * half ulp of 6e-8). x is clamped where
 * every float result is already 0 or Inf; the comparisons keep NaN. */
PYNN_INLINE double pynn_exp_d(double x)
{
    const double round_magic = 6755399441055744.0; /* 1.5 * 2^52 */
    x = x < -160.0 ? -160.0 : x;
    x = x > 160.0 ? 160.0 : x;
    double shifted = x * 1.4426950408889634 + round_magic;
    double n = shifted - round_magic;
    int64_t n_int = pynn_double_to_bits(shifted) - pynn_double_to_bits(round_magic);
    double r = x - n * 0.6931471805599453;
    double p = 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    return p * pynn_bits_to_double((n_int + 1023) << 52);
}

/* tanh|x| = (e^{2|x|} - 1) / (e^{2|x|} + 1); below 1e-5 the cancellation in
 * the numerator would cost digits, and |x| - |x|^3/3 is exact to 1e-20 there.
 * From 10 on exactly 1 (the float result already is, and 1 + tanh(u) in the
 * tanh form of gelu must then be exactly 0). */
PYNN_INLINE double pynn_tanh_d(double x)
{
    double a = x < 0.0 ? -x : x;
    a = a > 10.0 ? 10.0 : a;
    double e = pynn_exp_d(2.0 * a);
    double t = a < 1e-5 ? a - a * a * a * (1.0 / 3.0) : a >= 10.0 ? 1.0 : (e - 1.0) / (e + 1.0);
    return copysign(t, x);
}

/* 1 / (1 + e^{-x}) */
PYNN_INLINE double pynn_sigmoid_d(double x)
{
    return 1.0 / (1.0 + pynn_exp_d(-x));
}

/* erf: below 1 its Maclaurin series (alternating, 11 terms, error < 1.3e-9);
 * from 1 to 4 as 1 - e^{-x^2} g(x) with g = erfc(x) e^{x^2} fitted by a
 * degree-11 Chebyshev expansion on [1, 4] (relative error < 4.2e-8, which
 * erfc / erf <= 0.19 shrinks below 4e-9); from 4 on exactly 1 (the float result
 * already is, and x (1 + erf) in gelu must then be exactly 0). x^2 of a
 * float is exact in double, so e^{-x^2} loses nothing. */
PYNN_INLINE double pynn_erf_d(double x)
{
    double a = x < 0.0 ? -x : x;
    a = a > 4.0 ? 4.0 : a;
    double s = a * a;
    double series = 1.48071928158792176e-08;
    series = series * s - 1.63658446912349245e-07;
    series = series * s + 1.64621143658892463e-06;
    series = series * s - 1.49256503584062504e-05;
    series = series * s + 1.20553329817896636e-04;
    series = series * s - 8.54832702345085225e-04;
    series = series * s + 5.22397762544218793e-03;
    series = series * s - 2.68661706451312522e-02;
    series = series * s + 1.12837916709551261e-01;
    series = series * s - 3.76126389031837538e-01;
    series = series * s + 1.12837916709551256e+00;
    series *= a;
    double t = (a - 2.5) * (1.0 / 1.5);
    double g = -3.69293745856138817e-05;
    g = g * t + 9.64062965786067913e-05;
    g = g * t - 1.43946970350006476e-04;
    g = g * t + 3.67864664407491183e-04;
    g = g * t - 1.01711923910162319e-03;
    g = g * t + 2.42588821859893167e-03;
    g = g * t - 5.56733233988359472e-03;
    g = g * t + 1.24840347115624563e-02;
    g = g * t - 2.70057253787464348e-02;
    g = g * t + 5.61109585160106880e-02;
    g = g * t - 1.11521004691567394e-01;
    g = g * t + 2.10806357526599375e-01;
    double tail = 1.0 - pynn_exp_d(-s) * g;
    double e = a < 1.0 ? series : a >= 4.0 ? 1.0 : tail; /* NaN: tail */
    return copysign(e, x);
}

PYNN_INLINE float pynn_bits_to_float(int32_t bits) { float f; memcpy(&f, &bits, 4); return f; }
PYNN_INLINE int32_t pynn_float_to_bits(float f) { int32_t b; memcpy(&b, &f, 4); return b; }

/* e^x for x <= 0 in float arithmetic, twice the lanes of pynn_exp_d and
 * within about one ulp: 2^n e^r with Cody-Waite reduction (ln2 split so n
 * ln2_hi is exact), e^r by its Taylor polynomial to degree 7 (truncation
 * 5e-9), and 2^n applied in two halves so subnormal results round once. */
PYNN_INLINE float pynn_exp_nonpositive_f(float x)
{
    const float round_magic = 12582912.0f; /* 1.5 * 2^23 */
    x = x < -104.0f ? -104.0f : x;
    float shifted = x * 1.44269504f + round_magic;
    float n = shifted - round_magic;
    int32_t n_int = pynn_float_to_bits(shifted) - pynn_float_to_bits(round_magic);
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t half = n_int >> 1;
    return p * pynn_bits_to_float((half + 127) << 23) * pynn_bits_to_float((n_int - half + 127) << 23);
}

/* tanh in float arithmetic, within 2e-7 relative: below 0.9 the odd
 * polynomial x + x s P(s), s = x^2, P fitted on [0, 0.81] (relative error
 * 5e-9); from 0.9 on (1 - e) / (1 + e) with e = e^{-2|x|} <= 0.17, where
 * the roundings of e, 1 - e, 1 + e and the quotient add up to < 2e-7. */
PYNN_INLINE float pynn_tanh_f(float x)
{
    float a = fabsf(x);
    float s = a * a;
    float p = -0.0005229815724305809f;
    p = p * s + 0.0027655481826514006f;
    p = p * s - 0.008456776849925518f;
    p = p * s + 0.02176191471517086f;
    p = p * s - 0.05395437031984329f;
    p = p * s + 0.13333265483379364f;
    p = p * s - 0.3333333134651184f;
    float small = a + a * (s * p);
    float e = pynn_exp_nonpositive_f(-2.0f * a);
    float large = (1.0f - e) / (1.0f + e);
    return copysignf(a < 0.9f ? small : large, x);
}

/* Row reductions with 16 independent partial results, so they vectorise
 * and are not bound by the latency of one long dependency chain; the
 * partials combine in a fixed order (the result depends only on n). */
#define PYNN_LANES 16

PYNN_INLINE float pynn_row_max(const float *restrict x, ptrdiff_t n)
{
    float partial[PYNN_LANES];
    for (int k = 0; k < PYNN_LANES; k++) partial[k] = x[0];
    ptrdiff_t i = 0;
    for (; i + PYNN_LANES <= n; i += PYNN_LANES)
        for (int k = 0; k < PYNN_LANES; k++)
            partial[k] = x[i + k] > partial[k] ? x[i + k] : partial[k];
    float max = partial[0];
    for (int k = 1; k < PYNN_LANES; k++) max = partial[k] > max ? partial[k] : max;
    for (; i < n; i++) max = x[i] > max ? x[i] : max;
    return max;
}

/* sum of x[i] (b == NULL) or of x[i] b[i], in double */
PYNN_INLINE double pynn_row_sum(const float *restrict x, const float *restrict b, ptrdiff_t n)
{
    double partial[PYNN_LANES] = {0.0};
    ptrdiff_t i = 0;
    for (; i + PYNN_LANES <= n; i += PYNN_LANES)
        for (int k = 0; k < PYNN_LANES; k++)
            partial[k] += b ? (double)x[i + k] * b[i + k] : (double)x[i + k];
    double sum = 0.0;
    for (int k = 0; k < PYNN_LANES; k++) sum += partial[k];
    for (; i < n; i++) sum += b ? (double)x[i] * b[i] : (double)x[i];
    return sum;
}

/* Sizes from which element-wise kernels use the second core (measured on
 * Zen 4, 2 threads against 1): transcendental kernels gain 1.2x at 8192
 * elements and 1.8x at 65536; memory-bound ones nothing below 131072
 * (1.7x there). */
#define PYNN_COSTLY_PARALLEL 8192
#define PYNN_CHEAP_PARALLEL 131072

/* An element-wise kernel over up to two float inputs a, b, one output y and
 * one float parameter p (y may be a itself: each element is read before it is
 * written). */
typedef void (*pynn_map_fn)(ptrdiff_t n, const float *a, const float *b, float *y, float p);

/* Runs fn over [0, n), in parallel chunks when n >= min_parallel. */
void pynn_map_run(const pynn_context *ctx, pynn_map_fn fn, ptrdiff_t n, ptrdiff_t min_parallel,
                  const float *a, const float *b, float *y, float p);

/* PYNN_ELEMENTWISE(name, min_parallel, expression) defines
 *   void pynn_<name>(const pynn_context *ctx, ptrdiff_t n,
 *                    const float *a, const float *b, float *y, float p)
 * computing y[i] = expression (of A = a[i], B = b[i] and p) with one copy of
 * the loop per ISA, chosen by ctx->isa. */
#if defined(PYNN_X86_64)
#define PYNN_ISA_COPIES(name)                                                              \
    PYNN_TARGET_AVX2 static void name##_avx2(ptrdiff_t n, const float *a, const float *b,  \
                                             float *y, float p)                            \
    { name##_loop(n, a, b, y, p); }                                                        \
    PYNN_TARGET_AVX512 static void name##_avx512(ptrdiff_t n, const float *a,              \
                                                 const float *b, float *y, float p)        \
    { name##_loop(n, a, b, y, p); }
#define PYNN_PICK(isa, name) \
    ((isa) == PYNN_ISA_AVX512 ? name##_avx512 : (isa) == PYNN_ISA_AVX2 ? name##_avx2 : name##_generic)
#else
#define PYNN_ISA_COPIES(name)
#define PYNN_PICK(isa, name) name##_generic
#endif

#define PYNN_ELEMENTWISE(name, min_parallel, expression)                                  \
    PYNN_INLINE void name##_loop(ptrdiff_t n, const float *restrict a,                     \
                                 const float *restrict b, float *restrict y, float p)      \
    {                                                                                      \
        (void)b; (void)p;                                                                  \
        for (ptrdiff_t i = 0; i < n; i++) {                                                \
            const float A = a[i];                                                          \
            y[i] = (expression);                                                           \
        }                                                                                  \
    }                                                                                      \
    static void name##_generic(ptrdiff_t n, const float *a, const float *b, float *y,      \
                               float p)                                                    \
    { name##_loop(n, a, b, y, p); }                                                        \
    PYNN_ISA_COPIES(name)                                                                  \
    void pynn_##name(const pynn_context *ctx, ptrdiff_t n, const float *a, const float *b, \
                     float *y, float p)                                                    \
    { pynn_map_run(ctx, PYNN_PICK(ctx->isa, name), n, (min_parallel), a, b, y, p); }

#define B (b[i])

/* The vector math on float arrays (y may be x). */
void pynn_vexp(const pynn_context *ctx, ptrdiff_t n, const float *a, const float *b, float *y, float p);
void pynn_vtanh(const pynn_context *ctx, ptrdiff_t n, const float *a, const float *b, float *y, float p);
void pynn_verf(const pynn_context *ctx, ptrdiff_t n, const float *a, const float *b, float *y, float p);

#endif
