/* Direct convolution over phase planes (contracts in conv_direct.h). */
#include <stdint.h>
#include <string.h>
#include "conv_direct.h"
#include "helpers.h"
#ifdef _OPENMP
#include <omp.h>
#endif

/* An image's planes stay in L2 across the tiles that read them; larger
 * images take the unfold and GEMM. */
#define DIRECT_MAX_PLANE_FLOATS ((ptrdiff_t)1 << 17)
/* Multiply-adds from which a call asks for a team. */
#define DIRECT_PARALLEL_MIN_PRODUCTS (1 << 21)
/* Multiply-adds from which one image's channel blocks below
 * DIRECT_PARALLEL_MIN_PRODUCTS are shared with the helper threads
 * (helpers.h), whose hand-over costs a cache line transfer where an OpenMP
 * region's start and end cost as much as such a layer. */
#define DIRECT_HELPERS_MIN_PRODUCTS (1 << 16)
/* Partial sums from which their total asks for a team. */
#define DIRECT_PARALLEL_MIN_SUMS (1 << 17)

/* Where an image's planes are and what a tile reads of them. */
typedef struct {
    ptrdiff_t phases_h, phases_w, rows, cols, plane, channel_step, count, out_ld;
    ptrdiff_t offsets[PYNN_DIRECT_MAX_TAPS];
} direct_layout;

/* The columns j of a phase plane whose input column j sw + phase - pad_w is
 * inside the image: [*first, *last). */
static inline void valid_columns(const pynn_conv_shape *s, ptrdiff_t cols, ptrdiff_t phase,
                                 ptrdiff_t *first, ptrdiff_t *last)
{
    const ptrdiff_t sw = s->stride_w, lead = s->pad_w - phase;
    ptrdiff_t a = lead > 0 ? (lead + sw - 1) / sw : 0;
    ptrdiff_t b = (s->width + lead + sw - 1) / sw;
    if (b > cols) b = cols;
    if (a > b) a = b;
    *first = a;
    *last = b;
}

/* The tap offsets into channel 0's planes when consecutive phases lie
 * phase_step floats apart. */
static void tap_offsets(const pynn_conv_shape *s, const direct_layout *l, ptrdiff_t phase_step,
                        ptrdiff_t *offsets)
{
    const ptrdiff_t sh = s->stride_h, sw = s->stride_w;
    for (ptrdiff_t kh = 0; kh < s->kernel_h; kh++)
        for (ptrdiff_t kw = 0; kw < s->kernel_w; kw++)
            offsets[kh * s->kernel_w + kw] = ((kh % sh) * l->phases_w + kw % sw) * phase_step +
                                             (kh / sh) * l->cols + kw / sw;
}

static void layout_of(const pynn_conv_shape *s, direct_layout *l)
{
    const ptrdiff_t sh = s->stride_h, sw = s->stride_w, lanes = PYNN_DIRECT_MAX_LANES;
    l->phases_h = sh < s->kernel_h ? sh : s->kernel_h;
    l->phases_w = sw < s->kernel_w ? sw : s->kernel_w;
    l->rows = s->out_h + (s->kernel_h - 1) / sh;
    /* A row's right padding can be the next row's left padding: rows are
     * stored `cols` floats apart, where a tap reading past a stored row
     * reads the next row's leading zero columns. */
    const ptrdiff_t columns = s->out_w + (s->kernel_w - 1) / sw;
    l->cols = s->out_w;
    for (ptrdiff_t b = 0; b < l->phases_w; b++) {
        ptrdiff_t first, last;
        valid_columns(s, columns, b, &first, &last);
        const ptrdiff_t needed = last > columns - first ? last : columns - first;
        if (needed > l->cols) l->cols = needed;
    }
    /* a tile reads up to a vector past its last output plus the largest
     * shift; whole vectors, so runs of planes side by side are too */
    l->plane = (l->rows * l->cols + (s->kernel_w - 1) / sw + 2 * lanes - 1) / lanes * lanes;
    l->channel_step = l->phases_h * l->phases_w * l->plane;
    l->count = s->out_h * l->cols;
    l->out_ld = (l->count + lanes - 1) / lanes * lanes;
    tap_offsets(s, l, l->plane, l->offsets);
}

