/* One path's depthwise kernels and their table (contracts in
 * conv_depthwise.h), included once per path of PYNN_EACH_ISA by
 * conv_depthwise.c. The includer defines DW_SUFFIX, DW_TARGET (the path's
 * function attribute), DW_LANES (floats per vector), DW_ROWS (output rows a
 * step computes together, sharing their input rows' loads) and
 * DW_STORE_TAIL(out, v, count), which stores v's first count lanes,
 * DW_LOAD_TAIL(in, count), a vector of the first count floats from in (none
 * for count <= 0, all from DW_LANES on) and zeros, reading no others, and the
 * lane lists of __builtin_shufflevector: DW_EVEN_LANES (the even lanes of two
 * vectors), DW_LOW_SPREAD and DW_HIGH_SPREAD (a vector's low and high halves
 * with lanes of the second between them). */
#define DW_JOIN2(a, b) a##_##b
#define DW_JOIN(a, b) DW_JOIN2(a, b)
#define DW_VEC DW_JOIN(dw_vec, DW_SUFFIX)
#define DW_BITS DW_JOIN(dw_bits, DW_SUFFIX)
#define DW_STEP DW_JOIN(dw_step, DW_SUFFIX)
#define DW_ROWS_OF DW_JOIN(dw_rows_of, DW_SUFFIX)
#define DW_PLANE DW_JOIN(dw_plane, DW_SUFFIX)
#define DW_TAP_SUMS DW_JOIN(dw_tap_sums, DW_SUFFIX)
#define DW_SUMS DW_JOIN(dw_sums, DW_SUFFIX)
#define DW_PHASE_ROW DW_JOIN(dw_phase_row, DW_SUFFIX)
#define DW_SPREAD_ROW DW_JOIN(dw_spread_row, DW_SUFFIX)
#define DW_BUILD DW_JOIN(dw_build, DW_SUFFIX)

typedef float DW_VEC __attribute__((vector_size(4 * DW_LANES), aligned(4), may_alias));
typedef int32_t DW_BITS __attribute__((vector_size(4 * DW_LANES), aligned(4), may_alias));

/* Output rows [oh, oh + rows), all columns: the taps' loads of an input row
 * are shared by the output rows that read it (the shapes are constants in
 * each specialised copy). */
static inline __attribute__((always_inline)) DW_TARGET void
DW_STEP(const pynn_depthwise_plane *p, const DW_VEC *weights, ptrdiff_t oh, const int rows,
        const ptrdiff_t kernel_h, const ptrdiff_t kernel_w, const ptrdiff_t stride_h,
        const ptrdiff_t stride_w)
{
    const DW_VEC bias = (DW_VEC){0} + p->bias, zero = {0};
    for (ptrdiff_t ow = 0; ow < p->out_w; ow += DW_LANES) {
        DW_VEC sums[DW_ROWS];
#pragma GCC unroll 8
        for (int r = 0; r < rows; r++) sums[r] = zero;
#pragma GCC unroll 8
        for (int r = 0; r < rows; r++)
#pragma GCC unroll 8
            for (ptrdiff_t kh = 0; kh < kernel_h; kh++) {
                const float *row = p->rows + ((oh + r) * stride_h + kh) * p->row_step + ow;
#pragma GCC unroll 8
                for (ptrdiff_t kw = 0; kw < kernel_w; kw++)
                    sums[r] += weights[kh * kernel_w + kw] *
                               *(const DW_VEC *)(row + (kw % stride_w) * p->cols + kw / stride_w);
            }
#pragma GCC unroll 8
        for (int r = 0; r < rows; r++) {
            DW_VEC v = sums[r] + bias;
            if (p->relu)  /* lanes below zero cleared; NaN stays */
                v = (DW_VEC)((DW_BITS)v & ~(v < zero));
            float *out = p->out + (oh + r) * p->out_w + ow;
            if (p->out_w - ow >= DW_LANES)
                *(DW_VEC *)out = v;
            else
                DW_STORE_TAIL(out, v, p->out_w - ow);
        }
    }
}

/* Every output row, DW_ROWS at a time, the last block overlapping the one
 * before it (its rows computed again, to the same bits) rather than taking
 * the rows left one at a time, whose single sums would wait on each other. */
static inline __attribute__((always_inline)) DW_TARGET void
DW_ROWS_OF(const pynn_depthwise_plane *p, const ptrdiff_t kernel_h, const ptrdiff_t kernel_w,
           const ptrdiff_t stride_h, const ptrdiff_t stride_w)
{
    DW_VEC weights[PYNN_DEPTHWISE_MAX_TAPS];
#pragma GCC unroll 25
    for (ptrdiff_t t = 0; t < kernel_h * kernel_w; t++) weights[t] = (DW_VEC){0} + p->weight[t];
    if (p->out_h < DW_ROWS) {
        for (ptrdiff_t oh = 0; oh < p->out_h; oh++)
            DW_STEP(p, weights, oh, 1, kernel_h, kernel_w, stride_h, stride_w);
        return;
    }
    for (ptrdiff_t oh = 0; oh < p->out_h; oh += DW_ROWS)
        DW_STEP(p, weights, oh + DW_ROWS <= p->out_h ? oh : p->out_h - DW_ROWS, DW_ROWS, kernel_h,
                kernel_w, stride_h, stride_w);
}

