/* Depthwise convolution plane by plane (contracts in conv_depthwise.h). */
#include <stdlib.h>
#include <string.h>
#include "conv_depthwise.h"
#include "kernels.h"
#include "vmath.h"
#ifdef _OPENMP
#include <omp.h>
#endif

/* Buffer rows are whole vectors of the widest path, so the buffers' sizes
 * are the same on every path. */
#define DW_MAX_LANES 16
/* Multiply-adds from which a call asks for a team. */
#define DW_PARALLEL_MIN_PRODUCTS (1 << 18)

/* The first count floats from in, zeros after them (the portable DW_LOAD_TAIL). */
typedef float dw_tail_generic __attribute__((vector_size(16)));
static inline dw_tail_generic dw_load_tail_generic(const float *in, ptrdiff_t count)
{
    dw_tail_generic v = {0};
    for (ptrdiff_t i = 0; i < count && i < 4; i++) v[i] = in[i];
    return v;
}

#define DW_SUFFIX generic
#define DW_TARGET
#define DW_LANES 4
#define DW_ROWS 2
#define DW_STORE_TAIL(out, v, count)                                    \
    do {                                                                \
        for (ptrdiff_t i_ = 0; i_ < (count); i_++) (out)[i_] = (v)[i_]; \
    } while (0)
#define DW_LOAD_TAIL(in, count) (dw_vec_generic)dw_load_tail_generic((in), (count))
#define DW_EVEN_LANES 0, 2, 4, 6
#define DW_LOW_SPREAD 0, 4, 1, 5
#define DW_HIGH_SPREAD 2, 6, 3, 7
#include "conv_depthwise_plane.h"
#if defined(PYNN_X86_64)
/* The first count < 8 lanes of v to out by halves, pairs and singles (plain
 * stores: AMD microcodes AVX2's masked ones). */
static inline PYNN_TARGET_AVX2 void dw_store_tail_avx2(float *out, __m256 v, ptrdiff_t count)
{
    __m128 part = _mm256_castps256_ps128(v);
    if (count >= 4) {
        _mm_storeu_ps(out, part);
        out += 4;
        count -= 4;
        part = _mm256_extractf128_ps(v, 1);
    }
    if (count >= 2) {
        _mm_storel_pi((__m64 *)out, part);
        out += 2;
        count -= 2;
        part = _mm_movehl_ps(part, part);
    }
    if (count >= 1) _mm_store_ss(out, part);
}

#define DW_SUFFIX avx2
#define DW_TARGET PYNN_TARGET_AVX2
#define DW_LANES 8
#define DW_ROWS 2
#define DW_STORE_TAIL(out, v, count) dw_store_tail_avx2((out), (__m256)(v), (count))
#define DW_LOAD_TAIL(in, count) (dw_vec_avx2)_mm256_maskload_ps((in), pynn_first_lanes8(count))
#define DW_EVEN_LANES 0, 2, 4, 6, 8, 10, 12, 14
#define DW_LOW_SPREAD 0, 8, 1, 9, 2, 10, 3, 11
#define DW_HIGH_SPREAD 4, 12, 5, 13, 6, 14, 7, 15
#include "conv_depthwise_plane.h"
#define DW_SUFFIX avx512
#define DW_TARGET PYNN_TARGET_AVX512
#define DW_LANES 16
#define DW_ROWS 4
#define DW_STORE_TAIL(out, v, count) _mm512_mask_storeu_ps((out), pynn_first_lanes16(count), (__m512)(v))
#define DW_LOAD_TAIL(in, count) (dw_vec_avx512)_mm512_maskz_loadu_ps(pynn_first_lanes16(count), (in))
#define DW_EVEN_LANES 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30
#define DW_LOW_SPREAD 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23
#define DW_HIGH_SPREAD 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31
#include "conv_depthwise_plane.h"
#endif

int pynn_depthwise_applies(const pynn_conv_shape *s)
{
    return s->groups > 1 && s->groups == s->in_channels && s->out_channels == s->in_channels &&
           s->dilation_h == 1 && s->dilation_w == 1 &&
           s->kernel_h * s->kernel_w <= PYNN_DEPTHWISE_MAX_TAPS;
}

