/* Vectorisable float math and the machinery for element-wise kernels.
 *
 * exp, erf and the logistic function are evaluated in double precision on
 * float inputs, then rounded once: the double result is within ~5e-9
 * relative of the truth, so the float result is within half an ulp plus that
 * (<= 2e-7 relative), subnormal results round correctly, and overflow, NaN
 * and +-Inf come out as numpy's. tanh, whose range is bounded, is evaluated
 * in float arithmetic (twice the lanes) with an error budget kept below 2e-7
 * (worst seen over every float in [1e-4, 10]: 1.2e-7; AVX-512 has its own
 * table-driven tanh, 1.05e-7 over every float in [0, 9.5]). The functions are
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
#include "kernels.h"

#define PYNN_INLINE static inline __attribute__((always_inline))

#if defined(PYNN_X86_64)
#include <immintrin.h>

/* The maskload/maskstore mask of the first `count` of eight lanes: none for
 * count <= 0, all from 8 on (the tails of AVX2 loops). */
static inline PYNN_TARGET_AVX2 __m256i pynn_first_lanes8(ptrdiff_t count)
{
    static const int32_t lanes[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    if (count < 0) count = 0;
    if (count > 8) count = 8;
    return _mm256_loadu_si256((const __m256i *)(lanes + 8 - count));
}

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

/* tanh on AVX-512, within 2e-7 relative and without a division:
 * |x| picks one of 30 intervals (below 1/16; four per binade from 1/16 to 8;
 * [8, 9]; from 9 on the result is 1), where tanh is a degree-5 polynomial in
 * the distance t from the interval's left end, fitted for relative error
 * (< 6.3e-8 with the coefficients rounded to float; Horner adds about an
 * ulp). The interval is the exponent and top two mantissa bits of |x|, and
 * its left end is |x| with the other mantissa bits cleared, so t is exact.
 * Tables have 32 entries (the last two repeat [8, 9]) so that AVX-512 reads a
 * coefficient for 16 lanes with one two-register permute. Over every float
 * in [0, 9.5] the worst error is 1.05e-7. It is faster than the division
 * form above only where the permute exists: the AVX2 and portable paths keep
 * the division, since there the table reads become gathers, slower than it. */
#if defined(PYNN_X86_64)
#define PYNN_TANH_DEGREE 5
#define PYNN_TANH_LAST_INTERVAL 29
#define PYNN_TANH_INDEX_BIAS 491 /* (bits of 1/16 >> 21) - 1: 1/16 opens interval 1 */
#define PYNN_TANH_LEFT_MASK ((int32_t)0xFFE00000)

static const float pynn_tanh_coefficients[PYNN_TANH_DEGREE + 1][32] __attribute__((aligned(64))) = {
    {0.0f, 0.0624187477f, 0.0779664442f, 0.0934763029f,
     0.108940929f, 0.124352999f, 0.154990733f, 0.185333207f,
     0.215326339f, 0.244918659f, 0.302709728f, 0.3583574f,
     0.411570042f, 0.462117165f, 0.554599702f, 0.635148942f,
     0.703905582f, 0.761594176f, 0.848283648f, 0.905148268f,
     0.941375554f, 0.964027584f, 0.986614287f, 0.995054781f,
     0.998177886f, 0.999329329f, 0.999909222f, 0.999987721f,
     0.999998331f, 0.999999762f, 0.999999762f, 0.999999762f},
    {1.0f, 0.996100605f, 0.993911445f, 0.991265833f,
     0.988134444f, 0.984541118f, 0.975973904f, 0.965638936f,
     0.953635693f, 0.940017521f, 0.908367574f, 0.871578813f,
     0.830621541f, 0.786444187f, 0.692427754f, 0.596590042f,
     0.504526079f, 0.419970572f, 0.280413389f, 0.180703804f,
     0.11380893f, 0.0706501305f, 0.0265929028f, 0.00986283552f,
     0.00364199211f, 0.00133901939f, 0.000180553994f, 2.40436239e-05f,
     3.63250138e-06f, 1.15150772e-06f, 1.15150772e-06f, 1.15150772e-06f},
    {1.00529469e-08f, -0.0603329167f, -0.0720436797f, -0.0946892425f,
     -0.109069645f, -0.123768903f, -0.150164217f, -0.175455645f,
     -0.205653176f, -0.230600104f, -0.275076598f, -0.312176138f,
     -0.343435496f, -0.363182217f, -0.384610415f, -0.379212588f,
     -0.355763376f, -0.319734663f, -0.237829611f, -0.163473055f,
     -0.107032597f, -0.0680925548f, -0.0262409579f, -0.00975936186f,
     -0.00365174073f, -0.00131910329f, -0.000172117536f, -1.99411134e-05f,
     -5.91678781e-06f, -6.41069119e-06f, -6.41069119e-06f, -6.41069119e-06f},
    {-0.333334774f, -0.679928422f, -1.36192048f, 0.0637046024f,
     -0.0483872294f, -0.1851459f, -0.406767368f, -0.621794641f,
     -0.244285911f, -0.239181295f, -0.214560196f, -0.186235726f,
     -0.0614001602f, -0.10017588f, -0.0037596738f, 0.048702959f,
     0.0966985151f, 0.102452211f, 0.107952386f, 0.086775817f,
     0.0616738796f, 0.0419668294f, 0.0169975217f, 0.00611631153f,
     0.00250648521f, 0.000810753263f, 9.05462293e-05f, 2.43302406e-06f,
     9.73987517e-06f, 1.77231013e-05f, 1.77231013e-05f, 1.77231013e-05f},
    {6.08403825e-05f, 26.9859543f, 79.2492294f, -29.3437958f,
     -20.4323959f, -4.81506729f, 4.10220242f, 12.8091097f,
     -0.990266442f, -0.199972332f, 0.0631489456f, 0.313923329f,
     -1.25168991f, 0.222690314f, 0.00428529503f, 0.0341840684f,
     -0.0807822123f, 0.0314740427f, -0.0120213274f, -0.0205147658f,
     -0.0177250169f, -0.0173675809f, -0.00777360471f, -0.00221154699f,
     -0.0013743263f, -0.000300654909f, -1.79137151e-05f, 9.16518002e-06f,
     -9.85698625e-06f, -2.06790028e-05f, -2.06790028e-05f, -2.06790028e-05f},
    {0.132477775f, -714.094421f, -2094.95068f, 777.054016f,
     541.11676f, 64.9856873f, -52.8539162f, -167.556747f,
     14.8205032f, 2.31458831f, 0.666129291f, -0.950480938f,
     9.35881138f, -0.228409603f, 0.381721169f, 0.15238373f,
     0.409888864f, -0.0445979573f, -0.0145410979f, -0.00754794758f,
     -0.00522998907f, 0.00398124242f, 0.00209369068f, 0.000165600795f,
     0.000510495505f, 4.97984583e-05f, -2.60899446e-06f, -5.10033533e-06f,
     3.85386829e-06f, 8.44278293e-06f, 8.44278293e-06f, 8.44278293e-06f}
};

/* the table reads are register permutes */
static inline PYNN_TARGET_AVX512 __m512 pynn_tanh16(__m512 x)
{
    const __m512i sign_bit = _mm512_set1_epi32((int32_t)0x80000000);
    __m512 a = _mm512_castsi512_ps(_mm512_andnot_si512(sign_bit, _mm512_castps_si512(x)));
    a = _mm512_min_ps(_mm512_set1_ps(9.0f), a); /* vminps returns its second operand, a, for NaN */
    __m512i bits = _mm512_castps_si512(a);
    __m512i index = _mm512_sub_epi32(_mm512_srai_epi32(bits, 21), _mm512_set1_epi32(PYNN_TANH_INDEX_BIAS));
    index = _mm512_max_epi32(index, _mm512_setzero_si512());
    index = _mm512_min_epi32(index, _mm512_set1_epi32(PYNN_TANH_LAST_INTERVAL));
    __mmask16 beyond_first = _mm512_cmpgt_epi32_mask(index, _mm512_setzero_si512());
    __m512i left = _mm512_maskz_and_epi32(beyond_first, bits, _mm512_set1_epi32(PYNN_TANH_LEFT_MASK));
    __m512 t = _mm512_sub_ps(a, _mm512_castsi512_ps(left));
    const float(*c)[32] = pynn_tanh_coefficients;
    __m512 p = _mm512_permutex2var_ps(_mm512_load_ps(c[PYNN_TANH_DEGREE]), index,
                                      _mm512_load_ps(c[PYNN_TANH_DEGREE] + 16));
    for (int k = PYNN_TANH_DEGREE - 1; k >= 0; k--)
        p = _mm512_fmadd_ps(p, t, _mm512_permutex2var_ps(_mm512_load_ps(c[k]), index, _mm512_load_ps(c[k] + 16)));
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(p),
                                               _mm512_and_si512(sign_bit, _mm512_castps_si512(x))));
}
#endif

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

