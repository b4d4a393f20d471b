/* Dense-layer reductions and embedding gather/scatter (contracts in dense.h). */
#include <string.h>
#include "dense.h"
#include "vmath.h"

/* The column reductions and the embedding gather split across threads from
 * this many elements. */
#define PARALLEL_MIN_ELEMENTS 131072
/* Columns per parallel task: each task owns whole columns, so every sum runs
 * down its rows in order whatever the thread count. */
#define COLUMN_BLOCK 256

PYNN_INLINE void column_sums_block(ptrdiff_t rows, ptrdiff_t cols, ptrdiff_t first,
                                   ptrdiff_t last, const float *restrict dy,
                                   float *restrict db)
{
    for (ptrdiff_t j = first; j < last; j++) db[j] = 0.0f;
    for (ptrdiff_t i = 0; i < rows; i++) {
        const float *row = dy + i * cols;
        for (ptrdiff_t j = first; j < last; j++) db[j] += row[j];
    }
}

/* dz may be dy: each element is read before it is written. */
PYNN_INLINE void relu_mask_block(ptrdiff_t rows, ptrdiff_t cols, ptrdiff_t first,
                                 ptrdiff_t last, const float *dy, const float *restrict y,
                                 float *dz, float *restrict db)
{
    if (db)
        for (ptrdiff_t j = first; j < last; j++) db[j] = 0.0f;
    for (ptrdiff_t i = 0; i < rows; i++) {
        const float *dy_row = dy + i * cols, *y_row = y + i * cols;
        float *dz_row = dz + i * cols;
        if (db) {
            #pragma GCC ivdep
            for (ptrdiff_t j = first; j < last; j++) {
                float g = y_row[j] > 0.0f ? dy_row[j] : 0.0f;
                dz_row[j] = g;
                db[j] += g;
            }
        } else {
            #pragma GCC ivdep
            for (ptrdiff_t j = first; j < last; j++) dz_row[j] = y_row[j] > 0.0f ? dy_row[j] : 0.0f;
        }
    }
}

/* Rows of a table met in a random order are asked for this many places
 * ahead: far enough for a row from memory to arrive while the rows between
 * are copied or added. */
#define ROW_AHEAD 16

/* dst = src over one row; whole 64-byte blocks as fixed-size copies, which
 * the compiler turns into vector moves of the target's width. */
PYNN_INLINE void copy_row(float *restrict dst, const float *restrict src, ptrdiff_t dim)
{
    ptrdiff_t j = 0;
    for (; j + 16 <= dim; j += 16) memcpy(dst + j, src + j, 16 * sizeof(float));
    for (; j < dim; j++) dst[j] = src[j];
}

PYNN_INLINE void add_row(float *restrict dst, const float *restrict src, ptrdiff_t dim)
{
    for (ptrdiff_t j = 0; j < dim; j++) dst[j] += src[j];
}

PYNN_INLINE void zero_row(float *dst, ptrdiff_t dim)
{
    ptrdiff_t j = 0;
    for (; j + 16 <= dim; j += 16) memset(dst + j, 0, 16 * sizeof(float));
    for (; j < dim; j++) dst[j] = 0.0f;
}

/* out[i] = weight[index[i]] for i in [first, last); a table of scalars
 * (a bias per embedding) as one gather loop. */
PYNN_INLINE void gather_block(ptrdiff_t first, ptrdiff_t last, ptrdiff_t count, ptrdiff_t dim,
                              const float *restrict weight, const int64_t *restrict index,
                              float *restrict out)
{
    if (dim == 1) {
        for (ptrdiff_t i = first; i < last; i++) {
            if (i + ROW_AHEAD < count) __builtin_prefetch(weight + index[i + ROW_AHEAD], 0, 3);
            out[i] = weight[index[i]];
        }
        return;
    }
    for (ptrdiff_t i = first; i < last; i++) {
        if (i + ROW_AHEAD < count) PYNN_PREFETCH_ROW(weight + index[i + ROW_AHEAD] * dim, dim, 0);
        copy_row(out + i * dim, weight + index[i] * dim, dim);
    }
}

/* The gradient rows this thread of `threads` owns (row % threads == thread):
 * the first appearance of a row copies its dy row, later ones add to it, in
 * index order. The first appearance of row index[i] leaves rows[i] =
 * index[i] (marking the row), every other position of this thread's rows
 * -1, and a padding position -1 when thread is 0. */
