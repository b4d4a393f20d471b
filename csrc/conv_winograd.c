/* Winograd F(2x2, 3x3) convolution (contracts in conv_winograd.h). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "conv_winograd.h"
#include "gemm.h"
#include "gemm_kernels.h"
#include "vmath.h"
#ifdef _OPENMP
#include <omp.h>
#endif

/* Transform positions of a 4 x 4 tile. */
#define POSITIONS 16
/* A block's transformed input, read once per panel of output channels,
 * stays in L2 beside the transformed kernels: 128 KiB of it at most, or one
 * micro-panel of tiles where the channels are many. */
#define BLOCK_FLOATS ((ptrdiff_t)1 << 15)
/* Channels ahead whose rows the input transform asks for. */
#define WINO_AHEAD 2
/* Kernels from which their transform asks for a team. */
#define PARALLEL_MIN_KERNELS 4096
/* Multiply-adds from which a call asks for a team. */
#define PARALLEL_MIN_PRODUCTS (1 << 21)

/* A segment: `rows` rows of tiles from th0, each `count` tiles from t0, one
 * vector of tiles in all (lanes [k count, (k + 1) count) row k's). */
typedef struct {
    ptrdiff_t th0, rows, t0, count;
} wino_segment;

/* One path's transforms (conv_winograd_tile.h): the input transform of a
 * segment's tiles for every input channel, position ξ of channel c at
 * v + ξ position_step + c channel_step; the output transform of a segment
 * for `channels` output channels. */
struct pynn_winograd_kernels {
    ptrdiff_t lanes;
    void (*input)(const pynn_conv_shape *s, const float *image, const wino_segment *g,
                  float *v, ptrdiff_t position_step, ptrdiff_t channel_step);
    void (*output)(const pynn_conv_shape *s, const float *m, ptrdiff_t position_step,
                   ptrdiff_t row_step, ptrdiff_t channels, const float *bias, int relu,
                   float *y, const wino_segment *g);
    /* the weight gradient's transform A dy Aᵀ of a segment's 2 x 2 gradient
     * tiles for every output channel, position ξ of channel o at
     * out + ξ position_step + o row_step, in the input transform's lanes */
    void (*grads)(const pynn_conv_shape *s, const float *grad, const wino_segment *g,
                  float *out, ptrdiff_t position_step, ptrdiff_t row_step);
};

typedef float wino_vec4 __attribute__((vector_size(16), aligned(4), may_alias));
typedef int32_t wino_bits4 __attribute__((vector_size(16), aligned(4), may_alias));

typedef struct {
    ptrdiff_t first, last;
} wino_lanes4;

static inline wino_lanes4 lanes4(ptrdiff_t first, ptrdiff_t last)
{
    const wino_lanes4 lanes = {first, last};
    return lanes;
}

static inline wino_vec4 span4(const float *row, wino_lanes4 lanes)
{
    if (lanes.first <= 0 && lanes.last >= 4) return *(const wino_vec4 *)row;
    wino_vec4 v = {0};
    for (ptrdiff_t q = 0; q < 4; q++)
        if (q >= lanes.first && q < lanes.last) v[q] = row[q];
    return v;
}

static inline void store4(float *out, ptrdiff_t first, ptrdiff_t last, wino_vec4 v)
{
    if (first <= 0 && last >= 4) {
        *(wino_vec4 *)out = v;
        return;
    }
    for (ptrdiff_t q = first > 0 ? first : 0; q < last && q < 4; q++) out[q] = v[q];
}

#define WINO_SUFFIX generic
#define WINO_TARGET
#define WINO_LANES 4
#define WINO_VEC wino_vec4
#define WINO_BITS wino_bits4
#define WINO_EVEN 0, 2, 4, 6
#define WINO_ODD 1, 3, 5, 7
#define WINO_LOW 0, 4, 1, 5
#define WINO_HIGH 2, 6, 3, 7
#define WINO_MASK wino_lanes4
#define WINO_MASK_OF lanes4
#define WINO_SPAN span4
#define WINO_STORE store4
#include "conv_winograd_tile.h"

#if defined(PYNN_X86_64)
typedef float wino_vec8 __attribute__((vector_size(32), aligned(4), may_alias));
typedef int32_t wino_bits8 __attribute__((vector_size(32), aligned(4), may_alias));

