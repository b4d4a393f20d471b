/* Vectorisable float math and the machinery for element-wise kernels.
 *
 * exp, erf and the logistic function are evaluated in double precision on
 * float inputs, then rounded once: the double result is within ~5e-9
 * relative of the truth, so the float result is within half an ulp plus that
 * (<= 2e-7 relative), subnormal results round correctly, and overflow, NaN
 * and +-Inf come out as numpy's. tanh, whose range is bounded, is evaluated
 * in float arithmetic (twice the lanes) with an error budget kept below 2e-7
 * (worst seen over every float in [1e-4, 10]: 1.2e-7; AVX-512 has its own
 * table-driven tanh, 1.05e-7 over every float in [0, 9.5]). The exact GELU
 * and its derivative are float arithmetic too, through interval tables
 * (pynn_gelu_f below). The functions are
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
    /* up to 29 from 1/16 to 9; a NaN's index is out of range, but the permutes
     * read only its low five bits and its t is NaN */
    __mmask16 beyond_first = _mm512_cmp_ps_mask(a, _mm512_set1_ps(0.0625f), _CMP_GE_OQ);
    __m512i index = _mm512_maskz_and_epi32(beyond_first,
                                           _mm512_sub_epi32(_mm512_srai_epi32(bits, 21),
                                                            _mm512_set1_epi32(PYNN_TANH_INDEX_BIAS)),
                                           _mm512_set1_epi32(-1));
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

/* GELU in float arithmetic, exact form. With a = |x| and the tail
 * T(a) = a Phi(-a), gelu(x) = x - T(a) for x >= 0 and -T(a) for x < 0, so
 * negative x keep their relative accuracy; the derivative Phi(x) + x phi(x)
 * is 1 - D for x >= 0 and D for x < 0, D = e^{-a^2/2} (R(a) - a / sqrt(2 pi))
 * with R(a) = Phi(-a) e^{a^2/2}. T is a degree-7 polynomial in t = a - j/4 on
 * the 32 intervals |t| <= 1/8 around j/4 = round(4a) / 4 (interval 0 is
 * [0, 1/8], where T's constant term is exactly 0), R one of degree 6 in
 * t = a - j/2 on the 32 intervals |t| <= 1/4 around round(2a) / 2; t is exact
 * (Sterbenz). Coefficients are fitted for relative error over each interval
 * (Lawson-weighted least squares on Chebyshev nodes, in float64 against
 * 40-digit erfc), rounded to float one at a time with the later ones refitted
 * and the constant term kept as a float pair: within 6e-9 relative for T on
 * [0, 5.625] (9e-8 on to 7.875), 4e-9 for R. e^{-a^2/2} is 2^n e^r with a^2
 * carried exactly in two or three floats, so its argument loses nothing, and
 * e^r - 1 = r + r^2 S(r) with S fitted for relative error of e^r over
 * |r| <= 0.3467 (5.3e-9). Beyond the tables (every float result there already
 * x or below 1e-6 in size) T and D are 0; at the infinities and NaN the
 * results are PyTorch's: gelu(inf) = inf, gelu(-inf) = NaN (-inf times 0),
 * the derivative NaN at both. Rows of the tables run from the highest
 * coefficient to the constant term, then the constant's low part. */
