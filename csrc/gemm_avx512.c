/* AVX-512 GEMM kernels: a 12 x 32 micro-kernel and the two GEMV forms.
 *
 * Register tile 12 x 32: 24 zmm accumulators (12 rows x 2 vectors of 16
 * columns), 2 zmm for the B row and 1 for the broadcast of A, of the 32 zmm
 * registers. Each k step issues 24 FMAs against 12 broadcasts and 2 loads, so
 * Zen 4 (one 512-bit FMA per cycle, as two 256-bit halves, 4-cycle latency)
 * has 24 independent chains to hide the latency and spare load slots.
 * Partial tiles use masked loads and stores, so nothing outside the valid
 * mr x nr part of A, B or C is touched, packed or not.
 *
 * Blocks: KC = 512 keeps the 12 x 512 A micro-panel (24 KiB) in L1 while
 * the 512 x 32 B micro-panel (64 KiB) streams from L2 at 176 bytes per
 * 24-cycle k step, far below what L2 delivers; the long KC halves the
 * read-modify-write passes over C. MC = 192 makes the packed A block
 * 384 KiB, under half of the 1 MiB L2, so it survives the B traffic;
 * NC = 4096 makes the packed B panel 8 MiB, inside the 32 MiB L3 with room
 * for both cores' panels.
 *
 * Zen 4 runs a 512-bit FMA as two 256-bit halves, so there this tile does
 * no more FMAs a cycle than the AVX2 path's 6 x 16, while cores with two
 * 512-bit FMA pipes (many Xeons) do twice as many; the table keeps Zen 4
 * from ever paying more than on the AVX2 path:
 * - products the AVX2 path reads in place (`middle`) run on its table, whose
 *   in-place kernels this tile does not match there, unless a transposed B
 *   (a layer's weights) outgrows the 1 MiB L2: the AVX2 path would pack it
 *   whole, where this one packs it a chunk at a time; larger ones, which pack
 *   (this table's in-place limits lie below the AVX2 path's), run here, and
 *   so do those with A stored transposed (weight gradients), which both
 *   paths pack from the same size on and this tile then multiplies with
 *   fewer loads per FMA;
 * - edge tiles come in steps of two rows and threads' slabs in steps of
 *   MR / 3 rows or NR / 2 columns, so a tile pads and a thread idles no
 *   more than on the AVX2 path;
 * - a thin transposed B takes one GEMV per row only up to NR / 4 columns:
 *   a 16-column tile costs what the AVX2 path's two 8-column vectors do. */
#include "gemm_kernels.h"
#include "vmath.h"

#if defined(PYNN_X86_64)
#include <immintrin.h>

#define TARGET PYNN_TARGET_AVX512
enum { MR = 12, NR = 32 };


/* rows (2 to MR, even) and vectors (1 or 2 of 16 columns) are constants at every
 * call, so each combination compiles to its own register-resident loop: a
 * short or narrow edge tile runs only the FMAs it needs. */