static inline PYNN_TARGET_AVX2 __m256i lanes8(ptrdiff_t first, ptrdiff_t last)
{
    return _mm256_andnot_si256(pynn_first_lanes8(first), pynn_first_lanes8(last));
}

static inline PYNN_TARGET_AVX2 wino_vec8 span8(const float *row, __m256i lanes)
{
    return (wino_vec8)_mm256_maskload_ps(row, lanes);
}

/* Part of a vector through the stack: AMD microcodes AVX2's masked stores. */
static inline PYNN_TARGET_AVX2 void store8(float *out, ptrdiff_t first, ptrdiff_t last,
                                           wino_vec8 v)
{
    if (first <= 0 && last >= 8) {
        *(wino_vec8 *)out = v;
        return;
    }
    float lanes[8];
    *(wino_vec8 *)lanes = v;
    for (ptrdiff_t q = first > 0 ? first : 0; q < last && q < 8; q++) out[q] = lanes[q];
}

#define WINO_SUFFIX avx2
#define WINO_TARGET PYNN_TARGET_AVX2
#define WINO_LANES 8
#define WINO_VEC wino_vec8
#define WINO_BITS wino_bits8
#define WINO_EVEN 0, 2, 4, 6, 8, 10, 12, 14
#define WINO_ODD 1, 3, 5, 7, 9, 11, 13, 15
#define WINO_LOW 0, 8, 1, 9, 2, 10, 3, 11
#define WINO_HIGH 4, 12, 5, 13, 6, 14, 7, 15
#define WINO_MASK __m256i
#define WINO_MASK_OF lanes8
#define WINO_SPAN span8
#define WINO_STORE store8
#include "conv_winograd_tile.h"

typedef float wino_vec16 __attribute__((vector_size(64), aligned(4), may_alias));
typedef int32_t wino_bits16 __attribute__((vector_size(64), aligned(4), may_alias));

static inline PYNN_TARGET_AVX512 __mmask16 lanes16(ptrdiff_t first, ptrdiff_t last)
{
    return pynn_first_lanes16(last) & (__mmask16)~pynn_first_lanes16(first);
}

static inline PYNN_TARGET_AVX512 wino_vec16 span16(const float *row, __mmask16 lanes)
{
    return (wino_vec16)_mm512_maskz_loadu_ps(lanes, row);
}

static inline PYNN_TARGET_AVX512 void store16(float *out, ptrdiff_t first, ptrdiff_t last,
                                              wino_vec16 v)
{
    if (first <= 0 && last >= 16)
        *(wino_vec16 *)out = v;
    else
        _mm512_mask_storeu_ps(out, lanes16(first, last), (__m512)v);
}

#define WINO_SUFFIX avx512
#define WINO_TARGET PYNN_TARGET_AVX512
#define WINO_LANES 16
#define WINO_VEC wino_vec16
#define WINO_BITS wino_bits16
#define WINO_EVEN 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30
#define WINO_ODD 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31
#define WINO_LOW 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23
#define WINO_HIGH 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31
#define WINO_MASK __mmask16
#define WINO_MASK_OF lanes16
#define WINO_SPAN span16
#define WINO_STORE store16
#include "conv_winograd_tile.h"
#endif

/* How one call splits its work: the shapes and the path's widths alone. A
 * segment is a vector of tiles: `lanes` tiles of one row of tiles, or where
 * rows hold half a vector or less, as many whole rows as fit (group rows).
 * A micro-panel of the GEMM's B holds nr / lanes segments, a block whole
 * micro-panels. */
typedef struct {
    const struct pynn_winograd_kernels *wino;
    const pynn_gemm_kernels *gemm;
    pynn_conv_shape shape;
    ptrdiff_t tiles_h, tiles_w, group, row_segments, image_segments, segments;
    ptrdiff_t panel_segments, block_panels, block_segments, blocks, channel_panels;
    ptrdiff_t u_floats, position_floats, v_floats, slot_floats;
} wino_plan;

static ptrdiff_t round16(ptrdiff_t floats) { return (floats + 15) / 16 * 16; }

/* The segments' layout over an image (plan_make's first part). */
static void plan_segments(ptrdiff_t lanes, const pynn_conv_shape *s, wino_plan *p)
{
    p->tiles_h = (s->out_h + 1) / 2;
    p->tiles_w = (s->out_w + 1) / 2;
    p->group = p->tiles_w > 0 && lanes / p->tiles_w > 1 ? lanes / p->tiles_w : 1;
    p->row_segments = p->group > 1 ? 1 : (p->tiles_w + lanes - 1) / lanes;
    p->image_segments = (p->tiles_h + p->group - 1) / p->group * p->row_segments;
}