#define PYNN_GELU_DEGREE 7
#define PYNN_GELU_TAIL_END 7.875f  /* the end of T's last interval */
#define PYNN_GAUSS_RATIO_DEGREE 6
#define PYNN_GAUSS_CUTOFF 15.0f    /* within R's last interval; D underflows long before */
#define PYNN_LOG2E 1.44269504f
#define PYNN_LN2_HI 0.693359375f    /* ln 2 = HI + LO, HI with 9 bits so n HI is exact */
#define PYNN_LN2_LO -2.12194440e-4f
#define PYNN_INV_SQRT_2PI 0.398942280f
#define PYNN_ROUND_MAGIC 12582912.0f /* 1.5 * 2^23 */
static const float pynn_gelu_tail[9][32] __attribute__((aligned(64))) = {
    {0.014991992f, 0.0052032834f, -0.007897364f, 0.0027800915f,
     -0.0014920576f, -0.00037190295f, 0.008292195f, -0.001154846f,
     0.003274346f, 0.00015717054f, 0.00016314667f, 7.508358e-05f,
     0.00034359188f, 0.0005176512f, -5.5936547e-05f, -3.458818e-05f,
     -4.492648e-05f, -2.548237e-05f, -2.4260877e-05f, -1.2233641e-05f,
     -6.2902154e-06f, -3.1225088e-06f, -1.2773324e-06f, -4.687336e-07f,
     -1.538725e-07f, -4.866857e-08f, -1.3729459e-08f, -3.6118153e-09f,
     -8.7237717e-10f, -1.9502001e-10f, -4.0548075e-11f, -7.793692e-12f},
    {-0.01541857f, -0.007963971f, -0.0029936184f, 0.002451911f,
     0.0059784576f, 0.006693054f, 0.004968021f, 0.002009098f,
     -0.0003614764f, -0.0017332917f, -0.0019396292f, -0.0014515464f,
     -0.0007813329f, -0.00023147339f, 4.5109035e-05f, 0.00015308963f,
     0.00014693533f, 0.00010434891f, 6.121789e-05f, 3.1393047e-05f,
     1.4287037e-05f, 5.8648034e-06f, 2.1940973e-06f, 7.523809e-07f,
     2.3684782e-07f, 6.8734636e-08f, 1.8442059e-08f, 4.5817115e-09f,
     1.0562962e-09f, 2.2613887e-10f, 4.5024928e-11f, 8.342502e-12f},
    {0.0007455754f, -0.014037845f, -0.022149572f, -0.022828069f,
     -0.016053662f, -0.006193116f, 0.002452311f, 0.007924323f,
     0.008869813f, 0.0071594086f, 0.0042672604f, 0.001675053f,
     7.015553e-07f, -0.0007440224f, -0.0008428676f, -0.0006712679f,
     -0.00043636886f, -0.00024605243f, -0.00012296553f, -5.554697e-05f,
     -2.2811986e-05f, -8.5703305e-06f, -2.9632386e-06f, -9.454659e-07f,
     -2.7907876e-07f, -7.6284216e-08f, -1.9364215e-08f, -4.567434e-09f,
     -1.0025317e-09f, -2.0493061e-10f, -3.903887e-11f, -6.936881e-12f},
    {0.06644383f, 0.057458483f, 0.03392219f, 0.0047535305f,
     -0.020163143f, -0.03421694f, -0.03609098f, -0.028969498f,
     -0.01799843f, -0.0076823775f, -0.0005022659f, 0.003127399f,
     0.0040626326f, 0.0035192342f, 0.0024841016f, 0.00151789f,
     0.0008253094f, 0.00040524596f, 0.00018135816f, 7.4420204e-05f,
     2.8123082e-05f, 9.817878e-06f, 3.1738848e-06f, 9.5191655e-07f,
     2.6528753e-07f, 6.878188e-08f, 1.6607787e-08f, 3.737733e-09f,
     7.84645e-10f, 1.5374017e-10f, 2.8130718e-11f, 4.809107e-12f},
    {1.2723624e-06f, 0.06343847f, 0.110017896f, 0.129395f,
     0.12098473f, 0.09275151f, 0.056666236f, 0.023591558f,
     1.0821502e-06f, -0.01264612f, -0.016432775f, -0.014848154f,
     -0.011079628f, -0.007212552f, -0.004199831f, -0.0022175098f,
     -0.0010706492f, -0.00047532207f, -0.00019480275f, -7.390995e-05f,
     -2.6017466e-05f, -8.5117545e-06f, -2.5914762e-06f, -7.350686e-07f,
     -1.944267e-07f, -4.7991605e-08f, -1.1061876e-08f, -2.3822595e-09f,
     -4.795665e-10f, -9.027933e-11f, -1.5898827e-11f, -2.6200812e-12f},
    {-0.3989423f, -0.37458473f, -0.30805716f, -0.21644253f,
     -0.12098537f, -0.039954487f, 0.016189704f, 0.045834824f,
     0.05399097f, 0.048601344f, 0.03724764f, 0.02529147f,
     0.015511469f, 0.008686863f, 0.0044724983f, 0.0021265927f,
     0.0009368115f, 0.0003832403f, 0.00014585163f, 5.1709627e-05f,
     1.7097276e-05f, 5.2767023e-06f, 1.5212288e-06f, 4.0990767e-07f,
     1.03290084e-07f, 2.435012e-08f, 5.37249e-09f, 1.1097431e-09f,
     2.1466644e-10f, 3.889628e-11f, 6.60312e-12f, 1.0504411e-12f},
    {0.5f, 0.30462664f, 0.13250488f, 0.00077427825f,
     -0.08331547f, -0.12266158f, -0.1274692f, -0.11092615f,
     -0.0852318f, -0.059189744f, -0.037611086f, -0.022027534f,
     -0.011945647f, -0.0060173813f, -0.0028217603f, -0.0012338165f,
     -0.00050364964f, -0.00019211568f, -6.852916e-05f, -2.2873077e-05f,
     -7.1469462e-06f, -2.0913976e-06f, -5.733472e-07f, -1.4729432e-07f,
     -3.5468712e-08f, -8.0072855e-09f, -1.695052e-09f, -3.365161e-10f,
     -6.266324e-11f, -1.09460175e-11f, -1.7938321e-12f, -2.7582334e-13f},
    {0.0f, 0.10032342f, 0.15426877f, 0.16997051f,
     0.15865526f, 0.13206221f, 0.1002108f, 0.070103526f,
     0.045500264f, 0.027505064f, 0.015524163f, 0.008194349f,
     0.004049694f, 0.0018753314f, 0.0008142018f, 0.0003315648f,
     0.00012668497f, 4.5426234e-05f, 1.5289528e-05f, 4.8311454e-06f,
     1.4332578e-06f, 3.9926041e-07f, 1.0444259e-07f, 2.5657492e-08f,
     5.9195258e-09f, 1.2826646e-09f, 2.6104002e-10f, 4.989774e-11f,
     8.958688e-12f, 1.5107971e-12f, 2.3931687e-13f, 3.560836e-14f},
    {0.0f, 2.286201e-09f, -2.0470639e-09f, 1.892778e-09f,
     -2.1010726e-09f, 5.4511813e-09f, 1.1364795e-09f, -1.6037958e-09f,
     3.2446187e-10f, -9.094499e-10f, 4.0347403e-10f, 1.2152918e-10f,
     -7.0677506e-11f, -4.7111716e-12f, 7.100812e-13f, 1.31141105e-11f,
     -4.8648217e-12f, 9.880326e-13f, 8.952524e-13f, 3.9636724e-14f,
     5.090359e-14f, 1.1668215e-14f, 1.8737428e-15f, -6.1074665e-16f,
     7.9551806e-17f, -1.08702956e-17f, 1.1923153e-17f, 4.443348e-19f,
     -3.5946586e-19f, -1.2461984e-20f, -1.718745e-21f, 1.8801234e-22f}
};
static const float pynn_gauss_tail_ratio[8][32] __attribute__((aligned(64))) = {
    {0.007139077f, 0.0031127972f, 0.001023886f, 0.000370074f,
     0.0001459393f, 6.268121e-5f, 2.8836661e-5f, 1.3767348e-5f,
     7.2006083e-6f, 3.871223e-6f, 2.2019772e-6f, 1.3096704e-6f,
     7.4760925e-7f, 4.2740115e-7f, 3.1092858e-7f, 1.7895456e-7f,
     1.3118391e-7f, 7.2657684e-8f, 8.7078426e-8f, 5.7973036e-8f,
     2.7681647e-8f, 2.4150404e-8f, 1.3854819e-8f, 1.1971855e-8f,
     3.0285976e-9f, 7.3702022e-9f, 3.44689e-9f, 1.1120661e-8f,
     -1.8941184e-9f, 3.443437e-9f, 3.785855e-9f, 1.4645049e-10f},
    {-0.025341261f, -0.008819019f, -0.0032038756f, -0.0012753324f,
     -0.0005531849f, -0.0002587897f, -0.00013035825f, -6.760543e-5f,
     -3.8399226e-5f, -2.2046677e-5f, -1.3336576e-5f, -8.467875e-6f,
     -5.153394e-6f, -3.2960372e-6f, -2.4600763e-6f, -1.4481332e-6f,
     -1.231389e-6f, -6.2369116e-7f, -7.6864154e-7f, -5.853744e-7f,
     -3.4176492e-7f, -2.513001e-7f, -2.0755279e-7f, -1.6942413e-7f,
     -7.338664e-8f, -1.2102564e-7f, -5.2130048e-8f, -1.2117493e-7f,
     -1.6151276e-9f, -8.191385e-8f, -6.655797e-8f, 1.2998424e-8f},
    {0.06225619f, 0.022829013f, 0.00925521f, 0.0041103736f,
     0.001976095f, 0.0010175888f, 0.00055619876f, 0.0003201644f,
     0.00019274991f, 0.00012069134f, 7.821191e-5f, 5.2239968e-5f,
     3.584246e-5f, 2.518343e-5f, 1.8066923e-5f, 1.3213862e-5f,
     9.8287555e-6f, 7.4258724e-6f, 5.6856593e-6f, 4.41188e-6f,
     3.4643342e-6f, 2.747963e-6f, 2.201993e-6f, 1.7799696e-6f,
     1.451524e-6f, 1.1920486e-6f, 9.865254e-7f, 8.210731e-7f,
     6.892239e-7f, 5.807426e-7f, 4.922559e-7f, 4.1969514e-7f},
    {-0.13295646f, -0.054910988f, -0.025084289f, -0.012496824f,
     -0.0067042597f, -0.0038310988f, -0.0023103685f, -0.0014591774f,
     -0.000958658f, -0.0006517858f, -0.00045646075f, -0.00032803777f,
     -0.0002411901f, -0.0001809116f, -0.00013810521f, -0.000107146145f,
     -8.428175e-5f, -6.718376e-5f, -5.4134005e-5f, -4.4099383e-5f,
     -3.627836e-5f, -3.009998e-5f, -2.517309e-5f, -2.1208945e-5f,
     -1.7996423e-5f, -1.5357919e-5f, -1.3191204e-5f, -1.1382635e-5f,
     -9.885327e-6f, -8.612501e-6f, -7.5429257e-6f, -6.639049e-6f},
    {0.24999887f, 0.118776195f, 0.06210715f, 0.035186872f,
     0.021312721f, 0.013648226f, 0.009156321f, 0.006387652f,
     0.0046058903f, 0.0034159103f, 0.0025952638f, 0.0020133231f,
     0.0015904738f, 0.0012765679f, 0.0010390796f, 0.0008563535f,
     0.0007136303f, 0.0006006361f, 0.00051008194f, 0.000436706f,
     0.0003766501f, 0.00032704414f, 0.00028572467f, 0.0002510413f,
     0.00022172068f, 0.00019677042f, 0.00017540948f, 0.00015701786f,
     0.00014109912f, 0.00012725293f, 0.0001151539f, 0.00010453589f},
    {-0.39894226f, -0.2241329f, -0.137364f, -0.09027128f,
     -0.06273828f, -0.045613952f, -0.034400437f, -0.026734242f,
     -0.021299716f, -0.017327016f, -0.014345756f, -0.012057464f,
     -0.010266394f, -0.0088403905f, -0.0076879035f, -0.006744052f,
     -0.005961911f, -0.005306914f, -0.004753181f, -0.00428104f,
     -0.0038753394f, -0.0035242639f, -0.0032184946f, -0.0029506066f,
     -0.0027146274f, -0.0025057108f, -0.002319892f, -0.0021539035f,
     -0.002005033f, -0.0018710152f, -0.0017499455f, -0.0016402141f},
    {0.5f, 0.34961882f, 0.2615783f, 0.20578067f,
     0.168102f, 0.14133133f, 0.12151395f, 0.106345154f,
     0.09441064f, 0.084803395f, 0.0769193f, 0.0703427f,
     0.06477931f, 0.060015675f, 0.05589348f, 0.052293096f,
     0.049122546f, 0.046310045f, 0.04379879f, 0.04154329f,
     0.039506692f, 0.03765886f, 0.03597489f, 0.034434058f,
     0.033018973f, 0.031714927f, 0.030509414f, 0.029391732f,
     0.028352661f, 0.027384225f, 0.026479488f, 0.02563239f},
    {-2.224465e-11f, 1.2464567e-8f, 2.2807084e-10f, -3.0651368e-9f,
     5.0409303e-9f, 1.4391689e-9f, 5.1116783e-10f, -7.112913e-10f,
     -1.6795457e-9f, -2.8654719e-9f, 2.6306866e-9f, -3.1780303e-9f,
     2.905914e-9f, 6.627006e-10f, 1.6628001e-9f, 1.3804992e-9f,
     3.4426667e-10f, -1.7441696e-9f, -5.111141e-10f, -1.5173018e-9f,
     1.6620683e-9f, -3.2537534e-10f, -3.7253323e-10f, 8.1846074e-10f,
     -1.6474616e-9f, -1.8353035e-9f, 3.4394623e-10f, -4.3733997e-10f,
     -5.309637e-10f, -8.76562e-11f, 7.605376e-10f, 6.175078e-10f}
};

