/* Direct 2-D convolution (no unfolded input) for groups of 1 and dilation 1.
 *
 * Each image is rearranged into zero-padded phase planes: for strides
 * (sh, sw), plane (a, b) of channel c holds the padded input at rows
 * i sh + a and columns j sw + b, `cols` columns wide. Tap (kh, kw) then reads
 * plane (kh % sh, kw % sw) shifted by (kh / sh) cols + kw / sw, so output
 * (oh, ow) is a sum over taps of one flattened index q = oh cols + ow plus a
 * per-tap offset: a stride-1 one-dimensional convolution that vectorises
 * along q across row ends. The columns ow >= out_w of each row are computed
 * and dropped. Every output sums its taps in one order (channel, kh, kw), so
 * results do not depend on the thread count. */
#ifndef PYNN_CONV_DIRECT_H
#define PYNN_CONV_DIRECT_H

#include <stddef.h>
#include "conv.h"

/* Output channels one tile computes at a time. */
#define PYNN_DIRECT_CHANNELS 8
/* The widest vector of any path, in floats. */
#define PYNN_DIRECT_MAX_LANES 16
#define PYNN_DIRECT_MAX_TAPS 49

/* One tile: out[o][q] = act(Σ_{c, t} weights[o][c taps + t] planes[c step + offsets[t] + q]
 * + bias[o]) for o < 8 and q < count rounded up to the path's vector. Taps
 * go row by row, kernel_w a row; where tap row kh reads plane row
 * q / cols + kh (a vertical stride of 1), only plane rows [data_first,
 * data_last) hold other than zeros, so a run of q skips the tap rows that
 * read none of them. */
typedef struct {
    const float *planes;
    const ptrdiff_t *offsets;  /* per tap, into channel 0's planes */
    ptrdiff_t taps, kernel_w, cols, data_first, data_last;
    ptrdiff_t channels, channel_step, count, out_ld;
    int outputs;  /* the channels stored, up to 8: at most 6 take a group of 6 */
    const float *weights[PYNN_DIRECT_CHANNELS];
    float bias[PYNN_DIRECT_CHANNELS];
    int relu;
    float *out;
} pynn_direct_tile;

/* A weight-gradient block: sums[o][k] = Σ_{q in runs} grads[o][q] sources[k][q]
 * over `runs` runs of q, run r covering [r segment, r segment + length)
 * (length a multiple of 16 floats), in that order. */
#define PYNN_DIRECT_GRADS 4
#define PYNN_DIRECT_SOURCES 6
typedef struct {
    const float *sources[PYNN_DIRECT_SOURCES];
    const float *grads[PYNN_DIRECT_GRADS];
    ptrdiff_t runs, segment, length;
    float sums[PYNN_DIRECT_GRADS][PYNN_DIRECT_SOURCES];
} pynn_direct_sums;

/* Where one image's phase planes go: plane (c, a, b) of phase (a, b) at
 * c channel_step + (a phases_w + b) phase_step, rows x cols floats, zero from
 * rows cols up to `segment` floats. */
typedef struct {
    const pynn_conv_shape *shape;
    ptrdiff_t phases_h, phases_w, rows, cols, channel_step, phase_step, segment;
} pynn_direct_planes;

/* One path's direct kernels: its tile, its weight-gradient blocks (of
 * PYNN_DIRECT_GRADS gradients, and of the first 2 only) and its phase-plane
 * builder (padding zero). */
struct pynn_direct_kernels {
    void (*tile)(const pynn_direct_tile *tile);
    void (*sums)(pynn_direct_sums *block);
    void (*half_sums)(pynn_direct_sums *block);
    void (*planes)(const pynn_direct_planes *where, const float *image, float *planes);
};

extern const struct pynn_direct_kernels pynn_direct_generic, pynn_direct_avx2,
    pynn_direct_avx512;

/* Does the direct path take this shape: groups of 1, dilation 1, a kernel
 * of 2 to 49 taps, output channels filling 3/4 of their blocks of 8 and an
 * image's planes within L2. */
int pynn_direct_applies(const pynn_conv_shape *s);

/* Floats of scratch pynn_direct_forward needs with this many threads. */
size_t pynn_direct_workspace_size(const pynn_conv_shape *s, int threads);

/* As pynn_conv2d_forward, through `kernels`; workspace holds
 * pynn_direct_workspace_size floats. */
void pynn_direct_forward(const pynn_context *ctx, const struct pynn_direct_kernels *kernels,
                         const pynn_conv_shape *s, const float *x, const float *weight,
                         const float *bias, pynn_activation activation, float *y,
                         float *workspace);

/* dW = Σ_n Σ_q dy[n, o, q] planes_n[c, tap + q]: the batch in chunks of a
 * size set by the shapes alone, each chunk's images' planes side by side so
 * one run of q spans them, the chunks' sums added in chunk order; so dW is
 * the same for any thread count. */
size_t pynn_direct_weight_grad_workspace_size(const pynn_conv_shape *s, int threads);
void pynn_direct_weight_grad(const pynn_context *ctx, const struct pynn_direct_kernels *kernels,
                             const pynn_conv_shape *s, const float *dy, const float *x,
                             float *dweight, float *workspace);

#endif
