/* Losses fused with their gradients. Each gives the loss (accumulated in
 * double, in a fixed order: the same for any thread count) reduced by a mean
 * or a sum as PyTorch's reduction="mean"|"sum" (a mean over nothing is NaN, a
 * sum over nothing 0) and, when grad is not NULL, writes d(loss)/d(input)
 * into it. */
#ifndef PYNN_LOSS_H
#define PYNN_LOSS_H

#include <stddef.h>
#include <stdint.h>
#include "cpu.h"

/* Options of the class-index losses, as PyTorch's: weight [classes] or NULL
 * (all ones), rows whose target is ignore_index count for nothing and get a
 * zero gradient, label_smoothing in [0, 1], mean divides by the summed
 * weights of the counted rows' targets (their number without weights). */
typedef struct {
    const float *weight;
    int64_t ignore_index;
    double label_smoothing;
    int mean;
} pynn_class_loss_options;

/* log-softmax + negative log-likelihood of logits [n, classes] against class
 * indices in [0, classes) or ignore_index (checked by the caller); with
 * p = softmax(x), eps = label_smoothing, W = sum_c w_c, per counted row
 *   loss_i = (1 - eps) w_t (-log p_t) + eps / classes * sum_c w_c (-log p_c),
 *   dx_i   = (((1 - eps) w_t + eps W / classes) p - (1 - eps) w_t onehot(t) - eps w / classes) / D,
 * D the mean's denominator (1 for a sum). Writes the loss to *loss; returns 0,
 * or -1 if scratch memory ran out. */
int pynn_cross_entropy(const pynn_context *ctx, ptrdiff_t n, ptrdiff_t classes,
                       const float *logits, const int64_t *target,
                       const pynn_class_loss_options *options, float *grad, double *loss);

/* Negative log-likelihood of log-probabilities [n, classes]:
 *   loss_i = -w_t x_i[t],  dx_i = -w_t onehot(t) / D  (label_smoothing unused). */
double pynn_nll_loss(const pynn_context *ctx, ptrdiff_t n, ptrdiff_t classes,
                     const float *log_probs, const int64_t *target,
                     const pynn_class_loss_options *options, float *grad);

/* Element-wise losses of pred against target, count elements, reduced by a
 * mean (mean != 0) or a sum; d = p - t:
 *   mse:   d^2,                                     dp = 2 d
 *   l1:    |d|,                                     dp = sign(d) (0 at 0)
 *   huber: d^2 / 2 if |d| < delta, else delta (|d| - delta / 2),  dp = clamp(d, -delta, delta)
 * each gradient divided by count for a mean. */
double pynn_mse(const pynn_context *ctx, ptrdiff_t count, const float *pred,
                const float *target, float *grad, int mean);
double pynn_l1_loss(const pynn_context *ctx, ptrdiff_t count, const float *pred,
                    const float *target, float *grad, int mean);
double pynn_huber_loss(const pynn_context *ctx, ptrdiff_t count, const float *pred,
                       const float *target, float *grad, int mean, double delta);

/* Binary cross-entropy on logits x [count] with a positive-class weight per
 * position of the last axis (pos_weight [period], count a multiple of period,
 * or NULL for ones); with L = 1 + (pw - 1) t and softplus(-x) formed stably as
 * max(-x, 0) + log(1 + e^-|x|):
 *   loss = (1 - t) x + L softplus(-x),  dx = (1 - t) - L sigmoid(-x). */
double pynn_bce_with_logits(const pynn_context *ctx, ptrdiff_t count, const float *logits,
                            const float *target, const float *pos_weight, ptrdiff_t period,
                            float *grad, int mean);

#endif
