/* The AVX-512F intrinsics pynn's kernels use, emulated lane by lane in
 * portable vector C, for a PYNN_EMULATE_AVX512 build (setup.py): there the
 * AVX-512 functions are compiled for AVX2 (cpu.h) and this header, included
 * before every source, renames each intrinsic to its emulation here. The
 * AVX-512 paths then run, and their tests with them, on a CPU without
 * AVX-512: the lane logic (masks, tails, permutations, reductions) is
 * checked, not the instruction encodings. For testing only; never shipped.
 *
 * Each emulation follows the instruction's definition: masked loads and
 * stores touch only the lanes their mask selects (so AddressSanitizer sees
 * what the hardware would), aligned forms abort on a misaligned address
 * where the hardware faults, FMA rounds once, max/min return the second
 * operand when either is NaN, and the horizontal sum adds in GCC's order.
 * An intrinsic missing here fails the build: the real one cannot be inlined
 * into a function compiled for AVX2. */
#ifndef PYNN_AVX512_EMULATION_H
#define PYNN_AVX512_EMULATION_H
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef float emulated_ps __attribute__((vector_size(64)));
typedef int32_t emulated_epi32 __attribute__((vector_size(64)));
typedef long long emulated_si512 __attribute__((vector_size(64)));
#define __m512 emulated_ps
#define __m512i emulated_si512
#define EMULATED static inline __attribute__((always_inline, unused))
#define EMULATED_LANES(count) for (int i = 0; i < (count); i++)
#define EMULATED_SELECTED(mask) ((mask) >> i & 1)

EMULATED void emulated_check_aligned(const void *p) { if ((uintptr_t)p % 64) abort(); }

/* -- setting ---------------------------------------------------------------- */
EMULATED emulated_ps emulated_mm512_setzero_ps(void) { emulated_ps r = {0}; return r; }
EMULATED emulated_si512 emulated_mm512_setzero_si512(void) { emulated_si512 r = {0}; return r; }
EMULATED emulated_ps emulated_mm512_set1_ps(float x) { emulated_ps r; EMULATED_LANES(16) r[i] = x; return r; }
EMULATED emulated_si512 emulated_mm512_set1_epi32(int x)
{
    emulated_epi32 r;
    EMULATED_LANES(16) r[i] = x;
    return (emulated_si512)r;
}
EMULATED emulated_si512 emulated_mm512_set_epi32(int e15, int e14, int e13, int e12, int e11, int e10,
                                                 int e9, int e8, int e7, int e6, int e5, int e4,
                                                 int e3, int e2, int e1, int e0)
{
    emulated_epi32 r = {e0, e1, e2, e3, e4, e5, e6, e7, e8, e9, e10, e11, e12, e13, e14, e15};
    return (emulated_si512)r;
}

/* -- loads and stores -------------------------------------------------------- */
EMULATED emulated_ps emulated_mm512_loadu_ps(const void *p) { emulated_ps r; memcpy(&r, p, 64); return r; }
EMULATED emulated_ps emulated_mm512_load_ps(const void *p)
{
    emulated_check_aligned(p);
    return emulated_mm512_loadu_ps(p);
}
EMULATED emulated_ps emulated_mm512_maskz_loadu_ps(__mmask16 k, const void *p)
{
    emulated_ps r = {0};
    EMULATED_LANES(16) if (EMULATED_SELECTED(k)) memcpy((float *)&r + i, (const float *)p + i, 4);
    return r;
}
EMULATED void emulated_mm512_storeu_ps(void *p, emulated_ps a) { memcpy(p, &a, 64); }
EMULATED void emulated_mm512_stream_ps(void *p, emulated_ps a)
{
    emulated_check_aligned(p);
    memcpy(p, &a, 64);
}
EMULATED void emulated_mm512_mask_storeu_ps(void *p, __mmask16 k, emulated_ps a)
{
    EMULATED_LANES(16) if (EMULATED_SELECTED(k)) memcpy((float *)p + i, (float *)&a + i, 4);
}
EMULATED void emulated_mm512_mask_storeu_epi64(void *p, __mmask8 k, emulated_si512 a)
{
    EMULATED_LANES(8) if (EMULATED_SELECTED(k)) memcpy((long long *)p + i, (long long *)&a + i, 8);
}

