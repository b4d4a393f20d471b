/* Pooling kernels (contracts in pool.h). Planes are independent, so threads
 * split them and every output is computed the same way for any thread count. */
#include <math.h>
#include <string.h>
#include "pool.h"
#include "vmath.h"

#define PARALLEL_MIN_FLOATS 65536

/* PyTorch's max-pool rule, tap by tap in scan order: a strictly greater
 * value replaces the running maximum (ties keep the first), and so does any
 * NaN (the last NaN wins). */
PYNN_INLINE int replaces_max(float value, float best)
{
    return value > best || value != value;
}

/* The flat index of the window's maximum, or -1 for a window wholly in padding. */
static inline ptrdiff_t window_argmax(const pynn_pool_shape *s, const float *restrict image,
                                      ptrdiff_t oh, ptrdiff_t ow)
{
    ptrdiff_t h0 = oh * s->stride_h - s->pad_h, w0 = ow * s->stride_w - s->pad_w;
    ptrdiff_t best = -1;
    float best_value = -INFINITY;
    for (ptrdiff_t kh = 0; kh < s->kernel_h; kh++) {
        ptrdiff_t ih = h0 + kh * s->dilation_h;
        if (ih < 0 || ih >= s->height) continue;
        for (ptrdiff_t kw = 0; kw < s->kernel_w; kw++) {
            ptrdiff_t iw = w0 + kw * s->dilation_w;
            if (iw < 0 || iw >= s->width) continue;
            ptrdiff_t index = ih * s->width + iw;
            float value = image[index];
            if (best < 0) best = index;  /* PyTorch starts from the first position, at -inf */
            if (replaces_max(value, best_value)) {
                best = index;
                best_value = value;
            }
        }
    }
    return best;
}

/* No padding and every window inside the image (the usual 2x2 stride 2). */
static int windows_inside(const pynn_pool_shape *s)
{
    return s->pad_h == 0 && s->pad_w == 0 &&
           (s->out_h - 1) * s->stride_h + (s->kernel_h - 1) * s->dilation_h < s->height &&
           (s->out_w - 1) * s->stride_w + (s->kernel_w - 1) * s->dilation_w < s->width;
}

/* The outputs [*first, *end) of row oh whose windows lie wholly inside the
 * image (none when the row's windows leave it vertically): there the taps
 * run outermost (inside_row_max), so the loop over outputs has no bounds
 * checks and vectorises; a padded pool takes window_argmax at its edges only. */
static void inside_columns(const pynn_pool_shape *s, ptrdiff_t oh, ptrdiff_t *first,
                           ptrdiff_t *end)
{
    const ptrdiff_t h0 = oh * s->stride_h - s->pad_h;
    /* the largest ow stride_w whose window still ends inside the row */
    const ptrdiff_t last = s->width - 1 - (s->kernel_w - 1) * s->dilation_w + s->pad_w;
    *first = *end = 0;
    if (h0 < 0 || h0 + (s->kernel_h - 1) * s->dilation_h >= s->height || last < 0) return;
    const ptrdiff_t start = (s->pad_w + s->stride_w - 1) / s->stride_w;
    const ptrdiff_t stop = last / s->stride_w + 1 < s->out_w ? last / s->stride_w + 1 : s->out_w;
    if (start < stop) {
        *first = start;
        *end = stop;
    }
}

#define ROW_CHUNK 64


/* The maxima (and, if where is not NULL, their flat indices) of outputs
 * [ow0, ow0 + count) of output row oh, whose windows lie inside the image.
 * The first maximum is kept (strictly greater replaces it), a NaN always
 * replaces it: PyTorch's rule, as window_argmax. */