static ptrdiff_t round_up(ptrdiff_t n, ptrdiff_t step) { return (n + step - 1) / step * step; }

/* The forward's (and the weight gradient's) buffer: the input plane padded,
 * its columns in phases of the column stride. */
static pynn_depthwise_source forward_source(const pynn_conv_shape *s)
{
    const ptrdiff_t sw = s->stride_w;
    pynn_depthwise_source w = {s->height, s->width, s->pad_h, s->pad_w, 1, 1,
                               (s->out_h - 1) * s->stride_h + s->kernel_h,
                               sw < s->kernel_w ? sw : s->kernel_w,
                               round_up(s->out_w, DW_MAX_LANES) + (s->kernel_w - 1) / sw, sw};
    return w;
}

/* The input gradient's buffer: dy spread out by the strides, padded by
 * kernel - 1 - pad (cropped where that is negative), read at stride 1. */
static pynn_depthwise_source gradient_source(const pynn_conv_shape *s)
{
    pynn_depthwise_source w = {s->out_h, s->out_w, s->kernel_h - 1 - s->pad_h,
                               s->kernel_w - 1 - s->pad_w, s->stride_h, s->stride_w,
                               s->height + s->kernel_h - 1, 1,
                               round_up(s->width, DW_MAX_LANES) + s->kernel_w - 1, 1};
    return w;
}

static ptrdiff_t buffer_floats(const pynn_depthwise_source *w)
{
    return w->rows * w->phases * w->cols;
}

/* A buffer and its slack: a vector the builder's last store may run past it. */
static ptrdiff_t slot_floats(const pynn_conv_shape *s)
{
    const pynn_depthwise_source forward = forward_source(s), gradient = gradient_source(s);
    const ptrdiff_t a = buffer_floats(&forward), b = buffer_floats(&gradient);
    return (a > b ? a : b) + DW_MAX_LANES;
}

static ptrdiff_t taps_of(const pynn_conv_shape *s) { return s->kernel_h * s->kernel_w; }

/* The flipped kernel, then per plane its taps' sums and dy's. */
static ptrdiff_t shared_floats(const pynn_conv_shape *s)
{
    return s->in_channels * taps_of(s) + s->batch * s->in_channels * (taps_of(s) + 1);
}

size_t pynn_depthwise_workspace_size(const pynn_conv_shape *s, int threads)
{
    /* the shared sums, then per thread a buffer */
    return (size_t)(shared_floats(s) + threads * slot_floats(s));
}

static int team_wanted(const pynn_context *ctx, const pynn_conv_shape *s, ptrdiff_t plane)
{
    const double products = (double)s->batch * s->in_channels * plane * taps_of(s);
    return s->batch * s->in_channels > 1 && products >= DW_PARALLEL_MIN_PRODUCTS
           ? ctx->num_threads : 1;
}

/* The planes of a batch, each built into its thread's buffer (from
 * `slots` on, zeroed first) and convolved into out: the forward or the
 * input gradient. */
static void convolve_planes(const pynn_context *ctx, const pynn_conv_shape *s,
                            const pynn_depthwise_source *where, const float *source,
                            ptrdiff_t source_plane, const float *weight, const float *bias,
                            int relu, ptrdiff_t stride_h, ptrdiff_t stride_w, ptrdiff_t out_h,
                            ptrdiff_t out_w, float *out, float *slots)
{
    const struct pynn_depthwise_kernels *kernels = ctx->kernels->depthwise;
    const ptrdiff_t channels = s->in_channels, taps = taps_of(s), per_slot = slot_floats(s);
    const pynn_depthwise_plane shape = {NULL, where->phases * where->cols, where->cols, stride_h,
                                        stride_w, s->kernel_h, s->kernel_w, out_h, out_w,
                                        NULL, 0.0f, relu, NULL};
    memset(slots, 0, (size_t)(ctx->num_threads * per_slot) * sizeof(float));
    PYNN_TEAM_FOR(ctx, team_wanted(ctx, s, out_h * out_w), i, s->batch * channels, {
        const ptrdiff_t c = i % channels;
        float *rows = slots + pynn_team_slot(team) * per_slot;
        kernels->build(where, source + i * source_plane, rows);
        pynn_depthwise_plane p = shape;
        p.rows = rows;
        p.weight = weight + c * taps;
        p.bias = bias ? bias[c] : 0.0f;
        p.out = out + i * out_h * out_w;
        kernels->plane(&p);
    });
}

