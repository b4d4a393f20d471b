/* AVX2 + FMA GEMM kernels: a 6 x 16 micro-kernel and the two GEMV forms.
 *
 * Register tile 6 x 16: 12 ymm accumulators (6 rows x 2 vectors of 8
 * columns), 2 ymm for the B row and 1 for the broadcast of A, of the 16 ymm
 * registers (the BLIS haswell shape). 12 FMAs per k step against two FMA
 * pipes of 4-cycle latency need at least 8 chains; 12 cover it.
 * Partial tiles use maskload/maskstore, so nothing outside the valid mr x nr
 * part of A, B or C is touched.
 *
 * Blocks: KC = 256 puts the 256 x 16 B micro-panel at 16 KiB in L1 beside the
 * 256-step A micro-panel (8 KiB, A_STRIDE below); MC = 144 makes the packed A
 * block 192 KiB of the L2; NC = 4080 keeps the packed B panel (4 MiB) in L3.
 * Up to 2^25 multiply-adds (about 320^3) the operands are read in place:
 * there packing A costs more than the cache misses it saves, so MLP shapes
 * and anything up to 256^3 run faster unpacked; from about 384^3 on, packing
 * is repaid. A transposed B (every Linear layer's weight) is packed whole on
 * that path and only A is read in place, which stays ahead up to 2^29. An
 * untransposed B read in place, or packed whole by each thread when its rows
 * collide in L1, falls behind the blocked path beyond 2^25, so that limit
 * stays there. */
#include "gemm_kernels.h"
#include "vmath.h"

#if defined(PYNN_X86_64)
#include <immintrin.h>
#include <stdint.h>

#define TARGET PYNN_TARGET_AVX2
/* A packed A micro-panel holds 8 floats per k step, 6 of them A's: then the
 * k loop steps A and B (16 floats) with one index register, A's address
 * scaled by 4 and B's by 8, and adds one register per k step besides its 20
 * loads and FMAs, not three. On a core shared with another thread the k loop
 * is bound by how many instructions it issues, not by its FMAs, so every
 * instruction taken out of it counts. (The full tile's loop, four k steps a
 * pass, has fewer to save: GCC steps A, B and a counter there, three adds
 * per 80 loads and FMAs.) */
enum { MR = 6, NR = 16, A_STRIDE = 8 };

static inline TARGET float horizontal_sum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* acc[i][v] += A(i, p) * B(p, 8v .. 8v + 7) for one k step p of packed panels. */
static inline __attribute__((always_inline)) TARGET void
packed_k_step(const float *a, const float *b, __m256 acc[MR][2], const int rows, const int vectors)
{
    const __m256 b0 = _mm256_loadu_ps(b);
    const __m256 b1 = vectors == 2 ? _mm256_loadu_ps(b + 8) : _mm256_setzero_ps();
    _Pragma("GCC unroll 16")
    for (int i = 0; i < rows; i++) {
        const __m256 av = _mm256_broadcast_ss(a + i);
        acc[i][0] = _mm256_fmadd_ps(av, b0, acc[i][0]);
        if (vectors == 2) acc[i][1] = _mm256_fmadd_ps(av, b1, acc[i][1]);
    }
}

/* acc[i][v] += the k steps of packed panels (A_STRIDE floats of A and NR of
 * B a step), four per pass: the loop's adds, compare and branch come once
 * per 80 instructions of loads and FMAs, not per 20: when a core is shared,
 * the loop is bound by how many instructions it issues. */
static inline __attribute__((always_inline)) TARGET void
packed_sums(ptrdiff_t k, const float *a, const float *b, __m256 acc[MR][2],
            const int rows, const int vectors)
{
    ptrdiff_t off = 0;
    const ptrdiff_t end = k * A_STRIDE, end4 = (k & ~(ptrdiff_t)3) * A_STRIDE;
    for (; off != end4; off += 4 * A_STRIDE) {
        _Pragma("GCC unroll 4")
        for (int step = 0; step < 4; step++)
            packed_k_step(a + off + step * A_STRIDE, b + 2 * off + step * NR,
                          acc, rows, vectors);
    }
    for (; off != end; off += A_STRIDE) packed_k_step(a + off, b + 2 * off, acc, rows, vectors);
}