static void plan_make(const pynn_gemm_kernels *gemm, const struct pynn_winograd_kernels *wino,
                      const pynn_conv_shape *s, wino_plan *p)
{
    p->wino = wino;
    p->gemm = gemm;
    p->shape = *s;
    plan_segments(wino->lanes, s, p);
    p->segments = s->batch * p->image_segments;
    p->panel_segments = gemm->nr / wino->lanes;
    const ptrdiff_t panel_floats = POSITIONS * s->in_channels * gemm->nr;
    p->block_panels = BLOCK_FLOATS / panel_floats > 1 ? BLOCK_FLOATS / panel_floats : 1;
    p->block_segments = p->block_panels * p->panel_segments;
    p->blocks = (p->segments + p->block_segments - 1) / p->block_segments;
    p->channel_panels = (s->out_channels + gemm->mr - 1) / gemm->mr;
    p->u_floats = round16(p->channel_panels * POSITIONS * s->in_channels * gemm->a_stride);
    /* the positions a cache line apart beyond whole lines, so the input
     * transform's 16 streams of stores fall in different L1 sets */
    p->position_floats = round16(p->block_panels * s->in_channels * gemm->nr) + 16;
    p->v_floats = POSITIONS * p->position_floats;
    p->slot_floats = p->v_floats + round16(POSITIONS * gemm->mr * gemm->nr);
}

static ptrdiff_t plan_floats(const wino_plan *p, int threads)
{
    return p->u_floats + (threads > 1 ? threads : 1) * p->slot_floats;
}

/* U = G g Gᵀ of the kernels of output channels [op mr, op mr + mr), in
 * double, as the GEMM's packed A: position ξ of output channel o and input
 * channel c at ((o / mr) 16 + ξ) C a_stride + c a_stride + o % mr, rows past
 * the last channel zero. g is weight[o, c], or with `transposed` weight[c, o]
 * turned by 180 degrees (the input gradient's kernel, weight [C, OC, 3, 3]
 * of the shape's C = OC in and OC out). */
static void transform_weights(const wino_plan *p, const float *weight, int transposed,
                              ptrdiff_t op, float *u)
{
    const ptrdiff_t in = p->shape.in_channels, out = p->shape.out_channels;
    const ptrdiff_t mr = p->gemm->mr, a_stride = p->gemm->a_stride;
    const ptrdiff_t o0 = op * mr, o1 = o0 + mr < out ? o0 + mr : out;
    float *panel = u + op * POSITIONS * in * a_stride;
    memset(panel, 0, (size_t)(POSITIONS * in * a_stride) * sizeof(float));
    for (ptrdiff_t o = o0; o < o1; o++)
        for (ptrdiff_t c = 0; c < in; c++) {
            double g[9], t[4][3];
            for (int k = 0; k < 9; k++)
                g[k] = transposed ? weight[(c * out + o) * 9 + 8 - k] : weight[(o * in + c) * 9 + k];
            for (int j = 0; j < 3; j++) {
                t[0][j] = g[j];
                t[1][j] = 0.5 * (g[j] + g[3 + j] + g[6 + j]);
                t[2][j] = 0.5 * (g[j] - g[3 + j] + g[6 + j]);
                t[3][j] = g[6 + j];
            }
            float *at = panel + c * a_stride + o - o0;
            for (int i = 0; i < 4; i++) {
                const double row[4] = {t[i][0], 0.5 * (t[i][0] + t[i][1] + t[i][2]),
                                       0.5 * (t[i][0] - t[i][1] + t[i][2]), t[i][2]};
                for (int j = 0; j < 4; j++) at[(4 * i + j) * in * a_stride] = (float)row[j];
            }
        }
}

/* Segment `index` of the call: its image and tiles. */
static wino_segment segment_at(const wino_plan *p, ptrdiff_t index, ptrdiff_t *n)
{
    const ptrdiff_t rest = index % p->image_segments, part = rest % p->row_segments;
    wino_segment g;
    *n = index / p->image_segments;
    g.th0 = rest / p->row_segments * p->group;
    g.rows = p->tiles_h - g.th0 < p->group ? p->tiles_h - g.th0 : p->group;
    g.t0 = part * p->wino->lanes;
    g.count = p->tiles_w - g.t0 < p->wino->lanes ? p->tiles_w - g.t0 : p->wino->lanes;
    return g;
}

