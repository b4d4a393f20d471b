/* Convolution as im2col + GEMM (contracts in conv.h). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "conv.h"
#include "conv_depthwise.h"
#include "conv_direct.h"
#include "conv_winograd.h"
#include "helpers.h"
#include "vmath.h"
#ifdef _OPENMP
#include <omp.h>
#endif

/* Unfolded rows are often a handful of floats: inline loops beat calls to
 * memcpy/memset, which GCC would otherwise substitute for them. */
#pragma GCC optimize("no-tree-loop-distribute-patterns")

/* Columns one GEMM should span: enough to keep the micro-kernel busy across
 * many images of a small layer, and an upper bound on the unfolded chunk. */
#define TARGET_COLUMNS 2048
#define MAX_CHUNK_FLOATS ((ptrdiff_t)1 << 22)
/* A pass over the unfolded input or the output asks for a team from this
 * many of its floats; the passes that only copy or add (unstaging, the bias
 * gradient, the sum of the chunks' dW) from four times as many. */
#define PARALLEL_MIN_FLOATS 32768
/* Chunks run on a thread each only from this many multiply-adds in all
 * (chunk_slots); below it the chunks' GEMMs share the threads instead. */
#define PARALLEL_MIN_PRODUCTS (1 << 21)
/* A band of one image's unfolded input: 256 KiB, half of a Zen 3 L2. */
#define COL_BAND_FLOATS ((ptrdiff_t)1 << 16)

static ptrdiff_t plane(const pynn_conv_shape *s) { return s->out_h * s->out_w; }
static ptrdiff_t unfolded_rows(const pynn_conv_shape *s)
{
    return s->in_channels * s->kernel_h * s->kernel_w;
}

/* Images per GEMM: a function of the shapes alone. The batch splits into
 * chunks of equal size (64 images of a 10 x 10 plane: 4 x 16, not 3 x 21 + 1,
 * which left one of two threads 42 images and the other 22). */
static ptrdiff_t chunk_images(const pynn_conv_shape *s)
{
    ptrdiff_t p = plane(s) > 0 ? plane(s) : 1, rows = unfolded_rows(s) > 0 ? unfolded_rows(s) : 1;
    ptrdiff_t images = (TARGET_COLUMNS + p - 1) / p;
    ptrdiff_t by_memory = MAX_CHUNK_FLOATS / (rows * p);
    if (images > by_memory) images = by_memory;
    if (images > s->batch) images = s->batch;
    if (images <= 1) return 1;
    const ptrdiff_t chunks = (s->batch + images - 1) / images;
    return (s->batch + chunks - 1) / chunks;
}

/* A 1x1 kernel with stride 1 and no padding reads the image as it is. */
static int unfold_is_identity(const pynn_conv_shape *s, ptrdiff_t images)
{
    return images == 1 && s->kernel_h == 1 && s->kernel_w == 1 && s->stride_h == 1 &&
           s->stride_w == 1 && s->pad_h == 0 && s->pad_w == 0;
}

static ptrdiff_t chunk_count(const pynn_conv_shape *s)
{
    ptrdiff_t images = chunk_images(s);
    return (s->batch + images - 1) / images;
}

/* Scratch of one chunk: its unfolded input, and its GEMM output when it spans
 * several images (staged before it is scattered to NCHW). */
static ptrdiff_t chunk_floats(const pynn_conv_shape *s)
{
    ptrdiff_t images = chunk_images(s), columns = images * plane(s);
    ptrdiff_t col = unfold_is_identity(s, images) ? 0 : unfolded_rows(s) * columns;
    return col + (images > 1 ? s->out_channels * columns : 0);
}

/* Chunks run in parallel, one thread each, when there are enough of them and
 * enough work; otherwise they run in turn and each GEMM uses the threads. */
static int chunk_slots(const pynn_conv_shape *s, int threads)
{
    ptrdiff_t chunks = chunk_count(s);
    double products = (double)s->batch * s->out_channels * plane(s) *
                      (double)(unfolded_rows(s) / s->groups);
    if (threads > 1 && chunks >= threads && products >= PARALLEL_MIN_PRODUCTS)
        return threads;
    return 1;
}

static ptrdiff_t weight_size(const pynn_conv_shape *s)
{
    return s->out_channels * (unfolded_rows(s) / s->groups);
}

/* The input gradient at stride 1 is a direct convolution of dy with the
 * kernel flipped and its channel axes swapped, padded by kernel - 1 - pad:
 * *t its shape, when the direct path takes it. */
static int transposed_applies(const pynn_conv_shape *s, pynn_conv_shape *t)
{
    if (s->stride_h != 1 || s->stride_w != 1 || s->pad_h >= s->kernel_h ||
        s->pad_w >= s->kernel_w)
        return 0;
    *t = *s;
    t->in_channels = s->out_channels;
    t->out_channels = s->in_channels;
    t->height = s->out_h;
    t->width = s->out_w;
    t->pad_h = s->kernel_h - 1 - s->pad_h;
    t->pad_w = s->kernel_w - 1 - s->pad_w;
    t->out_h = s->height;
    t->out_w = s->width;
    return pynn_direct_applies(t);
}

/* flipped[c, o, kh, kw] = weight[o, c, KH - 1 - kh, KW - 1 - kw]. */
static void flip_weight(const pynn_conv_shape *s, const float *weight, float *flipped)
{
    const ptrdiff_t taps = s->kernel_h * s->kernel_w;
    for (ptrdiff_t o = 0; o < s->out_channels; o++)
        for (ptrdiff_t c = 0; c < s->in_channels; c++)
            for (ptrdiff_t k = 0; k < taps; k++)
                flipped[(c * s->out_channels + o) * taps + taps - 1 - k] =
                    weight[(o * s->in_channels + c) * taps + k];
}

size_t pynn_conv2d_workspace_size(const pynn_conv_shape *s, int threads)
{
    if (pynn_depthwise_applies(s)) return pynn_depthwise_workspace_size(s, threads);
    /* per slot a chunk's scratch; per chunk a partial weight gradient, summed
     * in chunk order so dW is the same for any thread count */
    ptrdiff_t chunks = chunk_count(s);
    ptrdiff_t partials = chunks > 1 ? chunks * weight_size(s) : 0;
    size_t size = (size_t)(chunk_slots(s, threads) * chunk_floats(s) + partials);
    if (pynn_direct_applies(s)) {
        size_t forward = pynn_direct_workspace_size(s, threads);
        size_t weights = pynn_direct_weight_grad_workspace_size(s, threads);
        size = forward > size ? forward : size;
        size = weights > size ? weights : size;
    }
    pynn_conv_shape t;
    if (transposed_applies(s, &t)) {
        size_t input = (size_t)weight_size(s) + pynn_direct_workspace_size(&t, threads);
        size = input > size ? input : size;
    }
    size_t winograd = pynn_winograd_workspace_size(s, threads);
    return winograd > size ? winograd : size;
}