PYNN_INLINE void inside_row_max(const pynn_pool_shape *s, const float *restrict image,
                                ptrdiff_t oh, ptrdiff_t ow0, ptrdiff_t count, ptrdiff_t sw,
                                float *restrict best, ptrdiff_t *restrict where)
{
    const ptrdiff_t row0 = (oh * s->stride_h - s->pad_h) * s->width + ow0 * sw - s->pad_w;
    for (ptrdiff_t i = 0; i < count; i++) best[i] = image[row0 + i * sw];
    if (where)
        for (ptrdiff_t i = 0; i < count; i++) where[i] = row0 + i * sw;
    for (ptrdiff_t kh = 0; kh < s->kernel_h; kh++)
        for (ptrdiff_t kw = kh ? 0 : 1; kw < s->kernel_w; kw++) {
            const ptrdiff_t offset = row0 + kh * s->dilation_h * s->width + kw * s->dilation_w;
            const float *restrict in = image + offset;
            if (where)
                for (ptrdiff_t i = 0; i < count; i++) {
                    float value = in[i * sw];
                    int take = replaces_max(value, best[i]);
                    best[i] = take ? value : best[i];
                    where[i] = take ? offset + i * sw : where[i];
                }
            else
                for (ptrdiff_t i = 0; i < count; i++) {
                    float value = in[i * sw];
                    best[i] = replaces_max(value, best[i]) ? value : best[i];
                }
        }
}

/* The usual pool, 2 x 2 windows at stride 2 inside the image, a whole plane
 * at a time, where the general row loop above pays for short rows and an
 * index array per tap (a large share of a small CNN's training step). */
PYNN_INLINE void plane_max_2x2(const pynn_pool_shape *s, const float *restrict image,
                               float *restrict out, int64_t *restrict index)
{
    const ptrdiff_t w = s->width, out_w = s->out_w;
    const ptrdiff_t offsets[3] = {1, w, w + 1};  /* the taps after the first, in scan order */
    for (ptrdiff_t oh = 0; oh < s->out_h; oh++)
        for (ptrdiff_t ow = 0; ow < out_w; ow++) {
            const ptrdiff_t at = 2 * oh * w + 2 * ow;
            float best = image[at];
            ptrdiff_t where = at;
            for (int t = 0; t < 3; t++) {
                const float value = image[at + offsets[t]];
                const int take = replaces_max(value, best);
                best = take ? value : best;
                where = take ? at + offsets[t] : where;
            }
            out[oh * out_w + ow] = best;
            if (index) index[oh * out_w + ow] = where;
        }
}

struct pynn_pool_kernels {
    void (*row_max)(const pynn_pool_shape *s, const float *image, ptrdiff_t oh, ptrdiff_t ow0,
                    ptrdiff_t count, float *best, ptrdiff_t *where);
    void (*plane_max_2x2)(const pynn_pool_shape *s, const float *image, float *out,
                          int64_t *index);
    double (*run_sum)(const float *x, ptrdiff_t n);  /* pynn_row_sum, the same bits on every path */
};

/* One copy per ISA; stride 2 (the usual pool) compiled with the stride known. */
#define ROW_MAX_VARIANT(suffix, attribute)                                                  \
    attribute static void row_max_##suffix(const pynn_pool_shape *s, const float *image,    \
                                           ptrdiff_t oh, ptrdiff_t ow0, ptrdiff_t count,    \
                                           float *best, ptrdiff_t *where)                   \
    {                                                                                       \
        if (s->stride_w == 2)                                                               \
            inside_row_max(s, image, oh, ow0, count, 2, best, where);                       \
        else                                                                                \
            inside_row_max(s, image, oh, ow0, count, s->stride_w, best, where);             \
    }

PYNN_EACH_ISA(ROW_MAX_VARIANT)

#define RUN_SUM_VARIANT(suffix, attribute) \
    attribute static double run_sum_##suffix(const float *x, ptrdiff_t n) { return pynn_row_sum(x, NULL, n); }

PYNN_EACH_ISA(RUN_SUM_VARIANT)

static void plane_max_2x2_generic(const pynn_pool_shape *s, const float *image, float *out,
                                  int64_t *index)
{
    plane_max_2x2(s, image, out, index);
}
#if defined(PYNN_X86_64)
PYNN_TARGET_AVX2 static void plane_max_2x2_avx2(const pynn_pool_shape *s, const float *image,
                                                float *out, int64_t *index)
{
    plane_max_2x2(s, image, out, index);
}

/* plane_max_2x2 sixteen outputs at a time: two permutes split each input row
 * into its even and odd columns (the left and right taps), and
 * replaces_max's rule becomes a mask per tap, in the same scan order. */
