/* Tensor kernels (contracts in tensor.h). Threads share whole work items
 * (a row chunk, a block of target columns, a tile), each written by one
 * thread in a fixed order. */
#include <string.h>
#include "tensor.h"
#include "vmath.h"

/* Memory-bound loops take a second thread from this many elements. */
#define PARALLEL_MIN_ELEMENTS PYNN_CHEAP_PARALLEL
/* Longest stretch of a row in one work item, so a few long rows still spread
 * over the threads. */
#define ROW_CHUNK 4096
/* Target columns a reduction accumulates at once, in a double buffer on the stack. */
#define COLUMN_BLOCK 256
/* Side of the square tiles of a transposing permutation: two tiles of floats
 * stay in L1 while the reads run down one and the writes along the other. */
#define TILE 32

#define MAX_RANK PYNN_TENSOR_MAX_RANK

/* y = a op b along one row; a_step and b_step are 1 (a row) or 0 (one value
 * repeated), so every loop is contiguous and vectorises. */
#define BINARY_ROW(expression)                                                            \
    do {                                                                                  \
        if (a_step && b_step)                                                             \
            for (ptrdiff_t i = 0; i < n; i++) {                                           \
                const float left = a[i], right = b[i];                                    \
                y[i] = (expression);                                                      \
            }                                                                             \
        else if (a_step) {                                                                \
            const float right = b[0];                                                     \
            for (ptrdiff_t i = 0; i < n; i++) { const float left = a[i]; y[i] = (expression); } \
        } else if (b_step) {                                                              \
            const float left = a[0];                                                      \
            for (ptrdiff_t i = 0; i < n; i++) { const float right = b[i]; y[i] = (expression); } \
        } else {                                                                          \
            const float left = a[0], right = b[0];                                        \
            for (ptrdiff_t i = 0; i < n; i++) y[i] = (expression);                        \
        }                                                                                 \
    } while (0)

/* y may be a itself: each element is read before it is written. */
PYNN_INLINE void binary_row(pynn_tensor_op op, ptrdiff_t n, const float *restrict a,
                            ptrdiff_t a_step, const float *restrict b, ptrdiff_t b_step,
                            float *restrict y)
{
    if (op == PYNN_TENSOR_ADD)
        BINARY_ROW(left + right);
    else
        BINARY_ROW(left * right);
}

/* acc[i] += dy[i] (times other[i], or other[0] when other_step is 0); a
 * float product is exact in double, so only the sum rounds. */
PYNN_INLINE void accumulate_row(ptrdiff_t n, const float *restrict dy, const float *restrict other,
                                ptrdiff_t other_step, double *restrict acc)
{
    if (!other)
        for (ptrdiff_t i = 0; i < n; i++) acc[i] += dy[i];
    else if (other_step)
        for (ptrdiff_t i = 0; i < n; i++) acc[i] += (double)dy[i] * other[i];
    else {
        const double scale = other[0];
        for (ptrdiff_t i = 0; i < n; i++) acc[i] += dy[i] * scale;
    }
}

/* y[i * y_stride + j] = x[i + j * x_stride] for i < rows, j < cols: one
 * tile of a transposing permutation, element by element. */
PYNN_INLINE void transpose_block(ptrdiff_t rows, ptrdiff_t cols, const float *restrict x,
                                 ptrdiff_t x_stride, float *restrict y, ptrdiff_t y_stride)
{
    for (ptrdiff_t i = 0; i < rows; i++)
        for (ptrdiff_t j = 0; j < cols; j++) y[i * y_stride + j] = x[i + j * x_stride];
}

struct pynn_tensor_kernels {
    void (*binary_row)(pynn_tensor_op op, ptrdiff_t n, const float *a, ptrdiff_t a_step,
                       const float *b, ptrdiff_t b_step, float *y);
    void (*accumulate_row)(ptrdiff_t n, const float *dy, const float *other, ptrdiff_t other_step,
                           double *acc);
    double (*row_sum)(ptrdiff_t n, const float *x, const float *b);
    void (*transpose_tile)(ptrdiff_t rows, ptrdiff_t cols, const float *x, ptrdiff_t x_stride,
                           float *y, ptrdiff_t y_stride);
    void (*row_dots)(ptrdiff_t first, ptrdiff_t last, ptrdiff_t length, const float *u,
                     const float *v, float *y);
};

