/* Direct convolution over phase planes (contracts in conv_direct.h). */
#include <stdint.h>
#include <string.h>
#include "conv_direct.h"
#ifdef _OPENMP
#include <omp.h>
#endif

/* An image's planes stay in L2 across the tiles that read them; larger
 * images take the unfold and GEMM. */
#define DIRECT_MAX_PLANE_FLOATS ((ptrdiff_t)1 << 17)
/* Multiply-adds from which a call asks for a team. */
#define DIRECT_PARALLEL_MIN_PRODUCTS (1 << 20)

#define DIRECT_SUFFIX generic
#define DIRECT_TARGET
#define DIRECT_LANES 4
#define DIRECT_RUNS 1
#define DIRECT_GROUP 8
#include "conv_direct_tile.h"
#if defined(PYNN_X86_64)
#define DIRECT_SUFFIX avx2
#define DIRECT_TARGET PYNN_TARGET_AVX2
#define DIRECT_LANES 8
#define DIRECT_RUNS 1
#define DIRECT_GROUP 8
#include "conv_direct_tile.h"
#define DIRECT_SUFFIX avx512
#define DIRECT_TARGET PYNN_TARGET_AVX512
#ifndef AVX512_RUNS
#define AVX512_RUNS 3
#define AVX512_GROUP 8
#endif
#define DIRECT_LANES 16
#define DIRECT_RUNS AVX512_RUNS
#define DIRECT_GROUP AVX512_GROUP
#include "conv_direct_tile.h"
#endif

/* Where an image's planes are and what a tile reads of them. */
typedef struct {
    ptrdiff_t phases_h, phases_w, rows, cols, plane, channel_step, count, out_ld;
    ptrdiff_t offsets[PYNN_DIRECT_MAX_TAPS];
} direct_layout;

static void layout_of(const pynn_conv_shape *s, direct_layout *l)
{
    const ptrdiff_t sh = s->stride_h, sw = s->stride_w;
    l->phases_h = sh < s->kernel_h ? sh : s->kernel_h;
    l->phases_w = sw < s->kernel_w ? sw : s->kernel_w;
    l->rows = s->out_h + (s->kernel_h - 1) / sh;
    l->cols = s->out_w + (s->kernel_w - 1) / sw;
    /* a tile reads up to a vector past its last output plus the largest shift */
    l->plane = l->rows * l->cols + (s->kernel_w - 1) / sw + PYNN_DIRECT_MAX_LANES;
    l->channel_step = l->phases_h * l->phases_w * l->plane;
    l->count = s->out_h * l->cols;
    l->out_ld = (l->count + PYNN_DIRECT_MAX_LANES - 1) / PYNN_DIRECT_MAX_LANES * PYNN_DIRECT_MAX_LANES;
    for (ptrdiff_t kh = 0; kh < s->kernel_h; kh++)
        for (ptrdiff_t kw = 0; kw < s->kernel_w; kw++)
            l->offsets[kh * s->kernel_w + kw] = ((kh % sh) * l->phases_w + kw % sw) * l->plane +
                                                (kh / sh) * l->cols + kw / sw;
}

int pynn_direct_applies(const pynn_conv_shape *s)
{
    if (s->groups != 1 || s->dilation_h != 1 || s->dilation_w != 1 ||
        s->kernel_h * s->kernel_w > PYNN_DIRECT_MAX_TAPS)
        return 0;
    direct_layout l;
    layout_of(s, &l);
    return s->in_channels * l.channel_step <= DIRECT_MAX_PLANE_FLOATS;
}

static ptrdiff_t slot_floats(const pynn_conv_shape *s, const direct_layout *l)
{
    return s->in_channels * l->channel_step + PYNN_DIRECT_CHANNELS * l->out_ld;
}

size_t pynn_direct_workspace_size(const pynn_conv_shape *s, int threads)
{
    direct_layout l;
    layout_of(s, &l);
    return (size_t)(threads * slot_floats(s, &l));
}

/* The columns j of a phase plane whose input column j sw + phase - pad_w is
 * inside the image: [*first, *last). */
static void valid_columns(const pynn_conv_shape *s, const direct_layout *l, ptrdiff_t phase,
                          ptrdiff_t *first, ptrdiff_t *last)
{
    const ptrdiff_t sw = s->stride_w, lead = s->pad_w - phase;
    ptrdiff_t a = lead > 0 ? (lead + sw - 1) / sw : 0;
    ptrdiff_t b = (s->width + lead + sw - 1) / sw;
    if (b > l->cols) b = l->cols;
    if (a > b) a = b;
    *first = a;
    *last = b;
}

