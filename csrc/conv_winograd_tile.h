/* One path's Winograd input and output transforms and their table, included
 * once per path of PYNN_EACH_ISA by conv_winograd.c. The includer defines
 * WINO_SUFFIX, WINO_TARGET (the path's function attribute), WINO_LANES
 * (tiles per vector), the lane orders WINO_EVEN, WINO_ODD (the even and odd
 * lanes of two vectors side by side) and WINO_LOW, WINO_HIGH (two vectors'
 * lanes interleaved, first and second half), the type WINO_MASK of a set of
 * lanes, WINO_MASK_OF(first, last) (lanes [first, last)), WINO_SPAN(row,
 * mask) (WINO_LANES floats of a row, zero outside the mask's lanes, which
 * are never read) and WINO_STORE(out, count, v)
 * (v's first count lanes), over its vector types WINO_VEC (floats, loads and
 * stores unaligned) and WINO_BITS (as many int32). */
#define WINO_JOIN2(a, b) a##_##b
#define WINO_JOIN(a, b) WINO_JOIN2(a, b)
#define WINO_INPUT WINO_JOIN(wino_input, WINO_SUFFIX)
#define WINO_OUTPUT WINO_JOIN(wino_output, WINO_SUFFIX)

/* Input patch rows of a tile row start at 2 th - pad_h; a segment's tiles t0
 * on start at column 2 t0 - pad_w, and its four spans of columns are that
 * start (tile columns 0, 1 as even and odd lanes) and two further (columns
 * 2, 3), each two vectors. Per channel: V = Bᵀ d B, the rows combined first,
 * whole spans at a time, then the columns after the lanes are split. */
static WINO_TARGET void WINO_INPUT(const pynn_conv_shape *s, const float *image, ptrdiff_t th,
                                   ptrdiff_t t0, float *v, ptrdiff_t position_step,
                                   ptrdiff_t channel_step)
{
    const ptrdiff_t lanes = WINO_LANES, plane = s->height * s->width;
    const ptrdiff_t column = 2 * t0 - s->pad_w, ih0 = 2 * th - s->pad_h;
    const ptrdiff_t starts[4] = {column, column + lanes, column + 2, column + 2 + lanes};
    /* a row outside the image reads nothing: its lanes are all masked off */
    WINO_MASK masks[4][4];
    const float *from[4][4];
    for (int i = 0; i < 4; i++) {
        const int present = ih0 + i >= 0 && ih0 + i < s->height;
        for (int k = 0; k < 4; k++) {
            masks[i][k] = present ? WINO_MASK_OF(-starts[k], s->width - starts[k])
                                  : WINO_MASK_OF(0, 0);
            from[i][k] = image + (present ? (ih0 + i) * s->width + starts[k] : 0);
        }
    }
    for (ptrdiff_t c = 0; c < s->in_channels; c++, v += channel_step) {
        const ptrdiff_t at = c * plane;
        WINO_VEC d[4][4], u[4][4];
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) {  /* the channel planes are far apart: ask ahead */
            __builtin_prefetch(from[i][0] + at + WINO_AHEAD * plane);
            __builtin_prefetch(from[i][1] + at + WINO_AHEAD * plane);
            __builtin_prefetch(from[i][3] + at + WINO_AHEAD * plane + lanes - 1);
        }
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++)
#pragma GCC unroll 4
            for (int k = 0; k < 4; k++) d[i][k] = WINO_SPAN(from[i][k] + at, masks[i][k]);
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++) {
            u[0][k] = d[0][k] - d[2][k];
            u[1][k] = d[1][k] + d[2][k];
            u[2][k] = d[2][k] - d[1][k];
            u[3][k] = d[1][k] - d[3][k];
        }
        float *out = v;
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) {
            const WINO_VEC c0 = __builtin_shufflevector(u[i][0], u[i][1], WINO_EVEN);
            const WINO_VEC c1 = __builtin_shufflevector(u[i][0], u[i][1], WINO_ODD);
            const WINO_VEC c2 = __builtin_shufflevector(u[i][2], u[i][3], WINO_EVEN);
            const WINO_VEC c3 = __builtin_shufflevector(u[i][2], u[i][3], WINO_ODD);
            *(WINO_VEC *)out = c0 - c2;
            out += position_step;
            *(WINO_VEC *)out = c1 + c2;
            out += position_step;
            *(WINO_VEC *)out = c2 - c1;
            out += position_step;
            *(WINO_VEC *)out = c1 - c3;
            out += position_step;
        }
    }
}