#define TENSOR_VARIANT(suffix, attribute)                                                   \
    attribute static void binary_row_##suffix(pynn_tensor_op op, ptrdiff_t n, const float *a, \
                                              ptrdiff_t a_step, const float *b,              \
                                              ptrdiff_t b_step, float *y)                    \
    { binary_row(op, n, a, a_step, b, b_step, y); }                                          \
    attribute static void accumulate_row_##suffix(ptrdiff_t n, const float *dy,             \
                                                  const float *other, ptrdiff_t other_step, \
                                                  double *acc)                               \
    { accumulate_row(n, dy, other, other_step, acc); }                                       \
    attribute static double row_sum_##suffix(ptrdiff_t n, const float *x, const float *b)  \
    { return pynn_row_sum(x, b, n); }

PYNN_EACH_ISA(TENSOR_VARIANT)

static void transpose_tile_generic(ptrdiff_t rows, ptrdiff_t cols, const float *x,
                                   ptrdiff_t x_stride, float *y, ptrdiff_t y_stride)
{
    transpose_block(rows, cols, x, x_stride, y, y_stride);
}

#if defined(PYNN_X86_64)
/* transpose_block by 8 x 8 blocks: eight loads of eight x values along i,
 * a register transpose, eight stores along j; the edges element by element.
 * The AVX-512 table points here too. */
PYNN_TARGET_AVX2 static void transpose_tile_avx2(ptrdiff_t rows, ptrdiff_t cols, const float *x,
                                                 ptrdiff_t x_stride, float *y, ptrdiff_t y_stride)
{
    const ptrdiff_t whole_rows = rows & ~(ptrdiff_t)7, whole_cols = cols & ~(ptrdiff_t)7;
    for (ptrdiff_t i = 0; i < whole_rows; i += 8) {
        for (ptrdiff_t j = 0; j < whole_cols; j += 8) {
            const float *in = x + i + j * x_stride;
            __m256 r[8], t[8];
            for (int k = 0; k < 8; k++) r[k] = _mm256_loadu_ps(in + k * x_stride);
            for (int k = 0; k < 8; k += 2) {
                t[k] = _mm256_unpacklo_ps(r[k], r[k + 1]);
                t[k + 1] = _mm256_unpackhi_ps(r[k], r[k + 1]);
            }
            for (int k = 0; k < 8; k += 4) {
                r[k] = _mm256_shuffle_ps(t[k], t[k + 2], _MM_SHUFFLE(1, 0, 1, 0));
                r[k + 1] = _mm256_shuffle_ps(t[k], t[k + 2], _MM_SHUFFLE(3, 2, 3, 2));
                r[k + 2] = _mm256_shuffle_ps(t[k + 1], t[k + 3], _MM_SHUFFLE(1, 0, 1, 0));
                r[k + 3] = _mm256_shuffle_ps(t[k + 1], t[k + 3], _MM_SHUFFLE(3, 2, 3, 2));
            }
            float *out = y + i * y_stride + j;
            for (int k = 0; k < 4; k++) {
                _mm256_storeu_ps(out + k * y_stride, _mm256_permute2f128_ps(r[k], r[k + 4], 0x20));
                _mm256_storeu_ps(out + (k + 4) * y_stride, _mm256_permute2f128_ps(r[k], r[k + 4], 0x31));
            }
        }
        transpose_block(8, cols - whole_cols, x + i + whole_cols * x_stride, x_stride,
                        y + i * y_stride + whole_cols, y_stride);
    }
    transpose_block(rows - whole_rows, cols, x + whole_rows, x_stride, y + whole_rows * y_stride,
                    y_stride);
}
#define transpose_tile_avx512 transpose_tile_avx2
#endif

/* y[n] = u[n, :] . v[n, :] for rows [first, last), each sum exactly as
 * pynn_row_sum's. */
