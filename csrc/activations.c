/* Activation kernels (formulas in activations.h). tanh, sigmoid, silu and the
 * exact gelu run in float arithmetic, the tanh form of gelu in double,
 * rounded once (vmath.h). */
#include <math.h>
#include "activations.h"
#include "vmath.h"

#define GELU_TANH_SCALE 0.79788456080286536 /* sqrt(2 / pi) */
#define GELU_TANH_CUBIC 0.044715

/* 1 / (1 + e^-x) as e^-|x| / (1 + e^-|x|) for negative x, so the exponential
 * never exceeds 1 and tiny results keep their precision (within 3 ulp). */
PYNN_INLINE float sigmoid_f(float x)
{
    float e = pynn_exp_nonpositive_f(x < 0.0f ? x : -x);
    float r = 1.0f / (1.0f + e);
    return x < 0.0f ? e * r : r;
}

/* x sigmoid(x) and its derivative s (1 + x (1 - s)), with e = e^-|x| as in
 * sigmoid_f: both s and 1 - s come from e without a cancellation. */
PYNN_INLINE float silu_f(float x)
{
    float e = pynn_exp_nonpositive_f(x < 0.0f ? x : -x);
    float r = 1.0f / (1.0f + e);
    return x < 0.0f ? x * (e * r) : x * r;
}

PYNN_INLINE float silu_derivative_f(float x)
{
    float e = pynn_exp_nonpositive_f(x < 0.0f ? x : -x);
    float r = 1.0f / (1.0f + e);
    float s = x < 0.0f ? e * r : r;
    float complement = x < 0.0f ? r : e * r;
    return s * (1.0f + x * complement);
}

/* min(max(x + 3, 0), 6), NaN kept: the ramp of hardswish and hardsigmoid. */
PYNN_INLINE float hard_ramp_f(float x)
{
    float t = x + 3.0f;
    t = t < 0.0f ? 0.0f : t;
    return t > 6.0f ? 6.0f : t;
}

PYNN_INLINE double gelu_tanh_d(double x)
{
    double u = GELU_TANH_SCALE * (x + GELU_TANH_CUBIC * x * x * x);
    return 0.5 * x * (1.0 + pynn_tanh_d(u));
}

PYNN_INLINE double gelu_tanh_derivative_d(double x)
{
    double u = GELU_TANH_SCALE * (x + GELU_TANH_CUBIC * x * x * x);
    double t = pynn_tanh_d(u);
    double du = GELU_TANH_SCALE * (1.0 + 3.0 * GELU_TANH_CUBIC * x * x);
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du;
}

/* One table per path: every map below, and the softmax work units. */
struct pynn_activation_kernels {
    pynn_map_fn vexp, vtanh, verf, relu, relu_backward, leaky_relu, leaky_relu_backward,
        sigmoid, sigmoid_backward, tanh, tanh_backward, gelu, gelu_backward, gelu_tanh,
        gelu_tanh_backward, silu, silu_backward, hardswish, hardswish_backward, hardsigmoid,
        hardsigmoid_backward, relu6, relu6_backward, dropout;
    void (*softmax_units)(ptrdiff_t first, ptrdiff_t last, ptrdiff_t length, ptrdiff_t inner,
                          const float *x, float *y, int log_domain);
    void (*softmax_backward_units)(ptrdiff_t first, ptrdiff_t last, ptrdiff_t length,
                                   ptrdiff_t inner, const float *dy, const float *y, float *dx,
                                   int log_domain);
};