static inline __attribute__((always_inline)) TARGET void
tile_kernel(ptrdiff_t k, const float *a, ptrdiff_t a_row_step, ptrdiff_t a_k_step,
            const float *b, ptrdiff_t b_k_step, float *c, ptrdiff_t ldc,
            ptrdiff_t mr, ptrdiff_t nr, const pynn_tile_update *update, const int packed,
            const int rows, const int vectors)
{
    const __mmask16 mask0 = pynn_first_lanes16(nr), mask1 = pynn_first_lanes16(nr - 16);
    __m512 acc[MR][2];
    ptrdiff_t row[MR];
    _Pragma("GCC unroll 16")
    for (int i = 0; i < rows; i++) {
        acc[i][0] = _mm512_setzero_ps();
        acc[i][1] = _mm512_setzero_ps();
        /* Rows past mr repeat the last valid row: always in bounds, never stored. */
        row[i] = packed ? i : (i < mr ? i : mr - 1) * a_row_step;
    }
    if (packed) {
        a_k_step = MR;
        b_k_step = NR;
    }
    /* The tile of C is read only after the k loop; ask for it now, so a C
     * far out in L3 or memory (large n, ldc a multiple of 4 KiB) arrives
     * while the FMAs run. */
    _Pragma("GCC unroll 16")
    for (int i = 0; i < rows; i++) {
        if (i >= mr) break;
        _mm_prefetch((const char *)(c + i * ldc), _MM_HINT_T0);
        if (vectors == 2) _mm_prefetch((const char *)(c + i * ldc + 16), _MM_HINT_T0);
    }
    for (ptrdiff_t p = 0; p < k; p++) {
        __m512 b0, b1 = _mm512_setzero_ps();
        if (packed) {
            b0 = _mm512_loadu_ps(b);
            if (vectors == 2) b1 = _mm512_loadu_ps(b + 16);
        } else {
            b0 = _mm512_maskz_loadu_ps(mask0, b);
            if (vectors == 2) b1 = _mm512_maskz_loadu_ps(mask1, b + 16);
        }
        _Pragma("GCC unroll 16")
        for (int i = 0; i < rows; i++) {
            const __m512 av = _mm512_set1_ps(a[row[i]]);
            acc[i][0] = _mm512_fmadd_ps(av, b0, acc[i][0]);
            if (vectors == 2) acc[i][1] = _mm512_fmadd_ps(av, b1, acc[i][1]);
        }
        a += a_k_step;
        b += b_k_step;
    }

    const __m512 alpha = _mm512_set1_ps(update->alpha), beta = _mm512_set1_ps(update->beta);
    const __m512 zero = _mm512_setzero_ps();
    const int read_c = update->beta != 0.0f;
    __m512 col0 = zero, col1 = zero;
    if (update->col_bias) {
        col0 = _mm512_maskz_loadu_ps(mask0, update->col_bias);
        col1 = _mm512_maskz_loadu_ps(mask1, update->col_bias + 16);
    }
    _Pragma("GCC unroll 16")
    for (int i = 0; i < rows; i++) {
        if (i >= mr) break;
        float *ci = c + i * ldc;
        __m512 r0 = _mm512_mul_ps(acc[i][0], alpha), r1 = _mm512_mul_ps(acc[i][1], alpha);
        if (read_c) {
            r0 = _mm512_fmadd_ps(beta, _mm512_maskz_loadu_ps(mask0, ci), r0);
            r1 = _mm512_fmadd_ps(beta, _mm512_maskz_loadu_ps(mask1, ci + 16), r1);
        }
        if (update->col_bias) {
            r0 = _mm512_add_ps(r0, col0);
            r1 = _mm512_add_ps(r1, col1);
        }
        if (update->row_bias) {
            const __m512 bias = _mm512_set1_ps(update->row_bias[i]);
            r0 = _mm512_add_ps(r0, bias);
            r1 = _mm512_add_ps(r1, bias);
        }
        if (update->relu) {  /* max(0, NaN) keeps the NaN, as PyTorch's relu */
            r0 = _mm512_max_ps(zero, r0);
            r1 = _mm512_max_ps(zero, r1);
        }
        _mm512_mask_storeu_ps(ci, mask0, r0);
        if (vectors == 2) _mm512_mask_storeu_ps(ci + 16, mask1, r1);
    }
}

/* A tile of mr <= MR rows runs the variant of the next even row count, not
 * of the next third of MR: the AVX2 tiles' granularity, so a ragged edge (a
 * 10-row classifier head's weight gradient) pads no more rows here, where an
 * FMA costs twice as much on cores that split 512-bit FMAs. */
static inline __attribute__((always_inline)) TARGET void
tile_by_shape(ptrdiff_t k, const float *a, ptrdiff_t a_row_step, ptrdiff_t a_k_step,
              const float *b, ptrdiff_t b_k_step, float *c, ptrdiff_t ldc, ptrdiff_t mr,
              ptrdiff_t nr, const pynn_tile_update *update, const int packed)
{
#define ROWS(rows) (nr > NR / 2 ? PYNN_TILE(rows, 2) : PYNN_TILE(rows, 1))
    switch ((mr + 1) / 2) {
    case 1: ROWS(2); break;
    case 2: ROWS(4); break;
    case 3: ROWS(6); break;
    case 4: ROWS(8); break;
    case 5: ROWS(10); break;
    default: ROWS(MR); break;
    }
#undef ROWS
}

PYNN_MICROKERNEL(microkernel_avx512_12x32_packed, , 1)
PYNN_MICROKERNEL(microkernel_avx512_12x32_strided, , 0)

#define VEC __m512
#define LANES 16
#define MASK __mmask16
#define FIRST_LANES(n) pynn_first_lanes16(n)
#define ZERO() _mm512_setzero_ps()
#define SPLAT(x) _mm512_set1_ps(x)
#define LOAD(p) _mm512_loadu_ps(p)
#define STORE(p, v) _mm512_storeu_ps(p, v)
#define LOAD_FIRST(m, p) _mm512_maskz_loadu_ps(m, p)
#define STORE_FIRST(m, p, v) _mm512_mask_storeu_ps(p, m, v)
#define FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define ADD(a, b) _mm512_add_ps(a, b)
#define SUM(v) _mm512_reduce_add_ps(v)
#define GEMV_DOT gemv_dot_avx512
#define GEMV_AXPY gemv_axpy_avx512
#include "gemm_gemv.h"