static void row_dots_generic(ptrdiff_t first, ptrdiff_t last, ptrdiff_t length, const float *u,
                             const float *v, float *y)
{
    for (ptrdiff_t n = first; n < last; n++)
        y[n] = (float)pynn_row_sum(u + n * length, v + n * length, length);
}

#if defined(PYNN_X86_64)
/* row_dots_generic with pynn_row_sum's sixteen partial sums in four vectors
 * of doubles (each float product is exact in double, so a fused multiply-add
 * rounds as the separate add does), added up lane by lane in its order. The
 * AVX-512 table points here too. */
PYNN_TARGET_AVX2 static void row_dots_avx2(ptrdiff_t first, ptrdiff_t last, ptrdiff_t length,
                                           const float *u, const float *v, float *y)
{
    for (ptrdiff_t n = first; n < last; n++) {
        const float *a = u + n * length, *b = v + n * length;
        __m256d partial[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(),
                              _mm256_setzero_pd()};
        ptrdiff_t i = 0;
        for (; i + PYNN_LANES <= length; i += PYNN_LANES)
            for (int k = 0; k < 4; k++)
                partial[k] = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(a + i + 4 * k)),
                                             _mm256_cvtps_pd(_mm_loadu_ps(b + i + 4 * k)), partial[k]);
        double lanes[PYNN_LANES], sum = 0.0;
        for (int k = 0; k < 4; k++) _mm256_storeu_pd(lanes + 4 * k, partial[k]);
        for (int k = 0; k < PYNN_LANES; k++) sum += lanes[k];
        for (; i < length; i++) sum += (double)a[i] * b[i];
        y[n] = (float)sum;
    }
}
#define row_dots_avx512 row_dots_avx2
#endif

#define TENSOR_TABLE(suffix, attribute)                                                     \
    const struct pynn_tensor_kernels pynn_tensor_##suffix = {                                \
        binary_row_##suffix, accumulate_row_##suffix, row_sum_##suffix, transpose_tile_##suffix, \
        row_dots_##suffix};
PYNN_EACH_ISA(TENSOR_TABLE)

/* An iteration over the axes of an output, with up to three operands'
 * element strides (0 along an operand's broadcast axes). */
typedef struct {
    int rank;
    ptrdiff_t extent[MAX_RANK];
    ptrdiff_t stride[3][MAX_RANK];
} layout;

/* The iteration over out_shape of `count` operands of the given shapes, with
 * the output's axes of extent 1 dropped and adjacent axes merged wherever
 * every operand's strides allow: equal shapes become one axis, [N, C, 1, 1]
 * against [N, C, H, W] two. At least one axis remains. */
static layout broadcast_layout(int rank, const ptrdiff_t *out_shape, int count,
                               const ptrdiff_t *const *shapes)
{
    ptrdiff_t stride[3][MAX_RANK];
    for (int k = 0; k < count; k++) {
        ptrdiff_t next = 1;
        for (int axis = rank - 1; axis >= 0; axis--) {
            stride[k][axis] = shapes[k][axis] == 1 ? 0 : next;
            next *= shapes[k][axis];
        }
    }
    layout l = {.rank = 0};
    for (int axis = 0; axis < rank; axis++) {
        if (out_shape[axis] == 1) continue;
        int merge = l.rank > 0;
        for (int k = 0; k < count && merge; k++)
            merge = l.stride[k][l.rank - 1] == stride[k][axis] * out_shape[axis];
        if (merge)
            l.extent[l.rank - 1] *= out_shape[axis];
        else
            l.extent[l.rank++] = out_shape[axis];
        for (int k = 0; k < count; k++) l.stride[k][l.rank - 1] = stride[k][axis];
    }
    if (l.rank == 0) {
        l.rank = 1;
        l.extent[0] = 1;
        for (int k = 0; k < count; k++) l.stride[k][0] = 1;
    }
    return l;
}

/* The axes of l whose stride for operand `which` is (keep) or is not (!keep) zero. */
static layout select_axes(const layout *l, int count, int which, int keep)
{
    layout part;
    part.rank = 0;
    for (int axis = 0; axis < l->rank; axis++) {
        if ((l->stride[which][axis] != 0) != keep) continue;
        part.extent[part.rank] = l->extent[axis];
        for (int k = 0; k < count; k++) part.stride[k][part.rank] = l->stride[k][axis];
        part.rank++;
    }
    return part;
}