/* -- float arithmetic -------------------------------------------------------- */
#define EMULATED_FLOAT_LANEWISE(name, expression)                                        \
    EMULATED emulated_ps emulated_mm512_##name(emulated_ps a, emulated_ps b)   \
    {                                                                           \
        emulated_ps r;                                                          \
        EMULATED_LANES(16) r[i] = (expression);                                          \
        return r;                                                               \
    }
EMULATED_FLOAT_LANEWISE(add_ps, a[i] + b[i])
EMULATED_FLOAT_LANEWISE(sub_ps, a[i] - b[i])
EMULATED_FLOAT_LANEWISE(mul_ps, a[i] * b[i])
EMULATED_FLOAT_LANEWISE(max_ps, a[i] > b[i] ? a[i] : b[i])  /* NaN in either: b */
EMULATED_FLOAT_LANEWISE(min_ps, a[i] < b[i] ? a[i] : b[i])
EMULATED emulated_ps emulated_mm512_fmadd_ps(emulated_ps a, emulated_ps b, emulated_ps c)
{
    emulated_ps r;
    EMULATED_LANES(16) r[i] = __builtin_fmaf(a[i], b[i], c[i]);
    return r;
}
EMULATED emulated_ps emulated_mm512_mask_max_ps(emulated_ps src, __mmask16 k, emulated_ps a, emulated_ps b)
{
    emulated_ps r;
    EMULATED_LANES(16) r[i] = EMULATED_SELECTED(k) ? (a[i] > b[i] ? a[i] : b[i]) : src[i];
    return r;
}
EMULATED float emulated_mm512_reduce_max_ps(emulated_ps a)
{
    float half[8], quarter[4];
    EMULATED_LANES(8) half[i] = a[i + 8] > a[i] ? a[i + 8] : a[i];
    EMULATED_LANES(4) quarter[i] = half[i + 4] > half[i] ? half[i + 4] : half[i];
    const float low = quarter[2] > quarter[0] ? quarter[2] : quarter[0];
    const float high = quarter[3] > quarter[1] ? quarter[3] : quarter[1];
    return high > low ? high : low;
}
EMULATED float emulated_mm512_reduce_add_ps(emulated_ps a)
{
    float half[8], quarter[4];
    EMULATED_LANES(8) half[i] = a[i + 8] + a[i];
    EMULATED_LANES(4) quarter[i] = half[i + 4] + half[i];
    return (quarter[0] + quarter[2]) + (quarter[1] + quarter[3]);
}

/* -- integer lanes and conversions -------------------------------------------- */
#define EMULATED_INT_LANEWISE(name, expression)                                               \
    EMULATED emulated_si512 emulated_mm512_##name(emulated_si512 a_, emulated_si512 b_) \
    {                                                                                \
        emulated_epi32 a = (emulated_epi32)a_, b = (emulated_epi32)b_, r;            \
        EMULATED_LANES(16) r[i] = (expression);                                               \
        return (emulated_si512)r;                                                    \
    }
EMULATED_INT_LANEWISE(add_epi32, (int32_t)((uint32_t)a[i] + (uint32_t)b[i]))
EMULATED_INT_LANEWISE(sub_epi32, (int32_t)((uint32_t)a[i] - (uint32_t)b[i]))
EMULATED_INT_LANEWISE(min_epi32, a[i] < b[i] ? a[i] : b[i])
EMULATED_INT_LANEWISE(max_epi32, a[i] > b[i] ? a[i] : b[i])
EMULATED_INT_LANEWISE(and_si512, a[i] & b[i])
EMULATED_INT_LANEWISE(or_si512, a[i] | b[i])
EMULATED_INT_LANEWISE(andnot_si512, ~a[i] & b[i])
EMULATED emulated_si512 emulated_mm512_maskz_and_epi32(__mmask16 k, emulated_si512 a_, emulated_si512 b_)
{
    emulated_epi32 a = (emulated_epi32)a_, b = (emulated_epi32)b_, r;
    EMULATED_LANES(16) r[i] = EMULATED_SELECTED(k) ? a[i] & b[i] : 0;
    return (emulated_si512)r;
}
EMULATED emulated_si512 emulated_mm512_srai_epi32(emulated_si512 a_, unsigned int count)
{
    emulated_epi32 a = (emulated_epi32)a_, r;
    EMULATED_LANES(16) r[i] = count > 31 ? (a[i] < 0 ? -1 : 0) : a[i] >> count;
    return (emulated_si512)r;
}
EMULATED emulated_si512 emulated_mm512_slli_epi32(emulated_si512 a_, unsigned int count)
{
    emulated_epi32 a = (emulated_epi32)a_, r;
    EMULATED_LANES(16) r[i] = count > 31 ? 0 : (int32_t)((uint32_t)a[i] << count);
    return (emulated_si512)r;
}
EMULATED emulated_si512 emulated_mm512_castps_si512(emulated_ps a) { return (emulated_si512)a; }
EMULATED emulated_ps emulated_mm512_castsi512_ps(emulated_si512 a) { return (emulated_ps)a; }
EMULATED __m256i emulated_mm512_castsi512_si256(emulated_si512 a) { __m256i r; memcpy(&r, &a, 32); return r; }
EMULATED __m256i emulated_mm512_extracti64x4_epi64(emulated_si512 a, int half)
{
    __m256i r;
    memcpy(&r, (char *)&a + 32 * (half & 1), 32);
    return r;
}
EMULATED emulated_si512 emulated_mm512_cvtepi32_epi64(__m256i a)
{
    int32_t narrow[8];
    emulated_si512 r;
    memcpy(narrow, &a, 32);
    EMULATED_LANES(8) r[i] = narrow[i];
    return r;
}