/* One block: its segments' input transforms into v ([ξ][panel][C][nr], the
 * positions position_floats apart), then per panel of output channels and
 * micro-panel of tiles the 16 GEMMs into m ([ξ][mr][nr]) and their output
 * transforms. */
static void run_block(const wino_plan *p, const float *x, const float *u, const float *bias,
                      int relu, float *y, ptrdiff_t block, float *slot)
{
    const pynn_conv_shape *s = &p->shape;
    const ptrdiff_t lanes = p->wino->lanes, mr = p->gemm->mr, nr = p->gemm->nr;
    const ptrdiff_t in = s->in_channels, a_stride = p->gemm->a_stride;
    const ptrdiff_t first = block * p->block_segments;
    const ptrdiff_t count = p->segments - first < p->block_segments ? p->segments - first
                                                                    : p->block_segments;
    const ptrdiff_t position_step = p->position_floats;
    const ptrdiff_t image_in = in * s->height * s->width;
    const ptrdiff_t plane_out = s->out_h * s->out_w, image_out = s->out_channels * plane_out;
    float *v = slot, *m = slot + p->v_floats;
    for (ptrdiff_t j = 0; j < count; j++) {
        ptrdiff_t n;
        const wino_segment g = segment_at(p, first + j, &n);
        p->wino->input(s, x + n * image_in, &g,
                       v + j / p->panel_segments * in * nr + j % p->panel_segments * lanes,
                       position_step, nr);
    }
    const ptrdiff_t panels = (count + p->panel_segments - 1) / p->panel_segments;
    const pynn_tile_update update = {1.0f, 0.0f, NULL, NULL, 0};
    for (ptrdiff_t op = 0; op < p->channel_panels; op++) {
        const ptrdiff_t o0 = op * mr;
        const ptrdiff_t rows = s->out_channels - o0 < mr ? s->out_channels - o0 : mr;
        const float *u_panel = u + op * POSITIONS * in * a_stride;
        for (ptrdiff_t panel = 0; panel < panels; panel++) {
            const ptrdiff_t done = panel * p->panel_segments;
            const ptrdiff_t segs = count - done < p->panel_segments ? count - done
                                                                   : p->panel_segments;
            for (ptrdiff_t xi = 0; xi < POSITIONS; xi++)
                p->gemm->packed(in, u_panel + xi * in * a_stride, 1, a_stride,
                                v + xi * position_step + panel * in * nr, nr, m + xi * mr * nr,
                                nr, rows, segs * lanes, &update);
            for (ptrdiff_t q = 0; q < segs; q++) {
                ptrdiff_t n;
                const wino_segment g = segment_at(p, first + done + q, &n);
                p->wino->output(s, m + q * lanes, mr * nr, nr, rows, bias ? bias + o0 : NULL,
                                relu, y + n * image_out + o0 * plane_out, &g);
            }
        }
    }
}

/* The convolution of shape s through the plan's path: weights as
 * transform_weights reads them. */
static int winograd_run(const pynn_context *ctx, const struct pynn_winograd_kernels *kernels,
                        const pynn_conv_shape *s, const float *x, const float *weight,
                        int transposed, const float *bias, pynn_activation activation, float *y,
                        float *workspace)
{
    wino_plan p;
    plan_make(ctx->kernels->gemm, kernels, s, &p);
    if (p.segments == 0) return 0;
    float *owned = NULL;
    if (!workspace) {
        owned = malloc((size_t)plan_floats(&p, ctx->num_threads) * sizeof(float));
        if (!owned) return -1;
        workspace = owned;
    }
    const int panels_wanted = s->out_channels * s->in_channels >= PARALLEL_MIN_KERNELS
                              ? ctx->num_threads : 1;
    PYNN_TEAM_FOR(ctx, panels_wanted, op, p.channel_panels, {
        transform_weights(&p, weight, transposed, op, workspace);
    });
    const int relu = activation == PYNN_ACTIVATION_RELU;
    const double products = (double)s->batch * s->out_channels * s->out_h * s->out_w *
                            (double)(s->in_channels * 9);
    const int wanted = p.blocks > 1 && products >= PARALLEL_MIN_PRODUCTS ? ctx->num_threads : 1;
    float *slots = workspace + p.u_floats;
    PYNN_TEAM_FOR(ctx, wanted, b, p.blocks, {
        run_block(&p, x, workspace, bias, relu, y, b,
                  slots + pynn_team_slot(team) * p.slot_floats);
    });
    free(owned);
    return 0;
}