/* For one kernel tap along one axis: the outputs [first, last) whose input
 * index o stride + start (start = tap dilation - pad) falls inside the image. */
typedef struct {
    ptrdiff_t start, first, last;
} tap_span;

static tap_span span_of(ptrdiff_t outputs, ptrdiff_t stride, ptrdiff_t start, ptrdiff_t size)
{
    tap_span span = {start, start >= 0 ? 0 : (-start + stride - 1) / stride,
                     start >= size ? 0 : (size - start + stride - 1) / stride};
    if (span.last > outputs) span.last = outputs;
    if (span.first > span.last) span.first = span.last;
    return span;
}

/* How to unfold one image, computed once per call from the shapes alone: the
 * spans of every tap (rows then columns; the divisions would otherwise dominate
 * small images) and, for narrow outputs, where each unfolded element comes
 * from (its flat input index, -1 in the padding), so a tap is one gather loop
 * instead of many rows of a few floats. */
#define GATHER_MAX_WIDTH 8
#define GATHER_MAX_ENTRIES ((ptrdiff_t)1 << 20)

typedef struct {
    tap_span *spans;
    int32_t *source;  /* [KH KW, P], or NULL: copy row by row */
} unfold_plan;

static void plan_free(unfold_plan *plan)
{
    free(plan->spans);
    free(plan->source);
}

static int plan_make(const pynn_conv_shape *s, unfold_plan *plan)
{
    const ptrdiff_t taps = s->kernel_h * s->kernel_w, p = plane(s);
    plan->spans = malloc((size_t)(s->kernel_h + s->kernel_w) * sizeof(tap_span));
    plan->source = NULL;
    if (!plan->spans) return -1;
    for (ptrdiff_t kh = 0; kh < s->kernel_h; kh++)
        plan->spans[kh] = span_of(s->out_h, s->stride_h, kh * s->dilation_h - s->pad_h, s->height);
    for (ptrdiff_t kw = 0; kw < s->kernel_w; kw++)
        plan->spans[s->kernel_h + kw] = span_of(s->out_w, s->stride_w,
                                                kw * s->dilation_w - s->pad_w, s->width);
    if (s->out_w >= GATHER_MAX_WIDTH || taps * p > GATHER_MAX_ENTRIES ||
        s->height * s->width > INT32_MAX)
        return 0;
    plan->source = malloc((size_t)(taps * p) * sizeof(int32_t));
    if (!plan->source) return 0;  /* the row-by-row copy needs no table */
    for (ptrdiff_t kh = 0; kh < s->kernel_h; kh++)
        for (ptrdiff_t kw = 0; kw < s->kernel_w; kw++) {
            int32_t *row = plan->source + (kh * s->kernel_w + kw) * p;
            for (ptrdiff_t oh = 0; oh < s->out_h; oh++)
                for (ptrdiff_t ow = 0; ow < s->out_w; ow++) {
                    ptrdiff_t ih = oh * s->stride_h + plan->spans[kh].start;
                    ptrdiff_t iw = ow * s->stride_w + plan->spans[s->kernel_h + kw].start;
                    int inside = ih >= 0 && ih < s->height && iw >= 0 && iw < s->width;
                    row[oh * s->out_w + ow] = inside ? (int32_t)(ih * s->width + iw) : -1;
                }
        }
    return 0;
}

#if defined(PYNN_X86_64)
/* out[ow] = in[ow] for ow in [first, last), 0 elsewhere in [0, count): sixteen
 * floats per masked load and store. Lanes outside [first, last) are masked
 * off, so they are never read even where in + ow lies in the padding. */
static inline PYNN_TARGET_AVX512 void
masked_row_copy(float *out, const float *in, ptrdiff_t first, ptrdiff_t last, ptrdiff_t count)
{
    for (ptrdiff_t ow = 0; ow < count; ow += 16) {
        const __mmask16 lanes = pynn_first_lanes16(count - ow);
        const __mmask16 valid = lanes & pynn_first_lanes16(last - ow) & ~pynn_first_lanes16(first - ow);
        _mm512_mask_storeu_ps(out + ow, lanes, _mm512_maskz_loadu_ps(valid, in + ow));
    }
}

/* The lanes q of eight floats from ow on with first <= ow + q < last. */
static inline PYNN_TARGET_AVX2 __m256i
chunk_lanes(ptrdiff_t ow, ptrdiff_t first, ptrdiff_t last)
{
    return _mm256_andnot_si256(pynn_first_lanes8(first - ow), pynn_first_lanes8(last - ow));
}

/* Eight floats of a row from in + ow, the lanes outside [first, last) (the
 * padding) zero and unread. */
static inline PYNN_TARGET_AVX2 __m256
padded_chunk(const float *in, ptrdiff_t ow, ptrdiff_t first, ptrdiff_t last)
{
    if (ow >= first && ow + 8 <= last) return _mm256_loadu_ps(in + ow);
    return _mm256_maskload_ps(in + ow, chunk_lanes(ow, first, last));
}

/* A tap's rows at stride 1, width >= 8 floats each, its columns [first,
 * last) inside the image: per row its eight-float moves, the last overlapping
 * the one before it (plain stores: AMD microcodes AVX2's masked ones). One
 * call per tap: through a call per row, a 5x5 tap over a 14 x 14 image spent
 * more on each 10-float row's branches than on its moves; and a tap wholly
 * inside the image skips even the padding test per move. */
static inline PYNN_TARGET_AVX2 void
tap_rows_copy(float *out, const float *in, ptrdiff_t in_step, ptrdiff_t rows, ptrdiff_t width,
              ptrdiff_t first, ptrdiff_t last)
{
    const ptrdiff_t tail = width - 8;
    if (first == 0 && last == width) {
        for (ptrdiff_t r = 0; r < rows; r++, in += in_step, out += width) {
            for (ptrdiff_t ow = 0; ow < tail; ow += 8) _mm256_storeu_ps(out + ow, _mm256_loadu_ps(in + ow));
            _mm256_storeu_ps(out + tail, _mm256_loadu_ps(in + tail));
        }
        return;
    }
    for (ptrdiff_t r = 0; r < rows; r++, in += in_step, out += width) {
        for (ptrdiff_t ow = 0; ow < tail; ow += 8) _mm256_storeu_ps(out + ow, padded_chunk(in, ow, first, last));
        _mm256_storeu_ps(out + tail, padded_chunk(in, tail, first, last));
    }
}

/* Kernels up to this wide fold an image row at a time (their lane masks on
 * the stack); wider ones take the scalar fold. */