static ptrdiff_t element_count(const layout *l, int axes)
{
    ptrdiff_t count = 1;
    for (int axis = 0; axis < axes; axis++) count *= l->extent[axis];
    return count;
}

/* offset[k] = operand k's offset of element `index` over the first `axes` axes of l. */
static void offsets_of(const layout *l, int count, int axes, ptrdiff_t index, ptrdiff_t *offset)
{
    for (int k = 0; k < count; k++) offset[k] = 0;
    for (int axis = axes - 1; axis >= 0; axis--) {
        const ptrdiff_t i = index % l->extent[axis];
        index /= l->extent[axis];
        for (int k = 0; k < count; k++) offset[k] += i * l->stride[k][axis];
    }
}

void pynn_broadcast_binary(const pynn_context *ctx, pynn_tensor_op op, int rank,
                           const ptrdiff_t *out_shape, const ptrdiff_t *a_shape, const float *a,
                           const ptrdiff_t *b_shape, const float *b, float *y)
{
    const ptrdiff_t *const shapes[3] = {a_shape, b_shape, out_shape};
    const layout l = broadcast_layout(rank, out_shape, 3, shapes);
    const int last = l.rank - 1;
    const ptrdiff_t length = l.extent[last], rows = element_count(&l, last);
    const ptrdiff_t chunks = (length + ROW_CHUNK - 1) / ROW_CHUNK;
    const ptrdiff_t a_step = l.stride[0][last], b_step = l.stride[1][last];
    const struct pynn_tensor_kernels *kernels = ctx->kernels->tensor;
    const int wanted = rows * chunks > 1 && rows * length >= PARALLEL_MIN_ELEMENTS
                       ? ctx->num_threads : 1;
    PYNN_TEAM_FOR(ctx, wanted, item, rows * chunks, {
        ptrdiff_t offset[3];
        offsets_of(&l, 3, last, item / chunks, offset);
        const ptrdiff_t first = item % chunks * ROW_CHUNK;
        const ptrdiff_t n = length - first < ROW_CHUNK ? length - first : ROW_CHUNK;
        kernels->binary_row(op, n, a + offset[0] + first * a_step, a_step,
                            b + offset[1] + first * b_step, b_step, y + offset[2] + first);
    });
}

/* Operands of a reduction's layout. */
enum { DY, TARGET, OTHER };

/* A reduction whose target keeps its last axis, split into the target's
 * axes (kept) and the summed ones (reduced). */
typedef struct {
    const struct pynn_tensor_kernels *kernels;
    layout kept, reduced;
    const float *dy, *other;
    ptrdiff_t other_step;
} column_reduction;

/* acc[0, n) += the terms s in [first, last) of the summed axes, for the
 * target row at offsets row from its column `column`. */
static void accumulate_terms(const column_reduction *r, const ptrdiff_t *row, ptrdiff_t column,
                             ptrdiff_t n, ptrdiff_t first, ptrdiff_t last, double *acc)
{
    ptrdiff_t step[3];
    for (ptrdiff_t s = first; s < last; s++) {
        offsets_of(&r->reduced, 3, r->reduced.rank, s, step);
        const float *other = r->other ? r->other + row[OTHER] + step[OTHER] + column * r->other_step
                                      : NULL;
        r->kernels->accumulate_row(n, r->dy + row[DY] + step[DY] + column, other, r->other_step, acc);
    }
}

/* A lone block of target columns (a bias-like [N, C] to [C]) has its terms
 * split into this many segments, a number fixed by no thread count: each is
 * summed apart, then the segments in order. */
#define SEGMENTS 8