/* One image's phase planes, padding and slack zero. */
static void build_planes(const pynn_conv_shape *s, const direct_layout *l, const float *image,
                         float *planes)
{
    const ptrdiff_t sh = s->stride_h, sw = s->stride_w;
    for (ptrdiff_t c = 0; c < s->in_channels; c++)
        for (ptrdiff_t a = 0; a < l->phases_h; a++)
            for (ptrdiff_t b = 0; b < l->phases_w; b++) {
                float *plane = planes + c * l->channel_step + (a * l->phases_w + b) * l->plane;
                ptrdiff_t first, last;
                valid_columns(s, l, b, &first, &last);
                for (ptrdiff_t i = 0; i < l->rows; i++) {
                    float *row = plane + i * l->cols;
                    const ptrdiff_t ih = i * sh + a - s->pad_h;
                    if (ih < 0 || ih >= s->height) {
                        for (ptrdiff_t j = 0; j < l->cols; j++) row[j] = 0.0f;
                        continue;
                    }
                    const float *in = image + (c * s->height + ih) * s->width + b - s->pad_w;
                    for (ptrdiff_t j = 0; j < first; j++) row[j] = 0.0f;
                    if (sw == 1)
                        for (ptrdiff_t j = first; j < last; j++) row[j] = in[j];
                    else
                        for (ptrdiff_t j = first; j < last; j++) row[j] = in[j * sw];
                    for (ptrdiff_t j = last; j < l->cols; j++) row[j] = 0.0f;
                }
                for (ptrdiff_t i = l->rows * l->cols; i < l->plane; i++) plane[i] = 0.0f;
            }
}

/* Output channels [8 block, 8 block + 8) of one image from its planes,
 * through `out` (8 out_ld floats), then its rows' first out_w columns to y. */
static void run_block(pynn_direct_tile_fn tile, const pynn_conv_shape *s, const direct_layout *l,
                      const float *planes, const float *weight, const float *bias, int relu,
                      ptrdiff_t block, float *out, float *y)
{
    const ptrdiff_t taps = s->kernel_h * s->kernel_w, o0 = block * PYNN_DIRECT_CHANNELS;
    const ptrdiff_t count = s->out_channels - o0 < PYNN_DIRECT_CHANNELS ? s->out_channels - o0
                                                                         : PYNN_DIRECT_CHANNELS;
    pynn_direct_tile t = {planes, l->offsets, taps, s->in_channels, l->channel_step, l->count,
                          l->out_ld, {NULL}, {0}, relu, out};
    for (ptrdiff_t o = 0; o < PYNN_DIRECT_CHANNELS; o++) {
        const ptrdiff_t channel = o0 + (o < count ? o : count - 1);  /* extra lanes: unstored */
        t.weights[o] = weight + channel * s->in_channels * taps;
        t.bias[o] = bias ? bias[channel] : 0.0f;
    }
    tile(&t);
    const ptrdiff_t p = s->out_h * s->out_w;
    for (ptrdiff_t o = 0; o < count; o++)
        for (ptrdiff_t oh = 0; oh < s->out_h; oh++) {
            const float *from = out + o * l->out_ld + oh * l->cols;
            float *to = y + (o0 + o) * p + oh * s->out_w;
            for (ptrdiff_t ow = 0; ow < s->out_w; ow++) to[ow] = from[ow];
        }
}

static int slot(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

void pynn_direct_forward(const pynn_context *ctx, pynn_direct_tile_fn tile,
                         const pynn_conv_shape *s, const float *x, const float *weight,
                         const float *bias, pynn_activation activation, float *y,
                         float *workspace)
{
    direct_layout l;
    layout_of(s, &l);
    const ptrdiff_t planes_floats = s->in_channels * l.channel_step, per_slot = slot_floats(s, &l);
    const ptrdiff_t blocks = (s->out_channels + PYNN_DIRECT_CHANNELS - 1) / PYNN_DIRECT_CHANNELS;
    const ptrdiff_t image = s->in_channels * s->height * s->width;
    const ptrdiff_t output = s->out_channels * s->out_h * s->out_w;
    const int relu = activation == PYNN_ACTIVATION_RELU;
    const double products = (double)s->batch * output * (double)(s->in_channels * s->kernel_h * s->kernel_w);
    const int wanted = products >= DIRECT_PARALLEL_MIN_PRODUCTS ? ctx->num_threads : 1;
    if (s->batch > 1) {  /* a thread per image, each in its own slot */
        PYNN_TEAM_FOR(ctx, wanted, n, s->batch, {
            float *planes = workspace + (team > 1 ? slot() : 0) * per_slot;
            build_planes(s, &l, x + n * image, planes);
            for (ptrdiff_t b = 0; b < blocks; b++)
                run_block(tile, s, &l, planes, weight, bias, relu, b, planes + planes_floats,
                          y + n * output);
        });
        return;
    }
    /* one image: the planes once, the channel blocks shared by the threads */
    for (ptrdiff_t n = 0; n < s->batch; n++) {
        build_planes(s, &l, x + n * image, workspace);
        PYNN_TEAM_FOR(ctx, blocks > 1 ? wanted : 1, b, blocks, {
            float *out = workspace + planes_floats +
                         (team > 1 ? slot() : 0) * PYNN_DIRECT_CHANNELS * l.out_ld;
            run_block(tile, s, &l, workspace, weight, bias, relu, b, out, y + n * output);
        });
    }
}