#define FOLD_ROW_MAX_KW 16

/* `vectors` chunks of eight floats of `rows` image rows from ih, from column
 * iw0 on, at stride 1: each element sums its taps' terms in registers, in the
 * order the scalar fold adds them (kh, then kw), so the bits are the same. A
 * term outside its tap's valid columns is a zero lane of lanes[kw][v], never
 * read, and a tap row missing from an image row reads nothing (adding +0.0
 * leaves every sum of a +0.0 start unchanged). The rows x vectors chunks'
 * independent add chains hide each one's latency. */
static inline __attribute__((always_inline)) PYNN_TARGET_AVX2 void
fold_row_chunks(const pynn_conv_shape *s, const tap_span *spans, const float *col, ptrdiff_t ld,
                ptrdiff_t ih, ptrdiff_t iw0, const __m256i lanes[][4], float *row_out,
                const int rows, const int vectors)
{
    const __m256i none = _mm256_setzero_si256();
    __m256 sums[2][4];
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < vectors; v++) sums[r][v] = _mm256_setzero_ps();
    for (ptrdiff_t kh = 0; kh < s->kernel_h; kh++) {
        const tap_span row = spans[kh];
        const float *tap[2];
        int valid[2], any = 0;
        for (int r = 0; r < rows; r++) {
            const ptrdiff_t oh = ih + r - row.start;
            valid[r] = oh >= row.first && oh < row.last;
            any |= valid[r];
            tap[r] = col + kh * s->kernel_w * ld + oh * s->out_w + iw0;
        }
        if (!any) continue;
        for (int r = 0; r < rows; r++)  /* a missing row points at a present one */
            if (!valid[r]) tap[r] = tap[1 - r];
        for (ptrdiff_t kw = 0; kw < s->kernel_w; kw++) {
            const ptrdiff_t shift = kw * ld - spans[s->kernel_h + kw].start;
            for (int r = 0; r < rows; r++)
                for (int v = 0; v < vectors; v++)
                    sums[r][v] = _mm256_add_ps(sums[r][v], _mm256_maskload_ps(
                        tap[r] + shift + 8 * v, valid[r] ? lanes[kw][v] : none));
        }
    }
    for (int r = 0; r < rows; r++)
        for (int v = 0; v < vectors; v++) {
            float *out = row_out + r * s->width + iw0 + 8 * v;
            const ptrdiff_t left = s->width - iw0 - 8 * v;
            if (left >= 8) {
                _mm256_storeu_ps(out, sums[r][v]);
            } else {  /* a plain store and a copy: AMD microcodes AVX2's masked stores */
                float tail[8];
                _mm256_storeu_ps(tail, sums[r][v]);
                for (ptrdiff_t q = 0; q < left; q++) out[q] = tail[q];
            }
        }
}

/* The fold at stride 1, an image row at a time: each element is stored once,
 * where the scalar fold adds a tap's row into the image per tap, each add
 * waiting on the store of the tap before it, a float away, which made the
 * fold a large share of a small convolution's input gradient. Columns go 32
 * at a time, their lane masks computed once for all rows; rows of up to 16
 * floats go two at a time, for four chains of adds. */
static inline PYNN_TARGET_AVX2 void
fold_rows_gathered(const pynn_conv_shape *s, const tap_span *spans, const float *col,
                   ptrdiff_t ld, float *image)
{
    __m256i lanes[FOLD_ROW_MAX_KW][4];
#define FOLD_ROWS(rows, vectors) \
    fold_row_chunks(s, spans, col, ld, ih, iw0, lanes, image + ih * s->width, rows, vectors)
    for (ptrdiff_t iw0 = 0; iw0 < s->width; iw0 += 32) {
        const ptrdiff_t columns = s->width - iw0 < 32 ? s->width - iw0 : 32;
        const int vectors = (int)((columns + 7) / 8);
        for (ptrdiff_t kw = 0; kw < s->kernel_w; kw++) {
            const tap_span column = spans[s->kernel_h + kw];
            for (int v = 0; v < vectors; v++)
                lanes[kw][v] = chunk_lanes(iw0 + 8 * v - column.start, column.first, column.last);
        }
        ptrdiff_t ih = 0;
        if (vectors <= 2)
            for (; ih + 2 <= s->height; ih += 2) {
                if (vectors == 2) FOLD_ROWS(2, 2); else FOLD_ROWS(2, 1);
            }
        for (; ih < s->height; ih++) {
            if (vectors == 4) FOLD_ROWS(1, 4);
            else if (vectors == 3) FOLD_ROWS(1, 3);
            else if (vectors == 2) FOLD_ROWS(1, 2);
            else FOLD_ROWS(1, 1);
        }
    }
#undef FOLD_ROWS
}
#endif

/* How unfold and fold move a tap's rows: a constant argument of each ISA's
 * copy of them (CHANNEL_VARIANT), so each keeps only its own instructions. */
typedef enum {
    ROWS_SCALAR,         /* plain loops, vectorised by the compiler */
    ROWS_AVX2_GATHERED,  /* whole taps by 8-float permutes (tap_rows_copy, fold_rows_gathered) */
    ROWS_AVX512_MASKED,  /* each row by masked 16-float loads and stores */
} row_moves;

/* col rows (c, kh, kw) for channel c of one image and the output rows
 * [oh0, oh1): col[row, (oh - oh0) OW + ow] = x[c, ih, iw], zero where (ih, iw)
 * is padding; ld is col's row stride. */