/* Enough channels to fill the GEMM tiles, enough outputs a channel to repay
 * the kernels' transform, and tiles filling 3/4 of the path's vectors: below
 * them the direct path is faster. */
#define MIN_CHANNELS 16
#define MIN_OUTPUTS 256
/* Channels from which the weight gradient's GEMMs beat the direct path's sums. */
#define MIN_GRAD_CHANNELS 32

static int applies_with(const pynn_conv_shape *s, ptrdiff_t lanes)
{
    if (s->kernel_h != 3 || s->kernel_w != 3 || s->stride_h != 1 || s->stride_w != 1 ||
        s->dilation_h != 1 || s->dilation_w != 1 || s->groups != 1 || s->pad_h < 0 ||
        s->pad_w < 0 || s->in_channels < MIN_CHANNELS || s->out_channels < MIN_CHANNELS ||
        s->batch * s->out_h * s->out_w < MIN_OUTPUTS || s->out_h < 1 || s->out_w < 1)
        return 0;
    wino_plan p;
    plan_segments(lanes, s, &p);
    return 4 * p.tiles_h * p.tiles_w >= 3 * p.image_segments * lanes;
}

int pynn_winograd_applies(const struct pynn_winograd_kernels *kernels, const pynn_conv_shape *s)
{
    return applies_with(s, kernels->lanes);
}

/* The input gradient as a forward convolution of dy (see the header). */
static pynn_conv_shape gradient_shape(const pynn_conv_shape *s)
{
    pynn_conv_shape t = *s;
    t.in_channels = s->out_channels;
    t.out_channels = s->in_channels;
    t.height = s->out_h;
    t.width = s->out_w;
    t.pad_h = 2 - s->pad_h;
    t.pad_w = 2 - s->pad_w;
    t.out_h = s->height;
    t.out_w = s->width;
    return t;
}

static int input_grad_applies_with(const pynn_conv_shape *s, ptrdiff_t lanes)
{
    if (!applies_with(s, lanes) || s->pad_h > 2 || s->pad_w > 2) return 0;
    const pynn_conv_shape t = gradient_shape(s);
    return applies_with(&t, lanes);
}

int pynn_winograd_input_grad_applies(const struct pynn_winograd_kernels *kernels,
                                     const pynn_conv_shape *s)
{
    return input_grad_applies_with(s, kernels->lanes);
}

/* The weight gradient's images split into this many slices (fewer with a
 * smaller batch), each with its own sum in the workspace, added in slice
 * order: the threads share the slices, whatever their count. */
#define GRAD_SLICES 4
/* A chunk's transformed inputs and gradients, read by the 16 GEMMs, stay in
 * L2: at most this many floats of them, or one image's. */
#define GRAD_CHUNK_FLOATS ((ptrdiff_t)1 << 17)
/* Input channels whose kernels' gradients are turned back together. */
#define GRAD_OUTPUT_BLOCK 32

/* How the weight gradient splits its work: the shapes and the path's widths
 * alone. A chunk of images has `tiles` transform columns, image_segments
 * vectors of tiles an image. */
typedef struct {
    wino_plan p;
    ptrdiff_t slices, images, tiles, sums_floats, slot_floats;
} grad_plan;

static void grad_plan_make(const struct pynn_winograd_kernels *wino, const pynn_conv_shape *s,
                           grad_plan *g)
{
    g->p.wino = wino;
    g->p.shape = *s;
    plan_segments(wino->lanes, s, &g->p);
    const ptrdiff_t per_image = g->p.image_segments * wino->lanes;
    const ptrdiff_t channels = s->in_channels + s->out_channels;
    g->slices = s->batch < GRAD_SLICES ? s->batch : GRAD_SLICES;
    const ptrdiff_t most = g->slices > 0 ? (s->batch + g->slices - 1) / g->slices : 1;
    g->images = GRAD_CHUNK_FLOATS / (POSITIONS * channels * per_image);
    if (g->images > most) g->images = most;
    if (g->images < 1) g->images = 1;
    g->tiles = g->images * per_image;
    g->sums_floats = POSITIONS * s->out_channels * s->in_channels;
    g->slot_floats = POSITIONS * channels * g->tiles;
}

