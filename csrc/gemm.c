/* Single-precision GEMM in the Goto/BLIS anatomy (contract in gemm.h).
 *
 *   for jc in n by NC:                 B panel KC x NC, packed, lives in L3
 *     for pc in k by KC:               pack B[pc:+KC, jc:+NC] into NR-column micro-panels
 *       for ic in m by MC:             pack A[ic:+MC, pc:+KC] into MR-row micro-panels (L2)
 *         for jr in NC by NR:          one B micro-panel stays in L1 ...
 *           for ir in MC by MR:        ... while the A micro-panels stream past it
 *             micro-kernel: C[MR x NR] tile, alpha/beta and epilogue fused in its store
 *
 * Up to 2 MC rows of A are one block, and the two outer loops swap: A is
 * packed once per KC block, B a small chunk at a time, right before use.
 *
 * Transposes are absorbed by the packing routines; partial panels are zero-padded.
 * In the blocked path, when C's rows start inside a cache line, the first B
 * micro-panel is only as wide as the columns before the line, so the other
 * tiles store whole lines.
 * The first KC block applies beta (never reading C when beta == 0), later ones
 * add with beta = 1, and only the last adds the biases and the activation, so
 * every element's sum runs over k in the same order whatever the thread count.
 *
 * Shortcuts skip packing where it would cost more than it saves: GEMV
 * (m == 1 or n == 1); the rank-k update for k <= 10, written row by row; one
 * GEMV per row when a transposed B has only a few rows; for a few rows of A
 * against a large transposed B, C = A Bᵀ as (B Aᵀ)ᵀ, B read in place; dot
 * products for a few rows of A against a smaller one; and small to middle problems, where
 * the micro-kernel reads A and B in place (B packed whole when transposed). */

#include <stdint.h>

#include "gemm.h"
#include "gemm_kernels.h"
#include "scratch.h"

/* 64-byte cache lines: where rows start within them decides how a strip of
 * 16 floats is read. */
#define LINE_FLOATS 16
/* GEMV and dot products write their sums to a stack buffer this long before
 * the C update. */
#define GEMV_CHUNK 1024

static ptrdiff_t min_size(ptrdiff_t x, ptrdiff_t y) { return x < y ? x : y; }
static ptrdiff_t round_up(ptrdiff_t x, ptrdiff_t step) { return (x + step - 1) / step * step; }

/* The plain triple loop: used only if the packing buffers cannot be allocated. */
static void gemm_unblocked(int trans_a, int trans_b, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                           const float *a, ptrdiff_t lda, const float *b, ptrdiff_t ldb,
                           float *c, ptrdiff_t ldc, const pynn_tile_update *update)
{
    for (ptrdiff_t i = 0; i < m; i++)
        for (ptrdiff_t j = 0; j < n; j++) {
            float sum = 0.0f;
            for (ptrdiff_t p = 0; p < k; p++)
                sum += (trans_a ? a[p * lda + i] : a[i * lda + p])
                     * (trans_b ? b[j * ldb + p] : b[p * ldb + j]);
            pynn_finish_element(c + i * ldc + j, sum, i, j, update);
        }
}

/* op(A)[i0 : i0 + rows, p0 : p0 + depth] as MR-row micro-panels, each
 * [depth][a_stride]: a transposing copy unless A is stored transposed. */
static void pack_a_block(const pynn_gemm_kernels *kern, int trans_a, const float *a, ptrdiff_t lda,
                         ptrdiff_t i0, ptrdiff_t p0, ptrdiff_t rows, ptrdiff_t depth, float *dst)
{
    if (trans_a)
        kern->pack_straight(kern->mr, kern->a_stride, a + p0 * lda + i0, lda, depth, rows, dst);
    else
        kern->pack_transposed(kern->mr, kern->a_stride, a + i0 * lda + p0, lda, depth, rows, dst);
}

/* op(B)[p0 : p0 + depth, j0 : j0 + cols] as NR-column micro-panels, each [depth][NR]:
 * a transposing copy if B is stored transposed. */
static void pack_b_columns(const pynn_gemm_kernels *kern, int trans_b, const float *b, ptrdiff_t ldb,
                           ptrdiff_t p0, ptrdiff_t j0, ptrdiff_t depth, ptrdiff_t cols, float *dst)
{
    if (trans_b)
        kern->pack_transposed(kern->nr, kern->nr, b + j0 * ldb + p0, ldb, depth, cols, dst);
    else
        kern->pack_straight(kern->nr, kern->nr, b + p0 * ldb + j0, ldb, depth, cols, dst);
}