PYNN_INLINE void unfold_channel(const pynn_conv_shape *s, const unfold_plan *plan,
                                        const float *restrict image, float *restrict col,
                                        ptrdiff_t ld, ptrdiff_t oh0, ptrdiff_t oh1,
                                        const row_moves moves)
{
    const ptrdiff_t ow_count = s->out_w, sw = s->stride_w, p = plane(s);
    const ptrdiff_t band = (oh1 - oh0) * ow_count;
    if (plan->source) {
        for (ptrdiff_t t = 0; t < s->kernel_h * s->kernel_w; t++, col += ld) {
            const int32_t *restrict source = plan->source + t * p + oh0 * ow_count;
            for (ptrdiff_t i = 0; i < band; i++) {
                int32_t index = source[i];
                float value = image[index >= 0 ? index : 0];
                col[i] = index >= 0 ? value : 0.0f;
            }
        }
        return;
    }
    for (ptrdiff_t kh = 0; kh < s->kernel_h; kh++) {
        const tap_span row = plan->spans[kh];
        for (ptrdiff_t kw = 0; kw < s->kernel_w; kw++, col += ld) {
            const tap_span column = plan->spans[s->kernel_h + kw];
            /* the tap's valid output rows, within the band */
            const ptrdiff_t top = row.first < oh0 ? oh0 : row.first > oh1 ? oh1 : row.first;
            const ptrdiff_t bottom = row.last < top ? top : row.last > oh1 ? oh1 : row.last;
            for (ptrdiff_t i = 0; i < (top - oh0) * ow_count; i++) col[i] = 0.0f;
#if defined(PYNN_X86_64)
            if (moves == ROWS_AVX2_GATHERED && sw == 1 && ow_count >= 8) {
                tap_rows_copy(col + (top - oh0) * ow_count,
                              image + (top * s->stride_h + row.start) * s->width + column.start,
                              s->stride_h * s->width, bottom - top, ow_count, column.first,
                              column.last);
                for (ptrdiff_t i = (bottom - oh0) * ow_count; i < band; i++) col[i] = 0.0f;
                continue;
            }
#endif
            for (ptrdiff_t oh = top; oh < bottom; oh++) {
                float *restrict out = col + (oh - oh0) * ow_count;
                const float *restrict in = image + (oh * s->stride_h + row.start) * s->width + column.start;
#if defined(PYNN_X86_64)
                if (moves == ROWS_AVX512_MASKED && sw == 1) {
                    masked_row_copy(out, in, column.first, column.last, ow_count);
                    continue;
                }
#endif
                for (ptrdiff_t ow = 0; ow < column.first; ow++) out[ow] = 0.0f;
                if (sw == 1)
                    for (ptrdiff_t ow = column.first; ow < column.last; ow++) out[ow] = in[ow];
                else
                    for (ptrdiff_t ow = column.first; ow < column.last; ow++) out[ow] = in[ow * sw];
                for (ptrdiff_t ow = column.last; ow < ow_count; ow++) out[ow] = 0.0f;
            }
            for (ptrdiff_t i = (bottom - oh0) * ow_count; i < band; i++) col[i] = 0.0f;
        }
    }
}

/* The adjoint of unfold_channel: dx[c] = Σ over its rows of dcol scattered back
 * (dx[c] is overwritten; the sum runs in a fixed order). */
PYNN_INLINE void fold_channel(const pynn_conv_shape *s, const unfold_plan *plan,
                                      const float *restrict col, ptrdiff_t ld,
                                      float *restrict image, const row_moves moves)
{
    const ptrdiff_t ow_count = s->out_w, sw = s->stride_w, p = plane(s);
#if defined(PYNN_X86_64)
    if (moves == ROWS_AVX2_GATHERED && !plan->source && sw == 1 && s->stride_h == 1 &&
        s->kernel_w <= FOLD_ROW_MAX_KW) {
        fold_rows_gathered(s, plan->spans, col, ld, image);
        return;
    }
#endif
    for (ptrdiff_t i = 0; i < s->height * s->width; i++) image[i] = 0.0f;
    if (plan->source) {
        for (ptrdiff_t t = 0; t < s->kernel_h * s->kernel_w; t++, col += ld) {
            const int32_t *restrict source = plan->source + t * p;
            for (ptrdiff_t i = 0; i < p; i++)
                if (source[i] >= 0) image[source[i]] += col[i];
        }
        return;
    }
    for (ptrdiff_t kh = 0; kh < s->kernel_h; kh++) {
        const tap_span row = plan->spans[kh];
        for (ptrdiff_t kw = 0; kw < s->kernel_w; kw++, col += ld) {
            const tap_span column = plan->spans[s->kernel_h + kw];
            for (ptrdiff_t oh = row.first; oh < row.last; oh++) {
                const float *in = col + oh * ow_count;
                float *out = image + (oh * s->stride_h + row.start) * s->width + column.start;
                for (ptrdiff_t ow = column.first; ow < column.last; ow++) out[ow * sw] += in[ow];
            }
        }
    }
}

/* One copy of the channel loops per ISA, so the copies use its vector width;
 * the direct convolution of single-channel images is AVX2 code, which the
 * AVX-512 path runs too (NULL: the path has none). */
struct pynn_conv_kernels {
    void (*unfold_channel)(const pynn_conv_shape *s, const unfold_plan *plan,
                           const float *image, float *col, ptrdiff_t ld, ptrdiff_t oh0,
                           ptrdiff_t oh1);
    void (*fold_channel)(const pynn_conv_shape *s, const unfold_plan *plan, const float *col,
                         ptrdiff_t ld, float *image);
    void (*direct_image)(const pynn_conv_shape *s, const float *image, const float *weight,
                         const float *bias, int relu, ptrdiff_t oh0, ptrdiff_t oh1, float *y);
    const struct pynn_direct_kernels *direct;  /* conv_direct.h */
    const struct pynn_winograd_kernels *winograd;  /* conv_winograd.h */
};

#define CHANNEL_VARIANT(suffix, attribute, moves)                                            \
    attribute static void unfold_channel_##suffix(const pynn_conv_shape *s,                  \
                                                  const unfold_plan *plan, const float *image, \
                                                  float *col, ptrdiff_t ld, ptrdiff_t oh0,   \
                                                  ptrdiff_t oh1)                             \
    { unfold_channel(s, plan, image, col, ld, oh0, oh1, moves); }                            \
    attribute static void fold_channel_##suffix(const pynn_conv_shape *s,                    \
                                                const unfold_plan *plan, const float *col,   \
                                                ptrdiff_t ld, float *image)                  \
    { fold_channel(s, plan, col, ld, image, moves); }

CHANNEL_VARIANT(generic, , ROWS_SCALAR)
#if defined(PYNN_X86_64)
CHANNEL_VARIANT(avx2, PYNN_TARGET_AVX2, ROWS_AVX2_GATHERED)
CHANNEL_VARIANT(avx512, PYNN_TARGET_AVX512, ROWS_AVX512_MASKED)
#endif

/* col [C KH KW, images band] from the output rows [oh0, oh1) (a band of
 * (oh1 - oh0) OW columns per image) of images [first, first + images) of x. */
static void unfold(const pynn_context *ctx, const pynn_conv_shape *s, const unfold_plan *plan,
                   const float *x, ptrdiff_t first, ptrdiff_t images, ptrdiff_t oh0,
                   ptrdiff_t oh1, float *col)
{
    const ptrdiff_t p = (oh1 - oh0) * s->out_w, ld = images * p, hw = s->height * s->width;
    const ptrdiff_t channels = s->in_channels, kernel = s->kernel_h * s->kernel_w;
    const ptrdiff_t tasks = images * channels;
    const struct pynn_conv_kernels *kernels = ctx->kernels->conv;
    const int wanted = tasks > 1 && ld * kernel * channels >= PARALLEL_MIN_FLOATS
                       ? ctx->num_threads : 1;
    PYNN_TEAM_FOR(ctx, wanted, t, tasks, {
        ptrdiff_t b = t / channels, c = t % channels;
        kernels->unfold_channel(s, plan, x + ((first + b) * channels + c) * hw,
                                col + c * kernel * ld + b * p, ld, oh0, oh1);
    });
}