DW_TARGET static void DW_PLANE(const pynn_depthwise_plane *p)
{
    /* MobileNet's kernels and strides with the shapes known, others as loops */
    const int square = p->kernel_h == p->kernel_w && p->stride_h == p->stride_w;
    if (square && p->kernel_h == 3 && p->stride_h == 1)
        DW_ROWS_OF(p, 3, 3, 1, 1);
    else if (square && p->kernel_h == 3 && p->stride_h == 2)
        DW_ROWS_OF(p, 3, 3, 2, 2);
    else if (square && p->kernel_h == 5 && p->stride_h == 1)
        DW_ROWS_OF(p, 5, 5, 1, 1);
    else if (square && p->kernel_h == 5 && p->stride_h == 2)
        DW_ROWS_OF(p, 5, 5, 2, 2);
    else
        DW_ROWS_OF(p, p->kernel_h, p->kernel_w, p->stride_h, p->stride_w);
}

/* sums[tap] and sums[taps] of one plane (contract in conv_depthwise.h): a
 * vector of partial sums each, its lanes added in lane order at the end. In
 * a row's last vector the lanes past out_w hold zero gradients and zeroed
 * inputs, so what lies past the outputs (even an infinity) adds nothing. */
static inline __attribute__((always_inline)) DW_TARGET void
DW_TAP_SUMS(const pynn_depthwise_plane *p, const float *grad, float *sums,
            const ptrdiff_t kernel_h, const ptrdiff_t kernel_w, const ptrdiff_t stride_h,
            const ptrdiff_t stride_w)
{
    DW_VEC partial[PYNN_DEPTHWISE_MAX_TAPS + 1];
    DW_BITS lane;
    for (int i = 0; i < DW_LANES; i++) lane[i] = i;
#pragma GCC unroll 25
    for (ptrdiff_t t = 0; t <= kernel_h * kernel_w; t++) partial[t] = (DW_VEC){0};
    for (ptrdiff_t oh = 0; oh < p->out_h; oh++) {
        const float *base = p->rows + oh * stride_h * p->row_step;
        const float *grad_row = grad + oh * p->out_w;
        for (ptrdiff_t ow = 0; ow < p->out_w; ow += DW_LANES) {
            const ptrdiff_t count = p->out_w - ow;
            DW_VEC g;
            DW_BITS keep = (DW_BITS){0} - 1;
            if (count >= DW_LANES) {
                g = *(const DW_VEC *)(grad_row + ow);
            } else {
                g = (DW_VEC){0};
                for (ptrdiff_t i = 0; i < count; i++) g[i] = grad_row[ow + i];
                keep = lane < (DW_BITS){0} + (int32_t)count;
            }
            partial[kernel_h * kernel_w] += g;
#pragma GCC unroll 8
            for (ptrdiff_t kh = 0; kh < kernel_h; kh++) {
                const float *row = base + kh * p->row_step + ow;
#pragma GCC unroll 8
                for (ptrdiff_t kw = 0; kw < kernel_w; kw++) {
                    DW_VEC in = *(const DW_VEC *)(row + (kw % stride_w) * p->cols + kw / stride_w);
                    partial[kh * kernel_w + kw] += g * (DW_VEC)((DW_BITS)in & keep);
                }
            }
        }
    }
    for (ptrdiff_t t = 0; t <= kernel_h * kernel_w; t++) {
        float total = 0.0f;
        for (int i = 0; i < DW_LANES; i++) total += partial[t][i];
        sums[t] = total;
    }
}

DW_TARGET static void DW_SUMS(const pynn_depthwise_plane *p, const float *grad, float *sums)
{
    const int square = p->kernel_h == p->kernel_w && p->stride_h == p->stride_w;
    if (square && p->kernel_h == 3 && p->stride_h == 1)
        DW_TAP_SUMS(p, grad, sums, 3, 3, 1, 1);
    else if (square && p->kernel_h == 3 && p->stride_h == 2)
        DW_TAP_SUMS(p, grad, sums, 3, 3, 2, 2);
    else
        DW_TAP_SUMS(p, grad, sums, p->kernel_h, p->kernel_w, p->stride_h, p->stride_w);
}

/* One phase of one buffer row: out[j] = in[j stride + offset] where that lies
 * in [0, width), for j in [0, cols). At strides 1 and 2 a vector at a time,
 * the last loaded through lane masks that read nothing past the row and
 * stored whole, zero past the phase's last element: where it runs on into
 * the next phase or row, or into the buffer's slack, it writes zeros that
 * are padding there or are overwritten after (stride 2 pairs the even lanes
 * of two vectors from in + 2 j + offset). */