PYNN_INLINE void scatter_block(int thread, int threads, ptrdiff_t count, ptrdiff_t dim,
                               const float *restrict dy, const int64_t *restrict index,
                               int64_t padding_idx, float *restrict dweight,
                               int64_t *restrict rows, unsigned char *restrict marks)
{
    for (ptrdiff_t i = 0; i < count; i++) {
        if (dim > 1 && i + ROW_AHEAD < count) {
            int64_t ahead = index[i + ROW_AHEAD];
            if (threads == 1 || ahead % threads == thread) {
                PYNN_PREFETCH_ROW(dweight + ahead * dim, dim, 1);
                __builtin_prefetch(marks + ahead, 1, 3);
            }
        }
        int64_t row = index[i];
        if (row == padding_idx) {
            if (thread == 0) rows[i] = -1;
            continue;
        }
        if (threads > 1 && row % threads != thread) continue;
        float *target = dweight + row * dim;
        const float *source = dy + i * dim;
        if (marks[row]) {
            rows[i] = -1;
            if (dim == 1) *target += *source;
            else add_row(target, source, dim);
        } else {
            marks[row] = 1;
            rows[i] = row;
            if (dim == 1) *target = *source;
            else copy_row(target, source, dim);
        }
    }
}

PYNN_INLINE void zero_rows_block(ptrdiff_t first, ptrdiff_t last, ptrdiff_t count, ptrdiff_t dim,
                                 const int64_t *restrict rows, float *restrict dweight)
{
    for (ptrdiff_t r = first; r < last; r++) {
        if (dim > 1 && r + ROW_AHEAD < count)
            PYNN_PREFETCH_ROW(dweight + rows[r + ROW_AHEAD] * dim, dim, 1);
        if (dim == 1) dweight[rows[r]] = 0.0f;
        else zero_row(dweight + rows[r] * dim, dim);
    }
}

struct pynn_dense_kernels {
    void (*column_sums)(ptrdiff_t rows, ptrdiff_t cols, ptrdiff_t first, ptrdiff_t last,
                        const float *dy, float *db);
    void (*relu_mask)(ptrdiff_t rows, ptrdiff_t cols, ptrdiff_t first, ptrdiff_t last,
                      const float *dy, const float *y, float *dz, float *db);
    void (*gather)(ptrdiff_t first, ptrdiff_t last, ptrdiff_t count, ptrdiff_t dim,
                   const float *weight, const int64_t *index, float *out);
    void (*scatter)(int thread, int threads, ptrdiff_t count, ptrdiff_t dim, const float *dy,
                    const int64_t *index, int64_t padding_idx, float *dweight, int64_t *rows,
                    unsigned char *marks);
    void (*zero_rows)(ptrdiff_t first, ptrdiff_t last, ptrdiff_t count, ptrdiff_t dim,
                      const int64_t *rows, float *dweight);
};

#define DENSE_VARIANT(suffix, attribute)                                                    \
    attribute static void column_sums_##suffix(ptrdiff_t rows, ptrdiff_t cols,               \
                                               ptrdiff_t first, ptrdiff_t last,              \
                                               const float *dy, float *db)                   \
    { column_sums_block(rows, cols, first, last, dy, db); }                                  \
    attribute static void relu_mask_##suffix(ptrdiff_t rows, ptrdiff_t cols, ptrdiff_t first, \
                                             ptrdiff_t last, const float *dy, const float *y, \
                                             float *dz, float *db)                           \
    { relu_mask_block(rows, cols, first, last, dy, y, dz, db); }                             \
    attribute static void gather_##suffix(ptrdiff_t first, ptrdiff_t last, ptrdiff_t count,   \
                                          ptrdiff_t dim, const float *weight,                \
                                          const int64_t *index, float *out)                  \
    { gather_block(first, last, count, dim, weight, index, out); }                           \
    attribute static void scatter_##suffix(int thread, int threads, ptrdiff_t count,         \
                                           ptrdiff_t dim, const float *dy,                   \
                                           const int64_t *index, int64_t padding_idx,        \
                                           float *dweight, int64_t *rows,                    \
                                           unsigned char *marks)                             \
    { scatter_block(thread, threads, count, dim, dy, index, padding_idx, dweight, rows, marks); } \
    attribute static void zero_rows_##suffix(ptrdiff_t first, ptrdiff_t last, ptrdiff_t count, \
                                             ptrdiff_t dim, const int64_t *rows,             \
                                             float *dweight)                                 \
    { zero_rows_block(first, last, count, dim, rows, dweight); }                             \
    const struct pynn_dense_kernels pynn_dense_##suffix = {                                  \
        column_sums_##suffix, relu_mask_##suffix, gather_##suffix, scatter_##suffix,         \
        zero_rows_##suffix};

PYNN_EACH_ISA(DENSE_VARIANT)