static void fold(const pynn_context *ctx, const pynn_conv_shape *s, const unfold_plan *plan,
                 const float *col, ptrdiff_t first, ptrdiff_t images, float *dx)
{
    const ptrdiff_t p = plane(s), ld = images * p, hw = s->height * s->width;
    const ptrdiff_t channels = s->in_channels, kernel = s->kernel_h * s->kernel_w;
    const ptrdiff_t tasks = images * channels;
    const struct pynn_conv_kernels *kernels = ctx->kernels->conv;
    const int wanted = tasks > 1 && ld * kernel * channels >= PARALLEL_MIN_FLOATS
                       ? ctx->num_threads : 1;
    PYNN_TEAM_FOR(ctx, wanted, t, tasks, {
        ptrdiff_t b = t / channels, c = t % channels;
        kernels->fold_channel(s, plan, col + c * kernel * ld + b * p, ld,
                              dx + ((first + b) * channels + c) * hw);
    });
}

/* Between staged [OC, images P] (one GEMM's output or input) and NCHW images. */
static void unstage(const pynn_context *ctx, const float *staged, ptrdiff_t channels,
                    ptrdiff_t p, ptrdiff_t images, float *y, int to_images)
{
    const ptrdiff_t tasks = images * channels, ld = images * p;
    PYNN_TEAM_FOR(ctx, tasks * p >= 4 * PARALLEL_MIN_FLOATS ? ctx->num_threads : 1, t, tasks, {
        ptrdiff_t b = t / channels, c = t % channels;
        float *image = y + t * p;
        float *row = (float *)staged + c * ld + b * p;
        if (to_images)
            memcpy(image, row, (size_t)p * sizeof(float));
        else
            memcpy(row, image, (size_t)p * sizeof(float));
    });
}

/* The scratch (workspace, or allocated into *owned) and the unfold plan; NULL
 * with nothing left to free if memory runs out. */
static float *prepare(const pynn_conv_shape *s, int threads, float *workspace, float **owned,
                      unfold_plan *plan)
{
    *owned = NULL;
    plan->spans = NULL;
    plan->source = NULL;
    if (!workspace) {
        size_t size = pynn_conv2d_workspace_size(s, threads);
        workspace = *owned = malloc((size ? size : 1) * sizeof(float));
    }
    if (!workspace || plan_make(s, plan)) {
        free(*owned);
        plan_free(plan);
        return NULL;
    }
    return workspace;
}

/* Output rows per band when one image's unfolded input is too big for L2:
 * a function of the shapes alone. */
static ptrdiff_t band_rows(const pynn_conv_shape *s)
{
    const ptrdiff_t row_floats = unfolded_rows(s) * (s->out_w > 0 ? s->out_w : 1);
    const ptrdiff_t rows = COL_BAND_FLOATS / (row_floats > 0 ? row_floats : 1);
    return rows > 1 ? rows : 1;
}

/* out_g = W_g X̂_g for every group g, bias and activation in the epilogue:
 * X̂ (the unfolded input) has `columns` columns, out's rows are ldc apart. */
static void grouped_gemms(const pynn_context *ctx, const pynn_conv_shape *s, const float *weight,
                          const float *bias, pynn_activation activation, const float *unfolded,
                          ptrdiff_t columns, float *out, ptrdiff_t ldc)
{
    const ptrdiff_t oc_group = s->out_channels / s->groups;
    const ptrdiff_t rows_group = unfolded_rows(s) / s->groups;
    for (ptrdiff_t g = 0; g < s->groups; g++) {
        pynn_epilogue epilogue = {NULL, bias ? bias + g * oc_group : NULL, activation};
        pynn_sgemm(ctx, 0, 0, oc_group, columns, rows_group, 1.0f, weight + g * oc_group * rows_group,
             rows_group, unfolded + g * rows_group * columns, columns, 0.0f,
             out + g * oc_group * ldc, ldc, &epilogue);
    }
}

/* y for images [first, first + count): unfold, one GEMM per group (bias and
 * activation in its epilogue), scatter to NCHW. A single large image goes in
 * bands of output rows, each written straight into y's planes, so its
 * unfolded input is still in L2 when the GEMM reads it (3x3, 64 channels,
 * 56 x 56: one 7 MiB unfold made the GEMM pack from memory). */
static void forward_chunk(const pynn_context *ctx, const pynn_conv_shape *s,
                          const unfold_plan *plan, const float *x, const float *weight,
                          const float *bias, pynn_activation activation, float *y,
                          ptrdiff_t first, ptrdiff_t count, float *col)
{
    const ptrdiff_t p = plane(s), oc = s->out_channels, ld = count * p;
    const int identity = unfold_is_identity(s, count);
    if (count == 1 && !identity) {
        const ptrdiff_t step = band_rows(s);
        for (ptrdiff_t oh0 = 0; oh0 < s->out_h; oh0 += step) {
            const ptrdiff_t oh1 = oh0 + step < s->out_h ? oh0 + step : s->out_h;
            unfold(ctx, s, plan, x, first, 1, oh0, oh1, col);
            grouped_gemms(ctx, s, weight, bias, activation, col, (oh1 - oh0) * s->out_w,
                          y + first * oc * p + oh0 * s->out_w, p);
        }
        return;
    }
    const float *unfolded = col;
    if (identity)
        unfolded = x + first * s->in_channels * s->height * s->width;
    else
        unfold(ctx, s, plan, x, first, count, 0, s->out_h, col);
    float *staged = col + (identity ? 0 : unfolded_rows(s) * ld);
    float *out = count > 1 ? staged : y + first * oc * p;
    grouped_gemms(ctx, s, weight, bias, activation, unfolded, ld, out, ld);
    if (count > 1) unstage(ctx, staged, oc, p, count, y + first * oc * p, 1);
}

/* dx for images [first, first + count) and, if dweight is not NULL, their
 * share of dW written (not added) there. */