/* acc[i][v] += the k steps of unpacked operands: A(i, p) at a[row[i] + p *
 * a_k_step], B(p, j) at b[p * b_k_step + j], masked to nr columns unless
 * the tile is full. A's end is the bound: no counter to step beside a and b. */
static inline __attribute__((always_inline)) TARGET void
strided_sums(ptrdiff_t k, const float *a, const ptrdiff_t row[MR], ptrdiff_t a_k_step,
             const float *b, ptrdiff_t b_k_step, ptrdiff_t nr, __m256 acc[MR][2],
             const int rows, const int vectors, const int full)
{
    const __m256i mask0 = pynn_first_lanes8(nr), mask1 = pynn_first_lanes8(nr - 8);
    for (const float *a_end = a + k * a_k_step; a != a_end; a += a_k_step, b += b_k_step) {
        __m256 b0, b1 = _mm256_setzero_ps();
        if (full) {
            b0 = _mm256_loadu_ps(b);
            if (vectors == 2) b1 = _mm256_loadu_ps(b + 8);
        } else {
            b0 = _mm256_maskload_ps(b, mask0);
            if (vectors == 2) b1 = _mm256_maskload_ps(b + 8, mask1);
        }
        _Pragma("GCC unroll 16")
        for (int i = 0; i < rows; i++) {
            const __m256 av = _mm256_broadcast_ss(a + row[i]);
            acc[i][0] = _mm256_fmadd_ps(av, b0, acc[i][0]);
            if (vectors == 2) acc[i][1] = _mm256_fmadd_ps(av, b1, acc[i][1]);
        }
    }
}

/* to = from, for a whole tile's sums. */
static inline __attribute__((always_inline)) TARGET void
copy_tile(__m256 from[MR][2], __m256 to[MR][2])
{
    _Pragma("GCC unroll 16")
    for (int i = 0; i < MR; i++) {
        to[i][0] = from[i][0];
        to[i][1] = from[i][1];
    }
}

/* The 6 x 16 tile's k loop runs in a function of its own whose loops start
 * on a 64-byte boundary. Inlined into the tile kernel beside the other
 * shapes, the packed loop lost two of its twelve accumulators to the stack
 * (GCC's register allocation). And the in-place loop runs measurably slower
 * when it starts partway into a 64-byte line; inlined, its place moved with
 * any change to the code around it.
 * A whole tile with alpha = 1 (whole_tile below) is stored from that
 * function too. Any other 6-row tile (alpha != 1, or a packed one of 5 rows
 * or 9 to 15 columns) returns its sums through memory, 24 moves, to the
 * tile kernel's epilogue: */
static __attribute__((noinline, aligned(64), optimize("align-loops=64"))) TARGET void
full_tile_sums(ptrdiff_t k, const float *a, const float *b, __m256 sums[MR][2])
{
    __m256 acc[MR][2] = {{_mm256_setzero_ps()}};
    packed_sums(k, a, b, acc, MR, 2);
    copy_tile(acc, sums);
}

static __attribute__((noinline, aligned(64), optimize("align-loops=64"))) TARGET void
full_tile_sums_in_place(ptrdiff_t k, const float *a, const ptrdiff_t row[MR], ptrdiff_t a_k_step,
                        const float *b, ptrdiff_t b_k_step, __m256 sums[MR][2])
{
    __m256 acc[MR][2] = {{_mm256_setzero_ps()}};
    strided_sums(k, a, row, a_k_step, b, b_k_step, NR, acc, MR, 2, 1);
    copy_tile(acc, sums);
}

/* C = acc + beta * C (C unread when beta == 0) + the biases, then ReLU: the
 * epilogue of a whole 6 x 16 tile with alpha = 1, the same arithmetic as the
 * tile kernel's, on sums still in registers: it saves the 24 moves that
 * return the sums through memory, which matter most on small GEMMs whose k
 * loops are short. A copy of that epilogue, not a call to it: the tile
 * kernel's general one (alpha, masks, fewer rows), inlined here with constant arguments, or
 * rewritten step by step over the rows as this one is, still made GCC keep
 * two of the twelve accumulators on the stack in the packed k loop above it
 * (checked in the disassembly). */
