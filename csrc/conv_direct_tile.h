/* One path's direct-convolution kernels and their table (contracts in
 * conv_direct.h), included once per path of PYNN_EACH_ISA by conv_direct.c
 * (the paths' vector widths and blockings differ, too much for one macro).
 * The includer defines DIRECT_SUFFIX, DIRECT_TARGET (the path's function attribute),
 * DIRECT_LANES (floats per vector), DIRECT_RUNS and DIRECT_GROUP (a tile
 * step's vectors of outputs per channel and its channels, a divisor of 8),
 * DIRECT_RUNS6 (the vectors a step of a block of 6 channels or fewer) or
 * DIRECT_NARROW_TILE (another path's tile, which takes those blocks), and
 * DIRECT_SOURCES (a weight-gradient pass's sources, a divisor of 6). */
#define DIRECT_JOIN2(a, b) a##_##b
#define DIRECT_JOIN(a, b) DIRECT_JOIN2(a, b)
#define DIRECT_VEC DIRECT_JOIN(direct_vec, DIRECT_SUFFIX)
#define DIRECT_BITS DIRECT_JOIN(direct_bits, DIRECT_SUFFIX)
#define DIRECT_STEP DIRECT_JOIN(direct_step, DIRECT_SUFFIX)
#define DIRECT_GROUPS DIRECT_JOIN(direct_groups, DIRECT_SUFFIX)
#ifdef DIRECT_NARROW_TILE
#define DIRECT_MAX_RUNS DIRECT_RUNS
#else
#define DIRECT_MAX_RUNS (DIRECT_RUNS > DIRECT_RUNS6 ? DIRECT_RUNS : DIRECT_RUNS6)
#endif
#define DIRECT_TILE DIRECT_JOIN(direct_tile, DIRECT_SUFFIX)
#define DIRECT_SUMS DIRECT_JOIN(direct_sums, DIRECT_SUFFIX)
#define DIRECT_SUMS_OF DIRECT_JOIN(direct_sums_of, DIRECT_SUFFIX)
#define DIRECT_HALF_SUMS DIRECT_JOIN(direct_half_sums, DIRECT_SUFFIX)
#define DIRECT_PLANES DIRECT_JOIN(direct_planes, DIRECT_SUFFIX)

typedef float DIRECT_VEC __attribute__((vector_size(4 * DIRECT_LANES), aligned(4), may_alias));
typedef int32_t DIRECT_BITS __attribute__((vector_size(4 * DIRECT_LANES), aligned(4), may_alias));

/* Outputs [q, q + runs lanes) of the tile's channels [o0, o0 + group):
 * runs x group accumulators, each input vector feeding `group` multiply-adds
 * and each weight `runs`. */
static inline __attribute__((always_inline)) DIRECT_TARGET void
DIRECT_STEP(const pynn_direct_tile *t, int o0, ptrdiff_t q, const int runs, const int group)
{
    DIRECT_VEC sums[PYNN_DIRECT_CHANNELS][DIRECT_MAX_RUNS];
    const float *weights[PYNN_DIRECT_CHANNELS];
#pragma GCC unroll 8
    for (int o = 0; o < group; o++) {
        weights[o] = t->weights[o0 + o];
#pragma GCC unroll 8
        for (int r = 0; r < runs; r++) sums[o][r] = (DIRECT_VEC){0};
    }
    /* the tap rows reading a data row for some q of the run */
    const ptrdiff_t first_row = q / t->cols, last_row = (q + runs * DIRECT_LANES - 1) / t->cols;
    const ptrdiff_t rows = t->taps / t->kernel_w;
    const ptrdiff_t kh_first = t->data_first - last_row > 0 ? t->data_first - last_row : 0;
    const ptrdiff_t kh_last = t->data_last - first_row < rows ? t->data_last - first_row : rows;
    for (ptrdiff_t c = 0; c < t->channels; c++) {
        const float *base = t->planes + c * t->channel_step + q;
        for (ptrdiff_t tap = kh_first * t->kernel_w; tap < kh_last * t->kernel_w; tap++) {
            const ptrdiff_t k = c * t->taps + tap;
            const float *source = base + t->offsets[tap];
            DIRECT_VEC in[DIRECT_MAX_RUNS];
#pragma GCC unroll 8
            for (int r = 0; r < runs; r++) in[r] = *(const DIRECT_VEC *)(source + r * DIRECT_LANES);
#pragma GCC unroll 8
            for (int o = 0; o < group; o++) {
                const float w = weights[o][k];
#pragma GCC unroll 8
                for (int r = 0; r < runs; r++) sums[o][r] += w * in[r];
            }
        }
    }
#pragma GCC unroll 8
    for (int o = 0; o < group; o++)
#pragma GCC unroll 8
        for (int r = 0; r < runs; r++) {
            DIRECT_VEC v = sums[o][r] + t->bias[o0 + o];
            if (t->relu) /* lanes below zero cleared; NaN stays */
                v = (DIRECT_VEC)((DIRECT_BITS)v & ~(v < (DIRECT_VEC){0}));
            *(DIRECT_VEC *)(t->out + (o0 + o) * t->out_ld + q + r * DIRECT_LANES) = v;
        }
}