static void backward_chunk(const pynn_context *ctx, const pynn_conv_shape *s,
                           const unfold_plan *plan, const float *dy, const float *x,
                           const float *weight, float *dx, float *dweight, ptrdiff_t first,
                           ptrdiff_t count, float *col)
{
    const ptrdiff_t p = plane(s), oc = s->out_channels, ld = count * p;
    const ptrdiff_t oc_group = oc / s->groups, rows_group = unfolded_rows(s) / s->groups;
    const ptrdiff_t image_size = s->in_channels * s->height * s->width;
    const int identity = unfold_is_identity(s, count);
    float *staged = col + (identity ? 0 : unfolded_rows(s) * ld);
    const float *grad = dy + first * oc * p;
    if (count > 1) {
        unstage(ctx, staged, oc, p, count, (float *)grad, 0);
        grad = staged;
    }
    float *input_grad = dx ? dx + first * image_size : NULL;
    const float *unfolded = identity ? x + first * image_size : col;
    if (dweight && !identity) unfold(ctx, s, plan, x, first, count, 0, s->out_h, col);
    /* dcol_g overwrites col_g once dW_g has read it; with the identity unfold
     * dcol is dx itself. */
    float *dcol = identity ? input_grad : col;
    for (ptrdiff_t g = 0; g < s->groups; g++) {
        if (dweight)  /* dW_g = dY_g X̂_gᵀ */
            pynn_sgemm(ctx, 0, 1, oc_group, rows_group, ld, 1.0f, grad + g * oc_group * ld, ld,
                 unfolded + g * rows_group * ld, ld, 0.0f,
                 dweight + g * oc_group * rows_group, rows_group, NULL);
        if (dx)       /* dX̂_g = W_gᵀ dY_g */
            pynn_sgemm(ctx, 1, 0, rows_group, ld, oc_group, 1.0f,
                 weight + g * oc_group * rows_group, rows_group, grad + g * oc_group * ld,
                 ld, 0.0f, dcol + g * rows_group * ld, ld, NULL);
    }
    if (dx && !identity) fold(ctx, s, plan, col, first, count, dx);
}

/* A single input channel at stride 1 and dilation 1 (a first layer on grey
 * images) runs directly, without unfolding: each output row is a sum of KH KW
 * shifted rows of a zero-padded copy of the image (L1-resident), six output
 * channels at a time, so one load of the shifted row feeds six FMAs. The
 * unfold wrote 25 floats per output and the GEMM's k of 25 left its tiles
 * epilogue-bound. AVX2 code, run on AVX-512 CPUs too; the portable path
 * keeps the unfold. */
#if defined(PYNN_X86_64)
#define DIRECT_CHANNELS 6
/* The padded image copy and the weights live on the stack: images and
 * kernels larger than these bounds take the unfold. */
#define DIRECT_MAX_FLOATS 8192
#define DIRECT_MAX_TAPS 64

/* A padded row: every 8-float load of every tap stays inside it, and it
 * holds pad_w + width + pad_w = out_w + kernel_w - 1 floats and more. */
static ptrdiff_t direct_row_floats(const pynn_conv_shape *s)
{
    return (s->out_w + 7) / 8 * 8 + s->kernel_w - 1;
}

static int direct_applies(const pynn_context *ctx, const pynn_conv_shape *s)
{
    return ctx->kernels->conv->direct_image && s->in_channels == 1 && s->groups == 1 &&
           s->stride_h == 1 && s->stride_w == 1 && s->dilation_h == 1 && s->dilation_w == 1 &&
           s->out_w >= 8 && s->kernel_h * s->kernel_w <= DIRECT_MAX_TAPS &&
           direct_row_floats(s) * (s->height + 2 * s->pad_h) <= DIRECT_MAX_FLOATS;
}

/* The sums of one or two vectors of a row, stored: relu'd when asked, the
 * columns past out_w through the stack, never past the row. */
static inline __attribute__((always_inline)) PYNN_TARGET_AVX2 void
direct_store(const pynn_conv_shape *s, const __m256 *sums, int relu, float *y, ptrdiff_t count,
             ptrdiff_t oh, ptrdiff_t at)
{
    const __m256 zero = _mm256_setzero_ps();
    const ptrdiff_t valid = s->out_w - at < 8 ? s->out_w - at : 8;
    for (ptrdiff_t c = 0; c < count; c++) {
        const __m256 value = relu ? _mm256_max_ps(zero, sums[c]) : sums[c];  /* NaN stays */
        float *out = y + c * plane(s) + oh * s->out_w + at;
        if (valid == 8) {
            _mm256_storeu_ps(out, value);
        } else {
            float lanes[8];
            _mm256_storeu_ps(lanes, value);
            for (ptrdiff_t i = 0; i < valid; i++) out[i] = lanes[i];
        }
    }
}

/* Outputs [ow, ow + 8) and, with `two`, [ow + 8, ow + 16) of row oh of six
 * output channels from the padded copy (row stride ld); weights [6][KH KW],
 * biases [6]; only the first `count` channels are stored. Per shifted row,
 * 1 or 2 loads and 6 broadcasts feed 6 or 12 FMAs: the 12 chains of two
 * vectors keep both FMA pipes busy where 6 left them waiting. Named
 * accumulators: in an array GCC stores them back every tap. */
static inline __attribute__((always_inline)) PYNN_TARGET_AVX2 void
direct_chunk(const pynn_conv_shape *s, const float *padded, ptrdiff_t ld, const float *weights,
             const float *biases, int relu, float *y, ptrdiff_t count, ptrdiff_t oh,
             ptrdiff_t ow, const int two)
{
    const ptrdiff_t taps = s->kernel_h * s->kernel_w;
    __m256 a0 = _mm256_set1_ps(biases[0]), a1 = _mm256_set1_ps(biases[1]);
    __m256 a2 = _mm256_set1_ps(biases[2]), a3 = _mm256_set1_ps(biases[3]);
    __m256 a4 = _mm256_set1_ps(biases[4]), a5 = _mm256_set1_ps(biases[5]);
    __m256 b0 = a0, b1 = a1, b2 = a2, b3 = a3, b4 = a4, b5 = a5;
    for (ptrdiff_t kh = 0; kh < s->kernel_h; kh++) {
        const float *row = padded + (oh + kh) * ld + ow;
        const float *w = weights + kh * s->kernel_w;
        for (ptrdiff_t kw = 0; kw < s->kernel_w; kw++, w++) {
            const __m256 first = _mm256_loadu_ps(row + kw);
            const __m256 second = two ? _mm256_loadu_ps(row + kw + 8) : first;
#define DIRECT_FMA(a, b, c)                                             \
    do {                                                                \
        const __m256 weight = _mm256_broadcast_ss(w + (c) * taps);      \
        a = _mm256_fmadd_ps(weight, first, a);                          \
        if (two) b = _mm256_fmadd_ps(weight, second, b);                \
    } while (0)
            DIRECT_FMA(a0, b0, 0); DIRECT_FMA(a1, b1, 1); DIRECT_FMA(a2, b2, 2);
            DIRECT_FMA(a3, b3, 3); DIRECT_FMA(a4, b4, 4); DIRECT_FMA(a5, b5, 5);
#undef DIRECT_FMA
        }
    }
    const __m256 firsts[DIRECT_CHANNELS] = {a0, a1, a2, a3, a4, a5};
    direct_store(s, firsts, relu, y, count, oh, ow);
    if (two) {
        const __m256 seconds[DIRECT_CHANNELS] = {b0, b1, b2, b3, b4, b5};
        direct_store(s, seconds, relu, y, count, oh, ow + 8);
    }
}