/* Sizes from which element-wise kernels use a second core: from here a
 * second thread repays its start. A transcendental kernel's arithmetic
 * repays it early; a memory-bound one gains nothing until its data outgrows
 * one core's caches. */
#define PYNN_COSTLY_PARALLEL 8192
#define PYNN_CHEAP_PARALLEL 131072

/* From this many bytes of output per thread, the AVX-512 loops store with
 * non-temporal stores: input and output no longer fit in the core's 2 MiB L2,
 * so skipping the read-for-ownership of the output lines saves memory
 * traffic; below this size the output would still be in cache for its
 * reader, and ordinary stores win. */
#define PYNN_STREAM_BYTES_PER_THREAD (3 << 19)

/* Orders a thread's streaming stores before anything it does next (once per
 * thread at the end of a kernel, not per chunk: each fence waits for the
 * write-combining buffers to drain, a wait that per 16 KiB chunk adds up). */
PYNN_INLINE void pynn_stream_fence(void)
{
#if defined(PYNN_X86_64)
    _mm_sfence();
#endif
}

/* An element-wise kernel over up to two float inputs a, b, one output y and
 * one float parameter p (y may be a itself: each element is read before it is
 * written); stream asks for non-temporal stores where the ISA has them. */
typedef void (*pynn_map_fn)(ptrdiff_t n, const float *a, const float *b, float *y, float p,
                            int stream);