int pynn_depthwise_forward(const pynn_context *ctx, const pynn_conv_shape *s, const float *x,
                           const float *weight, const float *bias, pynn_activation activation,
                           float *y, float *workspace)
{
    float *owned = workspace ? NULL
                             : malloc(pynn_depthwise_workspace_size(s, ctx->num_threads) * sizeof(float));
    if (!workspace && !owned) return -1;
    const pynn_depthwise_source where = forward_source(s);
    convolve_planes(ctx, s, &where, x, s->height * s->width, weight, bias,
                    activation == PYNN_ACTIVATION_RELU, s->stride_h, s->stride_w, s->out_h,
                    s->out_w, y, (workspace ? workspace : owned) + shared_floats(s));
    free(owned);
    return 0;
}

int pynn_depthwise_backward(const pynn_context *ctx, const pynn_conv_shape *s, const float *dy,
                            const float *x, const float *weight, float *dx, float *dweight,
                            float *dbias, float *workspace)
{
    const ptrdiff_t channels = s->in_channels, taps = taps_of(s), weights = channels * taps;
    const ptrdiff_t out_plane = s->out_h * s->out_w, in_plane = s->height * s->width;
    if (!dx && !dweight && !dbias) return 0;
    float *owned = workspace ? NULL
                             : malloc(pynn_depthwise_workspace_size(s, ctx->num_threads) * sizeof(float));
    if (!workspace && !owned) return -1;
    float *scratch = workspace ? workspace : owned;
    float *flipped = scratch, *sums = flipped + weights, *slots = scratch + shared_floats(s);
    if (dx) {  /* dx = dy spread by the strides, convolved with the flipped kernel */
        for (ptrdiff_t c = 0; c < channels; c++)
            for (ptrdiff_t t = 0; t < taps; t++)
                flipped[c * taps + t] = weight[c * taps + taps - 1 - t];
        const pynn_depthwise_source where = gradient_source(s);
        convolve_planes(ctx, s, &where, dy, out_plane, flipped, NULL, 0, 1, 1, s->height,
                        s->width, dx, slots);
    }
    if (dweight || dbias) {  /* per plane its sums, then dW and db = Σ_n in batch order */
        const struct pynn_depthwise_kernels *kernels = ctx->kernels->depthwise;
        const pynn_depthwise_source where = forward_source(s);
        const ptrdiff_t per_slot = slot_floats(s), per_plane = taps + 1;
        const pynn_depthwise_plane shape = {NULL, where.phases * where.cols, where.cols,
                                            s->stride_h, s->stride_w, s->kernel_h, s->kernel_w,
                                            s->out_h, s->out_w, NULL, 0.0f, 0, NULL};
        memset(slots, 0, (size_t)(ctx->num_threads * per_slot) * sizeof(float));
        PYNN_TEAM_FOR(ctx, team_wanted(ctx, s, out_plane), i, s->batch * channels, {
            float *rows = slots + pynn_team_slot(team) * per_slot;
            kernels->build(&where, x + i * in_plane, rows);
            pynn_depthwise_plane p = shape;
            p.rows = rows;
            kernels->sums(&p, dy + i * out_plane, sums + i * per_plane);
        });
        for (ptrdiff_t c = 0; c < channels; c++)
            for (ptrdiff_t t = 0; t < per_plane; t++) {
                float total = 0.0f;
                for (ptrdiff_t n = 0; n < s->batch; n++)
                    total += sums[(n * channels + c) * per_plane + t];
                if (t < taps && dweight) dweight[c * taps + t] = total;
                if (t == taps && dbias) dbias[c] = total;
            }
    }
    free(owned);
    return 0;
}