/* Six output channels of one image from its padded copy, two vectors of a
 * row at a time while two remain (the second maybe partial). */
static PYNN_TARGET_AVX2 void direct_channels(const pynn_conv_shape *s, const float *padded,
                                             ptrdiff_t ld, const float *weights,
                                             const float *biases, int relu, float *y,
                                             ptrdiff_t count, ptrdiff_t oh0, ptrdiff_t oh1)
{
    for (ptrdiff_t oh = oh0; oh < oh1; oh++) {
        ptrdiff_t ow = 0;
        for (; ow + 8 < s->out_w; ow += 16)
            direct_chunk(s, padded, ld, weights, biases, relu, y, count, oh, ow, 2);
        if (ow < s->out_w) direct_chunk(s, padded, ld, weights, biases, relu, y, count, oh, ow, 1);
    }
}

/* Output rows [oh0, oh1) of one image. */
static PYNN_TARGET_AVX2 void direct_image(const pynn_conv_shape *s, const float *image,
                                          const float *weight, const float *bias, int relu,
                                          ptrdiff_t oh0, ptrdiff_t oh1, float *y)
{
    float padded[DIRECT_MAX_FLOATS];
    const ptrdiff_t ld = direct_row_floats(s), rows = s->height + 2 * s->pad_h;
    const ptrdiff_t taps = s->kernel_h * s->kernel_w;
    for (ptrdiff_t i = 0; i < rows * ld; i++) padded[i] = 0.0f;
    for (ptrdiff_t h = 0; h < s->height; h++)
        for (ptrdiff_t w = 0; w < s->width; w++)  /* pad_w + width <= ld: see direct_row_floats */
            padded[(h + s->pad_h) * ld + s->pad_w + w] = image[h * s->width + w];
    for (ptrdiff_t o0 = 0; o0 < s->out_channels; o0 += DIRECT_CHANNELS) {
        const ptrdiff_t count = s->out_channels - o0 < DIRECT_CHANNELS ? s->out_channels - o0
                                                                        : DIRECT_CHANNELS;
        /* the block's weights and biases, zero past the last channel */
        float weights[DIRECT_CHANNELS * DIRECT_MAX_TAPS] = {0}, biases[DIRECT_CHANNELS] = {0};
        for (ptrdiff_t c = 0; c < count; c++) {
            for (ptrdiff_t t = 0; t < taps; t++) weights[c * taps + t] = weight[(o0 + c) * taps + t];
            biases[c] = bias ? bias[o0 + c] : 0.0f;
        }
        direct_channels(s, padded, ld, weights, biases, relu, y + o0 * plane(s), count, oh0, oh1);
    }
}

/* Multiply-adds from which one image's rows are shared with the helper
 * threads (helpers.h), whose hand-over costs a cache line transfer where an
 * OpenMP region's start and end cost as much as such a convolution. */
#define DIRECT_HELPERS_MIN_PRODUCTS (1 << 16)

/* One image's output rows shared among `parts` threads, share i taking
 * rows [i out_h / parts, (i + 1) out_h / parts). */
typedef struct {
    const struct pynn_conv_kernels *kernels;
    const pynn_conv_shape *s;
    const float *x, *weight, *bias;
    int relu;
    float *y;
} direct_rows;

static void direct_rows_share(void *arg, int share, int parts)
{
    const direct_rows *call = arg;
    const ptrdiff_t rows = call->s->out_h;
    call->kernels->direct_image(call->s, call->x, call->weight, call->bias, call->relu,
                                share * rows / parts, (share + 1) * rows / parts, call->y);
}

static void direct_forward(const pynn_context *ctx, const pynn_conv_shape *s, const float *x,
                           const float *weight, const float *bias, pynn_activation activation,
                           float *y)
{
    const ptrdiff_t image_size = s->height * s->width, out_size = s->out_channels * plane(s);
    const int relu = activation == PYNN_ACTIVATION_RELU;
    const int wanted = s->batch > 1 && s->batch * out_size >= PARALLEL_MIN_FLOATS
                       ? ctx->num_threads : 1;
    const ptrdiff_t products = out_size * s->kernel_h * s->kernel_w;
    if (s->batch == 1 && wanted == 1 && products >= DIRECT_HELPERS_MIN_PRODUCTS) {
        direct_rows call = {ctx->kernels->conv, s, x, weight, bias, relu, y};
        pynn_helpers_split(ctx, (int)(ctx->num_threads < s->out_h ? ctx->num_threads : s->out_h),
                           direct_rows_share, &call);
        return;
    }
    PYNN_TEAM_FOR(ctx, wanted, n, s->batch, {
        ctx->kernels->conv->direct_image(s, x + n * image_size, weight, bias, relu, 0, s->out_h,
                                         y + n * out_size);
    });
}
#endif

#define CONV_TABLE(suffix, direct)                                                           \
    const struct pynn_conv_kernels pynn_conv_##suffix = {                                    \
        unfold_channel_##suffix, fold_channel_##suffix, direct, &pynn_direct_##suffix,      \
        &pynn_winograd_##suffix};
CONV_TABLE(generic, NULL)
#if defined(PYNN_X86_64)
CONV_TABLE(avx2, direct_image)
CONV_TABLE(avx512, direct_image)
#endif

int pynn_conv2d_forward(const pynn_context *ctx, const pynn_conv_shape *s, const float *x,
                        const float *weight, const float *bias, pynn_activation activation,
                        float *y, float *workspace)
{
    if (pynn_depthwise_applies(s))
        return pynn_depthwise_forward(ctx, s, x, weight, bias, activation, y, workspace);
#if defined(PYNN_X86_64)
    if (direct_applies(ctx, s)) {
        direct_forward(ctx, s, x, weight, bias, activation, y);
        return 0;
    }
#endif
    if (pynn_winograd_applies(ctx->kernels->conv->winograd, s))
        return pynn_winograd_forward(ctx, ctx->kernels->conv->winograd, s, x, weight, bias,
                                     activation, y, workspace);
    float *owned;
    if (pynn_direct_applies(s)) {
        owned = workspace ? NULL : malloc(pynn_direct_workspace_size(s, ctx->num_threads) *
                                          sizeof(float));
        if (!workspace && !owned) return -1;
        pynn_direct_forward(ctx, ctx->kernels->conv->direct, s, x, weight, bias, activation,
                            y, workspace ? workspace : owned);
        free(owned);
        return 0;
    }
    unfold_plan plan;
    float *scratch_space = prepare(s, ctx->num_threads, workspace, &owned, &plan);
    if (!scratch_space) return -1;
    const ptrdiff_t images = chunk_images(s), chunks = chunk_count(s);
    const int slots = chunk_slots(s, ctx->num_threads);
    const ptrdiff_t per_slot = chunk_floats(s);
    pynn_context single = *ctx;
    single.num_threads = 1;
    const pynn_context *inner = slots > 1 ? &single : ctx;
    /* Without the team (another call holds it) the chunks run in turn here,
     * in slot 0's scratch; each chunk's outputs are the same either way. */
    PYNN_TEAM_FOR(ctx, slots, c, chunks, {
        ptrdiff_t first = c * images;
        ptrdiff_t count = s->batch - first < images ? s->batch - first : images;
        forward_chunk(inner, s, &plan, x, weight, bias, activation, y, first, count,
                      scratch_space + pynn_team_slot(team) * per_slot);
    });
    free(owned);
    plan_free(&plan);
    return 0;
}