void pynn_broadcast_reduce(const pynn_context *ctx, int rank, const ptrdiff_t *out_shape,
                           const float *dy, const ptrdiff_t *other_shape, const float *other,
                           const ptrdiff_t *target_shape, float *target)
{
    const ptrdiff_t *const shapes[3] = {out_shape, target_shape, other ? other_shape : out_shape};
    const layout l = broadcast_layout(rank, out_shape, 3, shapes);
    const layout kept = select_axes(&l, 3, TARGET, 1), reduced = select_axes(&l, 3, TARGET, 0);
    const struct pynn_tensor_kernels *kernels = ctx->kernels->tensor;
    const ptrdiff_t total = element_count(&l, l.rank);
    if (l.stride[TARGET][l.rank - 1] != 0) {
        /* target's last axis is kept: rows of dy accumulate into blocks of target columns */
        const int last = kept.rank - 1;
        const column_reduction r = {kernels, kept, reduced, dy, other, kept.stride[OTHER][last]};
        const ptrdiff_t length = kept.extent[last], rows = element_count(&kept, last);
        const ptrdiff_t blocks = (length + COLUMN_BLOCK - 1) / COLUMN_BLOCK;
        const ptrdiff_t terms = element_count(&reduced, reduced.rank);
        if (rows * blocks == 1 && total >= PARALLEL_MIN_ELEMENTS) {
            double partial[SEGMENTS][COLUMN_BLOCK];
            const ptrdiff_t origin[3] = {0, 0, 0};
            PYNN_TEAM_FOR(ctx, ctx->num_threads, g, SEGMENTS, {
                for (ptrdiff_t i = 0; i < length; i++) partial[g][i] = 0.0;
                accumulate_terms(&r, origin, 0, length, terms * g / SEGMENTS,
                                 terms * (g + 1) / SEGMENTS, partial[g]);
            });
            for (ptrdiff_t i = 0; i < length; i++) {
                double sum = 0.0;
                for (int g = 0; g < SEGMENTS; g++) sum += partial[g][i];
                target[i] = (float)sum;
            }
            return;
        }
        const int wanted = rows * blocks > 1 && total >= PARALLEL_MIN_ELEMENTS ? ctx->num_threads : 1;
        PYNN_TEAM_FOR(ctx, wanted, item, rows * blocks, {
            ptrdiff_t row[3];
            double acc[COLUMN_BLOCK];
            offsets_of(&kept, 3, last, item / blocks, row);
            const ptrdiff_t first = item % blocks * COLUMN_BLOCK;
            const ptrdiff_t n = length - first < COLUMN_BLOCK ? length - first : COLUMN_BLOCK;
            for (ptrdiff_t i = 0; i < n; i++) acc[i] = 0.0;
            accumulate_terms(&r, row, first, n, 0, terms, acc);
            float *out = target + row[TARGET] + first;
            for (ptrdiff_t i = 0; i < n; i++) out[i] = (float)acc[i];
        });
    } else {
        /* target's last axis is reduced: each target element sums whole rows of dy */
        const int last = reduced.rank - 1;
        const ptrdiff_t length = reduced.extent[last], sums = element_count(&reduced, last);
        const ptrdiff_t elements = element_count(&kept, kept.rank);
        const ptrdiff_t other_step = reduced.stride[OTHER][last];
        const int wanted = elements > 1 && total >= PARALLEL_MIN_ELEMENTS ? ctx->num_threads : 1;
        PYNN_TEAM_FOR(ctx, wanted, e, elements, {
            ptrdiff_t element[3], step[3];
            offsets_of(&kept, 3, kept.rank, e, element);
            double sum = 0.0;
            for (ptrdiff_t s = 0; s < sums; s++) {
                offsets_of(&reduced, 3, last, s, step);
                const float *row = dy + element[DY] + step[DY];
                if (!other)
                    sum += kernels->row_sum(length, row, NULL);
                else if (other_step)
                    sum += kernels->row_sum(length, row, other + element[OTHER] + step[OTHER]);
                else
                    sum += other[element[OTHER] + step[OTHER]] * kernels->row_sum(length, row, NULL);
            }
            target[element[TARGET]] = (float)sum;
        });
    }
}