/* The same, its first micro-panel `lead` columns wide (zero-padded) when
 * lead > 0, so that the others match C's cache lines (see line_lead). */
static void pack_b_panel(const pynn_gemm_kernels *kern, int trans_b, const float *b, ptrdiff_t ldb,
                         ptrdiff_t p0, ptrdiff_t j0, ptrdiff_t depth, ptrdiff_t cols,
                         ptrdiff_t lead, float *dst)
{
    if (lead > 0 && lead < cols) {
        pack_b_columns(kern, trans_b, b, ldb, p0, j0, depth, lead, dst);
        pack_b_columns(kern, trans_b, b, ldb, p0, j0 + lead, depth, cols - lead,
                       dst + kern->nr * depth);
    } else {
        pack_b_columns(kern, trans_b, b, ldb, p0, j0, depth, cols, dst);
    }
}

/* Where every row of a matrix `ld` floats apart starts within its cache
 * line, in floats; -1 when the rows drift (ld not a multiple of a line) or
 * the data is not float-aligned. */
static ptrdiff_t line_offset(const float *data, ptrdiff_t ld)
{
    const uintptr_t bytes = (uintptr_t)data % (LINE_FLOATS * sizeof(float));
    if (ld % LINE_FLOATS || bytes % sizeof(float))
        return -1;
    return (ptrdiff_t)(bytes / sizeof(float));
}

/* Columns of C before its rows reach a cache line, modulo NR, when every row
 * starts at the same place in its line; 0 otherwise. Tiles from there on
 * cover whole lines: numpy's large arrays start 16 bytes past one, where
 * every 16-column tile of C would span two lines and each store would touch
 * both. Aligned C gets lead 0 and the usual tiles. */
static ptrdiff_t line_lead(const pynn_gemm_kernels *kern, const float *c, ptrdiff_t ldc)
{
    const ptrdiff_t offset = line_offset(c, ldc);
    return offset < 0 ? 0 : (LINE_FLOATS - offset) % LINE_FLOATS % kern->nr;
}

/* The end of the column chunk from jc: chunks are nc wide, but the first one
 * also takes the `lead` columns before the line (its B panel has room for
 * one more micro-panel). */
static ptrdiff_t chunk_end(ptrdiff_t jc, ptrdiff_t nc, ptrdiff_t lead, ptrdiff_t n)
{
    return min_size(n, (jc == 0 ? lead : jc) + nc);
}

/* The update a tile at (i, j) receives: biases shifted to it, the epilogue
 * only when this KC block finishes the sum. */
static pynn_tile_update tile_update(const pynn_tile_update *whole, float beta, int last,
                                    ptrdiff_t i, ptrdiff_t j)
{
    pynn_tile_update tile = *whole;
    tile.beta = beta;
    tile.col_bias = last && whole->col_bias ? whole->col_bias + j : NULL;
    tile.row_bias = last && whole->row_bias ? whole->row_bias + i : NULL;
    tile.relu = last && whole->relu;
    return tile;
}

/* The two ways to compute a slab of C: gemm_blocked and gemm_in_place. */
typedef void (*gemm_path)(const pynn_gemm_kernels *kern, int trans_a, int trans_b,
                          ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                          const float *a, ptrdiff_t lda, const float *b, ptrdiff_t ldb,
                          float *c, ptrdiff_t ldc, const pynn_tile_update *update);

/* The macro-kernel: C[i0 : i0 + rows, j0 : j0 + cols] (c points at its
 * first element) from a packed A block and B panel of `depth` k steps, each B
 * micro-panel kept in L1 while the A micro-panels stream past it. */
static void macro_kernel(const pynn_gemm_kernels *kern, ptrdiff_t rows, ptrdiff_t cols,
                         ptrdiff_t depth, ptrdiff_t lead, const float *a_packed,
                         const float *b_packed, float *c, ptrdiff_t ldc,
                         const pynn_tile_update *update, float beta, int last, ptrdiff_t i0,
                         ptrdiff_t j0)
{
    const int mr = kern->mr, nr = kern->nr;
    ptrdiff_t width = lead > 0 ? lead : nr;  /* the first micro-panel's columns */
    for (ptrdiff_t jr = 0, panel = 0; jr < cols; jr += width, width = nr, panel++) {
        const float *b_panel = b_packed + panel * nr * depth;
        for (ptrdiff_t ir = 0; ir < rows; ir += mr) {
            pynn_tile_update tile = tile_update(update, beta, last, i0 + ir, j0 + jr);
            kern->packed(depth, a_packed + ir / mr * kern->a_stride * depth, 1, kern->a_stride,
                         b_panel, nr, c + ir * ldc + jr, ldc, min_size(mr, rows - ir),
                         min_size(width, cols - jr), &tile);
        }
    }
}