/* The tile's q in steps of at most `most` vectors of `group` channels each,
 * the channels [0, o_end) in groups. */
static inline __attribute__((always_inline)) DIRECT_TARGET void
DIRECT_GROUPS(const pynn_direct_tile *t, const int group, const int most, const int o_end)
{
    for (int o0 = 0; o0 < o_end; o0 += group)
        for (ptrdiff_t q = 0; q < t->count;) {
            ptrdiff_t runs = (t->count - q + DIRECT_LANES - 1) / DIRECT_LANES;
            if (runs > most) runs = most;
            /* each count its own copy, its accumulators in registers */
            switch (runs) {
#define DIRECT_CASE(n) case n: if (n <= DIRECT_MAX_RUNS) DIRECT_STEP(t, o0, q, n, group); break;
                DIRECT_CASE(1) DIRECT_CASE(2) DIRECT_CASE(3) DIRECT_CASE(4) DIRECT_CASE(5)
                DIRECT_CASE(6)
#undef DIRECT_CASE
            }
            q += runs * DIRECT_LANES;
        }
}

/* A block of at most 6 channels as one group of 6 with more vectors a step
 * (or through DIRECT_NARROW_TILE), not a group of 8 with a quarter idle. */
DIRECT_TARGET static void DIRECT_TILE(const pynn_direct_tile *t)
{
    if (t->outputs <= 6)
#ifdef DIRECT_NARROW_TILE
        DIRECT_NARROW_TILE(t);
#else
        DIRECT_GROUPS(t, 6, DIRECT_RUNS6, 6);
#endif
    else
        DIRECT_GROUPS(t, DIRECT_GROUP, DIRECT_RUNS, PYNN_DIRECT_CHANNELS);
}

/* The sum of a vector's lanes, halves added to halves (a fixed order). */
#if DIRECT_LANES == 16
#define DIRECT_HALVE16(v) (__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) + \
                           __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15))
#define DIRECT_TOTAL(v) DIRECT_TOTAL8(DIRECT_HALVE16(v))
#elif DIRECT_LANES == 8
#define DIRECT_TOTAL(v) DIRECT_TOTAL8(v)
#else
#define DIRECT_TOTAL(v) DIRECT_TOTAL4(v)
#endif
#define DIRECT_TOTAL8(v) DIRECT_TOTAL4(__builtin_shufflevector(v, v, 0, 1, 2, 3) + \
                                       __builtin_shufflevector(v, v, 4, 5, 6, 7))
#define DIRECT_TOTAL4(v) (((v)[0] + (v)[2]) + ((v)[1] + (v)[3]))

/* The block's dot products for its first `grads` gradients, `sources`
 * sources per pass over them: per vector of q, grads + sources loads feed
 * grads sources multiply-adds (with more accumulators the compiler re-loads
 * each source per gradient); each sum's lanes then added by DIRECT_TOTAL. */
static inline __attribute__((always_inline)) DIRECT_TARGET void
DIRECT_SUMS_OF(pynn_direct_sums *b, const int grads, const int sources)
{
    for (int k0 = 0; k0 < PYNN_DIRECT_SOURCES; k0 += sources) {
        DIRECT_VEC sums[PYNN_DIRECT_GRADS][PYNN_DIRECT_SOURCES];
#pragma GCC unroll 4
        for (int o = 0; o < grads; o++)
#pragma GCC unroll 6
            for (int k = 0; k < sources; k++) sums[o][k] = (DIRECT_VEC){0};
        for (ptrdiff_t run = 0; run < b->runs; run++)
            for (ptrdiff_t q = run * b->segment; q < run * b->segment + b->length; q += DIRECT_LANES) {
                DIRECT_VEC gradient[PYNN_DIRECT_GRADS];
#pragma GCC unroll 4
                for (int o = 0; o < grads; o++) gradient[o] = *(const DIRECT_VEC *)(b->grads[o] + q);
#pragma GCC unroll 6
                for (int k = 0; k < sources; k++) {
                    const DIRECT_VEC in = *(const DIRECT_VEC *)(b->sources[k0 + k] + q);
#pragma GCC unroll 4
                    for (int o = 0; o < grads; o++) sums[o][k] += gradient[o] * in;
                }
            }
        for (int o = 0; o < grads; o++)
            for (int k = 0; k < sources; k++) b->sums[o][k0 + k] = DIRECT_TOTAL(sums[o][k]);
    }
}