void pynn_copy_rows(const pynn_context *ctx, ptrdiff_t rows, ptrdiff_t length, const float *src,
                    ptrdiff_t src_stride, float *dst, ptrdiff_t dst_stride)
{
    if (length == 0) return;
    const int wanted = rows > 1 && rows * length >= PARALLEL_MIN_ELEMENTS ? ctx->num_threads : 1;
    PYNN_TEAM_FOR(ctx, wanted, r, rows, {
        memcpy(dst + r * dst_stride, src + r * src_stride, (size_t)length * sizeof(float));
    });
}

void pynn_permute(const pynn_context *ctx, int rank, const ptrdiff_t *x_shape, const int *dims,
                  const float *x, float *y)
{
    ptrdiff_t x_stride[MAX_RANK], next = 1;
    for (int axis = rank - 1; axis >= 0; axis--) {
        x_stride[axis] = next;
        next *= x_shape[axis];
    }
    /* y's axes without those of extent 1, merged where x holds them adjacent
     * in the same order; operand 0 is x, operand 1 is y */
    layout l = {.rank = 0};
    for (int k = 0; k < rank; k++) {
        const ptrdiff_t extent = x_shape[dims[k]], stride = x_stride[dims[k]];
        if (extent == 1) continue;
        if (l.rank > 0 && l.stride[0][l.rank - 1] == stride * extent)
            l.extent[l.rank - 1] *= extent;
        else
            l.extent[l.rank++] = extent;
        l.stride[0][l.rank - 1] = stride;
    }
    if (l.rank == 0) {
        l.rank = 1;
        l.extent[0] = 1;
        l.stride[0][0] = 1;
    }
    next = 1;
    for (int axis = l.rank - 1; axis >= 0; axis--) {
        l.stride[1][axis] = next;
        next *= l.extent[axis];
    }
    const ptrdiff_t total = next;
    const int last = l.rank - 1;
    const int wanted_if_large = total >= PARALLEL_MIN_ELEMENTS ? ctx->num_threads : 1;
    if (l.stride[0][last] == 1) {
        /* the last axis stays last: row copies */
        const ptrdiff_t length = l.extent[last], rows = total / length;
        const ptrdiff_t chunks = (length + ROW_CHUNK - 1) / ROW_CHUNK;
        PYNN_TEAM_FOR(ctx, rows * chunks > 1 ? wanted_if_large : 1, item, rows * chunks, {
            ptrdiff_t offset[2];
            offsets_of(&l, 2, last, item / chunks, offset);
            const ptrdiff_t first = item % chunks * ROW_CHUNK;
            const ptrdiff_t n = length - first < ROW_CHUNK ? length - first : ROW_CHUNK;
            memcpy(y + offset[1] + first, x + offset[0] + first, (size_t)n * sizeof(float));
        });
        return;
    }
    /* x's contiguous axis p moves away from last place: tiles over (p, last),
     * reading down p and writing along the last axis */
    int p = 0;
    while (l.stride[0][p] != 1) p++;
    layout outer;
    outer.rank = 0;
    for (int axis = 0; axis < last; axis++) {
        if (axis == p) continue;
        outer.extent[outer.rank] = l.extent[axis];
        outer.stride[0][outer.rank] = l.stride[0][axis];
        outer.stride[1][outer.rank] = l.stride[1][axis];
        outer.rank++;
    }
    const ptrdiff_t p_extent = l.extent[p], p_y_stride = l.stride[1][p];
    const ptrdiff_t q_extent = l.extent[last], q_x_stride = l.stride[0][last];
    const ptrdiff_t p_tiles = (p_extent + TILE - 1) / TILE, q_tiles = (q_extent + TILE - 1) / TILE;
    const ptrdiff_t items = element_count(&outer, outer.rank) * p_tiles * q_tiles;
    const struct pynn_tensor_kernels *kernels = ctx->kernels->tensor;
    PYNN_TEAM_FOR(ctx, items > 1 ? wanted_if_large : 1, item, items, {
        ptrdiff_t offset[2];
        offsets_of(&outer, 2, outer.rank, item / (p_tiles * q_tiles), offset);
        const ptrdiff_t p0 = item / q_tiles % p_tiles * TILE, q0 = item % q_tiles * TILE;
        kernels->transpose_tile(p_extent - p0 < TILE ? p_extent - p0 : TILE,
                                q_extent - q0 < TILE ? q_extent - q0 : TILE,
                                x + offset[0] + p0 + q0 * q_x_stride, q_x_stride,
                                y + offset[1] + p0 * p_y_stride + q0, p_y_stride);
    });
}