/* The Goto loop nest over packed panels, or for up to 2 MC rows the order
 * below it. */
static void gemm_blocked(const pynn_gemm_kernels *kern, int trans_a, int trans_b,
                         ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                         const float *a, ptrdiff_t lda, const float *b, ptrdiff_t ldb,
                         float *c, ptrdiff_t ldc, const pynn_tile_update *update)
{
    const int mr = kern->mr, nr = kern->nr;
    /* Up to 2 MC rows make one A block; more split into equal MC blocks (a
     * thread's 1024 rows into 7 x 132 + 100, not 7 x 144 + 16): a last block
     * of a few rows reuses each B micro-panel it loads too little. */
    const ptrdiff_t m_blocks = m <= 2 * kern->mc ? 1 : (m + kern->mc - 1) / kern->mc;
    const ptrdiff_t mc = min_size(round_up((m + m_blocks - 1) / m_blocks, mr), round_up(m, mr));
    /* k splits into equal KC blocks (784 = 3 x 264, not 3 x 256 + 16): a thin
     * last block would pay a whole pass over C for a few terms. */
    const ptrdiff_t k_blocks = (k + kern->kc - 1) / kern->kc;
    const ptrdiff_t kc = min_size(round_up((k + k_blocks - 1) / k_blocks, 8), k);
    /* with one A block, B is packed kern->b_chunk_floats at a time (below) */
    const ptrdiff_t chunk = round_up(kern->b_chunk_floats / kc, nr);
    const ptrdiff_t nc = min_size(m_blocks == 1 ? chunk : kern->nc, round_up(n, nr));
    float *a_packed = pynn_scratch(PYNN_SCRATCH_PACK_A, mc / mr * kern->a_stride * kc);
    const ptrdiff_t lead = line_lead(kern, c, ldc);
    float *b_packed = pynn_scratch(PYNN_SCRATCH_PACK_B, kc * (nc + nr));
    if (!a_packed || !b_packed) {
        gemm_unblocked(trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc, update);
        return;
    }
    if (m_blocks == 1) {
        /* A whole B panel (KC x NC, up to 4 MiB) would serve this one A block
         * only, and by the time the macro-kernel reached most of it, it would
         * have left L2 for L3. So A is packed once per KC block and B a chunk
         * at a time, read from L2 right after its packing. Each tile's sums
         * are the same as in the loop nest below. Beyond 2 MC rows the nest
         * below packs each B panel once for all its A blocks; packing B a
         * chunk at a time there would repeat that packing per A block. */
        for (ptrdiff_t pc = 0; pc < k; pc += kc) {
            const ptrdiff_t depth = min_size(kc, k - pc);
            const float beta = pc == 0 ? update->beta : 1.0f;
            const int last = pc + depth == k;
            pack_a_block(kern, trans_a, a, lda, 0, pc, m, depth, a_packed);
            for (ptrdiff_t jc = 0, end; jc < n; jc = end) {
                end = chunk_end(jc, nc, lead, n);
                const ptrdiff_t cols = end - jc, first = jc == 0 ? lead : 0;
                pack_b_panel(kern, trans_b, b, ldb, pc, jc, depth, cols, first, b_packed);
                macro_kernel(kern, m, cols, depth, first, a_packed, b_packed, c + jc, ldc,
                             update, beta, last, 0, jc);
            }
        }
        return;
    }
    for (ptrdiff_t jc = 0, end; jc < n; jc = end) {
        end = chunk_end(jc, nc, lead, n);
        const ptrdiff_t cols = end - jc, first = jc == 0 ? lead : 0;
        for (ptrdiff_t pc = 0; pc < k; pc += kc) {
            const ptrdiff_t depth = min_size(kc, k - pc);
            const float beta = pc == 0 ? update->beta : 1.0f;
            const int last = pc + depth == k;
            pack_b_panel(kern, trans_b, b, ldb, pc, jc, depth, cols, first, b_packed);
            for (ptrdiff_t ic = 0; ic < m; ic += mc) {
                const ptrdiff_t rows = min_size(mc, m - ic);
                pack_a_block(kern, trans_a, a, lda, ic, pc, rows, depth, a_packed);
                macro_kernel(kern, rows, cols, depth, first, a_packed, b_packed,
                             c + ic * ldc + jc, ldc, update, beta, last, ic, jc);
            }
        }
    }
}