/* e^r - 1 for |r| <= ln2 / 2 (plus the reduction's slack) */
PYNN_INLINE float pynn_expm1_reduced_f(float r)
{
    float s = 0.0013950513f;
    s = s * r + 0.008368909f;
    s = s * r + 0.041666206f;
    s = s * r + 0.16666518f;
    s = s * r + 0.5f;
    return r + (r * r) * s;
}

/* The polynomial of `table` (rows as above) on interval j at t: the constant
 * term's high part is added last, so that it rounds once. */
PYNN_INLINE float pynn_interval_poly_f(const float (*table)[32], int degree, int32_t j, float t)
{
    float p = table[0][j];
    for (int k = 1; k < degree; k++) p = p * t + table[k][j];
    return table[degree][j] + (p * t + table[degree + 1][j]);
}

/* The interval round(a * scale) of a >= 0 (a below the tables' end) and the
 * offset t = a - j / scale. */
PYNN_INLINE float pynn_interval_offset_f(float a, float scale, int32_t *j)
{
    float rounded = a * scale + PYNN_ROUND_MAGIC;
    *j = pynn_float_to_bits(rounded) - pynn_float_to_bits(PYNN_ROUND_MAGIC);
    return a - (rounded - PYNN_ROUND_MAGIC) * (1.0f / scale);
}