/* Independent partial sums per plane in the bias gradient, as vectors of
 * four floats that any x86-64 or AArch64 build has: one chain of dependent
 * adds per plane left it latency-bound. */
#define BIAS_CHAINS 4
typedef float bias_quad __attribute__((vector_size(16), aligned(4), may_alias));

/* The sum of one plane: BIAS_CHAINS x 4 strided partial sums, then their
 * total and the tail in index order (a fixed order). */
static float plane_sum(const float *row, ptrdiff_t p)
{
    bias_quad chains[BIAS_CHAINS] = {{0.0f}};
    ptrdiff_t i = 0;
    for (; i + 4 * BIAS_CHAINS <= p; i += 4 * BIAS_CHAINS)
        for (int k = 0; k < BIAS_CHAINS; k++) chains[k] += *(const bias_quad *)(row + i + 4 * k);
    const bias_quad quad = (chains[0] + chains[1]) + (chains[2] + chains[3]);
    float sum = (quad[0] + quad[1]) + (quad[2] + quad[3]);
    for (; i < p; i++) sum += row[i];
    return sum;
}

/* db[o] = Σ_{n,p} dy[n, o, p]: each channel summed in one fixed order. */
static void bias_gradient(const pynn_context *ctx, const pynn_conv_shape *s, const float *dy,
                          float *dbias)
{
    const ptrdiff_t p = plane(s), oc = s->out_channels;
    const int wanted = oc > 1 && s->batch * oc * p >= 4 * PARALLEL_MIN_FLOATS
                       ? ctx->num_threads : 1;
    PYNN_TEAM_FOR(ctx, wanted, o, oc, {
        double total = 0.0;
        for (ptrdiff_t n = 0; n < s->batch; n++) total += plane_sum(dy + (n * oc + o) * p, p);
        dbias[o] = (float)total;
    });
}

int pynn_conv2d_backward(const pynn_context *ctx, const pynn_conv_shape *s, const float *dy,
                         const float *x, const float *weight, float *dx, float *dweight,
                         float *dbias, float *workspace)
{
    if (pynn_depthwise_applies(s))
        return pynn_depthwise_backward(ctx, s, dy, x, weight, dx, dweight, dbias, workspace);
    if (dbias) bias_gradient(ctx, s, dy, dbias);
    if (dweight && s->batch == 0)
        memset(dweight, 0, (size_t)weight_size(s) * sizeof(float));
    if (dx && pynn_winograd_input_grad_applies(ctx->kernels->conv->winograd, s)) {
        if (pynn_winograd_input_grad(ctx, ctx->kernels->conv->winograd, s, dy, weight, dx,
                                     workspace))
            return -1;
        dx = NULL;
    }
    if (dweight && pynn_winograd_weight_grad_applies(ctx->kernels->conv->winograd, s)) {
        if (pynn_winograd_weight_grad(ctx, ctx->kernels->conv->winograd, s, dy, x, dweight,
                                      workspace))
            return -1;
        dweight = NULL;
    }
    if (!dx && !dweight) return 0;
    float *direct_owned = NULL;
    pynn_conv_shape t;
    const int direct_dx = dx && transposed_applies(s, &t);
    const int direct_dw = dweight && pynn_direct_applies(s);
    if (direct_dx || direct_dw) {
        if (!workspace) {
            direct_owned = malloc(pynn_conv2d_workspace_size(s, ctx->num_threads) * sizeof(float));
            if (!direct_owned) return -1;
            workspace = direct_owned;
        }
        if (direct_dw) {
            pynn_direct_weight_grad(ctx, ctx->kernels->conv->direct, s, dy, x, dweight,
                                    workspace);
            dweight = NULL;
        }
        if (direct_dx) {
            flip_weight(s, weight, workspace);
            pynn_direct_forward(ctx, ctx->kernels->conv->direct, &t, dy, workspace, NULL,
                                PYNN_ACTIVATION_NONE, dx, workspace + weight_size(s));
            dx = NULL;
        }
        if (!dx && !dweight) {
            free(direct_owned);
            return 0;
        }
    }
    float *owned;
    unfold_plan plan;
    float *scratch_space = prepare(s, ctx->num_threads, workspace, &owned, &plan);
    if (!scratch_space) {
        free(direct_owned);
        return -1;
    }
    const ptrdiff_t images = chunk_images(s), chunks = chunk_count(s), wsize = weight_size(s);
    const int slots = chunk_slots(s, ctx->num_threads);
    const ptrdiff_t per_slot = chunk_floats(s);
    float *partials = scratch_space + slots * per_slot;
    pynn_context single = *ctx;
    single.num_threads = 1;
    const pynn_context *inner = slots > 1 ? &single : ctx;
    /* As in the forward pass: without the team the chunks run in turn here. */
    PYNN_TEAM_FOR(ctx, slots, c, chunks, {
        ptrdiff_t first = c * images;
        ptrdiff_t count = s->batch - first < images ? s->batch - first : images;
        float *share = !dweight ? NULL : chunks > 1 ? partials + c * wsize : dweight;
        backward_chunk(inner, s, &plan, dy, x, weight, dx, share, first, count,
                       scratch_space + pynn_team_slot(team) * per_slot);
    });
    if (dweight && chunks > 1) {
        /* dW = Σ over chunks in chunk order, whatever thread computed each */
        const int wanted = wsize * chunks >= 4 * PARALLEL_MIN_FLOATS ? ctx->num_threads : 1;
        PYNN_TEAM_FOR(ctx, wanted, i, wsize, {
            float sum = partials[i];
            for (ptrdiff_t c = 1; c < chunks; c++) sum += partials[c * wsize + i];
            dweight[i] = sum;
        });
    }
    free(owned);
    free(direct_owned);
    plan_free(&plan);
    return 0;
}