/* Y = Aᵀ M A for `rows` output channels of a segment: m holds channel r's
 * position ξ at r row_step + ξ position_step, a vector of tiles each; y is
 * the first channel's plane. Then the bias and the ReLU (NaN stays), and the
 * two outputs of each tile interleaved into the row, inside the image only. */
static WINO_TARGET void WINO_OUTPUT(const pynn_conv_shape *s, const float *m,
                                    ptrdiff_t position_step, ptrdiff_t row_step, ptrdiff_t rows,
                                    const float *bias, int relu, float *y, ptrdiff_t th,
                                    ptrdiff_t t0)
{
    const ptrdiff_t lanes = WINO_LANES, plane = s->out_h * s->out_w;
    const ptrdiff_t oh0 = 2 * th, ow0 = 2 * t0;
    const ptrdiff_t low = s->out_w - ow0, high = s->out_w - ow0 - lanes;
    const int out_rows = oh0 + 1 < s->out_h ? 2 : 1;
    const WINO_VEC zero = {0};
    for (ptrdiff_t r = 0; r < rows; r++, m += row_step, y += plane) {
        WINO_VEC z[2][4];
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            const WINO_VEC m0 = *(const WINO_VEC *)(m + (0 + j) * position_step);
            const WINO_VEC m1 = *(const WINO_VEC *)(m + (4 + j) * position_step);
            const WINO_VEC m2 = *(const WINO_VEC *)(m + (8 + j) * position_step);
            const WINO_VEC m3 = *(const WINO_VEC *)(m + (12 + j) * position_step);
            z[0][j] = m0 + m1 + m2;
            z[1][j] = m1 - m2 - m3;
        }
        const float b = bias ? bias[r] : 0.0f;
        for (int i = 0; i < out_rows; i++) {
            WINO_VEC y0 = z[i][0] + z[i][1] + z[i][2], y1 = z[i][1] - z[i][2] - z[i][3];
            if (bias) {
                y0 += b;
                y1 += b;
            }
            if (relu) {  /* lanes below zero cleared; NaN compares false and stays */
                y0 = (WINO_VEC)((WINO_BITS)y0 & ~(WINO_BITS)(y0 < zero));
                y1 = (WINO_VEC)((WINO_BITS)y1 & ~(WINO_BITS)(y1 < zero));
            }
            float *out = y + (oh0 + i) * s->out_w + ow0;
            WINO_STORE(out, low, __builtin_shufflevector(y0, y1, WINO_LOW));
            if (high > 0) WINO_STORE(out + lanes, high, __builtin_shufflevector(y0, y1, WINO_HIGH));
        }
    }
}

const struct wino_kernels WINO_JOIN(wino, WINO_SUFFIX) = {WINO_LANES, WINO_INPUT, WINO_OUTPUT};

#undef WINO_VEC
#undef WINO_BITS
#undef WINO_INPUT
#undef WINO_OUTPUT
#undef WINO_SUFFIX
#undef WINO_TARGET
#undef WINO_LANES
#undef WINO_EVEN
#undef WINO_ODD
#undef WINO_LOW
#undef WINO_HIGH
#undef WINO_SPAN
#undef WINO_MASK
#undef WINO_MASK_OF
#undef WINO_STORE
