/* The dense layer's reductions and the embedding table's gather/scatter. */
#ifndef PYNN_DENSE_H
#define PYNN_DENSE_H

#include <stddef.h>
#include <stdint.h>
#include "cpu.h"

/* db[j] = sum_i dy[i, j] for dy [rows, cols] */
void pynn_column_sums(const pynn_context *ctx, ptrdiff_t rows, ptrdiff_t cols,
                      const float *dy, float *db);

/* Back through a fused ReLU: dz = dy [y > 0] (y the ReLU output), and, if db
 * is not NULL, db[j] = sum_i dz[i, j], in one pass. dz may be dy. */
void pynn_relu_mask_column_sums(const pynn_context *ctx, ptrdiff_t rows, ptrdiff_t cols,
                                const float *dy, const float *y, float *dz, float *db);

/* x[i] *= factor: a loss gradient weighted by this process's share of a
 * global batch (data-parallel training), small enough for one thread */
void pynn_scale(ptrdiff_t count, float factor, float *x);

/* out[i, :] = weight[index[i], :] for indices already checked in range */
void pynn_embedding_gather(const pynn_context *ctx, ptrdiff_t count, ptrdiff_t dim,
                           const float *weight, const int64_t *index, float *out);

/* The gradient of an embedding table, written in O(rows touched): dweight
 * is all zero but for the rows[0 .. previous_rows) the previous call wrote;
 * those are zeroed, then dweight[index[i], :] += dy[i, :] in index order for
 * every i with index[i] != padding_idx (-1: none), the same sums for any
 * thread count. rows (room for max(count, previous_rows)) then lists the
 * distinct rows written, in order of first appearance; returns their number.
 * marks: one zero byte per embedding, left zero. */
ptrdiff_t pynn_embedding_scatter_add(const pynn_context *ctx, ptrdiff_t count, ptrdiff_t dim,
                                     const float *dy, const int64_t *index, int64_t padding_idx,
                                     float *dweight, int64_t *rows, ptrdiff_t previous_rows,
                                     unsigned char *marks);

#endif