/* v computed for a = |x| below `end`, else `beyond` for finite x and NaN for
 * NaN and the infinities (a - a) */
PYNN_INLINE float pynn_within_f(float x, float end, float v, float beyond)
{
    float a = fabsf(x);
    return a < end ? v : a - a + beyond;
}

PYNN_INLINE float pynn_gelu_f(float x)
{
    float a = fabsf(x);
    a = a < PYNN_GELU_TAIL_END ? a : 0.0f; /* NaN too: its result is chosen below */
    int32_t j;
    float t = pynn_interval_offset_f(a, 4.0f, &j);
    float tail = pynn_interval_poly_f(pynn_gelu_tail, PYNN_GELU_DEGREE, j, t);
    tail = x > PYNN_GELU_TAIL_END ? 0.0f : pynn_within_f(x, PYNN_GELU_TAIL_END, tail, 0.0f);
    return x >= 0.0f ? x - tail : -tail;
}

/* e^{-a^2/2} v for 0 <= a < 15 as (v + v expm1) 2^n1 2^n2 (two factors, so
 * that subnormal results round once). The square splits exactly without
 * FMA: a = hi + lo with 12 bits in hi, a^2 = hi^2 + 2 hi lo + lo^2, each
 * exact. */
PYNN_INLINE float pynn_gauss_times_f(float a, float v)
{
    float hi = pynn_bits_to_float(pynn_float_to_bits(a) & (int32_t)0xFFFFF000);
    float lo = a - hi;
    float square_hi = hi * hi, cross = hi * lo, square_lo = lo * lo;
    float shifted = (a * a) * (-0.5f * PYNN_LOG2E) + PYNN_ROUND_MAGIC;
    float n = shifted - PYNN_ROUND_MAGIC;
    int32_t n_int = pynn_float_to_bits(shifted) - pynn_float_to_bits(PYNN_ROUND_MAGIC);
    float r = -0.5f * square_hi - n * PYNN_LN2_HI;
    r = r - cross - n * PYNN_LN2_LO - 0.5f * square_lo;
    float expm1 = pynn_expm1_reduced_f(r);
    int32_t half = n_int >> 1;
    float scale1 = pynn_bits_to_float((half + 127) << 23);
    float scale2 = pynn_bits_to_float((n_int - half + 127) << 23);
    return (v + v * expm1) * scale1 * scale2;
}