PYNN_TARGET_AVX512 static void plane_max_2x2_avx512(const pynn_pool_shape *s, const float *image,
                                                    float *out, int64_t *index)
{
    const ptrdiff_t w = s->width, out_w = s->out_w;
    if (index && s->height * w > INT32_MAX) {  /* flat indices past int32 lanes */
        plane_max_2x2(s, image, out, index);
        return;
    }
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    const int32_t offsets[4] = {0, 1, (int32_t)w, (int32_t)w + 1};  /* the taps in scan order */
    for (ptrdiff_t oh = 0; oh < s->out_h; oh++) {
        const float *top = image + 2 * oh * w, *bottom = top + w;
        for (ptrdiff_t ow = 0; ow < out_w; ow += 16) {
            const ptrdiff_t count = out_w - ow < 16 ? out_w - ow : 16;
            const __mmask16 first = pynn_first_lanes16(2 * count), second = pynn_first_lanes16(2 * count - 16);
            const __mmask16 outputs = pynn_first_lanes16(count);
            const __m512 top0 = _mm512_maskz_loadu_ps(first, top + 2 * ow);
            const __m512 top1 = _mm512_maskz_loadu_ps(second, top + 2 * ow + 16);
            const __m512 bottom0 = _mm512_maskz_loadu_ps(first, bottom + 2 * ow);
            const __m512 bottom1 = _mm512_maskz_loadu_ps(second, bottom + 2 * ow + 16);
            const __m512 taps[4] = {_mm512_permutex2var_ps(top0, even, top1),
                                    _mm512_permutex2var_ps(top0, odd, top1),
                                    _mm512_permutex2var_ps(bottom0, even, bottom1),
                                    _mm512_permutex2var_ps(bottom0, odd, bottom1)};
            const __m512i corner = _mm512_add_epi32(_mm512_set1_epi32((int32_t)(2 * oh * w + 2 * ow)), even);
            __m512 best = taps[0];
            __m512i where = corner;
            for (int t = 1; t < 4; t++) {
                const __mmask16 take = _mm512_cmp_ps_mask(taps[t], best, _CMP_GT_OQ) |
                                       _mm512_cmp_ps_mask(taps[t], taps[t], _CMP_UNORD_Q);
                best = _mm512_mask_blend_ps(take, best, taps[t]);
                where = _mm512_mask_blend_epi32(take, where,
                                                _mm512_add_epi32(corner, _mm512_set1_epi32(offsets[t])));
            }
            _mm512_mask_storeu_ps(out + oh * out_w + ow, outputs, best);
            if (index) {
                int64_t *at = index + oh * out_w + ow;
                _mm512_mask_storeu_epi64(at, (__mmask8)outputs,
                                         _mm512_cvtepi32_epi64(_mm512_castsi512_si256(where)));
                _mm512_mask_storeu_epi64(at + 8, (__mmask8)(outputs >> 8),
                                         _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(where, 1)));
            }
        }
    }
}
#endif

#define POOL_TABLE(suffix, attribute) \
    const struct pynn_pool_kernels pynn_pool_##suffix = {row_max_##suffix, plane_max_2x2_##suffix, \
                                                         run_sum_##suffix};
PYNN_EACH_ISA(POOL_TABLE)

/* Output (oh, ow), whose window may reach into the padding. */
static inline void edge_max(const pynn_pool_shape *s, const float *image, ptrdiff_t oh,
                            ptrdiff_t ow, float *out, int64_t *index)
{
    ptrdiff_t best = window_argmax(s, image, oh, ow);
    out[oh * s->out_w + ow] = best >= 0 ? image[best] : -INFINITY;
    if (index) index[oh * s->out_w + ow] = best;
}

/* dx[the arg-max of window (oh, ow)] += dy of it, for a window that may reach into the padding. */
static inline void edge_max_backward(const pynn_pool_shape *s, const float *image,
                                     const float *grad, ptrdiff_t oh, ptrdiff_t ow, float *out)
{
    ptrdiff_t best = window_argmax(s, image, oh, ow);
    if (best >= 0) out[best] += grad[oh * s->out_w + ow];
}