int pynn_direct_applies(const pynn_conv_shape *s)
{
    /* A 1x1 kernel's GEMM reads the image (or its strided gather) as it is,
     * and a tile of 8 channels computing fewer than 6 wastes a quarter. */
    const ptrdiff_t blocked = (s->out_channels + PYNN_DIRECT_CHANNELS - 1) / PYNN_DIRECT_CHANNELS *
                              PYNN_DIRECT_CHANNELS;
    if (s->groups != 1 || s->dilation_h != 1 || s->dilation_w != 1 ||
        s->kernel_h * s->kernel_w > PYNN_DIRECT_MAX_TAPS || s->kernel_h * s->kernel_w == 1 ||
        4 * s->out_channels < 3 * blocked)
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

#define DIRECT_SUFFIX generic
#define DIRECT_TARGET
#define DIRECT_LANES 4
#define DIRECT_RUNS 1
#define DIRECT_RUNS6 2
#define DIRECT_GROUP 8
#define DIRECT_SOURCES 2
#include "conv_direct_tile.h"
#if defined(PYNN_X86_64)
#define DIRECT_SUFFIX avx2
#define DIRECT_TARGET PYNN_TARGET_AVX2
#define DIRECT_LANES 8
#define DIRECT_RUNS 3
#define DIRECT_RUNS6 2
#define DIRECT_GROUP 4
#define DIRECT_SOURCES 3
#include "conv_direct_tile.h"
#define DIRECT_SUFFIX avx512
#define DIRECT_TARGET PYNN_TARGET_AVX512
#define DIRECT_LANES 16
#define DIRECT_RUNS 3
#define DIRECT_GROUP 8
/* blocks of at most 6 channels (a first layer's, or the input gradient of
 * one with 6 inputs) through the AVX2 tile: its steps of 16 outputs skip
 * more padding rows than 512-bit steps of 64 */
#define DIRECT_NARROW_TILE direct_tile_avx2
#define DIRECT_SOURCES PYNN_DIRECT_SOURCES
#include "conv_direct_tile.h"
#endif

/* The planes of one image of the forward layout l. */
static pynn_direct_planes forward_planes(const pynn_conv_shape *s, const direct_layout *l)
{
    pynn_direct_planes where = {s, l->phases_h, l->phases_w, l->rows, l->cols, l->channel_step,
                                l->plane, l->plane};
    return where;
}

/* Output channels [8 block, 8 block + 8) of one image from its planes,
 * through `out` (8 out_ld floats), then its rows' first out_w columns to y. */
static void run_block(const struct pynn_direct_kernels *kernels, const pynn_conv_shape *s,
                      const direct_layout *l,
                      const float *planes, const float *weight, const float *bias, int relu,
                      ptrdiff_t block, float *out, float *y)
{
    const ptrdiff_t taps = s->kernel_h * s->kernel_w, o0 = block * PYNN_DIRECT_CHANNELS;
    const ptrdiff_t count = s->out_channels - o0 < PYNN_DIRECT_CHANNELS ? s->out_channels - o0
                                                                         : PYNN_DIRECT_CHANNELS;
    /* with a vertical stride of 1, plane row i is input row i - pad_h */
    const int vertical = s->stride_h == 1;
    pynn_direct_tile t = {planes, l->offsets, taps, s->kernel_w, l->cols,
                          vertical ? s->pad_h : 0, vertical ? s->pad_h + s->height : l->rows + s->kernel_h,
                          s->in_channels, l->channel_step, l->count, l->out_ld, (int)count,
                          {NULL}, {0}, relu, out};
    for (ptrdiff_t o = 0; o < PYNN_DIRECT_CHANNELS; o++) {
        const ptrdiff_t channel = o0 + (o < count ? o : count - 1);  /* extra lanes: unstored */
        t.weights[o] = weight + channel * s->in_channels * taps;
        t.bias[o] = bias ? bias[channel] : 0.0f;
    }
    kernels->tile(&t);
    const ptrdiff_t p = s->out_h * s->out_w;
    for (ptrdiff_t o = 0; o < count; o++)
        for (ptrdiff_t oh = 0; oh < s->out_h; oh++) {
            const float *from = out + o * l->out_ld + oh * l->cols;
            float *to = y + (o0 + o) * p + oh * s->out_w;
            for (ptrdiff_t ow = 0; ow < s->out_w; ow++) to[ow] = from[ow];
        }
}

/* One image's channel blocks from its planes, shared among `parts` threads: share
 * i takes blocks [i blocks / parts, (i + 1) blocks / parts),
 * through its own output tile after the planes. */
typedef struct {
    const struct pynn_direct_kernels *kernels;
    const pynn_conv_shape *s;
    const direct_layout *l;
    float *workspace;
    const float *weight, *bias;
    int relu;
    ptrdiff_t blocks;
    float *y;
} image_blocks;

static void run_image_share(void *arg, int share, int parts)
{
    const image_blocks *call = arg;
    const direct_layout *l = call->l;
    float *out = call->workspace + call->s->in_channels * l->channel_step +
                 share * PYNN_DIRECT_CHANNELS * l->out_ld;
    for (ptrdiff_t b = share * call->blocks / parts; b < (share + 1) * call->blocks / parts; b++)
        run_block(call->kernels, call->s, l, call->workspace, call->weight, call->bias, call->relu,
                  b, out, call->y);
}

void pynn_direct_forward(const pynn_context *ctx, const struct pynn_direct_kernels *kernels,
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
    const pynn_direct_planes where = forward_planes(s, &l);
    if (s->batch > 1) {  /* a thread per image, each in its own slot */
        PYNN_TEAM_FOR(ctx, wanted, n, s->batch, {
            float *planes = workspace + pynn_team_slot(team) * per_slot;
            kernels->planes(&where, x + n * image, planes);
            for (ptrdiff_t b = 0; b < blocks; b++)
                run_block(kernels, s, &l, planes, weight, bias, relu, b, planes + planes_floats,
                          y + n * output);
        });
        return;
    }
    /* one image: the planes once, the channel blocks shared by the threads */
    if (s->batch == 1 && blocks > 1 && wanted == 1 && products >= DIRECT_HELPERS_MIN_PRODUCTS) {
        kernels->planes(&where, x, workspace);
        image_blocks call = {kernels, s, &l, workspace, weight, bias, relu, blocks, y};
        pynn_helpers_split(ctx, (int)(blocks < ctx->num_threads ? blocks : ctx->num_threads),
                           run_image_share, &call);
        return;
    }
    for (ptrdiff_t n = 0; n < s->batch; n++) {
        kernels->planes(&where, x + n * image, workspace);
        PYNN_TEAM_FOR(ctx, blocks > 1 ? wanted : 1, b, blocks, {
            float *out = workspace + planes_floats +
                         pynn_team_slot(team) * PYNN_DIRECT_CHANNELS * l.out_ld;
            run_block(kernels, s, &l, workspace, weight, bias, relu, b, out, y + n * output);
        });
    }
}

/* Images per weight-gradient chunk: their planes and gradients in L2; the
 * chunks' sizes differ by one at most and are a function of the shapes alone. */
#define DIRECT_CHUNK_FLOATS ((ptrdiff_t)1 << 18)
#define DIRECT_CHUNK_MULTIPLE 4
/* At most this many chunks (each keeps a partial dW in the workspace). */
#define DIRECT_MAX_CHUNKS 64

/* A chunk's images lie `segment` = rows cols floats apart in each plane
 * run (a tap of one image reads past it only where its gradient is zero),
 * each run `phase_step` floats, whole vectors. */
typedef struct {
    direct_layout layout;
    ptrdiff_t images, chunks, segment, phase_step, channel_step, grads_at, floats;
    ptrdiff_t offsets[PYNN_DIRECT_MAX_TAPS];
} gradient_chunks;

static void chunks_of(const pynn_conv_shape *s, gradient_chunks *g)
{
    direct_layout *l = &g->layout;
    layout_of(s, l);
    const ptrdiff_t phases = l->phases_h * l->phases_w, lanes = PYNN_DIRECT_MAX_LANES;
    g->segment = l->rows * l->cols;
    const ptrdiff_t per_image = (s->in_channels * phases + s->out_channels) * g->segment;
    ptrdiff_t images = DIRECT_CHUNK_FLOATS / per_image;
    if (images < (s->batch + DIRECT_MAX_CHUNKS - 1) / DIRECT_MAX_CHUNKS)
        images = (s->batch + DIRECT_MAX_CHUNKS - 1) / DIRECT_MAX_CHUNKS;
    if (images < 1) images = 1;
    if (images > s->batch) images = s->batch > 0 ? s->batch : 1;
    /* several chunks: a multiple of DIRECT_CHUNK_MULTIPLE where the batch
     * allows, so teams of 2 or 4 threads take equal shares */
    ptrdiff_t chunks = (s->batch + images - 1) / images;
    if (chunks > 1)
        chunks = (chunks + DIRECT_CHUNK_MULTIPLE - 1) / DIRECT_CHUNK_MULTIPLE * DIRECT_CHUNK_MULTIPLE;
    g->chunks = chunks < s->batch ? chunks : s->batch;
    g->images = g->chunks > 0 ? (s->batch + g->chunks - 1) / g->chunks : 1;
    g->phase_step = (g->images * g->segment + lanes - 1) / lanes * lanes;
    g->channel_step = phases * g->phase_step;
    g->grads_at = s->in_channels * g->channel_step + l->plane;  /* after the planes' slack */
    g->floats = g->grads_at + s->out_channels * g->phase_step;
    tap_offsets(s, l, g->phase_step, g->offsets);
}

static int gradient_slots(const pynn_conv_shape *s, const gradient_chunks *g, int threads)
{
    return g->chunks >= threads ? threads : 1;
}

size_t pynn_direct_weight_grad_workspace_size(const pynn_conv_shape *s, int threads)
{
    gradient_chunks g;
    chunks_of(s, &g);
    const ptrdiff_t weights = s->out_channels * s->in_channels * s->kernel_h * s->kernel_w;
    return (size_t)(gradient_slots(s, &g, threads) * g.floats +
                    (g.chunks > 1 ? g.chunks * weights : 0));
}

/* Images [first, first + count)'s planes and gradients, in the chunk layout
 * (gradient rows zero past out_w and past the outputs), then their dW
 * share written to `share`. */
static void chunk_weight_grad(const struct pynn_direct_kernels *kernels, const pynn_conv_shape *s,
                              const gradient_chunks *g, const float *dy, const float *x,
                              ptrdiff_t first, ptrdiff_t count, float *chunk, float *share)
{
    const direct_layout *l = &g->layout;
    const ptrdiff_t image = s->in_channels * s->height * s->width;
    const ptrdiff_t p = s->out_h * s->out_w, taps = s->kernel_h * s->kernel_w;
    const ptrdiff_t pairs = s->in_channels * taps;
    float *grads = chunk + g->grads_at;
    const ptrdiff_t built = count * g->segment, runs = s->in_channels * l->phases_h * l->phases_w;
    const pynn_direct_planes where = {s, l->phases_h, l->phases_w, l->rows, l->cols,
                                      g->channel_step, g->phase_step, g->segment};
    for (ptrdiff_t n = 0; n < count; n++)
        kernels->planes(&where, x + (first + n) * image, chunk + n * g->segment);
    for (ptrdiff_t r = 0; r < runs; r++)  /* past the images, and the slack after the last run */
        memset(chunk + r * g->phase_step + built, 0, (size_t)(g->phase_step - built) * sizeof(float));
    memset(chunk + runs * g->phase_step, 0, (size_t)l->plane * sizeof(float));
    memset(grads, 0, (size_t)(s->out_channels * g->phase_step) * sizeof(float));
    for (ptrdiff_t n = 0; n < count; n++)
        for (ptrdiff_t o = 0; o < s->out_channels; o++) {
            float *row = grads + o * g->phase_step + n * g->segment;
            const float *from = dy + ((first + n) * s->out_channels + o) * p;
            for (ptrdiff_t oh = 0; oh < s->out_h; oh++)
                memcpy(row + oh * l->cols, from + oh * s->out_w, (size_t)s->out_w * sizeof(float));
        }
    /* q runs over each image's output rows only (the rows past them, zero
     * gradients, add nothing), where those rows in whole vectors stay
     * within the image's segment; else over the whole run of images */
    pynn_direct_sums block;
    const ptrdiff_t lanes = PYNN_DIRECT_MAX_LANES;
    const ptrdiff_t rows_run = (l->count + lanes - 1) / lanes * lanes;
    block.runs = rows_run < g->segment ? count : 1;
    block.segment = g->segment;
    block.length = rows_run < g->segment ? rows_run : g->phase_step;
    for (ptrdiff_t o0 = 0; o0 < s->out_channels; o0 += PYNN_DIRECT_GRADS) {
        const ptrdiff_t outs = s->out_channels - o0 < PYNN_DIRECT_GRADS ? s->out_channels - o0
                                                                         : PYNN_DIRECT_GRADS;
        for (int o = 0; o < PYNN_DIRECT_GRADS; o++)  /* extra rows: sums unstored */
            block.grads[o] = grads + (o0 + (o < outs ? o : 0)) * g->phase_step;
        for (ptrdiff_t j0 = 0; j0 < pairs; j0 += PYNN_DIRECT_SOURCES) {
            const ptrdiff_t ks = pairs - j0 < PYNN_DIRECT_SOURCES ? pairs - j0 : PYNN_DIRECT_SOURCES;
            for (int k = 0; k < PYNN_DIRECT_SOURCES; k++) {
                const ptrdiff_t j = j0 + (k < ks ? k : 0);
                block.sources[k] = chunk + (j / taps) * g->channel_step + g->offsets[j % taps];
            }
            (outs <= 2 ? kernels->half_sums : kernels->sums)(&block);
            for (ptrdiff_t o = 0; o < outs; o++)
                for (ptrdiff_t k = 0; k < ks; k++) share[(o0 + o) * pairs + j0 + k] = block.sums[o][k];
        }
    }
}

void pynn_direct_weight_grad(const pynn_context *ctx, const struct pynn_direct_kernels *kernels,
                             const pynn_conv_shape *s, const float *dy, const float *x,
                             float *dweight, float *workspace)
{
    gradient_chunks g;
    chunks_of(s, &g);
    const ptrdiff_t weights = s->out_channels * s->in_channels * s->kernel_h * s->kernel_w;
    if (s->batch == 0) {
        memset(dweight, 0, (size_t)weights * sizeof(float));
        return;
    }
    const int slots = gradient_slots(s, &g, ctx->num_threads);
    float *partials = workspace + slots * g.floats;
    PYNN_TEAM_FOR(ctx, slots, c, g.chunks, {
        const ptrdiff_t first = c * s->batch / g.chunks;
        const ptrdiff_t count = (c + 1) * s->batch / g.chunks - first;
        chunk_weight_grad(kernels, s, &g, dy, x, first, count,
                          workspace + pynn_team_slot(team) * g.floats,
                          g.chunks > 1 ? partials + c * weights : dweight);
    });
    if (g.chunks > 1) {  /* in chunk order, whatever thread computed each */
        const int wanted = weights * g.chunks >= DIRECT_PARALLEL_MIN_SUMS ? ctx->num_threads : 1;
        PYNN_TEAM_FOR(ctx, wanted, i, weights, {
            float total = partials[i];
            for (ptrdiff_t c = 1; c < g.chunks; c++) total += partials[c * weights + i];
            dweight[i] = total;
        });
    }
}