static ptrdiff_t grad_plan_floats(const grad_plan *g, int threads)
{
    return g->slices * g->sums_floats + (threads > 1 ? threads : 1) * g->slot_floats;
}

/* Slice `slice`'s share of the transformed weight gradient: per chunk of its
 * images, the inputs' and the gradients' transforms, then for each position
 * ξ sums_ξ [OC x C] += Ŷ_ξ V_ξᵀ over the chunk's tiles. */
static void grad_slice(const pynn_context *single, const grad_plan *g, const float *dy,
                       const float *x, ptrdiff_t slice, float *sums, float *slot)
{
    const pynn_conv_shape *s = &g->p.shape;
    const ptrdiff_t in = s->in_channels, out = s->out_channels, lanes = g->p.wino->lanes;
    const ptrdiff_t image_in = in * s->height * s->width;
    const ptrdiff_t image_out = out * s->out_h * s->out_w;
    const ptrdiff_t first = slice * s->batch / g->slices, last = (slice + 1) * s->batch / g->slices;
    float *v = slot, *grads = slot + POSITIONS * in * g->tiles;
    for (ptrdiff_t n0 = first; n0 < last; n0 += g->images) {
        const ptrdiff_t count = last - n0 < g->images ? last - n0 : g->images;
        const ptrdiff_t segments = count * g->p.image_segments;
        for (ptrdiff_t j = 0; j < segments; j++) {
            ptrdiff_t n;
            const wino_segment seg = segment_at(&g->p, n0 * g->p.image_segments + j, &n);
            g->p.wino->input(s, x + n * image_in, &seg, v + j * lanes, in * g->tiles, g->tiles);
            g->p.wino->grads(s, dy + n * image_out, &seg, grads + j * lanes, out * g->tiles,
                             g->tiles);
        }
        for (ptrdiff_t xi = 0; xi < POSITIONS; xi++)
            pynn_sgemm(single, 0, 1, out, in, segments * lanes, 1.0f,
                       grads + xi * out * g->tiles, g->tiles, v + xi * in * g->tiles, g->tiles,
                       n0 == first ? 0.0f : 1.0f, sums + xi * out * in, in, NULL);
    }
}

/* dW = Gᵀ (Σ_slices sums) G for the kernels of output channel o, in double,
 * GRAD_OUTPUT_BLOCK input channels at a time. */
static void grad_output(const grad_plan *g, const float *sums, ptrdiff_t o, float *dweight)
{
    const ptrdiff_t in = g->p.shape.in_channels, out = g->p.shape.out_channels;
    for (ptrdiff_t c0 = 0; c0 < in; c0 += GRAD_OUTPUT_BLOCK) {
        const ptrdiff_t width = in - c0 < GRAD_OUTPUT_BLOCK ? in - c0 : GRAD_OUTPUT_BLOCK;
        double m[POSITIONS][GRAD_OUTPUT_BLOCK] = {{0.0}};
        for (int xi = 0; xi < POSITIONS; xi++)
            for (ptrdiff_t k = 0; k < g->slices; k++) {
                const float *row = sums + k * g->sums_floats + (xi * out + o) * in + c0;
                for (ptrdiff_t c = 0; c < width; c++) m[xi][c] += row[c];
            }
        for (ptrdiff_t c = 0; c < width; c++) {
            double t[4][3];
            for (int i = 0; i < 4; i++) {  /* Gᵀ along each row of positions */
                const double m0 = m[4 * i][c], m1 = m[4 * i + 1][c];
                const double m2 = m[4 * i + 2][c], m3 = m[4 * i + 3][c];
                t[i][0] = m0 + 0.5 * (m1 + m2);
                t[i][1] = 0.5 * (m1 - m2);
                t[i][2] = 0.5 * (m1 + m2) + m3;
            }
            float *kernel = dweight + (o * in + c0 + c) * 9;
            for (int j = 0; j < 3; j++) {  /* then down the columns */
                kernel[j] = (float)(t[0][j] + 0.5 * (t[1][j] + t[2][j]));
                kernel[3 + j] = (float)(0.5 * (t[1][j] - t[2][j]));
                kernel[6 + j] = (float)(0.5 * (t[1][j] + t[2][j]) + t[3][j]);
            }
        }
    }
}

