/* One path's Winograd input and output transforms and their table, included
 * once per path of PYNN_EACH_ISA by conv_winograd.c. The includer defines
 * WINO_SUFFIX, WINO_TARGET (the path's function attribute), WINO_LANES
 * (tiles per vector), the lane orders WINO_EVEN, WINO_ODD (the even and odd
 * lanes of two vectors side by side) and WINO_LOW, WINO_HIGH (two vectors'
 * lanes interleaved, first and second half), the type WINO_MASK of a set of
 * lanes, WINO_MASK_OF(first, last) (lanes [first, last)), WINO_SPAN(row,
 * mask) (WINO_LANES floats of a row, zero outside the mask's lanes, which
 * are never read) and WINO_STORE(out, first, last, v)
 * (v's lanes [first, last), no others written), over its vector types WINO_VEC (floats, loads and
 * stores unaligned) and WINO_BITS (as many int32). */
#define WINO_JOIN2(a, b) a##_##b
#define WINO_JOIN(a, b) WINO_JOIN2(a, b)
#define WINO_INPUT WINO_JOIN(wino_input, WINO_SUFFIX)
#define WINO_OUTPUT WINO_JOIN(wino_output, WINO_SUFFIX)
#define WINO_GRADS WINO_JOIN(wino_grads, WINO_SUFFIX)

/* A segment's tiles are `rows` rows of `count` tiles from (th0, t0): row k
 * in lanes [k count, (k + 1) count). Each of its four spans of lanes pairs
 * (tile columns 0 and 1 as even and odd lanes of the first two vectors, 2
 * and 3 of the next two) gathers its rows' input columns, a masked load per
 * row of tiles. Per channel: V = Bᵀ d B, the rows combined first, whole
 * spans at a time, then the columns after the lanes are split. */
static WINO_TARGET void WINO_INPUT(const pynn_conv_shape *s, const float *image,
                                   const wino_segment *g, float *v, ptrdiff_t position_step,
                                   ptrdiff_t channel_step)
{
    const ptrdiff_t lanes = WINO_LANES, plane = s->height * s->width;
    /* a row outside the image reads nothing: its lanes are all masked off */
    WINO_MASK masks[WINO_LANES][4][4];
    const float *from[WINO_LANES][4][4];
    for (ptrdiff_t k = 0; k < g->rows; k++) {
        const ptrdiff_t ih0 = 2 * (g->th0 + k) - s->pad_h;
        const ptrdiff_t base = 2 * g->t0 - s->pad_w - 2 * k * g->count;
        for (int i = 0; i < 4; i++) {
            const int present = ih0 + i >= 0 && ih0 + i < s->height;
            for (int j = 0; j < 4; j++) {
                const ptrdiff_t shift = (j & 1) * lanes, start = base + shift + (j >> 1) * 2;
                ptrdiff_t first = 2 * k * g->count - shift, last = first + 2 * g->count;
                if (first < -start) first = -start;
                if (last > s->width - start) last = s->width - start;
                masks[k][i][j] = present ? WINO_MASK_OF(first, last) : WINO_MASK_OF(0, 0);
                from[k][i][j] = image + (present ? (ih0 + i) * s->width + start : 0);
            }
        }
    }
    for (ptrdiff_t c = 0; c < s->in_channels; c++, v += channel_step) {
        const ptrdiff_t at = c * plane;
        WINO_VEC d[4][4], u[4][4];
        for (ptrdiff_t k = 0; k < g->rows; k++)  /* the channel planes are far apart: ask ahead */
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) {
                __builtin_prefetch(from[k][i][0] + at + WINO_AHEAD * plane);
                __builtin_prefetch(from[k][i][3] + at + WINO_AHEAD * plane + lanes - 1);
            }
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++)
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) d[i][j] = WINO_SPAN(from[0][i][j] + at, masks[0][i][j]);
        for (ptrdiff_t k = 1; k < g->rows; k++)
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++)
#pragma GCC unroll 4
                for (int j = 0; j < 4; j++)
                    d[i][j] = (WINO_VEC)((WINO_BITS)d[i][j] |
                                         (WINO_BITS)WINO_SPAN(from[k][i][j] + at, masks[k][i][j]));
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            u[0][j] = d[0][j] - d[2][j];
            u[1][j] = d[1][j] + d[2][j];
            u[2][j] = d[2][j] - d[1][j];
            u[3][j] = d[1][j] - d[3][j];
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

/* Y = Aᵀ M A for `channels` output channels of a segment: m holds channel
 * r's position ξ at r row_step + ξ position_step, a vector of tiles each; y
 * is the first channel's plane. Then the bias and the ReLU (NaN stays), and
 * the two outputs of each tile interleaved into its row of tiles' output
 * rows, inside the image only. */