static inline __attribute__((always_inline)) DW_TARGET void
DW_PHASE_ROW(float *out, const float *in, ptrdiff_t cols, ptrdiff_t width, ptrdiff_t offset,
             const ptrdiff_t stride)
{
    ptrdiff_t j = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
    ptrdiff_t last = width - offset > 0 ? (width - offset + stride - 1) / stride : 0;
    if (last > cols) last = cols;
    DW_BITS lane;
    for (int i = 0; i < DW_LANES; i++) lane[i] = i;
    if (stride == 1)
        for (; j < last; j += DW_LANES) {
            const float *from = in + j + offset;
            *(DW_VEC *)(out + j) = last - j >= DW_LANES ? *(const DW_VEC *)from
                                                        : DW_LOAD_TAIL(from, last - j);
        }
    if (stride == 2)
        for (; j < last; j += DW_LANES) {
            const float *from = in + 2 * j + offset;
            const ptrdiff_t left = width - 2 * j - offset;
            const DW_VEC a = left >= DW_LANES ? *(const DW_VEC *)from : DW_LOAD_TAIL(from, left);
            const DW_VEC b = left >= 2 * DW_LANES ? *(const DW_VEC *)(from + DW_LANES)
                                                  : DW_LOAD_TAIL(from + DW_LANES, left - DW_LANES);
            const DW_VEC even = __builtin_shufflevector(a, b, DW_EVEN_LANES);
            *(DW_VEC *)(out + j) = (DW_VEC)((DW_BITS)even & (lane < (DW_BITS){0} + (int32_t)(last - j)));
        }
    for (; j < last; j++) out[j] = in[j * stride + offset];
}

/* A buffer row of the input gradient at column stride 2: out[lead + 2 j] =
 * in[j] for j < width where that lies in [0, cols); a vector of in becomes
 * two of out, its lanes between zeros. */
static inline __attribute__((always_inline)) DW_TARGET void
DW_SPREAD_ROW(float *out, const float *in, ptrdiff_t cols, ptrdiff_t width, ptrdiff_t lead,
              ptrdiff_t up)
{
    ptrdiff_t j = lead >= 0 ? 0 : (-lead + up - 1) / up;
    if (up == 2)
        for (; j + DW_LANES <= width && lead + 2 * (j + DW_LANES) <= cols; j += DW_LANES) {
            const DW_VEC v = *(const DW_VEC *)(in + j), zero = {0};
            *(DW_VEC *)(out + lead + 2 * j) = __builtin_shufflevector(v, zero, DW_LOW_SPREAD);
            *(DW_VEC *)(out + lead + 2 * j + DW_LANES) = __builtin_shufflevector(v, zero, DW_HIGH_SPREAD);
        }
    for (; j < width && lead + j * up < cols; j++) out[lead + j * up] = in[j];
}

/* The source's elements into a buffer whose other elements are zero already
 * (they are the same for every plane of a shape). */
DW_TARGET static void DW_BUILD(const pynn_depthwise_source *w, const float *source, float *rows)
{
    const ptrdiff_t run = w->phases * w->cols;
    for (ptrdiff_t r = 0; r < w->rows; r++) {
        const ptrdiff_t i = r - w->lead_h;
        if (i < 0 || i % w->up_h || i / w->up_h >= w->height) continue;
        float *row = rows + r * run;
        const float *in = source + i / w->up_h * w->width;
        if (w->up_w > 1) {  /* one phase: the row spread out with zeros between */
            DW_SPREAD_ROW(row, in, w->cols, w->width, w->lead_w, w->up_w);
            continue;
        }
        for (ptrdiff_t b = 0; b < w->phases; b++) {
            const ptrdiff_t offset = b - w->lead_w;
            if (w->stride_w == 1)
                DW_PHASE_ROW(row, in, w->cols, w->width, offset, 1);
            else if (w->stride_w == 2)
                DW_PHASE_ROW(row + b * w->cols, in, w->cols, w->width, offset, 2);
            else
                DW_PHASE_ROW(row + b * w->cols, in, w->cols, w->width, offset, w->stride_w);
        }
    }
}

const struct pynn_depthwise_kernels DW_JOIN(pynn_depthwise, DW_SUFFIX) = {DW_PLANE, DW_SUMS,
                                                                         DW_BUILD};

#undef DW_SUFFIX
#undef DW_TARGET
#undef DW_LANES
#undef DW_ROWS
#undef DW_STORE_TAIL
#undef DW_LOAD_TAIL
#undef DW_EVEN_LANES
#undef DW_LOW_SPREAD
#undef DW_HIGH_SPREAD
#undef DW_VEC
#undef DW_BITS
#undef DW_STEP
#undef DW_ROWS_OF
#undef DW_PLANE
#undef DW_TAP_SUMS
#undef DW_SUMS
#undef DW_PHASE_ROW
#undef DW_SPREAD_ROW
#undef DW_BUILD