/* A micro-panel read in place takes one line from each of `rows` rows `ld`
 * floats apart, and stays in L1 across its reuses only if those lines spread
 * over enough sets. A power-of-two stride does not: at 256 floats every row
 * falls in one of 4 sets (32 lines), so a 128-deep panel is evicted by itself. */
static int rows_collide(const pynn_gemm_kernels *kern, ptrdiff_t ld, ptrdiff_t rows)
{
    if (ld % LINE_FLOATS)  /* rows start at drifting offsets within their lines */
        return 0;
    ptrdiff_t lines = ld / LINE_FLOATS, sets = kern->l1_sets;
    while (lines % 2 == 0 && sets > 1) {
        lines /= 2;
        sets /= 2;
    }
    return rows > sets * kern->l1_ways;
}

/* The in-place path packs B whole when it is transposed, or when its rows
 * collide in L1 and `rows` rows of A reuse it. */
static int in_place_packs_b(const pynn_gemm_kernels *kern, int trans_b, ptrdiff_t ldb, ptrdiff_t k, ptrdiff_t rows)
{
    return trans_b || (rows >= kern->colliding_b_min_rows && rows_collide(kern, ldb, k));
}

/* Small and middle-sized problems: the micro-kernel reads A in place over the
 * whole k, and B too unless it is transposed or its rows collide in L1 over
 * many rows of A, in which cases it is packed once.
 * Up to a few MiB of operands this beats packing A, whose transposing copy
 * costs more than the cache misses it saves. */
static void gemm_in_place(const pynn_gemm_kernels *kern, int trans_a, int trans_b,
                          ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                          const float *a, ptrdiff_t lda, const float *b, ptrdiff_t ldb,
                          float *c, ptrdiff_t ldc, const pynn_tile_update *update)
{
    const int mr = kern->mr, nr = kern->nr;
    const ptrdiff_t a_row_step = trans_a ? 1 : lda, a_k_step = trans_a ? lda : 1;
    float *b_packed = NULL;
    if (in_place_packs_b(kern, trans_b, ldb, k, m)) {
        b_packed = pynn_scratch(PYNN_SCRATCH_PACK_B, k * round_up(n, nr));
        if (!b_packed) {
            gemm_unblocked(trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc, update);
            return;
        }
        pack_b_panel(kern, trans_b, b, ldb, 0, 0, k, n, 0, b_packed);
    }
    for (ptrdiff_t jr = 0; jr < n; jr += nr) {
        const float *b_panel = b_packed ? b_packed + jr * k : b + jr;
        const ptrdiff_t b_k_step = b_packed ? nr : ldb;
        for (ptrdiff_t ir = 0; ir < m; ir += mr) {
            pynn_tile_update tile = tile_update(update, update->beta, 1, ir, jr);
            kern->strided(k, a + ir * a_row_step, a_row_step, a_k_step, b_panel, b_k_step,
                          c + ir * ldc + jr, ldc, min_size(mr, m - ir), min_size(nr, n - jr),
                          &tile);
        }
    }
}

/* Outputs o0 to o0 + size of the GEMV below. */
static void gemv_chunk(const pynn_gemm_kernels *kern, int dot_form, ptrdiff_t o0, ptrdiff_t size,
                       ptrdiff_t k, const float *x, ptrdiff_t ldx, const float *v, ptrdiff_t v_step,
                       float *c, ptrdiff_t c_step, int output_is_row,
                       const pynn_tile_update *update)
{
    float sums[GEMV_CHUNK];
    if (dot_form)
        kern->dot(size, k, x + o0 * ldx, ldx, v, sums);
    else
        kern->axpy(size, k, x + o0, ldx, v, v_step, sums);
    for (ptrdiff_t o = 0; o < size; o++) {
        const ptrdiff_t out = o0 + o;
        pynn_finish_element(c + out * c_step, sums[o], output_is_row ? 0 : out,
                       output_is_row ? out : 0, update);
    }
}

/* y = X v as dot products (dot_form) or as a sum of rows of X scaled by v,
 * written to C at c[o * c_step] for the count outputs. Threads take chunks of
 * outputs; chunks start at multiples of 4, so each output's sum is computed
 * the same way whatever the thread count. */