/* A panel row is one or two masked vectors (stride 12 or 32): a row of the
 * source lands in one load and one store, zeros past count included. */
static TARGET void pack_straight_avx512(int width, int stride, const float *src, ptrdiff_t ld,
                                        ptrdiff_t depth, ptrdiff_t count, float *dst)
{
    for (ptrdiff_t c0 = 0; c0 < count; c0 += width, dst += stride * depth) {
        const ptrdiff_t present = count - c0 < width ? count - c0 : width;
        for (int q0 = 0; q0 < stride; q0 += 16) {
            const __mmask16 load = pynn_first_lanes16(present - q0), store = pynn_first_lanes16(stride - q0);
            const float *row = src + c0 + q0;
            float *out = dst + q0;
            for (ptrdiff_t p = 0; p < depth; p++, row += ld, out += stride)
                _mm512_mask_storeu_ps(out, store, _mm512_maskz_loadu_ps(load, row));
        }
    }
}

/* pynn_gemm_b_rows in 512-bit vectors, prefetching as gemm_kernels.h says. */
static inline __attribute__((always_inline)) TARGET void
b_rows_kernel(ptrdiff_t k, const float *b, ptrdiff_t ldb, ptrdiff_t rows, const float *panel,
              ptrdiff_t cols, float *sums, const int vectors)
{
    const float *row[MR];
    __m512 acc[MR][2];
    _Pragma("GCC unroll 16")
    for (int j = 0; j < MR; j++) {
        row[j] = b + (j < rows ? j : rows - 1) * ldb;  /* rows past `rows` repeat the last */
        acc[j][0] = acc[j][1] = _mm512_setzero_ps();
    }
    const float *next = b + MR * ldb;
    for (ptrdiff_t p = 0; p < k; p++, panel += NR) {
        const ptrdiff_t ahead = p / MR * 16;
        if (ahead < k) _mm_prefetch((const char *)(next + p % MR * ldb + ahead), _MM_HINT_T1);
        const __m512 a0 = _mm512_loadu_ps(panel);
        const __m512 a1 = vectors == 2 ? _mm512_loadu_ps(panel + 16) : a0;
        _Pragma("GCC unroll 16")
        for (int j = 0; j < MR; j++) {
            const __m512 bv = _mm512_set1_ps(row[j][p]);
            acc[j][0] = _mm512_fmadd_ps(bv, a0, acc[j][0]);
            if (vectors == 2) acc[j][1] = _mm512_fmadd_ps(bv, a1, acc[j][1]);
        }
    }
    _Pragma("GCC unroll 16")
    for (int j = 0; j < MR; j++) {
        if (j >= rows) break;
        _mm512_storeu_ps(sums + j * NR, acc[j][0]);
        if (vectors == 2) _mm512_storeu_ps(sums + j * NR + 16, acc[j][1]);
    }
}

static TARGET void b_rows_avx512(ptrdiff_t k, const float *b, ptrdiff_t ldb, ptrdiff_t rows,
                                 const float *panel, ptrdiff_t cols, float *sums)
{
    if (cols > 16)
        b_rows_kernel(k, b, ldb, rows, panel, cols, sums, 2);
    else
        b_rows_kernel(k, b, ldb, rows, panel, cols, sums, 1);
}

const struct pynn_gemm_kernels pynn_gemm_avx512 = {
    .mr = MR, .nr = NR, .a_stride = MR, .split_rows = MR / 3, .split_cols = NR / 2,
    .mc = 192, .kc = 512, .nc = 4096, .in_place_work = 1 << 21,
    .in_place_trans_b_work = 1 << 21,
    .middle = &pynn_gemm_avx2, .middle_trans_b_floats = 1 << 18,
    PYNN_GEMM_THRESHOLDS,
    .narrow_cols = NR / 4,
    .packed = microkernel_avx512_12x32_packed,
    .strided = microkernel_avx512_12x32_strided,
    .dot = gemv_dot_avx512,
    .axpy = gemv_axpy_avx512,
    .dots = pynn_gemm_dots_avx2,
    .b_rows = b_rows_avx512,
    .rank_update = pynn_gemm_rank_update_avx2,
    .pack_transposed = pynn_pack_transposed_avx2,
    .pack_straight = pack_straight_avx512,
};

#endif