PYNN_ELEMENTWISE(vexp, PYNN_COSTLY_PARALLEL, (float)pynn_exp_d(A))
PYNN_ELEMENTWISE_VECTOR(vtanh, PYNN_COSTLY_PARALLEL, pynn_tanh_f(A), pynn_tanh16(lanes_a))
PYNN_ELEMENTWISE(verf, PYNN_COSTLY_PARALLEL, (float)pynn_erf_d(A))
PYNN_ELEMENTWISE(relu, PYNN_CHEAP_PARALLEL, A < 0.0f ? 0.0f : A)
PYNN_ELEMENTWISE_NARROW(relu_backward, PYNN_CHEAP_PARALLEL, B > 0.0f ? A : 0.0f)
PYNN_ELEMENTWISE(leaky_relu, PYNN_CHEAP_PARALLEL, A > 0.0f ? A : A * p)
PYNN_ELEMENTWISE(leaky_relu_backward, PYNN_CHEAP_PARALLEL, B > 0.0f ? A : A * p)
PYNN_ELEMENTWISE(sigmoid, PYNN_COSTLY_PARALLEL, sigmoid_f(A))
PYNN_ELEMENTWISE(sigmoid_backward, PYNN_CHEAP_PARALLEL, A * (B * (1.0f - B)))
PYNN_ELEMENTWISE_VECTOR(tanh, PYNN_COSTLY_PARALLEL, pynn_tanh_f(A), pynn_tanh16(lanes_a))
PYNN_ELEMENTWISE(tanh_backward, PYNN_CHEAP_PARALLEL, A * (1.0f - B * B))
PYNN_ELEMENTWISE_VECTOR(gelu, PYNN_COSTLY_PARALLEL, pynn_gelu_f(A), pynn_gelu16(lanes_a))
PYNN_ELEMENTWISE_VECTOR(gelu_backward, PYNN_COSTLY_PARALLEL, A * pynn_gelu_derivative_f(B),
                        _mm512_mul_ps(lanes_a, pynn_gelu_derivative16(lanes_b)))
PYNN_ELEMENTWISE(gelu_tanh, PYNN_COSTLY_PARALLEL, (float)gelu_tanh_d(A))
PYNN_ELEMENTWISE(gelu_tanh_backward, PYNN_COSTLY_PARALLEL, (float)(A * gelu_tanh_derivative_d(B)))
PYNN_ELEMENTWISE(silu, PYNN_COSTLY_PARALLEL, silu_f(A))
PYNN_ELEMENTWISE(silu_backward, PYNN_COSTLY_PARALLEL, A * silu_derivative_f(B))
/* Divisions by 6 and the kinks' sides as in PyTorch's CPU kernels. */
PYNN_ELEMENTWISE_NARROW(hardswish, PYNN_CHEAP_PARALLEL, A * hard_ramp_f(A) / 6.0f)
PYNN_ELEMENTWISE(hardswish_backward, PYNN_CHEAP_PARALLEL,
                 B <= -3.0f ? 0.0f : B < 3.0f ? A * (B / 3.0f + 0.5f) : A)
PYNN_ELEMENTWISE(hardsigmoid, PYNN_CHEAP_PARALLEL, hard_ramp_f(A) / 6.0f)
PYNN_ELEMENTWISE(hardsigmoid_backward, PYNN_CHEAP_PARALLEL,
                 B > -3.0f && B < 3.0f ? A * (1.0f / 6.0f) : 0.0f)
PYNN_ELEMENTWISE(relu6, PYNN_CHEAP_PARALLEL, A < 0.0f ? 0.0f : A > 6.0f ? 6.0f : A)
PYNN_ELEMENTWISE(relu6_backward, PYNN_CHEAP_PARALLEL, B <= 0.0f || B >= 6.0f ? 0.0f : A)
/* Inverted dropout, forward and backward alike: B holds uniform draws in
 * [0, 1), an element is kept when its draw is >= p and scaled by 1 / (1 - p). */
PYNN_ELEMENTWISE_NARROW(dropout, PYNN_CHEAP_PARALLEL, B >= p ? A * (1.0f / (1.0f - p)) : 0.0f)

/* softmax along a contiguous row: the exponentials are written to y first,
 * then scaled (one exp per element). A NaN anywhere, or an infinite maximum,
 * makes the whole row NaN, as in PyTorch. */
PYNN_INLINE void softmax_row(ptrdiff_t length, const float *restrict x, float *restrict y,
                             int log_domain)
{
    float max = pynn_row_max(x, length);
    for (ptrdiff_t i = 0; i < length; i++) y[i] = pynn_exp_nonpositive_f(x[i] - max);
    double sum = pynn_row_sum(y, NULL, length);
    if (log_domain) {
        double shift = (double)max + log(sum);
        for (ptrdiff_t i = 0; i < length; i++) y[i] = (float)((double)x[i] - shift);
    } else {
        float scale = (float)(1.0 / sum);
        for (ptrdiff_t i = 0; i < length; i++) y[i] *= scale;
    }
}

