/* Activation functions and their backward passes over contiguous float arrays.
 *
 * Element-wise kernels share one signature (vmath.h): y[i] = f(a[i], b[i], p).
 * Forwards read a = x; backwards read a = dy and b = what PyTorch's backward
 * takes: the input x (relu, leaky_relu, gelu, silu, hardswish, hardsigmoid,
 * relu6) or the output y (sigmoid, tanh). Backwards at the kinks and for NaN
 * inputs take PyTorch's side. y may be a (in place). */
#ifndef PYNN_ACTIVATIONS_H
#define PYNN_ACTIVATIONS_H

#include <stddef.h>
#include "cpu.h"

#define PYNN_DECLARE_MAP(name) \
    void pynn_##name(const pynn_context *ctx, ptrdiff_t n, const float *a, const float *b, float *y, float p)

PYNN_DECLARE_MAP(vexp);                /* e^x, the vector math on its own (vmath.h) */
PYNN_DECLARE_MAP(vtanh);
PYNN_DECLARE_MAP(verf);
PYNN_DECLARE_MAP(relu);                /* max(x, 0), NaN kept */
PYNN_DECLARE_MAP(relu_backward);       /* dx = dy [x > 0] */
PYNN_DECLARE_MAP(leaky_relu);          /* x > 0 ? x : p x */
PYNN_DECLARE_MAP(leaky_relu_backward); /* dx = x > 0 ? dy : p dy */
PYNN_DECLARE_MAP(sigmoid);             /* 1 / (1 + e^-x) */
PYNN_DECLARE_MAP(sigmoid_backward);    /* dx = dy y (1 - y) */
PYNN_DECLARE_MAP(tanh);
PYNN_DECLARE_MAP(tanh_backward);       /* dx = dy (1 - y^2) */
PYNN_DECLARE_MAP(gelu);                /* x Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2 */
PYNN_DECLARE_MAP(gelu_backward);       /* dx = dy (Phi(x) + x phi(x)) */
PYNN_DECLARE_MAP(gelu_tanh);           /* x (1 + tanh u) / 2, u = sqrt(2/pi) (x + 0.044715 x^3) */
PYNN_DECLARE_MAP(gelu_tanh_backward);
PYNN_DECLARE_MAP(silu);                /* x sigmoid(x) */
PYNN_DECLARE_MAP(silu_backward);       /* dx = dy s (1 + x (1 - s)), s = sigmoid(x) */
PYNN_DECLARE_MAP(hardswish);           /* x min(max(x + 3, 0), 6) / 6 */
PYNN_DECLARE_MAP(hardswish_backward);  /* dx = 0 for x <= -3, dy (x / 3 + 1/2) below 3, else dy */
PYNN_DECLARE_MAP(hardsigmoid);         /* min(max(x + 3, 0), 6) / 6 */
PYNN_DECLARE_MAP(hardsigmoid_backward); /* dx = dy / 6 for -3 < x < 3, else 0 */
PYNN_DECLARE_MAP(relu6);               /* min(max(x, 0), 6), NaN kept */
PYNN_DECLARE_MAP(relu6_backward);      /* dx = 0 for x <= 0 or x >= 6, else dy */
PYNN_DECLARE_MAP(dropout);             /* y = a [b >= p] / (1 - p), b uniform in [0, 1) */

/* softmax / log_softmax of x viewed as [outer, length, inner] along the middle
 * axis (inner == 1: the contiguous last axis, the fast path). */
void pynn_softmax(const pynn_context *ctx, ptrdiff_t outer, ptrdiff_t length, ptrdiff_t inner,
                  const float *x, float *y, int log_domain);
/* softmax:     dx = y (dy - sum(dy y))
 * log_softmax: dx = dy - e^y sum(dy)      (y is the forward output) */
void pynn_softmax_backward(const pynn_context *ctx, ptrdiff_t outer, ptrdiff_t length,
                           ptrdiff_t inner, const float *dy, const float *y, float *dx,
                           int log_domain);

#endif