void pynn_column_sums(const pynn_context *ctx, ptrdiff_t rows, ptrdiff_t cols,
                      const float *dy, float *db)
{
    const struct pynn_dense_kernels *kernels = ctx->kernels->dense;
    ptrdiff_t blocks = (cols + COLUMN_BLOCK - 1) / COLUMN_BLOCK;
    const int wanted = blocks > 1 && rows * cols >= PARALLEL_MIN_ELEMENTS ? ctx->num_threads : 1;
    PYNN_TEAM_FOR(ctx, wanted, b, blocks, {
        ptrdiff_t first = b * COLUMN_BLOCK;
        kernels->column_sums(rows, cols, first,
                             first + COLUMN_BLOCK < cols ? first + COLUMN_BLOCK : cols, dy, db);
    });
}

void pynn_scale(ptrdiff_t count, float factor, float *x)
{
    for (ptrdiff_t i = 0; i < count; i++)
        x[i] *= factor;
}

void pynn_relu_mask_column_sums(const pynn_context *ctx, ptrdiff_t rows, ptrdiff_t cols,
                                const float *dy, const float *y, float *dz, float *db)
{
    const struct pynn_dense_kernels *kernels = ctx->kernels->dense;
    ptrdiff_t blocks = (cols + COLUMN_BLOCK - 1) / COLUMN_BLOCK;
    const int wanted = blocks > 1 && rows * cols >= PARALLEL_MIN_ELEMENTS ? ctx->num_threads : 1;
    PYNN_TEAM_FOR(ctx, wanted, b, blocks, {
        ptrdiff_t first = b * COLUMN_BLOCK;
        kernels->relu_mask(rows, cols, first,
                           first + COLUMN_BLOCK < cols ? first + COLUMN_BLOCK : cols, dy, y, dz, db);
    });
}

void pynn_embedding_gather(const pynn_context *ctx, ptrdiff_t count, ptrdiff_t dim,
                           const float *weight, const int64_t *index, float *out)
{
    const struct pynn_dense_kernels *kernels = ctx->kernels->dense;
    const int wanted = count * dim >= PARALLEL_MIN_ELEMENTS ? ctx->num_threads : 1;
    PYNN_TEAM(ctx, wanted, {
        int slot = pynn_team_slot(team), share = (count + team - 1) / team;
        ptrdiff_t first = slot * share, last = first + share < count ? first + share : count;
        if (first < last) kernels->gather(first, last, count, dim, weight, index, out);
    });
}

/* Run by each thread of a team (or once, outside a parallel region): the
 * previous rows zeroed (a static share each), then each thread's own rows
 * written (scatter_block), then the distinct rows gathered in order of first
 * appearance by one thread, which clears their marks. */
static void scatter_rows(const struct pynn_dense_kernels *kernels, int team, ptrdiff_t count,
                         ptrdiff_t dim, const float *dy, const int64_t *index,
                         int64_t padding_idx, float *dweight, int64_t *rows,
                         ptrdiff_t previous_rows, unsigned char *marks, ptrdiff_t *distinct)
{
    int thread = pynn_team_slot(team);
    ptrdiff_t share = (previous_rows + team - 1) / team, first = thread * share;
    ptrdiff_t last = first + share < previous_rows ? first + share : previous_rows;
    if (first < last) kernels->zero_rows(first, last, previous_rows, dim, rows, dweight);
#ifdef _OPENMP
    if (team > 1) {
#pragma omp barrier
    }
#endif
    kernels->scatter(thread, team, count, dim, dy, index, padding_idx, dweight, rows, marks);
#ifdef _OPENMP
    if (team > 1) {
#pragma omp barrier
    }
#endif
    if (thread == 0) {
        ptrdiff_t found = 0;
        for (ptrdiff_t i = 0; i < count; i++)
            if (rows[i] >= 0) rows[found++] = rows[i];
        for (ptrdiff_t r = 0; r < found; r++) marks[rows[r]] = 0;
        *distinct = found;
    }
}

ptrdiff_t pynn_embedding_scatter_add(const pynn_context *ctx, ptrdiff_t count, ptrdiff_t dim,
                                     const float *dy, const int64_t *index, int64_t padding_idx,
                                     float *dweight, int64_t *rows, ptrdiff_t previous_rows,
                                     unsigned char *marks)
{
    const struct pynn_dense_kernels *kernels = ctx->kernels->dense;
    ptrdiff_t distinct = 0;
    const int wanted = count * dim >= PARALLEL_MIN_ELEMENTS ? ctx->num_threads : 1;
    PYNN_TEAM(ctx, wanted, {
        scatter_rows(kernels, team, count, dim, dy, index, padding_idx, dweight, rows,
                     previous_rows, marks, &distinct);
    });
    return distinct;
}