static void gemv(const pynn_gemm_kernels *kern, int threads, int dot_form,
                 ptrdiff_t count, ptrdiff_t k, const float *x, ptrdiff_t ldx,
                 const float *v, ptrdiff_t v_step,
                 float *c, ptrdiff_t c_step, int output_is_row, const pynn_tile_update *update)
{
    const int parts = threads > 1 && (double)count * (double)k >= kern->gemv_parallel_work ? threads : 1;
    const ptrdiff_t chunk = min_size(GEMV_CHUNK, round_up((count + parts - 1) / parts, 16));
    const ptrdiff_t chunks = (count + chunk - 1) / chunk;
    PYNN_PARALLEL_FOR(chunks > 1 ? parts : 1, index, chunks, {
        gemv_chunk(kern, dot_form, index * chunk, min_size(chunk, count - index * chunk), k,
                   x, ldx, v, v_step, c, c_step, output_is_row, update);
    });
}

/* m == 1 or n == 1 with a unit-step vector where the dot form needs one. */
static int try_gemv(const pynn_gemm_kernels *kern, int threads, int trans_a, int trans_b,
                    ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                    const float *a, ptrdiff_t lda, const float *b, ptrdiff_t ldb,
                    float *c, ptrdiff_t ldc, const pynn_tile_update *update)
{
    if (m == 1) {  /* c[0, :] = op(A)[0, :] op(B); op(A)[0, p] = a[p * a_step] */
        const ptrdiff_t a_step = trans_a ? lda : 1;
        if (trans_b && a_step == 1)
            gemv(kern, threads, 1, n, k, b, ldb, a, 1, c, 1, 1, update);
        else if (!trans_b)
            gemv(kern, threads, 0, n, k, b, ldb, a, a_step, c, 1, 1, update);
        else
            return 0;
        return 1;
    }
    if (n == 1) {  /* c[:, 0] = op(A) op(B)[:, 0]; op(B)[p, 0] = b[p * b_step] */
        const ptrdiff_t b_step = trans_b ? 1 : ldb;
        if (!trans_a && b_step == 1)
            gemv(kern, threads, 1, m, k, a, lda, b, 1, c, ldc, 0, update);
        else if (trans_a)
            gemv(kern, threads, 0, m, k, a, lda, b, b_step, c, ldc, 0, update);
        else
            return 0;
        return 1;
    }
    return 0;
}

/* Columns j0 to j0 + cols of few_rows_dots below. */
static void dots_chunk(const pynn_gemm_kernels *kern, ptrdiff_t j0, ptrdiff_t cols,
                       ptrdiff_t m, ptrdiff_t k, const float *a, ptrdiff_t lda, const float *b,
                       ptrdiff_t ldb, float *c, ptrdiff_t ldc, const pynn_tile_update *update)
{
    float sums[GEMV_CHUNK];
    kern->dots(m, cols, k, a, lda, b + j0 * ldb, ldb, sums);
    for (ptrdiff_t i = 0; i < m; i++)
        for (ptrdiff_t j = 0; j < cols; j++)
            pynn_finish_element(c + i * ldc + j0 + j, sums[i * cols + j], i, j0 + j, update);
}

/* C = A Bᵀ for a few rows of A as dot products of their rows with B's (batch-8
 * inference): B is read once, where a tile would first pack all of it.
 * Threads take chunks of B's rows, multiples of the AVX2 kernel's 3 columns;
 * each sum is the same for any count. */
static void few_rows_dots(const pynn_gemm_kernels *kern, int threads,
                          ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                          const float *a, ptrdiff_t lda, const float *b, ptrdiff_t ldb,
                          float *c, ptrdiff_t ldc, const pynn_tile_update *update)
{
    const ptrdiff_t per_part = (n + threads - 1) / threads;
    const ptrdiff_t chunk = min_size(GEMV_CHUNK / m / 3 * 3, round_up(per_part, 3));
    const ptrdiff_t chunks = (n + chunk - 1) / chunk;
    PYNN_PARALLEL_FOR(chunks > 1 ? threads : 1, index, chunks, {
        dots_chunk(kern, index * chunk, min_size(chunk, n - index * chunk), m, k, a, lda, b, ldb,
                   c, ldc, update);
    });
}

/* Columns j0 to j0 + cols of transposed_product below: Cᵀ tiles of MR of
 * B's rows by NR of A's, each stored transposed into C from a stack tile,
 * by the path's b_rows kernel (which fetches the next tile's rows as it
 * goes) or else by the strided micro-kernel. The latter's epilogue finishes
 * the tile (a bias of C's columns is one of Cᵀ's rows) unless C is read
 * (beta != 0) or both biases are given, whose sum Cᵀ's epilogue would add
 * in the other order; otherwise each element is finished as it is stored. */
