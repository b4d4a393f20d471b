/* Portable GEMM kernels: plain C for any CPU (aarch64 wheels, PYNN_ISA=generic).
 *
 * Register tile 4 x 8: the 32 accumulators are eight 4-float vectors (GCC/Clang
 * vector extensions, so SSE2 or NEON without intrinsics), which with the B
 * row and the broadcast of A fit the 16 registers of SSE2 (NEON has 32).
 * Blocks: KC = 256 keeps the 8 KiB B micro-panel in L1, MC = 128 the 128 KiB
 * A block in any L2, NC = 4096 the B panel in a last-level cache. Operands
 * are read in place up to 2^21 multiply-adds, the AVX-512 value (not tuned
 * for this path separately). */
#include <string.h>

#include "gemm_kernels.h"

enum { MR = 4, NR = 8 };

/* Four floats as one value: GCC and Clang map it to SSE or NEON registers. */
typedef float float4 __attribute__((vector_size(16)));

static float4 load4(const float *p)
{
    float4 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static void microkernel_generic_4x8(ptrdiff_t k,
                                    const float *a, ptrdiff_t a_row_step, ptrdiff_t a_k_step,
                                    const float *b, ptrdiff_t b_k_step,
                                    float *c, ptrdiff_t ldc, ptrdiff_t mr, ptrdiff_t nr,
                                    const pynn_tile_update *update)
{
    float4 acc[MR][2];
    float b_row[NR] = {0.0f};
    ptrdiff_t row[MR];
    for (int i = 0; i < MR; i++) {
        acc[i][0] = acc[i][1] = (float4){0.0f, 0.0f, 0.0f, 0.0f};
        row[i] = (i < mr ? i : mr - 1) * a_row_step;
    }
    for (ptrdiff_t p = 0; p < k; p++, a += a_k_step, b += b_k_step) {
        const float *b_use = b;
        if (nr < NR) {  /* a copy whose columns past nr are zeros, not reads past B */
            for (ptrdiff_t j = 0; j < nr; j++) b_row[j] = b[j];
            b_use = b_row;
        }
        const float4 b0 = load4(b_use), b1 = load4(b_use + 4);
        for (int i = 0; i < MR; i++) {
            const float ai = a[row[i]];
            const float4 av = {ai, ai, ai, ai};
            acc[i][0] += av * b0;
            acc[i][1] += av * b1;
        }
    }
    for (ptrdiff_t i = 0; i < mr; i++) {
        float *ci = c + i * ldc;
        float sums[NR];
        memcpy(sums, acc[i], sizeof sums);
        for (ptrdiff_t j = 0; j < nr; j++)
            pynn_finish_element(ci + j, sums[j], i, j, update);
    }
}

static void gemv_dot_generic(ptrdiff_t rows, ptrdiff_t k, const float *x, ptrdiff_t ldx,
                             const float *v, float *sums)
{
    for (ptrdiff_t r = 0; r < rows; r++) {
        const float *xr = x + r * ldx;
        float s = 0.0f;
        for (ptrdiff_t p = 0; p < k; p++)
            s += xr[p] * v[p];
        sums[r] = s;
    }
}

static void gemv_axpy_generic(ptrdiff_t cols, ptrdiff_t k, const float *x, ptrdiff_t ldx,
                              const float *v, ptrdiff_t v_step, float *sums)
{
    for (ptrdiff_t j = 0; j < cols; j++)
        sums[j] = 0.0f;
    for (ptrdiff_t p = 0; p < k; p++) {
        const float vp = v[p * v_step];
        const float *xp = x + p * ldx;
        for (ptrdiff_t j = 0; j < cols; j++)
            sums[j] += vp * xp[j];
    }
}

static void gemm_dots_generic(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *a,
                              ptrdiff_t lda, const float *b, ptrdiff_t ldb, float *sums)
{
    for (ptrdiff_t i = 0; i < m; i++)
        for (ptrdiff_t j = 0; j < n; j++) {
            const float *ai = a + i * lda, *bj = b + j * ldb;
            float s = 0.0f;
            for (ptrdiff_t p = 0; p < k; p++)
                s += ai[p] * bj[p];
            sums[i * n + j] = s;
        }
}

static void rank_update_generic(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *a,
                                ptrdiff_t a_row_step, ptrdiff_t a_k_step,
                                const float *b, ptrdiff_t ldb, float *c, ptrdiff_t ldc,
                                const pynn_tile_update *update)
{
    for (ptrdiff_t i = 0; i < m; i++)
        for (ptrdiff_t j = 0; j < n; j++) {
            float s = 0.0f;
            for (ptrdiff_t p = 0; p < k; p++)
                s += a[i * a_row_step + p * a_k_step] * b[p * ldb + j];
            pynn_finish_element(c + i * ldc + j, s, i, j, update);
        }
}

static void pack_transposed_generic(int width, int stride, const float *src, ptrdiff_t ld,
                                    ptrdiff_t depth, ptrdiff_t count, float *dst)
{
    for (ptrdiff_t r0 = 0; r0 < count; r0 += width, dst += stride * depth) {
        for (ptrdiff_t q = 0; q < stride; q++) {
            if (q < width && r0 + q < count) {
                const float *row = src + (r0 + q) * ld;
                for (ptrdiff_t p = 0; p < depth; p++) dst[p * stride + q] = row[p];
            } else {
                for (ptrdiff_t p = 0; p < depth; p++) dst[p * stride + q] = 0.0f;
            }
        }
    }
}

static void pack_straight_generic(int width, int stride, const float *src, ptrdiff_t ld,
                                  ptrdiff_t depth, ptrdiff_t count, float *dst)
{
    for (ptrdiff_t c0 = 0; c0 < count; c0 += width, dst += stride * depth) {
        const ptrdiff_t present = count - c0 < width ? count - c0 : width;
        for (ptrdiff_t p = 0; p < depth; p++) {
            const float *row = src + p * ld + c0;
            float *out = dst + p * stride;
            for (ptrdiff_t q = 0; q < present; q++) out[q] = row[q];
            for (ptrdiff_t q = present; q < stride; q++) out[q] = 0.0f;
        }
    }
}

const struct pynn_gemm_kernels pynn_gemm_generic = {
    .mr = MR, .nr = NR, .a_stride = MR, .split_rows = MR, .split_cols = NR,
    .mc = 128, .kc = 256, .nc = 4096, .in_place_work = 1 << 21,
    .in_place_trans_b_work = 1 << 21,
    PYNN_GEMM_THRESHOLDS,
    .narrow_cols = NR / 2,
    .packed = microkernel_generic_4x8,
    .strided = microkernel_generic_4x8,
    .dot = gemv_dot_generic,
    .axpy = gemv_axpy_generic,
    .dots = gemm_dots_generic,
    .rank_update = rank_update_generic,
    .pack_transposed = pack_transposed_generic,
    .pack_straight = pack_straight_generic,
};