void pynn_max_pool2d_forward(const pynn_context *ctx, const pynn_pool_shape *s,
                             const float *x, float *y, int64_t *argmax)
{
    const ptrdiff_t in_plane = s->height * s->width, out_plane = s->out_h * s->out_w;
    const int inside = windows_inside(s);
    const int two_by_two = inside && s->kernel_h == 2 && s->kernel_w == 2 && s->stride_h == 2 &&
                           s->stride_w == 2 && s->dilation_h == 1 && s->dilation_w == 1;
    const struct pynn_pool_kernels *kernels = ctx->kernels->pool;
    const int wanted = s->planes > 1 && s->planes * in_plane >= PARALLEL_MIN_FLOATS
                       ? ctx->num_threads : 1;
    PYNN_TEAM_FOR(ctx, wanted, p, s->planes, {
        const float *image = x + p * in_plane;
        float *out = y + p * out_plane;
        int64_t *index = argmax ? argmax + p * out_plane : NULL;
        if (two_by_two) {
            kernels->plane_max_2x2(s, image, out, index);
            continue;
        }
        ptrdiff_t where[ROW_CHUNK];
        for (ptrdiff_t oh = 0; oh < s->out_h; oh++) {
            ptrdiff_t first, end;
            inside_columns(s, oh, &first, &end);
            for (ptrdiff_t ow = 0; ow < first; ow++) edge_max(s, image, oh, ow, out, index);
            for (ptrdiff_t ow = first; ow < end; ow += ROW_CHUNK) {
                ptrdiff_t count = end - ow < ROW_CHUNK ? end - ow : ROW_CHUNK;
                ptrdiff_t at = oh * s->out_w + ow;
                kernels->row_max(s, image, oh, ow, count, out + at, index ? where : NULL);
                if (index)
                    for (ptrdiff_t i = 0; i < count; i++) index[at + i] = where[i];
            }
            for (ptrdiff_t ow = end; ow < s->out_w; ow++) edge_max(s, image, oh, ow, out, index);
        }
    });
}

void pynn_max_pool2d_scatter(const pynn_context *ctx, const pynn_pool_shape *s,
                             const float *dy, const int64_t *argmax, float *dx)
{
    const ptrdiff_t in_plane = s->height * s->width, out_plane = s->out_h * s->out_w;
    const int wanted = s->planes > 1 && s->planes * in_plane >= PARALLEL_MIN_FLOATS
                       ? ctx->num_threads : 1;
    PYNN_TEAM_FOR(ctx, wanted, p, s->planes, {
        const float *grad = dy + p * out_plane;
        const int64_t *index = argmax + p * out_plane;
        float *out = dx + p * in_plane;
        memset(out, 0, (size_t)in_plane * sizeof(float));
        for (ptrdiff_t i = 0; i < out_plane; i++)
            if (index[i] >= 0) out[index[i]] += grad[i];
    });
}

void pynn_max_pool2d_backward(const pynn_context *ctx, const pynn_pool_shape *s,
                              const float *dy, const float *x, float *dx)
{
    const ptrdiff_t in_plane = s->height * s->width, out_plane = s->out_h * s->out_w;
    const struct pynn_pool_kernels *kernels = ctx->kernels->pool;
    const int wanted = s->planes > 1 && s->planes * in_plane >= PARALLEL_MIN_FLOATS
                       ? ctx->num_threads : 1;
    PYNN_TEAM_FOR(ctx, wanted, p, s->planes, {
        const float *image = x + p * in_plane, *grad = dy + p * out_plane;
        float *out = dx + p * in_plane;
        memset(out, 0, (size_t)in_plane * sizeof(float));
        float best[ROW_CHUNK];
        ptrdiff_t where[ROW_CHUNK];
        /* outputs in scan order, so overlapping windows add up in one order */
        for (ptrdiff_t oh = 0; oh < s->out_h; oh++) {
            ptrdiff_t first, end;
            inside_columns(s, oh, &first, &end);
            for (ptrdiff_t ow = 0; ow < first; ow++) edge_max_backward(s, image, grad, oh, ow, out);
            for (ptrdiff_t ow = first; ow < end; ow += ROW_CHUNK) {
                ptrdiff_t count = end - ow < ROW_CHUNK ? end - ow : ROW_CHUNK;
                kernels->row_max(s, image, oh, ow, count, best, where);
                for (ptrdiff_t i = 0; i < count; i++) out[where[i]] += grad[oh * s->out_w + ow + i];
            }
            for (ptrdiff_t ow = end; ow < s->out_w; ow++)
                edge_max_backward(s, image, grad, oh, ow, out);
        }
    });
}