static void transposed_product_chunk(const pynn_gemm_kernels *kern, ptrdiff_t j0, ptrdiff_t cols,
                                     ptrdiff_t m, ptrdiff_t k, const float *a_packed,
                                     const float *b, ptrdiff_t ldb, float *c, ptrdiff_t ldc,
                                     const pynn_tile_update *update)
{
    float tile[PYNN_GEMM_MAX_MR * PYNN_GEMM_MAX_NR];
    const int mr = kern->mr, nr = kern->nr;
    const pynn_gemm_b_rows b_rows = kern->b_rows;
    const pynn_tile_update whole = *update;  /* a copy C's stores cannot alias: read once */
    const int fused = !b_rows && whole.beta == 0.0f && !(whole.col_bias && whole.row_bias);
    for (ptrdiff_t jr = j0; jr < j0 + cols; jr += mr) {
        const ptrdiff_t width = min_size(mr, j0 + cols - jr);
        for (ptrdiff_t ir = 0; ir < m; ir += nr) {
            const ptrdiff_t height = min_size(nr, m - ir);
            if (b_rows) {
                b_rows(k, b + jr * ldb, ldb, width, a_packed + ir * k, height, tile);
            } else {
                pynn_tile_update transposed = {1.0f, 0.0f, NULL, NULL, 0};
                if (fused) {
                    transposed.alpha = whole.alpha;
                    transposed.col_bias = whole.row_bias ? whole.row_bias + ir : NULL;
                    transposed.row_bias = whole.col_bias ? whole.col_bias + jr : NULL;
                    transposed.relu = whole.relu;
                }
                kern->strided(k, b + jr * ldb, ldb, 1, a_packed + ir * k, nr, tile, nr, width,
                              height, &transposed);
            }
            float *c_tile = c + ir * ldc + jr;
            if (fused) {
                for (ptrdiff_t i = 0; i < height; i++)
                    for (ptrdiff_t j = 0; j < width; j++)
                        c_tile[i * ldc + j] = tile[j * nr + i];
            } else {
                for (ptrdiff_t i = 0; i < height; i++)
                    for (ptrdiff_t j = 0; j < width; j++)
                        pynn_finish_element(c_tile + i * ldc + j, tile[j * nr + i], ir + i, jr + j,
                                            &whole);
            }
        }
    }
}

/* C = A Bᵀ for a few rows of A as Cᵀ = B Aᵀ: the micro-kernel reads MR of
 * B's rows in place, each weight once, against Aᵀ packed once into NR-column
 * panels that stay in L2, where a tile of C would first pack all of B. Each
 * sum runs over k in order from zero, as in any tile of the in-place path,
 * whatever the tiling. Threads take chunks of B's rows, multiples of MR. */
static void transposed_product(const pynn_gemm_kernels *kern, int threads,
                               ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                               const float *a, ptrdiff_t lda, const float *b, ptrdiff_t ldb,
                               float *c, ptrdiff_t ldc, const pynn_tile_update *update)
{
    float *a_packed = pynn_scratch(PYNN_SCRATCH_PACK_A, round_up(m, kern->nr) * k);
    if (!a_packed) {
        gemm_unblocked(0, 1, m, n, k, a, lda, b, ldb, c, ldc, update);
        return;
    }
    kern->pack_transposed(kern->nr, kern->nr, a, lda, k, m, a_packed);
    const ptrdiff_t chunk = round_up((n + threads - 1) / threads, kern->mr);
    const ptrdiff_t chunks = (n + chunk - 1) / chunk;
    PYNN_PARALLEL_FOR(chunks > 1 ? threads : 1, index, chunks, {
        transposed_product_chunk(kern, index * chunk, min_size(chunk, n - index * chunk), m, k,
                                 a_packed, b, ldb, c, ldc, update);
    });
}

/* Rows i0 to i0 + rows of rank_update below. */
static void rank_update_slab(const pynn_gemm_kernels *kern, ptrdiff_t i0, ptrdiff_t rows,
                             ptrdiff_t n, ptrdiff_t k, const float *a, ptrdiff_t a_row_step,
                             ptrdiff_t a_k_step, const float *b, ptrdiff_t ldb, float *c,
                             ptrdiff_t ldc, const pynn_tile_update *update)
{
    pynn_tile_update slab = tile_update(update, update->beta, 1, i0, 0);
    kern->rank_update(rows, n, k, a + i0 * a_row_step, a_row_step, a_k_step, b, ldb,
                      c + i0 * ldc, ldc, &slab);
}