static inline __attribute__((always_inline)) TARGET void
store_whole_tile(__m256 acc[MR][2], float *c, ptrdiff_t ldc, float beta, const float *col_bias,
                 const float *row_bias, int relu)
{
    if (beta != 0.0f) {
        const __m256 keep = _mm256_set1_ps(beta);
        _Pragma("GCC unroll 16")
        for (int i = 0; i < MR; i++) {
            acc[i][0] = _mm256_fmadd_ps(keep, _mm256_loadu_ps(c + i * ldc), acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(keep, _mm256_loadu_ps(c + i * ldc + 8), acc[i][1]);
        }
    }
    if (col_bias) {
        const __m256 col0 = _mm256_loadu_ps(col_bias), col1 = _mm256_loadu_ps(col_bias + 8);
        _Pragma("GCC unroll 16")
        for (int i = 0; i < MR; i++) {
            acc[i][0] = _mm256_add_ps(acc[i][0], col0);
            acc[i][1] = _mm256_add_ps(acc[i][1], col1);
        }
    }
    if (row_bias) {
        _Pragma("GCC unroll 16")
        for (int i = 0; i < MR; i++) {
            const __m256 bias = _mm256_set1_ps(row_bias[i]);
            acc[i][0] = _mm256_add_ps(acc[i][0], bias);
            acc[i][1] = _mm256_add_ps(acc[i][1], bias);
        }
    }
    if (relu) {  /* max(0, NaN) keeps the NaN, as PyTorch's relu */
        _Pragma("GCC unroll 16")
        for (int i = 0; i < MR; i++) {
            acc[i][0] = _mm256_max_ps(_mm256_setzero_ps(), acc[i][0]);
            acc[i][1] = _mm256_max_ps(_mm256_setzero_ps(), acc[i][1]);
        }
    }
    _Pragma("GCC unroll 16")
    for (int i = 0; i < MR; i++) {
        _mm256_storeu_ps(c + i * ldc, acc[i][0]);
        _mm256_storeu_ps(c + i * ldc + 8, acc[i][1]);
    }
}

static __attribute__((noinline, aligned(64), optimize("align-loops=64"))) TARGET void
whole_tile(ptrdiff_t k, const float *a, const float *b, float *c, ptrdiff_t ldc, float beta,
           const float *col_bias, const float *row_bias, int relu)
{
    __m256 acc[MR][2] = {{_mm256_setzero_ps()}};
    packed_sums(k, a, b, acc, MR, 2);
    store_whole_tile(acc, c, ldc, beta, col_bias, row_bias, relu);
}

static __attribute__((noinline, aligned(64), optimize("align-loops=64"))) TARGET void
whole_tile_in_place(ptrdiff_t k, const float *a, const ptrdiff_t row[MR], ptrdiff_t a_k_step,
                    const float *b, ptrdiff_t b_k_step, float *c, ptrdiff_t ldc, float beta,
                    const float *col_bias, const float *row_bias, int relu)
{
    __m256 acc[MR][2] = {{_mm256_setzero_ps()}};
    strided_sums(k, a, row, a_k_step, b, b_k_step, NR, acc, MR, 2, 1);
    store_whole_tile(acc, c, ldc, beta, col_bias, row_bias, relu);
}

/* rows (2, 4 or MR) and vectors (1 or 2 of 8 columns) are constants at every
 * call, so a short or narrow edge tile runs only the FMAs it needs. */
static inline __attribute__((always_inline)) TARGET void
tile_kernel(ptrdiff_t k, const float *a, ptrdiff_t a_row_step, ptrdiff_t a_k_step,
            const float *b, ptrdiff_t b_k_step, float *c, ptrdiff_t ldc,
            ptrdiff_t mr, ptrdiff_t nr, const pynn_tile_update *update, const int packed,
            const int rows, const int vectors)
{
    __m256 acc[MR][2];
    ptrdiff_t row[MR];
    _Pragma("GCC unroll 16")
    for (int i = 0; i < rows; i++) {
        acc[i][0] = _mm256_setzero_ps();
        acc[i][1] = _mm256_setzero_ps();
        /* Rows past mr repeat the last valid row: always in bounds, never stored. */
        row[i] = (i < mr ? i : mr - 1) * a_row_step;  /* the strided loop's */
    }
    /* C is first touched after the k loop; fetching its rows now hides the
     * miss behind the loop (on large problems, where C is in L3 or memory,
     * the wait for it would otherwise be a large share of the tile's time). */
    _Pragma("GCC unroll 16")
    for (int i = 0; i < rows; i++) {
        if (i >= mr) break;
        _mm_prefetch((const char *)(c + i * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + i * ldc + nr - 1), _MM_HINT_T0);
    }
    const int full = nr == NR;
    if (rows == MR && vectors == 2 && mr == MR && full && update->alpha == 1.0f) {
        if (packed)
            whole_tile(k, a, b, c, ldc, update->beta, update->col_bias, update->row_bias,
                       update->relu);
        else
            whole_tile_in_place(k, a, row, a_k_step, b, b_k_step, c, ldc, update->beta,
                                update->col_bias, update->row_bias, update->relu);
        return;
    }
    if (rows == MR && vectors == 2 && (packed || full)) {
        /* acc's own address must not reach the call: GCC would then keep
         * every tile shape's accumulators in memory, storing them at each
         * k step, edge tiles included */
        __m256 sums[MR][2];
        if (packed) full_tile_sums(k, a, b, sums);
        else full_tile_sums_in_place(k, a, row, a_k_step, b, b_k_step, sums);
        copy_tile(sums, acc);
    } else if (packed) {
        packed_sums(k, a, b, acc, rows, vectors);
    } else {
        strided_sums(k, a, row, a_k_step, b, b_k_step, nr, acc, rows, vectors, full);
    }

    /* made after the k loop, which has no register to spare for them */
    const __m256i mask0 = pynn_first_lanes8(nr), mask1 = pynn_first_lanes8(nr - 8);
    const __m256 alpha = _mm256_set1_ps(update->alpha), beta = _mm256_set1_ps(update->beta);
    const __m256 zero = _mm256_setzero_ps();
    /* read once: C's stores may alias *update, which would be reloaded per row */
    const int read_c = update->beta != 0.0f, relu = update->relu;
    const float *col_bias = update->col_bias, *row_bias = update->row_bias;
    __m256 col0 = zero, col1 = zero;
    if (col_bias) {
        col0 = _mm256_maskload_ps(col_bias, mask0);
        col1 = _mm256_maskload_ps(col_bias + 8, mask1);
    }
    _Pragma("GCC unroll 16")
    for (int i = 0; i < rows; i++) {
        if (i >= mr) break;
        float *ci = c + i * ldc;
        __m256 r0 = _mm256_mul_ps(acc[i][0], alpha), r1 = _mm256_mul_ps(acc[i][1], alpha);
        if (read_c) {
            r0 = _mm256_fmadd_ps(beta, _mm256_maskload_ps(ci, mask0), r0);
            r1 = _mm256_fmadd_ps(beta, _mm256_maskload_ps(ci + 8, mask1), r1);
        }
        if (col_bias) {
            r0 = _mm256_add_ps(r0, col0);
            r1 = _mm256_add_ps(r1, col1);
        }
        if (row_bias) {
            const __m256 bias = _mm256_set1_ps(row_bias[i]);
            r0 = _mm256_add_ps(r0, bias);
            r1 = _mm256_add_ps(r1, bias);
        }
        if (relu) {  /* max(0, NaN) keeps the NaN, as PyTorch's relu */
            r0 = _mm256_max_ps(zero, r0);
            r1 = _mm256_max_ps(zero, r1);
        }
        if (full) {
            _mm256_storeu_ps(ci, r0);
            _mm256_storeu_ps(ci + 8, r1);
        } else {
            _mm256_maskstore_ps(ci, mask0, r0);
            if (vectors == 2) _mm256_maskstore_ps(ci + 8, mask1, r1);
        }
    }
}

/* GCC's induction-variable pass would give A its own pointer again in the
 * packed kernel (two more adds per k step); without it the loop keeps the
 * one index. */
PYNN_MICROKERNELS(microkernel_avx2_6x16, __attribute__((optimize("no-ivopts"))))

#define VEC __m256
#define LANES 8
#define MASK __m256i
#define FIRST_LANES(n) pynn_first_lanes8(n)
#define ZERO() _mm256_setzero_ps()
#define SPLAT(x) _mm256_set1_ps(x)
#define LOAD(p) _mm256_loadu_ps(p)
#define STORE(p, v) _mm256_storeu_ps(p, v)
#define LOAD_FIRST(m, p) _mm256_maskload_ps(p, m)
#define STORE_FIRST(m, p, v) _mm256_maskstore_ps(p, m, v)
#define FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define ADD(a, b) _mm256_add_ps(a, b)
#define SUM(v) horizontal_sum(v)
#define GEMV_DOT gemv_dot_avx2
#define GEMV_AXPY gemv_axpy_avx2
#include "gemm_gemv.h"

/* A tile update read into registers once: C's stores could alias it, so
 * read through the pointer it would be reloaded at every vector. */
typedef struct {
    __m256 alpha, beta;
    const float *col_bias;
    int read_c, row_bias, relu;
} row_update;

/* alpha * s + beta * C + biases, ReLU on 8 columns of a row of the rank-k
 * update; the first `lanes` only (C unread past them) when masked. The same
 * arithmetic as the tile kernel's epilogue, which keeps its own inline copy:
 * called from there, this one slowed the large GEMMs' tiles. */
static inline __attribute__((always_inline)) TARGET __m256
finish_row_vector(__m256 s, const float *c, ptrdiff_t j, __m256 row_bias, const row_update *u,
                  const int masked, __m256i lanes)
{
    __m256 r = _mm256_mul_ps(s, u->alpha);
    if (u->read_c)
        r = _mm256_fmadd_ps(u->beta, masked ? _mm256_maskload_ps(c + j, lanes) : _mm256_loadu_ps(c + j), r);
    if (u->col_bias)
        r = _mm256_add_ps(r, masked ? _mm256_maskload_ps(u->col_bias + j, lanes)
                                    : _mm256_loadu_ps(u->col_bias + j));
    if (u->row_bias) r = _mm256_add_ps(r, row_bias);
    if (u->relu) r = _mm256_max_ps(_mm256_setzero_ps(), r);
    return r;
}

/* One row of C of the rank-k update; k is a constant at every call. */
static inline __attribute__((always_inline)) TARGET void
rank_update_row(const int k, ptrdiff_t n, const float *a, ptrdiff_t a_k_step, const float *b,
                ptrdiff_t ldb, float *c, __m256 row_bias, const row_update *u)
{
    __m256 ap[PYNN_RANK_UPDATE_MAX_K];
    for (int p = 0; p < k; p++) ap[p] = _mm256_set1_ps(a[p * a_k_step]);
    ptrdiff_t j = 0;
    for (; j + 8 <= n; j += 8) {  /* the same sum, in the same order, as a tile's */
        __m256 s = _mm256_setzero_ps();
        for (int p = 0; p < k; p++) s = _mm256_fmadd_ps(ap[p], _mm256_loadu_ps(b + p * ldb + j), s);
        _mm256_storeu_ps(c + j, finish_row_vector(s, c, j, row_bias, u, 0, _mm256_setzero_si256()));
    }
    if (j < n) {
        const __m256i lanes = pynn_first_lanes8(n - j);
        __m256 s = _mm256_setzero_ps();
        for (int p = 0; p < k; p++)
            s = _mm256_fmadd_ps(ap[p], _mm256_maskload_ps(b + p * ldb + j, lanes), s);
        _mm256_maskstore_ps(c + j, lanes, finish_row_vector(s, c, j, row_bias, u, 1, lanes));
    }
}

/* Row by row, C is written in whole lines, front to back, where a 6 x 16
 * tile per k = 1 step writes 6 partial lines a whole row of C apart: the
 * update's cost is writing C, so its order decides the speed. */
TARGET void pynn_gemm_rank_update_avx2(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *a,
                                       ptrdiff_t a_row_step, ptrdiff_t a_k_step,
                                       const float *b, ptrdiff_t ldb, float *c, ptrdiff_t ldc,
                                       const pynn_tile_update *update)
{
    const row_update u = {_mm256_set1_ps(update->alpha), _mm256_set1_ps(update->beta),
                          update->col_bias, update->beta != 0.0f, update->row_bias != NULL,
                          update->relu};
    for (ptrdiff_t i = 0; i < m; i++) {
        const float *ai = a + i * a_row_step;
        float *ci = c + i * ldc;
        const __m256 bias = _mm256_set1_ps(u.row_bias ? update->row_bias[i] : 0.0f);
        switch (k) {
        case 1: rank_update_row(1, n, ai, a_k_step, b, ldb, ci, bias, &u); break;
        case 2: rank_update_row(2, n, ai, a_k_step, b, ldb, ci, bias, &u); break;
        case 3: rank_update_row(3, n, ai, a_k_step, b, ldb, ci, bias, &u); break;
        case 4: rank_update_row(4, n, ai, a_k_step, b, ldb, ci, bias, &u); break;
        case 5: rank_update_row(5, n, ai, a_k_step, b, ldb, ci, bias, &u); break;
        case 6: rank_update_row(6, n, ai, a_k_step, b, ldb, ci, bias, &u); break;
        case 7: rank_update_row(7, n, ai, a_k_step, b, ldb, ci, bias, &u); break;
        case 8: rank_update_row(8, n, ai, a_k_step, b, ldb, ci, bias, &u); break;
        case 9: rank_update_row(9, n, ai, a_k_step, b, ldb, ci, bias, &u); break;
        default: rank_update_row(10, n, ai, a_k_step, b, ldb, ci, bias, &u); break;
        }
    }
}

/* One step of 8 k (the first `tail` lanes of them when masked) for rows x cols
 * dot products; rows and cols are constants at every call. */
static inline __attribute__((always_inline)) TARGET void
dots_step(const int rows, const int cols, const float *a, ptrdiff_t lda, const float *b,
          ptrdiff_t ldb, const int masked, __m256i tail, __m256 acc[4][3])
{
    __m256 bj[3];
    for (int j = 0; j < cols; j++)
        bj[j] = masked ? _mm256_maskload_ps(b + j * ldb, tail) : _mm256_loadu_ps(b + j * ldb);
    for (int i = 0; i < rows; i++) {
        const __m256 ai = masked ? _mm256_maskload_ps(a + i * lda, tail)
                                 : _mm256_loadu_ps(a + i * lda);
        for (int j = 0; j < cols; j++) acc[i][j] = _mm256_fmadd_ps(ai, bj[j], acc[i][j]);
    }
}

static inline __attribute__((always_inline)) TARGET void
dots_tile(const int rows, const int cols, ptrdiff_t k, const float *a, ptrdiff_t lda,
          const float *b, ptrdiff_t ldb, float *sums, ptrdiff_t ld_sums)
{
    const __m256i tail = pynn_first_lanes8(k % 8);
    const ptrdiff_t k_full = k - k % 8;
    __m256 acc[4][3];
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) acc[i][j] = _mm256_setzero_ps();
    for (ptrdiff_t p = 0; p < k_full; p += 8)
        dots_step(rows, cols, a + p, lda, b + p, ldb, 0, tail, acc);
    if (k_full < k) dots_step(rows, cols, a + k_full, lda, b + k_full, ldb, 1, tail, acc);
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) sums[i * ld_sums + j] = horizontal_sum(acc[i][j]);
}

