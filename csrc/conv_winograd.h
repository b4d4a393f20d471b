/* Winograd F(2x2, 3x3) convolution for 3x3 kernels at stride 1, dilation 1
 * and groups of 1: the forward pass, the input gradient and the weight
 * gradient.
 *
 * Each output is computed as 2 x 2 tiles: a tile's 4 x 4 input patch d and
 * each 3 x 3 kernel g are transformed (V = Bᵀ d B, U = G g Gᵀ), the 16
 * positions ξ of the transforms multiplied as 16 GEMMs over the channels
 * (M_ξ = U_ξ V_ξ, each by the path's GEMM micro-kernel) and each tile's 4 x 4
 * product transformed back (Y = Aᵀ M A), with the bias and ReLU fused there.
 * 16 multiplies per 4 outputs and input channel where the direct method
 * takes 36. The transforms run a vector of tiles at a time (a segment: part
 * of a row of tiles, or several short rows); the tiles are taken in blocks
 * of segments whose transforms stay in L2 while every output channel reads
 * them, the blocks shared by the threads. Each output's sums run in one order whatever the
 * block or thread, so results do not depend on the thread count. */
#ifndef PYNN_CONV_WINOGRAD_H
#define PYNN_CONV_WINOGRAD_H

#include <stddef.h>
#include "conv.h"

/* One path's transforms (conv_winograd.c), the conv table's `winograd`. */
struct pynn_winograd_kernels;
extern const struct pynn_winograd_kernels pynn_winograd_generic, pynn_winograd_avx2,
    pynn_winograd_avx512;

/* Does the forward pass take this shape on the path of `kernels`: a 3x3
 * kernel, stride 1, dilation 1, groups of 1 and enough channels, outputs and
 * columns to repay the transforms. */
int pynn_winograd_applies(const struct pynn_winograd_kernels *kernels, const pynn_conv_shape *s);

/* Does the input gradient of this forward shape take it: the forward shape
 * applies and its padding is at most 2 (the gradient is then a convolution of
 * dy with the flipped, transposed kernel, padded by 2 - pad). */
int pynn_winograd_input_grad_applies(const struct pynn_winograd_kernels *kernels,
                                     const pynn_conv_shape *s);

/* Does the weight gradient take this shape: the forward shape applies, with
 * 32 channels or more on each side (fewer leave the GEMMs too narrow).
 * dW = Gᵀ [Σ_tiles (A dy Aᵀ) ⊙ (Bᵀ d B)] G, the forward's transforms turned
 * back (16 GEMMs over the tiles, per position), in fixed slices of the batch
 * whose sums add in slice order. */
int pynn_winograd_weight_grad_applies(const struct pynn_winograd_kernels *kernels,
                                      const pynn_conv_shape *s);

/* Floats of workspace any of these calls needs with this many threads on any
 * compiled path (0 where none applies). */
size_t pynn_winograd_workspace_size(const pynn_conv_shape *s, int threads);

/* As pynn_conv2d_forward, through `kernels`; workspace NULL allocates it.
 * Returns 0 or -1. */
int pynn_winograd_forward(const pynn_context *ctx, const struct pynn_winograd_kernels *kernels,
                          const pynn_conv_shape *s, const float *x, const float *weight,
                          const float *bias, pynn_activation activation, float *y,
                          float *workspace);

/* dx of pynn_conv2d_backward (written, not added), through `kernels`;
 * workspace NULL allocates it. Returns 0 or -1. */
int pynn_winograd_input_grad(const pynn_context *ctx, const struct pynn_winograd_kernels *kernels,
                             const pynn_conv_shape *s, const float *dy, const float *weight,
                             float *dx, float *workspace);

/* dweight of pynn_conv2d_backward (written, not added), through `kernels`;
 * workspace NULL allocates it. Returns 0 or -1. */
int pynn_winograd_weight_grad(const pynn_context *ctx,
                              const struct pynn_winograd_kernels *kernels,
                              const pynn_conv_shape *s, const float *dy, const float *x,
                              float *dweight, float *workspace);

#endif
