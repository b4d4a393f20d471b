/* The per-ISA pieces of the GEMM: register-blocked micro-kernels, GEMV
 * kernels and the block sizes that fit them to the caches. gemm.c owns the
 * blocking, packing and threading and only ever calls through this table.
 *
 * Micro-kernel contract (one MR x NR tile of C, MR/NR fixed per ISA):
 *   C[i, j] = update(sum_p A(i, p) * B(p, j)) for i < mr <= MR, j < nr <= NR.
 *   A(i, p) = a[i * a_row_step + p * a_k_step]; rows i >= mr are never read.
 *   B(p, j) = b[p * b_k_step + j]; columns j >= nr are never read.
 * A packed A micro-panel is a_row_step = 1, a_k_step = the ISA's a_stride
 * (MR, or more); a packed B micro-panel is b_k_step = NR (both zero-padded, so
 * edge tiles need no care).
 * The same kernel reads unpacked row-major operands directly on the
 * small-problem path. */
#ifndef PYNN_GEMM_KERNELS_H
#define PYNN_GEMM_KERNELS_H

#include <stddef.h>
#include "gemm.h"
#include "kernels.h"

/* How a tile's sum becomes C: c = alpha * sum + beta * c (c unread when
 * beta == 0), + col_bias[j] + row_bias[i], then ReLU. A later KC block runs
 * with beta = 1; only the last one carries the biases and the activation. */
typedef struct {
    float alpha, beta;
    const float *col_bias;  /* at the tile's first column, or NULL */
    const float *row_bias;  /* at the tile's first row, or NULL */
    int relu;
} pynn_tile_update;

/* C[i, j] (at c) from its sum, per the update, one element at a time: the
 * portable micro-kernel's epilogue, and the GEMV and k == 0 paths'. */
static inline void pynn_finish_element(float *c, float sum, ptrdiff_t i, ptrdiff_t j,
                                       const pynn_tile_update *update)
{
    float v = update->alpha * sum;
    if (update->beta != 0.0f) v += update->beta * *c;
    if (update->col_bias) v += update->col_bias[j];
    if (update->row_bias) v += update->row_bias[i];
    if (update->relu && v < 0.0f) v = 0.0f;  /* NaN fails the test and stays */
    *c = v;
}

typedef void (*pynn_microkernel)(ptrdiff_t k,
                                 const float *a, ptrdiff_t a_row_step, ptrdiff_t a_k_step,
                                 const float *b, ptrdiff_t b_k_step,
                                 float *c, ptrdiff_t ldc, ptrdiff_t mr, ptrdiff_t nr,
                                 const pynn_tile_update *update);

/* sums[r] = dot(x[r * ldx : r * ldx + k], v) for r < rows (the y = X v GEMV). */
typedef void (*pynn_gemv_dot)(ptrdiff_t rows, ptrdiff_t k, const float *x, ptrdiff_t ldx,
                              const float *v, float *sums);
/* sums[j] = sum_p v[p * v_step] * x[p * ldx + j] for j < cols (the y = v X GEMV). */
typedef void (*pynn_gemv_axpy)(ptrdiff_t cols, ptrdiff_t k, const float *x, ptrdiff_t ldx,
                               const float *v, ptrdiff_t v_step, float *sums);

/* sums[i * n + j] = dot(a[i * lda : i * lda + k], b[j * ldb : j * ldb + k]) for
 * i < m, j < n: C = A Bᵀ for a few rows of A, each row of B read once. */
typedef void (*pynn_gemm_dots)(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *a,
                               ptrdiff_t lda, const float *b, ptrdiff_t ldb, float *sums);

/* sums[j * NR + i] = sum_p b[j * ldb + p] * panel[p * NR + i] for j < rows <=
 * MR and i < cols <= NR, each sum over p in order from zero, as the
 * micro-kernel's: MR rows of a transposed B read in place against a packed
 * NR-column panel of Aᵀ (C = A Bᵀ as Cᵀ = B Aᵀ), zero-padded past cols,
 * with sums[j * NR + i] for i >= cols written or not. The next MR rows of B are
 * fetched into the caches meanwhile (a prefetch past B's end never faults):
 * at k step p the line of the next tile's row p % MR at k = p / MR * 16, as
 * each row is a stream too short for the hardware prefetcher to learn before
 * it ends (k = 384 is 24 lines). */