DIRECT_TARGET static void DIRECT_SUMS(pynn_direct_sums *b)
{
    DIRECT_SUMS_OF(b, PYNN_DIRECT_GRADS, DIRECT_SOURCES);
}

/* A block of 2 gradients (the last of 6 channels): all 6 sources a pass, as
 * many accumulators as the full block, none on an unstored row. */
DIRECT_TARGET static void DIRECT_HALF_SUMS(pynn_direct_sums *b)
{
    DIRECT_SUMS_OF(b, 2, PYNN_DIRECT_SOURCES);
}

/* One image's phase planes (contract in conv_direct.h), compiled for the
 * path so its row copies and stride-2 gathers use the path's vectors. */
DIRECT_TARGET static void DIRECT_PLANES(const pynn_direct_planes *w, const float *image,
                                        float *planes)
{
    const pynn_conv_shape *s = w->shape;
    const ptrdiff_t sh = s->stride_h, sw = s->stride_w, cols = w->cols;
    for (ptrdiff_t c = 0; c < s->in_channels; c++)
        for (ptrdiff_t a = 0; a < w->phases_h; a++)
            for (ptrdiff_t b = 0; b < w->phases_w; b++) {
                float *restrict plane = planes + c * w->channel_step +
                                        (a * w->phases_w + b) * w->phase_step;
                ptrdiff_t first, last;
                valid_columns(s, cols, b, &first, &last);
                for (ptrdiff_t i = 0; i < w->rows; i++) {
                    float *restrict row = plane + i * cols;
                    const ptrdiff_t ih = i * sh + a - s->pad_h;
                    if (ih < 0 || ih >= s->height) {
                        for (ptrdiff_t j = 0; j < cols; j++) row[j] = 0.0f;
                        continue;
                    }
                    const float *restrict in = image + (c * s->height + ih) * s->width + b - s->pad_w;
                    for (ptrdiff_t j = 0; j < first; j++) row[j] = 0.0f;
                    if (sw == 1 && last - first >= DIRECT_LANES) {
                        /* whole vectors, the last one overlapping the one before */
                        for (ptrdiff_t j = first; j < last - DIRECT_LANES; j += DIRECT_LANES)
                            *(DIRECT_VEC *)(row + j) = *(const DIRECT_VEC *)(in + j);
                        *(DIRECT_VEC *)(row + last - DIRECT_LANES) =
                            *(const DIRECT_VEC *)(in + last - DIRECT_LANES);
                    } else if (sw == 1)
                        for (ptrdiff_t j = first; j < last; j++) row[j] = in[j];
                    else if (sw == 2)
                        for (ptrdiff_t j = first; j < last; j++) row[j] = in[2 * j];
                    else
                        for (ptrdiff_t j = first; j < last; j++) row[j] = in[j * sw];
                    for (ptrdiff_t j = last; j < cols; j++) row[j] = 0.0f;
                }
                for (ptrdiff_t i = w->rows * cols; i < w->segment; i++) plane[i] = 0.0f;
            }
}

const struct pynn_direct_kernels DIRECT_JOIN(pynn_direct, DIRECT_SUFFIX) = {DIRECT_TILE, DIRECT_SUMS, DIRECT_HALF_SUMS,
                                                                            DIRECT_PLANES};

#undef DIRECT_VEC
#undef DIRECT_BITS
#undef DIRECT_STEP
#undef DIRECT_GROUPS
#undef DIRECT_MAX_RUNS
#undef DIRECT_RUNS6
#undef DIRECT_NARROW_TILE
#undef DIRECT_TILE
#undef DIRECT_SUMS
#undef DIRECT_SUMS_OF
#undef DIRECT_HALF_SUMS
#undef DIRECT_TOTAL
#undef DIRECT_TOTAL8
#undef DIRECT_TOTAL4
#undef DIRECT_HALVE16
#undef DIRECT_PLANES
#undef DIRECT_SOURCES
#undef DIRECT_SUFFIX
#undef DIRECT_TARGET
#undef DIRECT_LANES
#undef DIRECT_RUNS
#undef DIRECT_GROUP