/* -- comparisons, blends, permutations ---------------------------------------- */
EMULATED __mmask16 emulated_mm512_cmpgt_epi32_mask(emulated_si512 a_, emulated_si512 b_)
{
    emulated_epi32 a = (emulated_epi32)a_, b = (emulated_epi32)b_;
    __mmask16 k = 0;
    EMULATED_LANES(16) k |= (__mmask16)((a[i] > b[i]) << i);
    return k;
}
EMULATED __mmask16 emulated_mm512_cmp_ps_mask(emulated_ps a, emulated_ps b, const int predicate)
{
    __mmask16 k = 0;
    EMULATED_LANES(16) {
        int hit;
        switch (predicate) {
        case _CMP_GT_OQ: hit = a[i] > b[i]; break;
        case _CMP_GE_OQ: hit = a[i] >= b[i]; break;
        case _CMP_LT_OQ: hit = a[i] < b[i]; break;
        case _CMP_LE_OQ: hit = a[i] <= b[i]; break;
        case _CMP_EQ_OQ: hit = a[i] == b[i]; break;
        case _CMP_UNORD_Q: hit = isnan(a[i]) || isnan(b[i]); break;
        case _CMP_ORD_Q: hit = !isnan(a[i]) && !isnan(b[i]); break;
        default: abort();  /* a predicate not emulated yet */
        }
        k |= (__mmask16)(hit << i);
    }
    return k;
}
EMULATED emulated_ps emulated_mm512_mask_blend_ps(__mmask16 k, emulated_ps a, emulated_ps b)
{
    emulated_ps r;
    EMULATED_LANES(16) r[i] = EMULATED_SELECTED(k) ? b[i] : a[i];
    return r;
}
EMULATED emulated_si512 emulated_mm512_mask_blend_epi32(__mmask16 k, emulated_si512 a_, emulated_si512 b_)
{
    emulated_epi32 a = (emulated_epi32)a_, b = (emulated_epi32)b_, r;
    EMULATED_LANES(16) r[i] = EMULATED_SELECTED(k) ? b[i] : a[i];
    return (emulated_si512)r;
}
/* lane i takes lane idx[i] & 15 of a, or of b when idx[i] & 16 */
EMULATED emulated_ps emulated_mm512_permutex2var_ps(emulated_ps a, emulated_si512 idx_, emulated_ps b)
{
    emulated_epi32 idx = (emulated_epi32)idx_;
    emulated_ps r;
    EMULATED_LANES(16) r[i] = idx[i] & 16 ? b[idx[i] & 15] : a[idx[i] & 15];
    return r;
}

#undef EMULATED_LANES
#undef EMULATED_SELECTED
#undef EMULATED_FLOAT_LANEWISE
#undef EMULATED_INT_LANEWISE