/* Runs fn over [0, n), in parallel chunks when n >= min_parallel, asking for
 * streaming stores when may_stream is set and the output is large. */
void pynn_map_run(const pynn_context *ctx, pynn_map_fn fn, ptrdiff_t n, ptrdiff_t min_parallel,
                  int may_stream, const float *a, const float *b, float *y, float p);

/* PYNN_ELEMENTWISE(name, min_parallel, expression) defines
 *   void pynn_<name>(const pynn_context *ctx, ptrdiff_t n,
 *                    const float *a, const float *b, float *y, float p)
 * computing y[i] = expression (of A = a[i], B = b[i] and p) with one copy of
 * the loop per ISA (`name`_generic, _avx2, _avx512), run through the context's
 * table (ctx->kernels->activations->name). PYNN_ELEMENTWISE_VECTOR also gives
 * the AVX-512 copy an intrinsics expression of the __m512 lanes_a, lanes_b
 * and p, for functions the compiler cannot vectorise well (table lookups).
 * Large outputs are streamed (PYNN_STREAM_BYTES_PER_THREAD) by vectorised
 * expressions and by the memory-bound scalar ones (parallel from
 * PYNN_CHEAP_PARALLEL); the costly scalar ones, sigmoid and gelu, store
 * normally, as their arithmetic, not memory, bounds them and the stage only
 * adds a copy. */
#define PYNN_ELEMENTWISE(name, min_parallel, expression)                                  \
    PYNN_SCALAR_LOOP(name, expression)                                                     \
    PYNN_AVX512_FROM_SCALAR(name)                                                          \
    PYNN_ELEMENTWISE_COPIES(name, min_parallel, (min_parallel) >= PYNN_CHEAP_PARALLEL)

#define PYNN_ELEMENTWISE_VECTOR(name, min_parallel, expression, vector_expression)         \
    PYNN_SCALAR_LOOP(name, expression)                                                     \
    PYNN_AVX512_FROM_VECTOR(name, vector_expression)                                       \
    PYNN_ELEMENTWISE_COPIES(name, min_parallel, 1)

#define PYNN_SCALAR_LOOP(name, expression)                                                 \
    PYNN_INLINE void name##_loop(ptrdiff_t n, const float *restrict a,                     \
                                 const float *restrict b, float *restrict y, float p)      \
    {                                                                                      \
        (void)b; (void)p;                                                                  \
        for (ptrdiff_t i = 0; i < n; i++) {                                                \
            const float A = a[i];                                                          \
            y[i] = (expression);                                                           \
        }                                                                                  \
    }

#if defined(PYNN_X86_64)
/* Streaming stores must be 64-byte aligned: elements before the first
 * boundary are written directly, and the caller fences once the whole kernel
 * is done (pynn_stream_fence). A vectorised expression streams each block;
 * a scalar one writes a stage of PYNN_STAGE floats that stays in L1, which
 * then goes out (streamed straight from its vector loop, a scalar expression
 * would not vectorise). */
#define PYNN_STAGE 256
#define PYNN_STREAM_HEAD(y, n) (stream ? PYNN_MIN((ptrdiff_t)((-(uintptr_t)(y) & 63) / sizeof(float)), (n)) : 0)
#define PYNN_MIN(x, y) ((x) < (y) ? (x) : (y))

