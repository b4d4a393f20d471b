/* Layer normalisation over the trailing axes.
 *
 * x is [rows, length] (length = the product of normalized_shape); each row is
 * normalised by its own mean and biased variance. weight and bias are
 * [length] and may each be NULL (1 and 0). */
#ifndef PYNN_LAYERNORM_H
#define PYNN_LAYERNORM_H

#include <stddef.h>
#include "cpu.h"

/* y = (x - mean) / √(var + eps) weight + bias, row by row; y must not overlap x. */
void pynn_layer_norm_forward(const pynn_context *ctx, ptrdiff_t rows, ptrdiff_t length,
                             const float *x, const float *weight, const float *bias, double eps,
                             float *y);
/* The same, keeping each row's mean and 1 / √(var + eps) in stats [rows][2]
 * (double) for the backward. */
void pynn_layer_norm_forward_keeping(const pynn_context *ctx, ptrdiff_t rows, ptrdiff_t length,
                                     const float *x, const float *weight, const float *bias,
                                     double eps, float *y, double *stats);
/* y = layer_norm(x + other): a residual connection's float sum normalised
 * row by row, bit for bit layer_norm of the summed array, without writing
 * the sum out; y must overlap neither x nor other. Returns 0, or -1 when the
 * rows' buffers find no memory. */
int pynn_layer_norm_residual_forward(const pynn_context *ctx, ptrdiff_t rows, ptrdiff_t length,
                                      const float *x, const float *other, const float *weight,
                                      const float *bias, double eps, float *y);

/* Back through the forward, with x̂ = (x - mean) invstd and g = dy weight,
 * mean and invstd from the forward's stats when not NULL (else recomputed
 * from x: the same values):
 *   dx = invstd (g - mean(g) - x̂ mean(g x̂))      per row,
 *   dweight = Σ_rows dy x̂,  dbias = Σ_rows dy.
 * dx, dweight and dbias may each be NULL (not computed). The row sums run
 * over blocks of rows fixed by the row count, then over the blocks in order,
 * so every result is the same on any thread count. Returns 0, or -1 when the
 * blocks' partial sums find no memory. */
int pynn_layer_norm_backward(const pynn_context *ctx, ptrdiff_t rows, ptrdiff_t length,
                             const float *dy, const float *x, const float *weight, double eps,
                             const double *stats, float *dx, float *dweight, float *dbias);

#endif