/* softmax:     dx = y (dy - sum(dy y));  log_softmax: dx = dy - e^y sum(dy) */
PYNN_INLINE void softmax_backward_row(ptrdiff_t length, const float *restrict dy,
                                      const float *restrict y, float *restrict dx, int log_domain)
{
    if (log_domain) {
        float total = (float)pynn_row_sum(dy, NULL, length);
        for (ptrdiff_t i = 0; i < length; i++)
            dx[i] = dy[i] - pynn_exp_nonpositive_f(y[i]) * total;
    } else {
        float dot = (float)pynn_row_sum(dy, y, length);
        for (ptrdiff_t i = 0; i < length; i++) dx[i] = y[i] * (dy[i] - dot);
    }
}

/* Along a non-last axis ([length, inner] with inner > 1) the same steps run
 * on a tile of up to TILE adjacent columns at once, each column keeping its
 * own maximum and sum: the loops over a tile's columns are contiguous and
 * vectorise, with no transpose. */
#define TILE 64

PYNN_INLINE void softmax_tile(ptrdiff_t length, ptrdiff_t inner, ptrdiff_t width,
                              const float *restrict x, float *restrict y, int log_domain)
{
    float max[TILE];
    double sum[TILE];
    for (ptrdiff_t k = 0; k < width; k++) max[k] = x[k];
    for (ptrdiff_t l = 1; l < length; l++)
        for (ptrdiff_t k = 0; k < width; k++)
            max[k] = x[l * inner + k] > max[k] ? x[l * inner + k] : max[k];
    for (ptrdiff_t k = 0; k < width; k++) sum[k] = 0.0;
    for (ptrdiff_t l = 0; l < length; l++)
        for (ptrdiff_t k = 0; k < width; k++) {
            float e = pynn_exp_nonpositive_f(x[l * inner + k] - max[k]);
            y[l * inner + k] = e;
            sum[k] += e;
        }
    if (log_domain) {
        for (ptrdiff_t k = 0; k < width; k++) sum[k] = (double)max[k] + log(sum[k]);
        for (ptrdiff_t l = 0; l < length; l++)
            for (ptrdiff_t k = 0; k < width; k++)
                y[l * inner + k] = (float)((double)x[l * inner + k] - sum[k]);
    } else {
        for (ptrdiff_t k = 0; k < width; k++) max[k] = (float)(1.0 / sum[k]);
        for (ptrdiff_t l = 0; l < length; l++)
            for (ptrdiff_t k = 0; k < width; k++) y[l * inner + k] *= max[k];
    }
}

PYNN_INLINE void softmax_backward_tile(ptrdiff_t length, ptrdiff_t inner, ptrdiff_t width,
                                       const float *restrict dy, const float *restrict y,
                                       float *restrict dx, int log_domain)
{
    double acc[TILE];
    float reduced[TILE];
    for (ptrdiff_t k = 0; k < width; k++) acc[k] = 0.0;
    for (ptrdiff_t l = 0; l < length; l++)
        for (ptrdiff_t k = 0; k < width; k++)
            acc[k] += log_domain ? (double)dy[l * inner + k]
                                 : (double)dy[l * inner + k] * y[l * inner + k];
    for (ptrdiff_t k = 0; k < width; k++) reduced[k] = (float)acc[k];
    for (ptrdiff_t l = 0; l < length; l++)
        for (ptrdiff_t k = 0; k < width; k++) {
            ptrdiff_t i = l * inner + k;
            dx[i] = log_domain ? dy[i] - pynn_exp_nonpositive_f(y[i]) * reduced[k]
                               : y[i] * (dy[i] - reduced[k]);
        }
}

/* Work units: a row when inner == 1, else a tile of one [length, inner]
 * slice. Units are independent, so threads split them and results do not
 * depend on the thread count. */
PYNN_INLINE ptrdiff_t tiles_per_slice(ptrdiff_t inner)
{
    return inner == 1 ? 1 : (inner + TILE - 1) / TILE;
}