typedef void (*pynn_gemm_b_rows)(ptrdiff_t k, const float *b, ptrdiff_t ldb, ptrdiff_t rows,
                                 const float *panel, ptrdiff_t cols, float *sums);

/* C[i, j] = update(sum_p A(i, p) * B(p, j)) for i < m, j < n and k <= 10, with
 * A(i, p) = a[i * a_row_step + p * a_k_step] and B(p, j) = b[p * ldb + j]:
 * the rank-k update (a batch-1 weight gradient is k = 1), written one row of
 * C at a time. */
typedef void (*pynn_gemm_rank_update)(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *a,
                                      ptrdiff_t a_row_step, ptrdiff_t a_k_step,
                                      const float *b, ptrdiff_t ldb, float *c, ptrdiff_t ldc,
                                      const pynn_tile_update *update);
/* The largest k a rank_update kernel takes: row by row, one load of B feeds
 * one FMA, where a tile's k loop of a few steps is dwarfed by its setup and
 * epilogue; from k = 12 on the tiles are as fast. */
#define PYNN_RANK_UPDATE_MAX_K 10

/* The transposing copy into micro-panels: `count` rows of a row-major matrix
 * (row r at src + r * ld, its first `depth` floats) become panels of `width`
 * rows each, stored [depth][stride] (stride >= width), with element (p, q) of
 * panel t = row t * width + q at column p; rows past count and the padding
 * columns from width to stride are zeros. It packs A stored untransposed
 * (width MR, stride a_stride) and B stored transposed (width and stride NR). */
typedef void (*pynn_pack_transposed)(int width, int stride, const float *src, ptrdiff_t ld,
                                     ptrdiff_t depth, ptrdiff_t count, float *dst);

/* The straight copy into micro-panels: columns [0, count) of `depth` rows
 * (row p at src + p * ld) become panels of `width` columns each, stored
 * [depth][stride], columns past count and the padding as zeros. It packs A
 * stored transposed (width MR, stride a_stride) and B stored untransposed
 * (width and stride NR). */
typedef void (*pynn_pack_straight)(int width, int stride, const float *src, ptrdiff_t ld,
                                   ptrdiff_t depth, ptrdiff_t count, float *dst);

typedef struct pynn_gemm_kernels {
    int mr, nr;                /* register tile */
    int a_stride;              /* floats per k step of a packed A micro-panel (>= mr) */
    int split_rows, split_cols;  /* threads' slabs of C start at multiples of these */
    ptrdiff_t mc, kc, nc;      /* cache blocks: A is MC x KC in L2, B is KC x NC in L3 */
    double in_place_work;      /* up to this m * n * k the operands are read unpacked */
    double in_place_trans_b_work;  /* the same for a transposed B, packed whole */
    /* Where the shortcuts take over (work = m * n * k multiply-adds). */
    double parallel_work;      /* from here the tiled paths split work across threads */
    double gemv_parallel_work; /* a GEMV's team pays off from here; no team starts below */
    double rank_update_parallel;   /* elements of C from which a rank-k update is split */
    double narrow_b;           /* floats of a thin transposed B kept in L1 by one GEMV per row */
    int narrow_cols;           /* ... for a C of at most this many columns */
    int few_rows;              /* C = A Bᵀ as dot products up to this many rows of A, */
    int few_rows_deep;         /* ... and up to this many when k >= deep_k */
    ptrdiff_t deep_k;
    /* C = A Bᵀ as (B Aᵀ)ᵀ, B's rows read in place, for this many rows of A */
    int transposed_product_min_rows, transposed_product_max_rows;
    ptrdiff_t transposed_product_max_k;  /* ... up to this k */
    double transposed_a_in_place_work;  /* beyond it an A stored transposed is packed */
    double ragged_b_in_place_work;  /* beyond it a B off its cache lines takes the blocked path */
    double in_place_packed_b;  /* the most floats of B the in-place path packs whole */
    ptrdiff_t colliding_b_min_rows;  /* rows of A from which a B colliding in L1 is packed */
    ptrdiff_t b_chunk_floats;  /* B packed this many floats at a time beside one A block in L2 */
    int l1_sets, l1_ways;      /* L1d geometry, for telling when rows collide */
    /* The table that computes the tiled products with A untransposed up to
     * its own in-place limits, or NULL for this one. */
    const struct pynn_gemm_kernels *middle;
    /* The most floats of a transposed B the middle table takes: it packs such
     * a B whole before the first tile, which pays only while B stays in L2. */
    double middle_trans_b_floats;
    pynn_microkernel packed;   /* A and B packed (a_row_step 1, a_k_step MR, b_k_step NR) */
    pynn_microkernel strided;  /* any steps: the small path over unpacked operands */
    pynn_gemv_dot dot;
    pynn_gemv_axpy axpy;
    pynn_gemm_dots dots;
    pynn_gemm_b_rows b_rows;   /* NULL: the strided micro-kernel, without the prefetch */
    pynn_gemm_rank_update rank_update;
    pynn_pack_transposed pack_transposed;
    pynn_pack_straight pack_straight;
} pynn_gemm_kernels;