#define PYNN_AVX512_FROM_SCALAR(name)                                                      \
    PYNN_TARGET_AVX512 static void name##_avx512(ptrdiff_t n, const float *a, const float *b, \
                                                 float *y, float p, int stream)            \
    {                                                                                      \
        if (!stream) {                                                                     \
            name##_loop(n, a, b, y, p);                                                    \
            return;                                                                        \
        }                                                                                  \
        ptrdiff_t i = PYNN_STREAM_HEAD(y, n);                                              \
        name##_loop(i, a, b, y, p);                                                        \
        float stage[PYNN_STAGE] __attribute__((aligned(64)));                              \
        for (; i + PYNN_STAGE <= n; i += PYNN_STAGE) {                                     \
            name##_loop(PYNN_STAGE, a + i, b ? b + i : NULL, stage, p);                    \
            for (int k = 0; k < PYNN_STAGE; k += 16)                                       \
                _mm512_stream_ps(y + i + k, _mm512_load_ps(stage + k));                    \
        }                                                                                  \
        name##_loop(n - i, a + i, b ? b + i : NULL, y + i, p);                             \
    }

/* a masked block for the ends, whole blocks between */
#define PYNN_AVX512_FROM_VECTOR(name, vector_expression)                                   \
    static inline PYNN_TARGET_AVX512 __m512 name##_block(__m512 lanes_a, __m512 lanes_b,   \
                                                         float p)                          \
    { (void)lanes_b; (void)p; return (vector_expression); }                                \
    static inline PYNN_TARGET_AVX512 void name##_part(ptrdiff_t count, const float *a,     \
                                                      const float *b, float *y, float p)   \
    {                                                                                      \
        __mmask16 lanes = pynn_first_lanes16(count);                                       \
        __m512 lanes_b = b ? _mm512_maskz_loadu_ps(lanes, b) : _mm512_setzero_ps();        \
        _mm512_mask_storeu_ps(y, lanes, name##_block(_mm512_maskz_loadu_ps(lanes, a), lanes_b, p)); \
    }                                                                                      \
    PYNN_TARGET_AVX512 static void name##_avx512(ptrdiff_t n, const float *a, const float *b, \
                                                 float *y, float p, int stream)            \
    {                                                                                      \
        ptrdiff_t i = PYNN_STREAM_HEAD(y, n);                                              \
        if (i > 0) name##_part(i, a, b, y, p);                                             \
        for (; i + 16 <= n; i += 16) {                                                     \
            __m512 lanes_b = b ? _mm512_loadu_ps(b + i) : _mm512_setzero_ps();             \
            __m512 lanes_y = name##_block(_mm512_loadu_ps(a + i), lanes_b, p);             \
            if (stream) _mm512_stream_ps(y + i, lanes_y);                                  \
            else _mm512_storeu_ps(y + i, lanes_y);                                         \
        }                                                                                  \
        if (i < n) name##_part(n - i, a + i, b ? b + i : NULL, y + i, p);                  \
    }

#define PYNN_ELEMENTWISE_COPIES(name, min_parallel, may_stream)                            \
    static void name##_generic(ptrdiff_t n, const float *a, const float *b, float *y,      \
                               float p, int stream)                                        \
    { (void)stream; name##_loop(n, a, b, y, p); }                                          \
    PYNN_TARGET_AVX2 static void name##_avx2(ptrdiff_t n, const float *a, const float *b,  \
                                             float *y, float p, int stream)                \
    { (void)stream; name##_loop(n, a, b, y, p); }                                          \
    void pynn_##name(const pynn_context *ctx, ptrdiff_t n, const float *a, const float *b, \
                     float *y, float p)                                                    \
    { pynn_map_run(ctx, ctx->kernels->activations->name, n, (min_parallel), (may_stream), a, b, y, p); }
#else
#define PYNN_AVX512_FROM_SCALAR(name)
#define PYNN_AVX512_FROM_VECTOR(name, vector_expression)
#define PYNN_ELEMENTWISE_COPIES(name, min_parallel, may_stream)                                        \
    static void name##_generic(ptrdiff_t n, const float *a, const float *b, float *y,      \
                               float p, int stream)                                        \
    { (void)stream; name##_loop(n, a, b, y, p); }                                          \
    void pynn_##name(const pynn_context *ctx, ptrdiff_t n, const float *a, const float *b, \
                     float *y, float p)                                                    \
    { pynn_map_run(ctx, ctx->kernels->activations->name, n, (min_parallel), (may_stream), a, b, y, p); }
#endif

#define B (b[i])


#endif