#define SOFTMAX_VARIANT(suffix, attribute)                                                   \
    attribute static void softmax_units_##suffix(ptrdiff_t first, ptrdiff_t last,            \
                                                 ptrdiff_t length, ptrdiff_t inner,          \
                                                 const float *x, float *y, int log_domain)   \
    {                                                                                        \
        ptrdiff_t tiles = tiles_per_slice(inner);                                            \
        for (ptrdiff_t u = first; u < last; u++) {                                           \
            ptrdiff_t column = (u % tiles) * TILE;                                           \
            ptrdiff_t start = (u / tiles) * length * inner + column;                         \
            if (inner == 1)                                                                  \
                softmax_row(length, x + start, y + start, log_domain);                       \
            else                                                                             \
                softmax_tile(length, inner, inner - column < TILE ? inner - column : TILE,   \
                             x + start, y + start, log_domain);                              \
        }                                                                                    \
    }                                                                                        \
    attribute static void softmax_backward_units_##suffix(                                   \
        ptrdiff_t first, ptrdiff_t last, ptrdiff_t length, ptrdiff_t inner, const float *dy, \
        const float *y, float *dx, int log_domain)                                           \
    {                                                                                        \
        ptrdiff_t tiles = tiles_per_slice(inner);                                            \
        for (ptrdiff_t u = first; u < last; u++) {                                           \
            ptrdiff_t column = (u % tiles) * TILE;                                           \
            ptrdiff_t start = (u / tiles) * length * inner + column;                         \
            if (inner == 1)                                                                  \
                softmax_backward_row(length, dy + start, y + start, dx + start, log_domain); \
            else                                                                             \
                softmax_backward_tile(length, inner,                                         \
                                      inner - column < TILE ? inner - column : TILE,         \
                                      dy + start, y + start, dx + start, log_domain);        \
        }                                                                                    \
    }

#define ACTIVATION_TABLE(suffix, attribute)                                                  \
    SOFTMAX_VARIANT(suffix, attribute)                                                       \
    const struct pynn_activation_kernels pynn_activation_##suffix = {                       \
        vexp_##suffix, vtanh_##suffix, verf_##suffix, relu_##suffix, relu_backward_##suffix, \
        leaky_relu_##suffix, leaky_relu_backward_##suffix, sigmoid_##suffix,                 \
        sigmoid_backward_##suffix, tanh_##suffix, tanh_backward_##suffix, gelu_##suffix,     \
        gelu_backward_##suffix, gelu_tanh_##suffix, gelu_tanh_backward_##suffix,             \
        silu_##suffix, silu_backward_##suffix, hardswish_##suffix, hardswish_backward_##suffix, \
        hardsigmoid_##suffix, hardsigmoid_backward_##suffix, relu6_##suffix,                 \
        relu6_backward_##suffix, dropout_##suffix, softmax_units_##suffix,                   \
        softmax_backward_units_##suffix};

PYNN_EACH_ISA(ACTIVATION_TABLE)

/* Units per parallel task: enough elements to amortise waking a thread. */
static ptrdiff_t units_per_task(ptrdiff_t length, ptrdiff_t inner)
{
    ptrdiff_t unit_size = length * (inner == 1 ? 1 : TILE);
    ptrdiff_t units = PYNN_COSTLY_PARALLEL / 4 / (unit_size > 0 ? unit_size : 1);
    return units > 0 ? units : 1;
}

void pynn_softmax(const pynn_context *ctx, ptrdiff_t outer, ptrdiff_t length, ptrdiff_t inner,
                  const float *x, float *y, int log_domain)
{
    const struct pynn_activation_kernels *kernels = ctx->kernels->activations;
    ptrdiff_t units = outer * tiles_per_slice(inner);
    if (units == 0 || length == 0 || inner == 0) return;
    ptrdiff_t step = units_per_task(length, inner);
    ptrdiff_t tasks = (units + step - 1) / step;
    const int wanted = tasks > 1 && outer * length * inner >= PYNN_COSTLY_PARALLEL
                       ? ctx->num_threads : 1;
    PYNN_TEAM_FOR(ctx, wanted, t, tasks, {
        ptrdiff_t first = t * step, last = first + step < units ? first + step : units;
        kernels->softmax_units(first, last, length, inner, x, y, log_domain);
    });
}

void pynn_softmax_backward(const pynn_context *ctx, ptrdiff_t outer, ptrdiff_t length,
                           ptrdiff_t inner, const float *dy, const float *y, float *dx,
                           int log_domain)
{
    const struct pynn_activation_kernels *kernels = ctx->kernels->activations;
    ptrdiff_t units = outer * tiles_per_slice(inner);
    if (units == 0 || length == 0 || inner == 0) return;
    ptrdiff_t step = units_per_task(length, inner);
    ptrdiff_t tasks = (units + step - 1) / step;
    const int wanted = tasks > 1 && outer * length * inner >= PYNN_COSTLY_PARALLEL
                       ? ctx->num_threads : 1;
    PYNN_TEAM_FOR(ctx, wanted, t, tasks, {
        ptrdiff_t first = t * step, last = first + step < units ? first + step : units;
        kernels->softmax_backward_units(first, last, length, inner, dy, y, dx, log_domain);
    });
}
