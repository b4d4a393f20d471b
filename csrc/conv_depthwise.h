/* Depthwise 2-D convolution: groups == in_channels == out_channels (a
 * channel multiplier of 1), dilation 1, any kernel of up to 49 taps, any
 * stride and padding, over NCHW float32 images (shapes as in conv.h).
 *
 * Each (image, channel) plane is convolved alone: its input is copied into
 * a zero-padded buffer whose rows hold the padded input's columns split by
 * the column stride into phases (phase b, column j: padded column
 * j stride_w + b), so tap (kh, kw) of a row of outputs reads one contiguous
 * run, and the outputs are computed a vector of columns at a time. The input
 * gradient is the same convolution of dy, spread out by the strides with
 * zeros between, with the kernel flipped; the weight and bias gradients
 * sum, per plane, each tap's products of dy with the padded input and dy
 * itself, then add the planes' sums image by image in batch order. Threads take whole planes, so
 * results do not depend on the thread count. */
#ifndef PYNN_CONV_DEPTHWISE_H
#define PYNN_CONV_DEPTHWISE_H

#include <stddef.h>
#include "conv.h"

#define PYNN_DEPTHWISE_MAX_TAPS 49

/* One plane's padded buffer and its outputs:
 * out[oh, ow] = act(Σ_{kh, kw} weight[kh KW + kw]
 *                   rows[(oh stride_h + kh) row_step + (kw % stride_w) cols + kw / stride_w + ow]
 *                   + bias). */
typedef struct {
    const float *rows;
    ptrdiff_t row_step, cols, stride_h, stride_w, kernel_h, kernel_w, out_h, out_w;
    const float *weight;
    float bias;
    int relu;
    float *out;
} pynn_depthwise_plane;

/* Where a plane's source lands in its buffer: source element (i, j) at
 * buffer row lead_h + i up_h and padded column lead_w + j up_w, zero
 * elsewhere; `rows` rows of `phases` runs of `cols` floats. */
typedef struct {
    ptrdiff_t height, width, lead_h, lead_w, up_h, up_w;
    ptrdiff_t rows, phases, cols, stride_w;
} pynn_depthwise_source;

/* One path's kernels: a plane's outputs, the gradient sums of a plane
 * (sums[kh KW + kw] = Σ_{oh, ow} grad[oh out_w + ow] rows[tap (kh, kw) of
 * output (oh, ow)] and sums[KH KW] = Σ grad, the plane's out unused) and the
 * buffer builder, which
 * writes the source's elements only: the caller zeroes a buffer once for
 * all the planes of a call. */
struct pynn_depthwise_kernels {
    void (*plane)(const pynn_depthwise_plane *p);
    void (*sums)(const pynn_depthwise_plane *p, const float *grad, float *sums);
    void (*build)(const pynn_depthwise_source *where, const float *source, float *rows);
};

/* Does the depthwise path take this shape. */
int pynn_depthwise_applies(const pynn_conv_shape *s);

/* Floats of scratch the forward and backward need with this many threads. */
size_t pynn_depthwise_workspace_size(const pynn_conv_shape *s, int threads);

/* As pynn_conv2d_forward and pynn_conv2d_backward; workspace NULL or
 * pynn_depthwise_workspace_size floats. The bias gradient comes from the
 * weight gradient's pass over dy, added image by image in batch order too. */
int pynn_depthwise_forward(const pynn_context *ctx, const pynn_conv_shape *s, const float *x,
                           const float *weight, const float *bias, pynn_activation activation,
                           float *y, float *workspace);
int pynn_depthwise_backward(const pynn_context *ctx, const pynn_conv_shape *s, const float *dy,
                            const float *x, const float *weight, float *dx, float *dweight,
                            float *dbias, float *workspace);

#endif
