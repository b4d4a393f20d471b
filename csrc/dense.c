/* Dense-layer reductions and embedding gather/scatter (contracts in dense.h). */
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
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

struct pynn_dense_kernels {
    void (*column_sums)(ptrdiff_t rows, ptrdiff_t cols, ptrdiff_t first, ptrdiff_t last,
                        const float *dy, float *db);
    void (*relu_mask)(ptrdiff_t rows, ptrdiff_t cols, ptrdiff_t first, ptrdiff_t last,
                      const float *dy, const float *y, float *dz, float *db);
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
    const struct pynn_dense_kernels pynn_dense_##suffix = {column_sums_##suffix, relu_mask_##suffix};

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
    const int wanted = count * dim >= PARALLEL_MIN_ELEMENTS ? ctx->num_threads : 1;
    PYNN_TEAM_FOR(ctx, wanted, i, count, {
        if (i + PYNN_ROW_PREFETCH_AHEAD < count)
            PYNN_PREFETCH_ROW(weight + index[i + PYNN_ROW_PREFETCH_AHEAD] * dim, dim, 0);
        memcpy(out + i * dim, weight + index[i] * dim, (size_t)dim * sizeof(float));
    });
}

/* Run by each thread of a team (or once, outside a parallel region): the
 * previous rows zeroed, the distinct rows listed by one thread, then the
 * sums, each row by thread row % threads, which adds its contributions in
 * index order, so every row's sum is the same for any thread count. */
static void scatter_rows(ptrdiff_t count, ptrdiff_t dim, const float *dy,
                         const int64_t *index, int64_t padding_idx, float *dweight,
                         int64_t *rows, ptrdiff_t previous_rows, unsigned char *marks,
                         ptrdiff_t *distinct)
{
#ifdef _OPENMP
    const int thread = omp_get_thread_num(), threads = omp_get_num_threads();
#pragma omp for schedule(static)
#else
    const int thread = 0, threads = 1;
#endif
    for (ptrdiff_t r = 0; r < previous_rows; r++) {
        if (r + PYNN_ROW_PREFETCH_AHEAD < previous_rows)
            PYNN_PREFETCH_ROW(dweight + rows[r + PYNN_ROW_PREFETCH_AHEAD] * dim, dim, 1);
        memset(dweight + rows[r] * dim, 0, (size_t)dim * sizeof(float));
    }
#ifdef _OPENMP
#pragma omp single
#endif
    {
        ptrdiff_t found = 0;
        for (ptrdiff_t i = 0; i < count; i++) {
            int64_t row = index[i];
            if (row != padding_idx && !marks[row]) {
                marks[row] = 1;
                rows[found++] = row;
            }
        }
        for (ptrdiff_t r = 0; r < found; r++) marks[rows[r]] = 0;
        *distinct = found;
    }
    for (ptrdiff_t i = 0; i < count; i++) {
        int64_t row = index[i];
        if (i + PYNN_ROW_PREFETCH_AHEAD < count) {
            int64_t ahead = index[i + PYNN_ROW_PREFETCH_AHEAD];
            if (threads == 1 || ahead % threads == thread)
                PYNN_PREFETCH_ROW(dweight + ahead * dim, dim, 1);
        }
        if (row == padding_idx || (threads > 1 && row % threads != thread)) continue;
        float *restrict target = dweight + row * dim;
        const float *restrict source = dy + i * dim;
        for (ptrdiff_t j = 0; j < dim; j++) target[j] += source[j];
    }
}

ptrdiff_t pynn_embedding_scatter_add(const pynn_context *ctx, ptrdiff_t count, ptrdiff_t dim,
                                     const float *dy, const int64_t *index, int64_t padding_idx,
                                     float *dweight, int64_t *rows, ptrdiff_t previous_rows,
                                     unsigned char *marks)
{
    ptrdiff_t distinct = 0;
    const int wanted = count * dim >= PARALLEL_MIN_ELEMENTS ? ctx->num_threads : 1;
    PYNN_TEAM(ctx, wanted, {
        scatter_rows(count, dim, dy, index, padding_idx, dweight, rows, previous_rows,
                     marks, &distinct);
    });
    return distinct;
}