/* The thresholds every path uses unless its table says otherwise; each was
 * measured on Zen 3 and Zen 4 (the commit that set it records the figures).
 * - parallel_work: waking a team costs about as much as a small product's
 *   whole work; from here a second thread pays for it.
 * - gemv_parallel_work: a GEMV streams its matrix from memory, and a second
 *   thread pays off only once that matrix is large.
 * - rank_update_parallel: a rank-k update is bound by writing C, and a
 *   second thread pays off only once C is large.
 * - narrow_b: 32 KiB of B, the rows one GEMV per row of C keeps in L1.
 * - few_rows, few_rows_deep, deep_k: dot products read B once where a tile
 *   would pack all of it, which pays for a few rows of A, and for a few more
 *   when k is deep; for shallow k or more rows the tiles win.
 * - transposed_a_in_place_work: packing an A stored transposed (a weight
 *   gradient, dW = dYᵀ X) pays from 2^18 multiply-adds: read in place it
 *   gives the micro-kernel six floats per line, a new line at every k.
 * - ragged_b_in_place_work: a B whose rows start off a 64-byte line spans
 *   twice the lines in L1 per strip, with half its loads split across two
 *   lines, and a width not a multiple of NR masks its last tile's loads;
 *   beyond this the blocked path, which packs and pads it, wins.
 * - in_place_packed_b: beyond 4 MiB of B, the blocked path's KC x NC panels
 *   keep the retained scratch small.
 * - colliding_b_min_rows: packing a B whose rows collide in L1 pays only
 *   when this many rows of A reuse each micro-panel.
 * - b_chunk_floats: 96 KiB of B stays in a 512 KiB L2 beside an AVX2 A
 *   block of 2 MC x KC; larger chunks gain nothing.
 * - l1_sets, l1_ways: the L1d is 8 ways of 64 sets of 64-byte lines on
 *   Zen 3 and 4 and most x86 cores since.
 * - transposed_product_min_rows, _max_rows: from 13 to 32 rows of A against
 *   a transposed B (a Linear layer's weight), the micro-kernel reading B's
 *   rows in place beats both the dot products (fewer FMAs per load) and a
 *   tile path that packs B first, most of all when B streams from memory;
 *   up to 12 rows the dot products stay ahead when B is in cache (an
 *   AVX-512 tile of Cᵀ then fills half its vectors or less).
 * - transposed_product_max_k: the packed Aᵀ panels (32 x k floats at most)
 *   stay in a 512 KiB L2, read again for every MR rows of B. */
#define PYNN_GEMM_THRESHOLDS                                                          \
    .parallel_work = 64 * 64 * 64, .gemv_parallel_work = 1 << 17,                     \
    .rank_update_parallel = 1 << 16, .narrow_b = 1 << 13, .few_rows = 12,             \
    .few_rows_deep = 20, .deep_k = 512, .transposed_a_in_place_work = 1 << 18,        \
    .ragged_b_in_place_work = 1 << 21, .in_place_packed_b = 1 << 20,                  \
    .colliding_b_min_rows = 128, .b_chunk_floats = 24 * 1024, .l1_sets = 64, .l1_ways = 8,  \
    .transposed_product_min_rows = 13, .transposed_product_max_rows = 32,            \
    .transposed_product_max_k = 4096