/* -- the renaming (some intrinsics are macros in unoptimised builds) ---------- */
#undef _mm512_setzero_ps
#define _mm512_setzero_ps emulated_mm512_setzero_ps
#undef _mm512_setzero_si512
#define _mm512_setzero_si512 emulated_mm512_setzero_si512
#undef _mm512_set1_ps
#define _mm512_set1_ps emulated_mm512_set1_ps
#undef _mm512_set1_epi32
#define _mm512_set1_epi32 emulated_mm512_set1_epi32
#undef _mm512_set_epi32
#define _mm512_set_epi32 emulated_mm512_set_epi32
#undef _mm512_loadu_ps
#define _mm512_loadu_ps emulated_mm512_loadu_ps
#undef _mm512_load_ps
#define _mm512_load_ps emulated_mm512_load_ps
#undef _mm512_maskz_loadu_ps
#define _mm512_maskz_loadu_ps emulated_mm512_maskz_loadu_ps
#undef _mm512_storeu_ps
#define _mm512_storeu_ps emulated_mm512_storeu_ps
#undef _mm512_stream_ps
#define _mm512_stream_ps emulated_mm512_stream_ps
#undef _mm512_mask_storeu_ps
#define _mm512_mask_storeu_ps emulated_mm512_mask_storeu_ps
#undef _mm512_mask_storeu_epi64
#define _mm512_mask_storeu_epi64 emulated_mm512_mask_storeu_epi64
#undef _mm512_fmadd_ps
#define _mm512_fmadd_ps emulated_mm512_fmadd_ps
#undef _mm512_add_ps
#define _mm512_add_ps emulated_mm512_add_ps
#undef _mm512_sub_ps
#define _mm512_sub_ps emulated_mm512_sub_ps
#undef _mm512_mul_ps
#define _mm512_mul_ps emulated_mm512_mul_ps
#undef _mm512_max_ps
#define _mm512_max_ps emulated_mm512_max_ps
#undef _mm512_min_ps
#define _mm512_min_ps emulated_mm512_min_ps
#undef _mm512_reduce_add_ps
#define _mm512_reduce_add_ps emulated_mm512_reduce_add_ps
#undef _mm512_mask_max_ps
#define _mm512_mask_max_ps emulated_mm512_mask_max_ps
#undef _mm512_reduce_max_ps
#define _mm512_reduce_max_ps emulated_mm512_reduce_max_ps
#undef _mm512_castps_si512
#define _mm512_castps_si512 emulated_mm512_castps_si512
#undef _mm512_castsi512_ps
#define _mm512_castsi512_ps emulated_mm512_castsi512_ps
#undef _mm512_castsi512_si256
#define _mm512_castsi512_si256 emulated_mm512_castsi512_si256
#undef _mm512_extracti64x4_epi64
#define _mm512_extracti64x4_epi64 emulated_mm512_extracti64x4_epi64
#undef _mm512_cvtepi32_epi64
#define _mm512_cvtepi32_epi64 emulated_mm512_cvtepi32_epi64
#undef _mm512_add_epi32
#define _mm512_add_epi32 emulated_mm512_add_epi32
#undef _mm512_sub_epi32
#define _mm512_sub_epi32 emulated_mm512_sub_epi32
#undef _mm512_min_epi32
#define _mm512_min_epi32 emulated_mm512_min_epi32
#undef _mm512_max_epi32
#define _mm512_max_epi32 emulated_mm512_max_epi32
#undef _mm512_and_si512
#define _mm512_and_si512 emulated_mm512_and_si512
#undef _mm512_or_si512
#define _mm512_or_si512 emulated_mm512_or_si512
#undef _mm512_andnot_si512
#define _mm512_andnot_si512 emulated_mm512_andnot_si512
#undef _mm512_maskz_and_epi32
#define _mm512_maskz_and_epi32 emulated_mm512_maskz_and_epi32
#undef _mm512_srai_epi32
#define _mm512_srai_epi32 emulated_mm512_srai_epi32
#undef _mm512_slli_epi32
#define _mm512_slli_epi32 emulated_mm512_slli_epi32
#undef _mm512_cmpgt_epi32_mask
#define _mm512_cmpgt_epi32_mask emulated_mm512_cmpgt_epi32_mask
#undef _mm512_cmp_ps_mask
#define _mm512_cmp_ps_mask emulated_mm512_cmp_ps_mask
#undef _mm512_mask_blend_ps
#define _mm512_mask_blend_ps emulated_mm512_mask_blend_ps
#undef _mm512_mask_blend_epi32
#define _mm512_mask_blend_epi32 emulated_mm512_mask_blend_epi32
#undef _mm512_permutex2var_ps
#define _mm512_permutex2var_ps emulated_mm512_permutex2var_ps
#endif