PYNN_INLINE float pynn_gelu_derivative_f(float x)
{
    float a = fabsf(x);
    a = a < PYNN_GAUSS_CUTOFF ? a : 0.0f;
    int32_t j;
    float t = pynn_interval_offset_f(a, 2.0f, &j);
    float ratio = pynn_interval_poly_f(pynn_gauss_tail_ratio, PYNN_GAUSS_RATIO_DEGREE, j, t);
    float d = pynn_within_f(x, PYNN_GAUSS_CUTOFF,
                            pynn_gauss_times_f(a, ratio - a * PYNN_INV_SQRT_2PI), 0.0f);
    return x >= 0.0f ? 1.0f - d : d;
}

#if defined(PYNN_X86_64)
/* The same steps on AVX-512, the table reads register permutes and the
 * square split with an FMA. */
#define PYNN_PERMUTE_ROW(row, j) \
    _mm512_permutex2var_ps(_mm512_load_ps(row), (j), _mm512_load_ps((row) + 16))

PYNN_INLINE PYNN_TARGET_AVX512 __m512 pynn_interval_poly16(const float (*table)[32], int degree,
                                                           __m512i j, __m512 t)
{
    __m512 p = PYNN_PERMUTE_ROW(table[0], j);
    for (int k = 1; k < degree; k++) p = _mm512_fmadd_ps(p, t, PYNN_PERMUTE_ROW(table[k], j));
    p = _mm512_fmadd_ps(p, t, PYNN_PERMUTE_ROW(table[degree + 1], j));
    return _mm512_add_ps(PYNN_PERMUTE_ROW(table[degree], j), p);
}