/* A SIMD path's two micro-kernels, `name`_packed and `name`_strided, over the
 * file's always-inline tile_kernel(..., packed, rows, vectors): a tile of
 * mr <= MR rows and nr <= NR columns runs the smallest of a third, two thirds
 * or all of MR rows and of one or two vectors of NR / 2 columns that covers
 * it, each a compile-time shape with its own register-resident loop, so an
 * edge tile runs only the FMAs it needs. `packed_attributes` go on the packed
 * kernel alone. Expanded where TARGET, MR and NR are the file's. */
#define PYNN_TILE(rows, vectors) tile_kernel(k, a, a_row_step, a_k_step, b, b_k_step, \
                                             c, ldc, mr, nr, update, packed, rows, vectors)
#define PYNN_MICROKERNELS(name, packed_attributes)                                    \
    static inline __attribute__((always_inline)) TARGET void                          \
    tile_by_shape(ptrdiff_t k, const float *a, ptrdiff_t a_row_step,                   \
                  ptrdiff_t a_k_step, const float *b, ptrdiff_t b_k_step, float *c,    \
                  ptrdiff_t ldc, ptrdiff_t mr, ptrdiff_t nr,                           \
                  const pynn_tile_update *update, const int packed)                    \
    {                                                                                  \
        if (nr > NR / 2) {                                                             \
            if (mr <= MR / 3) PYNN_TILE(MR / 3, 2);                                    \
            else if (mr <= 2 * MR / 3) PYNN_TILE(2 * MR / 3, 2);                       \
            else PYNN_TILE(MR, 2);                                                     \
        } else {                                                                       \
            if (mr <= MR / 3) PYNN_TILE(MR / 3, 1);                                    \
            else if (mr <= 2 * MR / 3) PYNN_TILE(2 * MR / 3, 1);                       \
            else PYNN_TILE(MR, 1);                                                     \
        }                                                                              \
    }                                                                                  \
    PYNN_MICROKERNEL(name##_packed, packed_attributes, 1)                            \
    PYNN_MICROKERNEL(name##_strided, , 0)
/* One micro-kernel (pynn_microkernel) over tile_by_shape, A and B packed or not. */
#define PYNN_MICROKERNEL(function, attributes, packed)                                \
    static TARGET attributes void function(                                            \
        ptrdiff_t k, const float *a, ptrdiff_t a_row_step, ptrdiff_t a_k_step,         \
        const float *b, ptrdiff_t b_k_step, float *c, ptrdiff_t ldc, ptrdiff_t mr,     \
        ptrdiff_t nr, const pynn_tile_update *update)                                  \
    {                                                                                  \
        tile_by_shape(k, a, a_row_step, a_k_step, b, b_k_step, c, ldc, mr, nr,         \
                      update, packed);                                                 \
    }

/* The largest register tile of any ISA (sizes gemm.c's scratch tiles). */
#define PYNN_GEMM_MAX_MR 16
#define PYNN_GEMM_MAX_NR 32

#if defined(PYNN_X86_64)
/* 8 x 8 and 4 x 8 AVX transposes; AVX-512 CPUs run it too. */
void pynn_pack_transposed_avx2(int width, int stride, const float *src, ptrdiff_t ld,
                               ptrdiff_t depth, ptrdiff_t count, float *dst);
/* 4 rows of A by 3 of B per pass; AVX-512 CPUs run it too (untuned there). */
void pynn_gemm_dots_avx2(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *a, ptrdiff_t lda,
                         const float *b, ptrdiff_t ldb, float *sums);
/* Bound by writing C, not by its arithmetic: AVX-512 CPUs run it too. */
void pynn_gemm_rank_update_avx2(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *a,
                                ptrdiff_t a_row_step, ptrdiff_t a_k_step,
                                const float *b, ptrdiff_t ldb, float *c, ptrdiff_t ldc,
                                const pynn_tile_update *update);
#endif

#endif