/* C = op(A) B for k <= PYNN_RANK_UPDATE_MAX_K, B's rows contiguous: the cost
 * is writing C, so it goes row by row. Threads take slabs of rows. */
static void rank_update(const pynn_gemm_kernels *kern, int threads, int trans_a,
                        ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                        const float *a, ptrdiff_t lda, const float *b, ptrdiff_t ldb,
                        float *c, ptrdiff_t ldc, const pynn_tile_update *update)
{
    const ptrdiff_t a_row_step = trans_a ? 1 : lda, a_k_step = trans_a ? lda : 1;
    const ptrdiff_t slab = (m + threads - 1) / threads, slabs = (m + slab - 1) / slab;
    PYNN_PARALLEL_FOR(slabs > 1 ? threads : 1, index, slabs, {
        rank_update_slab(kern, index * slab, min_size(slab, m - index * slab), n, k, a,
                         a_row_step, a_k_step, b, ldb, c, ldc, update);
    });
}

/* C = op(A) Bᵀ one row at a time: row i of C is the GEMV B a_i. */
static void narrow_rows(const pynn_gemm_kernels *kern, int threads,
                        ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                        const float *a, ptrdiff_t lda, const float *b, ptrdiff_t ldb,
                        float *c, ptrdiff_t ldc, const pynn_tile_update *update)
{
    PYNN_PARALLEL_FOR(threads, i, m, {
        pynn_tile_update row = tile_update(update, update->beta, 1, i, 0);
        gemv(kern, 1, 1, n, k, b, ldb, a + i * lda, 1, c + i * ldc, 1, 1, &row);
    });
}