void pynn_row_dot(const pynn_context *ctx, ptrdiff_t rows, ptrdiff_t length, const float *u,
                  const float *v, float *y)
{
    const struct pynn_tensor_kernels *kernels = ctx->kernels->tensor;
    const int wanted = rows > 1 && rows * length >= PARALLEL_MIN_ELEMENTS ? ctx->num_threads : 1;
    PYNN_TEAM(ctx, wanted, {
        const ptrdiff_t share = (rows + team - 1) / team, first = pynn_team_slot(team) * share;
        if (first < rows) kernels->row_dots(first, first + share < rows ? first + share : rows,
                                            length, u, v, y);
    });
}

void pynn_row_dot_backward(const pynn_context *ctx, ptrdiff_t rows, ptrdiff_t length,
                           const float *dy, const float *u, const float *v, float *du, float *dv)
{
    const struct pynn_tensor_kernels *kernels = ctx->kernels->tensor;
    const int wanted = rows > 1 && rows * length >= PARALLEL_MIN_ELEMENTS ? ctx->num_threads : 1;
    PYNN_TEAM_FOR(ctx, wanted, n, rows, {
        kernels->binary_row(PYNN_TENSOR_MULTIPLY, length, v + n * length, 1, dy + n, 0, du + n * length);
        kernels->binary_row(PYNN_TENSOR_MULTIPLY, length, u + n * length, 1, dy + n, 0, dv + n * length);
    });
}

static float mask_total(ptrdiff_t length, const int64_t *mask)
{
    float total = 0.0f;
    for (ptrdiff_t t = 0; t < length; t++)
        total += (float)mask[t];
    return total > 1e-9f ? total : 1e-9f;
}

void pynn_masked_mean(const pynn_context *ctx, ptrdiff_t batch, ptrdiff_t length, ptrdiff_t dim,
                      const float *x, const int64_t *mask, float *y)
{
    const int wanted = batch > 1 && batch * length * dim >= PARALLEL_MIN_ELEMENTS ? ctx->num_threads : 1;
    PYNN_TEAM_FOR(ctx, wanted, n, batch, {
        const int64_t *m = mask + n * length;
        float *row = y + n * dim;
        for (ptrdiff_t d = 0; d < dim; d++)
            row[d] = 0.0f;
        for (ptrdiff_t t = 0; t < length; t++) {
            if (m[t] == 0)
                continue;
            const float weight = (float)m[t];
            const float *token = x + (n * length + t) * dim;
            for (ptrdiff_t d = 0; d < dim; d++)
                row[d] += weight * token[d];
        }
        const float total = mask_total(length, m);
        for (ptrdiff_t d = 0; d < dim; d++)
            row[d] /= total;
    });
}

void pynn_masked_mean_backward(const pynn_context *ctx, ptrdiff_t batch, ptrdiff_t length,
                               ptrdiff_t dim, const float *dy, const int64_t *mask, float *dx)
{
    const int wanted = batch > 1 && batch * length * dim >= PARALLEL_MIN_ELEMENTS ? ctx->num_threads : 1;
    PYNN_TEAM_FOR(ctx, wanted, n, batch, {
        const int64_t *m = mask + n * length;
        const float total = mask_total(length, m);
        for (ptrdiff_t t = 0; t < length; t++) {
            const float weight = (float)m[t];
            float *token = dx + (n * length + t) * dim;
            for (ptrdiff_t d = 0; d < dim; d++)
                token[d] = weight * dy[n * dim + d] / total;
        }
    });
}

void pynn_padding_bias(const pynn_context *ctx, ptrdiff_t count, const int64_t *mask, float *y)
{
    (void)ctx;
    for (ptrdiff_t i = 0; i < count; i++)
        y[i] = mask[i] ? 0.0f : -INFINITY;
}