PYNN_INLINE PYNN_TARGET_AVX512 __m512 pynn_abs16(__m512 x)
{
    return _mm512_castsi512_ps(_mm512_andnot_si512(_mm512_set1_epi32((int32_t)0x80000000),
                                                   _mm512_castps_si512(x)));
}

/* |x| where below `end`, else 0 */
PYNN_INLINE PYNN_TARGET_AVX512 __m512 pynn_abs_below16(__m512 x, float end)
{
    __m512 a = pynn_abs16(x);
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, _mm512_set1_ps(end), _CMP_LT_OQ),
                                _mm512_setzero_ps(), a);
}

PYNN_INLINE PYNN_TARGET_AVX512 __m512 pynn_interval_offset16(__m512 a, float scale, __m512i *j)
{
    const __m512 magic = _mm512_set1_ps(PYNN_ROUND_MAGIC);
    __m512 rounded = _mm512_fmadd_ps(a, _mm512_set1_ps(scale), magic);
    *j = _mm512_sub_epi32(_mm512_castps_si512(rounded), _mm512_castps_si512(magic));
    return _mm512_fmadd_ps(_mm512_set1_ps(-1.0f / scale), _mm512_sub_ps(rounded, magic), a);
}

PYNN_INLINE PYNN_TARGET_AVX512 __m512 pynn_within16(__m512 x, float end, __m512 v)
{
    __m512 a = pynn_abs16(x);
    __mmask16 inside = _mm512_cmp_ps_mask(a, _mm512_set1_ps(end), _CMP_LT_OQ);
    return _mm512_mask_blend_ps(inside, _mm512_sub_ps(a, a), v);
}

/* Beyond the table the tail is m - m with m = min(0, x): 0 for finite x and
 * +inf, NaN for -inf and NaN (vminps returns its second operand, x, for
 * NaN); the result is x - tail for x >= 0, else -0 - tail. */
PYNN_INLINE PYNN_TARGET_AVX512 __m512 pynn_gelu16(__m512 x)
{
    __m512 a = pynn_abs16(x);
    __mmask16 inside = _mm512_cmp_ps_mask(a, _mm512_set1_ps(PYNN_GELU_TAIL_END), _CMP_LT_OQ);
    a = _mm512_mask_blend_ps(inside, _mm512_setzero_ps(), a);
    __m512i j;
    __m512 t = pynn_interval_offset16(a, 4.0f, &j);
    __m512 beyond = _mm512_min_ps(_mm512_setzero_ps(), x);
    __m512 tail = _mm512_mask_blend_ps(inside, _mm512_sub_ps(beyond, beyond),
                                       pynn_interval_poly16(pynn_gelu_tail, PYNN_GELU_DEGREE, j, t));
    __mmask16 nonnegative = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GE_OQ);
    return _mm512_sub_ps(_mm512_mask_blend_ps(nonnegative, _mm512_set1_ps(-0.0f), x), tail);
}