int pynn_winograd_weight_grad_applies(const struct pynn_winograd_kernels *kernels,
                                      const pynn_conv_shape *s)
{
    return applies_with(s, kernels->lanes) && s->in_channels >= MIN_GRAD_CHANNELS &&
           s->out_channels >= MIN_GRAD_CHANNELS;
}

int pynn_winograd_weight_grad(const pynn_context *ctx,
                              const struct pynn_winograd_kernels *kernels,
                              const pynn_conv_shape *s, const float *dy, const float *x,
                              float *dweight, float *workspace)
{
    grad_plan g;
    grad_plan_make(kernels, s, &g);
    if (g.slices == 0) {
        memset(dweight, 0, (size_t)(s->out_channels * s->in_channels * 9) * sizeof(float));
        return 0;
    }
    float *owned = NULL;
    if (!workspace) {
        owned = malloc((size_t)grad_plan_floats(&g, ctx->num_threads) * sizeof(float));
        if (!owned) return -1;
        workspace = owned;
    }
    pynn_context single = *ctx;
    single.num_threads = 1;
    const double products = (double)s->batch * s->out_channels * s->out_h * s->out_w *
                            (double)(s->in_channels * 9);
    const int wanted = products >= PARALLEL_MIN_PRODUCTS ? ctx->num_threads : 1;
    float *slots = workspace + g.slices * g.sums_floats;
    PYNN_TEAM_FOR(ctx, wanted, slice, g.slices, {
        grad_slice(&single, &g, dy, x, slice, workspace + slice * g.sums_floats,
                   slots + pynn_team_slot(team) * g.slot_floats);
    });
    const int outputs_wanted = s->out_channels * s->in_channels >= PARALLEL_MIN_KERNELS
                               ? ctx->num_threads : 1;
    PYNN_TEAM_FOR(ctx, outputs_wanted, o, s->out_channels, {
        grad_output(&g, workspace, o, dweight);
    });
    free(owned);
    return 0;
}

size_t pynn_winograd_workspace_size(const pynn_conv_shape *s, int threads)
{
#if defined(PYNN_X86_64)
    const struct pynn_winograd_kernels *paths[] = {&pynn_winograd_generic, &pynn_winograd_avx2,
                                                   &pynn_winograd_avx512};
    const struct pynn_gemm_kernels *gemms[] = {&pynn_gemm_generic, &pynn_gemm_avx2,
                                               &pynn_gemm_avx512};
#else
    const struct pynn_winograd_kernels *paths[] = {&pynn_winograd_generic};
    const struct pynn_gemm_kernels *gemms[] = {&pynn_gemm_generic};
#endif
    const pynn_conv_shape gradient = gradient_shape(s);
    ptrdiff_t size = 0;
    for (size_t k = 0; k < sizeof(paths) / sizeof(paths[0]); k++) {
        const struct pynn_winograd_kernels *wino = paths[k];
        wino_plan p;
        if (applies_with(s, wino->lanes)) {
            plan_make(gemms[k], wino, s, &p);
            if (plan_floats(&p, threads) > size) size = plan_floats(&p, threads);
        }
        if (input_grad_applies_with(s, wino->lanes)) {
            plan_make(gemms[k], wino, &gradient, &p);
            if (plan_floats(&p, threads) > size) size = plan_floats(&p, threads);
        }
        if (pynn_winograd_weight_grad_applies(wino, s)) {
            grad_plan g;
            grad_plan_make(wino, s, &g);
            if (grad_plan_floats(&g, threads) > size) size = grad_plan_floats(&g, threads);
        }
    }
    return (size_t)size;
}

int pynn_winograd_forward(const pynn_context *ctx, const struct pynn_winograd_kernels *kernels,
                          const pynn_conv_shape *s, const float *x, const float *weight,
                          const float *bias, pynn_activation activation, float *y,
                          float *workspace)
{
    return winograd_run(ctx, kernels, s, x, weight, 0, bias, activation, y, workspace);
}

int pynn_winograd_input_grad(const pynn_context *ctx, const struct pynn_winograd_kernels *kernels,
                             const pynn_conv_shape *s, const float *dy, const float *weight,
                             float *dx, float *workspace)
{
    const pynn_conv_shape t = gradient_shape(s);
    return winograd_run(ctx, kernels, &t, dy, weight, 1, NULL, PYNN_ACTIVATION_NONE, dx,
                        workspace);
}