/* The window of (oh, ow) clipped to the input, and its divisor. */
typedef struct {
    ptrdiff_t h0, h1, w0, w1;
    float scale;
} avg_window;

static inline avg_window average_window(const pynn_pool_shape *s, int count_include_pad,
                                        ptrdiff_t oh, ptrdiff_t ow)
{
    avg_window w;
    w.h0 = oh * s->stride_h - s->pad_h;
    w.w0 = ow * s->stride_w - s->pad_w;
    w.h1 = w.h0 + s->kernel_h < s->height + s->pad_h ? w.h0 + s->kernel_h : s->height + s->pad_h;
    w.w1 = w.w0 + s->kernel_w < s->width + s->pad_w ? w.w0 + s->kernel_w : s->width + s->pad_w;
    ptrdiff_t padded = (w.h1 - w.h0) * (w.w1 - w.w0);
    if (w.h0 < 0) w.h0 = 0;
    if (w.w0 < 0) w.w0 = 0;
    if (w.h1 > s->height) w.h1 = s->height;
    if (w.w1 > s->width) w.w1 = s->width;
    ptrdiff_t inside = (w.h1 - w.h0) * (w.w1 - w.w0);
    ptrdiff_t divisor = count_include_pad ? padded : inside;
    w.scale = w.h0 < w.h1 && w.w0 < w.w1 ? 1.0f / (float)divisor : 0.0f;
    return w;
}

void pynn_avg_pool2d_forward(const pynn_context *ctx, const pynn_pool_shape *s,
                             int count_include_pad, const float *x, float *y)
{
    const ptrdiff_t in_plane = s->height * s->width, out_plane = s->out_h * s->out_w;
    const int wanted = s->planes > 1 && s->planes * in_plane >= PARALLEL_MIN_FLOATS
                       ? ctx->num_threads : 1;
    PYNN_TEAM_FOR(ctx, wanted, p, s->planes, {
        const float *image = x + p * in_plane;
        float *out = y + p * out_plane;
        for (ptrdiff_t oh = 0; oh < s->out_h; oh++)
            for (ptrdiff_t ow = 0; ow < s->out_w; ow++) {
                avg_window w = average_window(s, count_include_pad, oh, ow);
                float sum = 0.0f;
                for (ptrdiff_t ih = w.h0; ih < w.h1; ih++)
                    for (ptrdiff_t iw = w.w0; iw < w.w1; iw++) sum += image[ih * s->width + iw];
                out[oh * s->out_w + ow] = sum * w.scale;
            }
    });
}

void pynn_avg_pool2d_backward(const pynn_context *ctx, const pynn_pool_shape *s,
                              int count_include_pad, const float *dy, float *dx)
{
    const ptrdiff_t in_plane = s->height * s->width, out_plane = s->out_h * s->out_w;
    const int wanted = s->planes > 1 && s->planes * in_plane >= PARALLEL_MIN_FLOATS
                       ? ctx->num_threads : 1;
    PYNN_TEAM_FOR(ctx, wanted, p, s->planes, {
        const float *grad = dy + p * out_plane;
        float *out = dx + p * in_plane;
        memset(out, 0, (size_t)in_plane * sizeof(float));
        for (ptrdiff_t oh = 0; oh < s->out_h; oh++)
            for (ptrdiff_t ow = 0; ow < s->out_w; ow++) {
                avg_window w = average_window(s, count_include_pad, oh, ow);
                float share = grad[oh * s->out_w + ow] * w.scale;
                for (ptrdiff_t ih = w.h0; ih < w.h1; ih++)
                    for (ptrdiff_t iw = w.w0; iw < w.w1; iw++) out[ih * s->width + iw] += share;
            }
    });
}