PYNN_INLINE PYNN_TARGET_AVX512 __m512 pynn_gauss_times16(__m512 a, __m512 v)
{
    const __m512 magic = _mm512_set1_ps(PYNN_ROUND_MAGIC);
    const __m512i bias = _mm512_set1_epi32(127);
    __m512 square = _mm512_mul_ps(a, a);
    __m512 square_lo = _mm512_fmadd_ps(a, a, _mm512_mul_ps(square, _mm512_set1_ps(-1.0f)));
    __m512 shifted = _mm512_fmadd_ps(square, _mm512_set1_ps(-0.5f * PYNN_LOG2E), magic);
    __m512 n = _mm512_sub_ps(shifted, magic);
    __m512i n_int = _mm512_sub_epi32(_mm512_castps_si512(shifted), _mm512_castps_si512(magic));
    __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-PYNN_LN2_HI),
                               _mm512_mul_ps(square, _mm512_set1_ps(-0.5f)));
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(-PYNN_LN2_LO), r);
    r = _mm512_fmadd_ps(square_lo, _mm512_set1_ps(-0.5f), r);
    __m512 s = _mm512_set1_ps(0.0013950513f);
    s = _mm512_fmadd_ps(s, r, _mm512_set1_ps(0.008368909f));
    s = _mm512_fmadd_ps(s, r, _mm512_set1_ps(0.041666206f));
    s = _mm512_fmadd_ps(s, r, _mm512_set1_ps(0.16666518f));
    s = _mm512_fmadd_ps(s, r, _mm512_set1_ps(0.5f));
    __m512 expm1 = _mm512_fmadd_ps(_mm512_mul_ps(r, r), s, r);
    __m512i half = _mm512_srai_epi32(n_int, 1);
    __m512 scale1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(half, bias), 23));
    __m512 scale2 = _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_add_epi32(_mm512_sub_epi32(n_int, half), bias), 23));
    return _mm512_mul_ps(_mm512_mul_ps(_mm512_fmadd_ps(v, expm1, v), scale1), scale2);
}

PYNN_INLINE PYNN_TARGET_AVX512 __m512 pynn_gelu_derivative16(__m512 x)
{
    __m512 a = pynn_abs_below16(x, PYNN_GAUSS_CUTOFF);
    __m512i j;
    __m512 t = pynn_interval_offset16(a, 2.0f, &j);
    __m512 ratio = pynn_interval_poly16(pynn_gauss_tail_ratio, PYNN_GAUSS_RATIO_DEGREE, j, t);
    __m512 v = _mm512_fmadd_ps(a, _mm512_set1_ps(-PYNN_INV_SQRT_2PI), ratio);
    __m512 d = pynn_within16(x, PYNN_GAUSS_CUTOFF, pynn_gauss_times16(a, v));
    __mmask16 nonnegative = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GE_OQ);
    return _mm512_mask_blend_ps(nonnegative, d, _mm512_sub_ps(_mm512_set1_ps(1.0f), d));
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

/* Where a map's data lives, which decides how the AVX-512 loops of the
 * memory-bound maps run (pynn_map_place):
 * PYNN_PLACE_L2: the bytes a thread touches (its inputs and output) fit in
 * its L2, where most maps run fastest in 512-bit loops.
 * PYNN_PLACE_L3: they fit in its share of the caches, its L2 plus the L3
 * divided among the logical processors that share it; there 256-bit loops
 * keep up better with the L3 than 512-bit ones, and ordinary stores leave
 * the output in cache for its reader (the next kernel).
 * PYNN_PLACE_MEMORY: beyond that share the output would reach memory before
 * its reader comes, so non-temporal stores skip the read-for-ownership of
 * its lines. On a Xeon with 2 MiB of L2 and a small L3 share per core this
 * streams from about the L2 plus that share, where the output cannot stay;
 * on Zen 4, whose L3 share is larger, and where few processors share an L3,
 * it streams later. */
enum { PYNN_PLACE_L2 = 0, PYNN_PLACE_L3 = 1, PYNN_PLACE_MEMORY = 2 };
int pynn_map_place(ptrdiff_t n, int threads, const float *a, const float *b, const float *y);

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
 * written); place is where its data lives (PYNN_PLACE_L2 ...). */
typedef void (*pynn_map_fn)(ptrdiff_t n, const float *a, const float *b, float *y, float p,
                            int place);

