/* Tensor plumbing for graph models: broadcasting add and multiply with their
 * reductions, strided copies (concatenation, axis permutation) and the
 * row-wise dot product.
 *
 * Shapes are C-contiguous row-major; the broadcasting kernels take operands of
 * one rank (the caller right-aligns and pads shapes with 1s), each operand's
 * extent being the output's or 1 (broadcast). Every output element is
 * computed by one thread in a fixed order, so results are the same bits for
 * any thread count. */
#ifndef PYNN_TENSOR_H
#define PYNN_TENSOR_H

#include <stddef.h>
#include <stdint.h>
#include "cpu.h"

#define PYNN_TENSOR_MAX_RANK 8

typedef enum { PYNN_TENSOR_ADD = 0, PYNN_TENSOR_MULTIPLY = 1 } pynn_tensor_op;

/* y = a op b with numpy broadcasting; y has out_shape, a and b their shapes.
 * y may be a itself when a has out_shape (each element is read before it is
 * written). */
void pynn_broadcast_binary(const pynn_context *ctx, pynn_tensor_op op, int rank,
                           const ptrdiff_t *out_shape, const ptrdiff_t *a_shape, const float *a,
                           const ptrdiff_t *b_shape, const float *b, float *y);

/* target = dy (times other, if not NULL, broadcast to out_shape) summed over
 * the axes where target_shape is 1 and out_shape is not: the gradient of an
 * operand of broadcast_binary. Sums run in double, in increasing order of the
 * reduced index. */
void pynn_broadcast_reduce(const pynn_context *ctx, int rank, const ptrdiff_t *out_shape,
                           const float *dy, const ptrdiff_t *other_shape, const float *other,
                           const ptrdiff_t *target_shape, float *target);

/* dst[r * dst_stride + i] = src[r * src_stride + i] for r < rows, i < length:
 * one input's slice of a concatenation, either way. */
void pynn_copy_rows(const pynn_context *ctx, ptrdiff_t rows, ptrdiff_t length, const float *src,
                    ptrdiff_t src_stride, float *dst, ptrdiff_t dst_stride);

/* y = x with its axes permuted: y's axis k is x's axis dims[k] (dims a
 * permutation of 0..rank-1, rank <= PYNN_TENSOR_MAX_RANK). */
void pynn_permute(const pynn_context *ctx, int rank, const ptrdiff_t *x_shape, const int *dims,
                  const float *x, float *y);

/* y[n] = sum_d u[n, d] v[n, d] for u, v [rows, length], summed in double. */
void pynn_row_dot(const pynn_context *ctx, ptrdiff_t rows, ptrdiff_t length, const float *u,
                  const float *v, float *y);
/* du[n, :] = dy[n] v[n, :],  dv[n, :] = dy[n] u[n, :] */
void pynn_row_dot_backward(const pynn_context *ctx, ptrdiff_t rows, ptrdiff_t length,
                           const float *dy, const float *u, const float *v, float *du, float *dv);

/* Mean pooling over a sequence under an attention mask, as sentence-transformers
 * pools: y[n, :] = sum_t m[n, t] x[n, t, :] / max(sum_t m[n, t], 1e-9) for x
 * [batch, length, dim] and the mask m [batch, length] (its values are weights,
 * 1 for a token and 0 for padding). */
void pynn_masked_mean(const pynn_context *ctx, ptrdiff_t batch, ptrdiff_t length, ptrdiff_t dim,
                      const float *x, const int64_t *mask, float *y);
/* dx[n, t, :] = m[n, t] dy[n, :] / max(sum_t m[n, t], 1e-9) */
void pynn_masked_mean_backward(const pynn_context *ctx, ptrdiff_t batch, ptrdiff_t length,
                               ptrdiff_t dim, const float *dy, const int64_t *mask, float *dx);
/* y[i] = 0 where mask[i] is non-zero (a token), -inf where it is zero
 * (padding): an attention mask as the scores' additive key-padding mask. */
void pynn_padding_bias(const pynn_context *ctx, ptrdiff_t count, const int64_t *mask, float *y);

#endif