void pynn_global_avg_pool2d_forward(const pynn_context *ctx, ptrdiff_t planes, ptrdiff_t size,
                                    const float *x, float *y)
{
    const int wanted = planes > 1 && planes * size >= PARALLEL_MIN_FLOATS ? ctx->num_threads : 1;
    PYNN_TEAM_FOR(ctx, wanted, p, planes, {
        y[p] = (float)(ctx->kernels->pool->run_sum(x + p * size, size) / (double)size);
    });
}

void pynn_global_avg_pool2d_backward(const pynn_context *ctx, ptrdiff_t planes, ptrdiff_t size,
                                     const float *dy, float *dx)
{
    const int wanted = planes > 1 && planes * size >= PARALLEL_MIN_FLOATS ? ctx->num_threads : 1;
    PYNN_TEAM_FOR(ctx, wanted, p, planes, {
        float share = dy[p] / (float)size;
        float *out = dx + p * size;
        for (ptrdiff_t i = 0; i < size; i++) out[i] = share;
    });
}

/* PyTorch's adaptive window of output i of out along an axis of size inputs:
 * [floor(i size / out), ceil((i + 1) size / out)). */
PYNN_INLINE void adaptive_window(ptrdiff_t i, ptrdiff_t size, ptrdiff_t out, ptrdiff_t *start,
                                 ptrdiff_t *end)
{
    *start = i * size / out;
    *end = ((i + 1) * size + out - 1) / out;
}

void pynn_adaptive_avg_pool2d_forward(const pynn_context *ctx, ptrdiff_t planes, ptrdiff_t height,
                                      ptrdiff_t width, ptrdiff_t out_h, ptrdiff_t out_w,
                                      const float *x, float *y)
{
    const ptrdiff_t in_plane = height * width, out_plane = out_h * out_w;
    const int wanted = planes > 1 && planes * in_plane >= PARALLEL_MIN_FLOATS
                       ? ctx->num_threads : 1;
    PYNN_TEAM_FOR(ctx, wanted, p, planes, {
        const float *image = x + p * in_plane;
        float *out = y + p * out_plane;
        for (ptrdiff_t oh = 0; oh < out_h; oh++) {
            ptrdiff_t h0, h1, w0, w1;
            adaptive_window(oh, height, out_h, &h0, &h1);
            for (ptrdiff_t ow = 0; ow < out_w; ow++) {
                adaptive_window(ow, width, out_w, &w0, &w1);
                const ptrdiff_t count = (h1 - h0) * (w1 - w0);
                double sum = 0.0;
                if (w1 - w0 == width) {  /* whole rows: one run, summed as global_avg_pool2d sums a plane */
                    sum = ctx->kernels->pool->run_sum(image + h0 * width, count);
                } else {
                    for (ptrdiff_t ih = h0; ih < h1; ih++)
                        for (ptrdiff_t iw = w0; iw < w1; iw++) sum += image[ih * width + iw];
                }
                out[oh * out_w + ow] = (float)(sum / (double)count);
            }
        }
    });
}

void pynn_adaptive_avg_pool2d_backward(const pynn_context *ctx, ptrdiff_t planes,
                                       ptrdiff_t height, ptrdiff_t width, ptrdiff_t out_h,
                                       ptrdiff_t out_w, const float *dy, float *dx)
{
    const ptrdiff_t in_plane = height * width, out_plane = out_h * out_w;
    const int wanted = planes > 1 && planes * in_plane >= PARALLEL_MIN_FLOATS
                       ? ctx->num_threads : 1;
    PYNN_TEAM_FOR(ctx, wanted, p, planes, {
        const float *grad = dy + p * out_plane;
        float *out = dx + p * in_plane;
        memset(out, 0, (size_t)in_plane * sizeof(float));
        for (ptrdiff_t oh = 0; oh < out_h; oh++) {
            ptrdiff_t h0, h1, w0, w1;
            adaptive_window(oh, height, out_h, &h0, &h1);
            for (ptrdiff_t ow = 0; ow < out_w; ow++) {
                adaptive_window(ow, width, out_w, &w0, &w1);
                const float share = grad[oh * out_w + ow] / (float)((h1 - h0) * (w1 - w0));
                for (ptrdiff_t ih = h0; ih < h1; ih++)
                    for (ptrdiff_t iw = w0; iw < w1; iw++) out[ih * width + iw] += share;
            }
        }
    });
}