/* Runs fn over [0, n), in parallel chunks when n >= min_parallel, telling it
 * where the data lives when may_stream is set (else PYNN_PLACE_L2: a costly
 * map's arithmetic, not its memory, bounds it). */
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
 * PYNN_ELEMENTWISE_NARROW runs the 256-bit loop on the AVX-512 path at every
 * size below streaming, for expressions whose 512-bit loop is slower even in
 * L1 and L2 (chains of mask-register operations, two-input selects).
 * Large outputs are streamed (pynn_map_place) by vectorised
 * expressions and by the memory-bound scalar ones (parallel from
 * PYNN_CHEAP_PARALLEL), which beyond the L2 also run 256-bit loops; the
 * costly scalar ones, sigmoid and gelu, store normally with whole vectors,
 * as their arithmetic, not memory, bounds them and the stage only adds a
 * copy. */
#define PYNN_ELEMENTWISE(name, min_parallel, expression)                                  \
    PYNN_SCALAR_LOOP(name, expression)                                                     \
    PYNN_NARROW_COPIES(name)                                                               \
    PYNN_AVX512_FROM_SCALAR(name, PYNN_PLACE_L3)                                           \
    PYNN_ELEMENTWISE_ENTRY(name, min_parallel, (min_parallel) >= PYNN_CHEAP_PARALLEL)

#define PYNN_ELEMENTWISE_NARROW(name, min_parallel, expression)                           \
    PYNN_SCALAR_LOOP(name, expression)                                                     \
    PYNN_NARROW_COPIES(name)                                                               \
    PYNN_AVX512_FROM_SCALAR(name, PYNN_PLACE_L2)                                           \
    PYNN_ELEMENTWISE_ENTRY(name, min_parallel, (min_parallel) >= PYNN_CHEAP_PARALLEL)

#define PYNN_ELEMENTWISE_VECTOR(name, min_parallel, expression, vector_expression)         \
    PYNN_SCALAR_LOOP(name, expression)                                                     \
    PYNN_NARROW_COPIES(name)                                                               \
    PYNN_AVX512_FROM_VECTOR(name, vector_expression)                                       \
    PYNN_ELEMENTWISE_ENTRY(name, min_parallel, 1)

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
#define PYNN_STREAM_HEAD(y, n) \
    (place == PYNN_PLACE_MEMORY ? PYNN_MIN((ptrdiff_t)((-(uintptr_t)(y) & 63) / sizeof(float)), (n)) : 0)
#define PYNN_MIN(x, y) ((x) < (y) ? (x) : (y))

#define PYNN_AVX512_FROM_SCALAR(name, narrow_from)                                         \
    PYNN_TARGET_AVX512 static void name##_avx512(ptrdiff_t n, const float *a, const float *b, \
                                                 float *y, float p, int place)             \
    {                                                                                      \
        if (place < (narrow_from)) {                                                       \
            name##_loop(n, a, b, y, p);                                                    \
            return;                                                                        \
        }                                                                                  \
        if (place < PYNN_PLACE_MEMORY) {                                                   \
            name##_avx2(n, a, b, y, p, place);                                             \
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
                                                 float *y, float p, int place)             \
    {                                                                                      \
        const int stream = place == PYNN_PLACE_MEMORY;                                     \
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

#define PYNN_NARROW_COPIES(name)                                                           \
    static void name##_generic(ptrdiff_t n, const float *a, const float *b, float *y,      \
                               float p, int place)                                         \
    { (void)place; name##_loop(n, a, b, y, p); }                                           \
    PYNN_TARGET_AVX2 static void name##_avx2(ptrdiff_t n, const float *a, const float *b,  \
                                             float *y, float p, int place)                 \
    { (void)place; name##_loop(n, a, b, y, p); }
#else
#define PYNN_AVX512_FROM_SCALAR(name, narrow_from)
#define PYNN_AVX512_FROM_VECTOR(name, vector_expression)
#define PYNN_NARROW_COPIES(name)                                                           \
    static void name##_generic(ptrdiff_t n, const float *a, const float *b, float *y,      \
                               float p, int place)                                         \
    { (void)place; name##_loop(n, a, b, y, p); }
#endif

#define PYNN_ELEMENTWISE_ENTRY(name, min_parallel, may_stream)                             \
    void pynn_##name(const pynn_context *ctx, ptrdiff_t n, const float *a, const float *b, \
                     float *y, float p)                                                    \
    { pynn_map_run(ctx, ctx->kernels->activations->name, n, (min_parallel), (may_stream), a, b, y, p); }

#define B (b[i])


#endif