static void sgemm_on(const pynn_context *ctx, int trans_a, int trans_b,
                     ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                     float alpha, const float *a, ptrdiff_t lda,
                     const float *b, ptrdiff_t ldb,
                     float beta, float *c, ptrdiff_t ldc,
                     const pynn_epilogue *epilogue)
{
    const pynn_gemm_kernels *kern = ctx->kernels->gemm;
    pynn_tile_update update = {alpha, beta, NULL, NULL, 0};
    if (epilogue) {
        update.col_bias = epilogue->col_bias;
        update.row_bias = epilogue->row_bias;
        update.relu = epilogue->activation == PYNN_ACTIVATION_RELU;
    }
    if (k <= 0) {  /* an empty sum: only beta * C and the epilogue remain */
        for (ptrdiff_t i = 0; i < m; i++)
            for (ptrdiff_t j = 0; j < n; j++)
                pynn_finish_element(c + i * ldc + j, 0.0f, i, j, &update);
        return;
    }
    if (try_gemv(kern, ctx->num_threads, trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc, &update))
        return;
    const double work = (double)m * (double)n * (double)k;
    /* B(p, j) = b[p * ldb + j]: B untransposed, or one column stored contiguously */
    if (k <= PYNN_RANK_UPDATE_MAX_K && (!trans_b || (k == 1 && ldb == 1))) {
        const int threads = ctx->num_threads > 1 && (double)m * (double)n >= kern->rank_update_parallel
                            ? ctx->num_threads : 1;
        rank_update(kern, threads, trans_a, m, n, k, a, lda, b, ldb, c, ldc, &update);
        return;
    }
    if (trans_b && !trans_a && n <= kern->narrow_cols && (double)n * (double)k <= kern->narrow_b) {
        /* A few outputs per row (a classifier head): a tile would be mostly
         * padding, so each row of C is a GEMV over the rows of B instead,
         * which stay in L1 for every row. */
        const int threads = ctx->num_threads > 1 && work >= kern->parallel_work ? ctx->num_threads : 1;
        narrow_rows(kern, threads, m, n, k, a, lda, b, ldb, c, ldc, &update);
        return;
    }
    /* Chosen by m and k alone: an inference plan's threads each take some of
     * B's rows (whole 16-row grains, never as few as the rule above takes),
     * and every part must add its sums as the whole product would. */
    if (trans_b && !trans_a && m >= kern->transposed_product_min_rows
        && m <= kern->transposed_product_max_rows && k <= kern->transposed_product_max_k) {
        const int threads = ctx->num_threads > 1 && work >= kern->parallel_work ? ctx->num_threads : 1;
        transposed_product(kern, threads, m, n, k, a, lda, b, ldb, c, ldc, &update);
        return;
    }
    if (trans_b && !trans_a && (m <= kern->few_rows || (m <= kern->few_rows_deep && k >= kern->deep_k))) {
        const int threads = ctx->num_threads > 1 && work >= kern->parallel_work ? ctx->num_threads : 1;
        few_rows_dots(kern, threads, m, n, k, a, lda, b, ldb, c, ldc, &update);
        return;
    }
    /* Products up to the middle table's in-place limits are its to compute,
     * but for a transposed A, which both tables pack (the table says why),
     * and a transposed B too large to pack whole. */
    const pynn_gemm_kernels *middle = kern->middle;
    if (middle && !trans_a
        && work <= (trans_b ? middle->in_place_trans_b_work : middle->in_place_work)
        && !(trans_b && (double)k * (double)n > kern->middle_trans_b_floats))
        kern = middle;
    /* Threads take disjoint slabs of C along its longer side, cut at the
     * table's split steps; each packs its own panels, so no barriers are
     * needed, and each element's sum is the same whichever thread computes
     * it. An untransposed B read in place whose rows collide in L1 is cut
     * into column slabs whatever the shape: row slabs would each pack all of it
     * (or read it colliding, when too short to pack), column slabs pack only
     * their own columns. */
    const int split_rows = !trans_b && work <= kern->in_place_work && rows_collide(kern, ldb, k)
                           ? 0 : m >= n;
    const ptrdiff_t extent = split_rows ? m : n;
    const ptrdiff_t tile = split_rows ? kern->split_rows : kern->split_cols;
    ptrdiff_t parts = ctx->num_threads > 1 && work >= kern->parallel_work ? ctx->num_threads : 1;
    if (parts > (extent + tile - 1) / tile) parts = (extent + tile - 1) / tile;
    const ptrdiff_t slab = round_up((extent + parts - 1) / parts, tile);
    parts = (extent + slab - 1) / slab;
    /* Operands read in place up to middle sizes (further for a transposed B,
     * packed whole and then streamed from L2 over the whole k), and for a few
     * rows of A over a wide B (a convolution's GEMM: fewer than 4 MR rows),
     * whose strips so few row tiles read that packing them is not repaid;
     * packed beyond. */
    const int few_rows = m < 4 * kern->mr && !trans_b && k <= 2 * kern->kc;
    const int b_packed = in_place_packs_b(kern, trans_b, ldb, k, split_rows ? slab : m);
    const int ragged_b = !trans_b && !b_packed && work > kern->ragged_b_in_place_work
                         && (line_offset(b, ldb) != 0 || n % kern->nr);
    const double limit = trans_b ? kern->in_place_trans_b_work : kern->in_place_work;
    const int in_place = (few_rows || (work <= limit && !ragged_b
                                       && !(trans_a && work > kern->transposed_a_in_place_work)))
                         && (!b_packed || (double)k * (double)n <= kern->in_place_packed_b);
    const gemm_path path = in_place ? gemm_in_place : gemm_blocked;
    PYNN_PARALLEL_FOR((int)parts, part, parts, {  /* one slab per thread */
        const ptrdiff_t start = part * slab, size = min_size(slab, extent - start);
        const ptrdiff_t rows = split_rows ? size : m, cols = split_rows ? n : size;
        const ptrdiff_t i0 = split_rows ? start : 0, j0 = split_rows ? 0 : start;
        const float *a_part = trans_a ? a + i0 : a + i0 * lda;
        const float *b_part = trans_b ? b + j0 * ldb : b + j0;
        pynn_tile_update shifted = tile_update(&update, beta, 1, i0, j0);
        path(kern, trans_a, trans_b, rows, cols, k, a_part, lda, b_part, ldb,
             c + i0 * ldc + j0, ldc, &shifted);
    });
}

void pynn_sgemm(const pynn_context *ctx, int trans_a, int trans_b,
                ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,
                float alpha, const float *a, ptrdiff_t lda,
                const float *b, ptrdiff_t ldb,
                float beta, float *c, ptrdiff_t ldc,
                const pynn_epilogue *epilogue)
{
    if (m <= 0 || n <= 0) return;
    /* Below the lowest threshold of any path (gemv_parallel_work) no team
     * starts, so the cores are claimed only for work that may use them. */
    pynn_context call = *ctx;
    const double work = (double)m * (double)n * (double)k;
    const int may_split = work >= ctx->kernels->gemm->gemv_parallel_work;
    call.num_threads = may_split ? pynn_team_begin(ctx, ctx->num_threads) : 1;
    sgemm_on(&call, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, epilogue);
    pynn_team_end(ctx, call.num_threads);
}