/* Four rows of A by three of B per pass: 7 loads feed 12 FMAs, whose twelve
 * independent sums cover the FMA pipes' latency (4 x 2, with 8 sums and 6
 * loads per 8 FMAs, does not cover it). B streams through once per four
 * rows of A (once in all for batch-4 inference). Each sum runs over k alike
 * in any tile shape, so the grouping never changes a result. */
TARGET void pynn_gemm_dots_avx2(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const float *a,
                                ptrdiff_t lda, const float *b, ptrdiff_t ldb, float *sums)
{
    for (ptrdiff_t j = 0; j < n; j += 3) {
        const float *bj = b + j * ldb;
        for (ptrdiff_t i = 0; i < m; i += 4) {
            const float *ai = a + i * lda;
            float *out = sums + i * n + j;
            const ptrdiff_t rows = m - i < 4 ? m - i : 4;
#define DOTS(r) (n - j >= 3 ? dots_tile(r, 3, k, ai, lda, bj, ldb, out, n) \
                            : n - j == 2 ? dots_tile(r, 2, k, ai, lda, bj, ldb, out, n) \
                            : dots_tile(r, 1, k, ai, lda, bj, ldb, out, n))
            if (rows == 4) DOTS(4); else if (rows == 3) DOTS(3); else if (rows == 2) DOTS(2);
            else DOTS(1);
#undef DOTS
        }
    }
}