static WINO_TARGET void WINO_OUTPUT(const pynn_conv_shape *s, const float *m,
                                    ptrdiff_t position_step, ptrdiff_t row_step,
                                    ptrdiff_t channels, const float *bias, int relu, float *y,
                                    const wino_segment *g)
{
    const ptrdiff_t lanes = WINO_LANES, plane = s->out_h * s->out_w;
    const WINO_VEC zero = {0};
    for (ptrdiff_t r = 0; r < channels; r++, m += row_step, y += plane) {
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
        for (int i = 0; i < 2; i++) {
            WINO_VEC y0 = z[i][0] + z[i][1] + z[i][2], y1 = z[i][1] - z[i][2] - z[i][3];
            if (bias) {
                y0 += b;
                y1 += b;
            }
            if (relu) {  /* lanes below zero cleared; NaN compares false and stays */
                y0 = (WINO_VEC)((WINO_BITS)y0 & ~(WINO_BITS)(y0 < zero));
                y1 = (WINO_VEC)((WINO_BITS)y1 & ~(WINO_BITS)(y1 < zero));
            }
            const WINO_VEC low = __builtin_shufflevector(y0, y1, WINO_LOW);
            const WINO_VEC high = __builtin_shufflevector(y0, y1, WINO_HIGH);
            for (ptrdiff_t k = 0; k < g->rows; k++) {
                const ptrdiff_t oh = 2 * (g->th0 + k) + i;
                if (oh >= s->out_h) break;
                /* lane pair q of the segment is column origin + q of this row */
                const ptrdiff_t origin = 2 * g->t0 - 2 * k * g->count;
                ptrdiff_t first = 2 * k * g->count, last = first + 2 * g->count;
                if (last > s->out_w - origin) last = s->out_w - origin;
                float *out = y + oh * s->out_w + origin;
                if (first < lanes) WINO_STORE(out, first, last, low);
                if (last > lanes) WINO_STORE(out + lanes, first - lanes, last - lanes, high);
            }
        }
    }
}

/* The weight gradient's A dy Aᵀ per 2 x 2 tile. As in the input transform,
 * each row of tiles is a masked load of its two output rows' columns,
 * shifted so that tile q of the segment lands in lane pair q, the rows
 * combined, and the pairs split into even and odd lanes (zero past the
 * segment's tiles and the output's edges). */
static WINO_TARGET void WINO_GRADS(const pynn_conv_shape *s, const float *grad,
                                   const wino_segment *g, float *out, ptrdiff_t position_step,
                                   ptrdiff_t row_step)
{
    const ptrdiff_t lanes = WINO_LANES, plane = s->out_h * s->out_w, width = s->out_w;
    WINO_MASK masks[WINO_LANES][2][2];
    ptrdiff_t starts[WINO_LANES];
    for (ptrdiff_t k = 0; k < g->rows; k++) {
        const ptrdiff_t oh = 2 * (g->th0 + k), lo = 2 * k * g->count;
        const ptrdiff_t hi = lo + 2 * g->count < width - 2 * g->t0 + lo ? lo + 2 * g->count
                                                                        : width - 2 * g->t0 + lo;
        const int below = oh + 1 < s->out_h;
        starts[k] = oh * width + 2 * g->t0 - lo;
        for (int h = 0; h < 2; h++) {
            masks[k][0][h] = WINO_MASK_OF(lo - h * lanes, hi - h * lanes);
            masks[k][1][h] = below ? WINO_MASK_OF(lo - h * lanes, hi - h * lanes)
                                   : WINO_MASK_OF(0, 0);
        }
    }
    for (ptrdiff_t o = 0; o < s->out_channels; o++, grad += plane, out += row_step) {
        WINO_VEC v[2][2];
#pragma GCC unroll 2
        for (int i = 0; i < 2; i++)
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++)
                v[i][h] = WINO_SPAN(grad + starts[0] + i * width + h * lanes, masks[0][i][h]);
        for (ptrdiff_t k = 1; k < g->rows; k++)
#pragma GCC unroll 2
            for (int i = 0; i < 2; i++)
#pragma GCC unroll 2
                for (int h = 0; h < 2; h++)
                    v[i][h] = (WINO_VEC)((WINO_BITS)v[i][h] |
                                         (WINO_BITS)WINO_SPAN(grad + starts[k] + i * width +
                                                                  h * lanes,
                                                              masks[k][i][h]));
        const WINO_VEC a = __builtin_shufflevector(v[0][0], v[0][1], WINO_EVEN);
        const WINO_VEC b = __builtin_shufflevector(v[0][0], v[0][1], WINO_ODD);
        const WINO_VEC c = __builtin_shufflevector(v[1][0], v[1][1], WINO_EVEN);
        const WINO_VEC d = __builtin_shufflevector(v[1][0], v[1][1], WINO_ODD);
        const WINO_VEC rows[4][2] = {{a, b}, {a + c, b + d}, {a - c, b - d}, {-c, -d}};
        float *at = out;
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) {
            *(WINO_VEC *)at = rows[i][0];
            at += position_step;
            *(WINO_VEC *)at = rows[i][0] + rows[i][1];
            at += position_step;
            *(WINO_VEC *)at = rows[i][0] - rows[i][1];
            at += position_step;
            *(WINO_VEC *)at = -rows[i][1];
            at += position_step;
        }
    }
}

const struct pynn_winograd_kernels WINO_JOIN(pynn_winograd, WINO_SUFFIX) = {
    WINO_LANES, WINO_INPUT, WINO_OUTPUT, WINO_GRADS};

#undef WINO_VEC
#undef WINO_BITS
#undef WINO_INPUT
#undef WINO_OUTPUT
#undef WINO_GRADS
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
