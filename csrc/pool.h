/* 2-D pooling over NCHW planes (PyTorch's CPU semantics).
 *
 * Every kernel works plane by plane: N C planes of [H, W] in, [OH, OW] out.
 * Window (oh, ow) covers rows oh stride_h - pad_h + kh dilation_h, kh < KH
 * (likewise columns); padding is -inf for max, zero for average. */
#ifndef PYNN_POOL_H
#define PYNN_POOL_H

#include <stddef.h>
#include <stdint.h>
#include "cpu.h"

typedef struct {
    ptrdiff_t planes, height, width, out_h, out_w;
    ptrdiff_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
} pynn_pool_shape;

/* y = the window's maximum (NaN if it holds one); argmax, if not NULL, gets
 * its flat index within the plane (the arg-max rule below), for a backward
 * that need not search again. */
void pynn_max_pool2d_forward(const pynn_context *ctx, const pynn_pool_shape *s,
                             const float *x, float *y, int64_t *argmax);
/* dx = 0, then dx[argmax] += dy, plane by plane. */
void pynn_max_pool2d_scatter(const pynn_context *ctx, const pynn_pool_shape *s,
                             const float *dy, const int64_t *argmax, float *dx);
/* dx = 0, then dx[argmax of window] += dy[window]; the arg-max is the first
 * maximum in the window (the last NaN, if any), as PyTorch on CPU. */
void pynn_max_pool2d_backward(const pynn_context *ctx, const pynn_pool_shape *s,
                              const float *dy, const float *x, float *dx);

/* y = Σ window / divisor, divisor = the window clipped to the padded input
 * (count_include_pad) or to the input itself. dilation is 1. */
void pynn_avg_pool2d_forward(const pynn_context *ctx, const pynn_pool_shape *s,
                             int count_include_pad, const float *x, float *y);
void pynn_avg_pool2d_backward(const pynn_context *ctx, const pynn_pool_shape *s,
                              int count_include_pad, const float *dy, float *dx);

/* y[p] = mean of plane p (size elements), summed in double over 16 lanes
 * combined in a fixed order;  dx[p, :] = dy[p] / size. */
void pynn_global_avg_pool2d_forward(const pynn_context *ctx, ptrdiff_t planes, ptrdiff_t size,
                                    const float *x, float *y);
void pynn_global_avg_pool2d_backward(const pynn_context *ctx, ptrdiff_t planes, ptrdiff_t size,
                                     const float *dy, float *dx);

/* Adaptive average pooling, [H, W] planes to [OH, OW] (PyTorch's windows):
 * output row i averages input rows [floor(i H / OH), ceil((i + 1) H / OH)),
 * likewise columns, so windows may overlap and always hold one element.
 * An OH = OW = 1 output is global_avg_pool2d's, bit for bit.
 * dx = 0, then dx[window] += dy / (window size). */
void pynn_adaptive_avg_pool2d_forward(const pynn_context *ctx, ptrdiff_t planes, ptrdiff_t height,
                                      ptrdiff_t width, ptrdiff_t out_h, ptrdiff_t out_w,
                                      const float *x, float *y);
void pynn_adaptive_avg_pool2d_backward(const pynn_context *ctx, ptrdiff_t planes,
                                       ptrdiff_t height, ptrdiff_t width, ptrdiff_t out_h,
                                       ptrdiff_t out_w, const float *dy, float *dx);

#endif