/* In place: rows[q] holds 8 consecutive k of source row q; after, rows[p]
 * holds the 8 rows' values at k = p, a row of a packed micro-panel. */
static inline TARGET void transpose_8x8(__m256 rows[8])
{
    const __m256 t0 = _mm256_unpacklo_ps(rows[0], rows[1]), t1 = _mm256_unpackhi_ps(rows[0], rows[1]);
    const __m256 t2 = _mm256_unpacklo_ps(rows[2], rows[3]), t3 = _mm256_unpackhi_ps(rows[2], rows[3]);
    const __m256 t4 = _mm256_unpacklo_ps(rows[4], rows[5]), t5 = _mm256_unpackhi_ps(rows[4], rows[5]);
    const __m256 t6 = _mm256_unpacklo_ps(rows[6], rows[7]), t7 = _mm256_unpackhi_ps(rows[6], rows[7]);
    const __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
    rows[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
    rows[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    rows[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
    rows[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    rows[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
    rows[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    rows[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
    rows[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

/* rows[q] holds 8 consecutive k of source row q (q < 4); quads[p] gets the
 * 4 rows' values at k = p. */
static inline TARGET void transpose_4x8(const __m256 rows[4], __m128 quads[8])
{
    const __m256 t0 = _mm256_unpacklo_ps(rows[0], rows[1]), t1 = _mm256_unpackhi_ps(rows[0], rows[1]);
    const __m256 t2 = _mm256_unpacklo_ps(rows[2], rows[3]), t3 = _mm256_unpackhi_ps(rows[2], rows[3]);
    const __m256 s[4] = {_mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0)),   /* k 0 | k 4 */
                         _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2)),   /* k 1 | k 5 */
                         _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0)),   /* k 2 | k 6 */
                         _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2))};  /* k 3 | k 7 */
    for (int q = 0; q < 4; q++) {
        quads[q] = _mm256_castps256_ps128(s[q]);
        quads[q + 4] = _mm256_extractf128_ps(s[q], 1);
    }
}

/* Columns [q0, q0 + group) of one panel: source rows q0 + q at src + q * ld,
 * of which the first `present` exist (the others pack as zeros, and are not
 * read). Groups of 8 and 4 go through register transposes 8 k at a time. */
static inline __attribute__((always_inline)) TARGET void
pack_group(const int group, int stride, const float *src, ptrdiff_t ld, ptrdiff_t depth,
           ptrdiff_t present, float *dst)
{
    ptrdiff_t p = 0;
    if (group == 8 && present > 0) {
        for (; p + 8 <= depth; p += 8) {
            __m256 rows[8];
            for (int q = 0; q < 8; q++)
                rows[q] = q < present ? _mm256_loadu_ps(src + q * ld + p) : _mm256_setzero_ps();
            transpose_8x8(rows);
            for (int q = 0; q < 8; q++) _mm256_storeu_ps(dst + (p + q) * stride, rows[q]);
        }
    } else if (group == 4 && present > 0) {
        for (; p + 8 <= depth; p += 8) {
            __m256 rows[4];
            __m128 quads[8];
            for (int q = 0; q < 4; q++)
                rows[q] = q < present ? _mm256_loadu_ps(src + q * ld + p) : _mm256_setzero_ps();
            transpose_4x8(rows, quads);
            for (int q = 0; q < 8; q++) _mm_storeu_ps(dst + (p + q) * stride, quads[q]);
        }
    }
    for (; p < depth; p++)  /* the k tail, and rows past the edge as zeros */
        for (ptrdiff_t q = 0; q < group; q++)
            dst[p * stride + q] = q < present ? src[q * ld + p] : 0.0f;
}

TARGET void pynn_pack_transposed_avx2(int width, int stride, const float *src, ptrdiff_t ld,
                                      ptrdiff_t depth, ptrdiff_t count, float *dst)
{
    for (ptrdiff_t r0 = 0; r0 < count; r0 += width, dst += stride * depth) {
        const float *panel = src + r0 * ld;
        const ptrdiff_t present = count - r0 < width ? count - r0 : width;
        int q0 = 0;
        for (; q0 + 8 <= stride; q0 += 8)
            pack_group(8, stride, panel + q0 * ld, ld, depth, present - q0, dst + q0);
        for (; q0 + 4 <= stride; q0 += 4)
            pack_group(4, stride, panel + q0 * ld, ld, depth, present - q0, dst + q0);
        for (; q0 < stride; q0++)
            pack_group(1, stride, panel + q0 * ld, ld, depth, present - q0, dst + q0);
    }
}

/* A panel row is one or two 8-float vectors (stride 8 for A, 16 for B),
 * loaded masked where the panel or the source ends (zeros there, nothing read
 * beyond). Both vectors of a row are copied together: B's rows are often a
 * power of two apart, so its lines share a few L1 sets, and a second pass down
 * the panel for its right half found them evicted. The copy is a visible
 * share of a large training step, so it moves whole vectors. */
static TARGET void pack_straight_avx2(int width, int stride, const float *src, ptrdiff_t ld,
                                      ptrdiff_t depth, ptrdiff_t count, float *dst)
{
    for (ptrdiff_t c0 = 0; c0 < count; c0 += width, dst += stride * depth) {
        const ptrdiff_t present = count - c0 < width ? count - c0 : width;
        const __m256i left = pynn_first_lanes8(present), right = pynn_first_lanes8(present - 8);
        const int whole = present == stride;
        const float *row = src + c0;
        float *out = dst;
        for (ptrdiff_t p = 0; p < depth; p++, row += ld, out += stride) {
            _mm256_storeu_ps(out, whole ? _mm256_loadu_ps(row) : _mm256_maskload_ps(row, left));
            if (stride == 16)
                _mm256_storeu_ps(out + 8, whole ? _mm256_loadu_ps(row + 8)
                                                : _mm256_maskload_ps(row + 8, right));
        }
    }
}

/* pynn_gemm_b_rows in 256-bit vectors, prefetching as gemm_kernels.h says. */
static inline __attribute__((always_inline)) TARGET void
b_rows_kernel(ptrdiff_t k, const float *b, ptrdiff_t ldb, ptrdiff_t rows, const float *panel,
              ptrdiff_t cols, float *sums, const int vectors)
{
    const float *row[MR];
    __m256 acc[MR][2];
    _Pragma("GCC unroll 16")
    for (int j = 0; j < MR; j++) {
        row[j] = b + (j < rows ? j : rows - 1) * ldb;  /* rows past `rows` repeat the last */
        acc[j][0] = acc[j][1] = _mm256_setzero_ps();
    }
    const float *next = b + MR * ldb;
    for (ptrdiff_t p = 0; p < k; p++, panel += NR) {
        const ptrdiff_t ahead = p / MR * 16;
        if (ahead < k) _mm_prefetch((const char *)(next + p % MR * ldb + ahead), _MM_HINT_T1);
        const __m256 a0 = _mm256_loadu_ps(panel);
        const __m256 a1 = vectors == 2 ? _mm256_loadu_ps(panel + 8) : a0;
        _Pragma("GCC unroll 16")
        for (int j = 0; j < MR; j++) {
            const __m256 bv = _mm256_broadcast_ss(row[j] + p);
            acc[j][0] = _mm256_fmadd_ps(bv, a0, acc[j][0]);
            if (vectors == 2) acc[j][1] = _mm256_fmadd_ps(bv, a1, acc[j][1]);
        }
    }
    _Pragma("GCC unroll 16")
    for (int j = 0; j < MR; j++) {
        if (j >= rows) break;
        _mm256_storeu_ps(sums + j * NR, acc[j][0]);
        if (vectors == 2) _mm256_storeu_ps(sums + j * NR + 8, acc[j][1]);
    }
}

static TARGET void b_rows_avx2(ptrdiff_t k, const float *b, ptrdiff_t ldb, ptrdiff_t rows,
                               const float *panel, ptrdiff_t cols, float *sums)
{
    if (cols > 8)
        b_rows_kernel(k, b, ldb, rows, panel, cols, sums, 2);
    else
        b_rows_kernel(k, b, ldb, rows, panel, cols, sums, 1);
}

const struct pynn_gemm_kernels pynn_gemm_avx2 = {
    .mr = MR, .nr = NR, .a_stride = A_STRIDE, .split_rows = MR, .split_cols = NR,
    .mc = 144, .kc = 256, .nc = 4080, .in_place_work = 1 << 25,
    .in_place_trans_b_work = 1 << 29,
    PYNN_GEMM_THRESHOLDS,
    .narrow_cols = NR / 2,
    .packed = microkernel_avx2_6x16_packed,
    .strided = microkernel_avx2_6x16_strided,
    .dot = gemv_dot_avx2,
    .axpy = gemv_axpy_avx2,
    .dots = pynn_gemm_dots_avx2,
    .b_rows = b_rows_avx2,
    .rank_update = pynn_gemm_rank_update_avx2,
    .pack_transposed = pynn_pack_transposed_avx2,
    .pack_straight = pack_straight_avx2,
};

#endif
