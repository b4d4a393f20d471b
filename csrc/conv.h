/* 2-D convolution over NCHW float32 images: plane by plane for depthwise
 * convolutions (conv_depthwise.h), directly (conv_direct.h) for
 * groups of 1 and dilation 1 where an image's planes fit in L2 (the input
 * gradient so at stride 1), else as GEMMs over unfolded inputs.
 *
 * x [N, C, H, W], weight [OC, C/groups, KH, KW] (PyTorch's layout), y [N, OC, OH, OW];
 * OH = (H + 2 pad_h - dilation_h (KH - 1) - 1) / stride_h + 1, likewise OW.
 * Images are unfolded (im2col) a chunk at a time into col [C KH KW, B OH OW]
 * so one GEMM per group spans B images; the chunk size B depends on the
 * shapes only, never on the thread count, so results do not either. With
 * enough chunks, threads take whole chunks; otherwise the GEMMs use them. */
#ifndef PYNN_CONV_H
#define PYNN_CONV_H

#include <stddef.h>
#include "cpu.h"
#include "gemm.h"

typedef struct {
    ptrdiff_t batch, in_channels, height, width;
    ptrdiff_t out_channels, kernel_h, kernel_w;
    ptrdiff_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups;
    ptrdiff_t out_h, out_w;
} pynn_conv_shape;

/* Floats of scratch the forward and backward need with this many threads
 * (pass NULL to have them allocate it themselves). */
size_t pynn_conv2d_workspace_size(const pynn_conv_shape *s, int threads);

/* y = activation(weight * x + bias[oc]); bias may be NULL.
 * Returns 0, or -1 when scratch could not be allocated. */
int pynn_conv2d_forward(const pynn_context *ctx, const pynn_conv_shape *s, const float *x,
                        const float *weight, const float *bias, pynn_activation activation,
                        float *y, float *workspace);

/* Per group g, with X̂ the unfolded input:
 *   dW_g = Σ_n dY_g X̂_gᵀ,   db = Σ_{n,p} dY,   dX = col2im(W_gᵀ dY_g).
 * Any of dx, dweight, dbias may be NULL (not computed). Returns 0 or -1. */
int pynn_conv2d_backward(const pynn_context *ctx, const pynn_conv_shape *s, const float *dy,
                         const float *x, const float *weight, float *dx, float *dweight,
                         float *dbias, float *workspace);

#endif
