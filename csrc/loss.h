/* Losses fused with their gradients, mean over the batch (NaN for an empty
 * batch, as PyTorch). Each gives the mean loss (accumulated in double, in a fixed order: the same for any thread
 * count) and, when grad is not NULL, writes d(loss)/d(input) into it. */
#ifndef PYNN_LOSS_H
#define PYNN_LOSS_H

#include <stddef.h>
#include <stdint.h>
#include "cpu.h"

/* log-softmax + negative log-likelihood of logits [n, classes] against class
 * indices in [0, classes) (checked by the caller):
 *   loss = mean_i (logsumexp(x_i) - x_i[t_i]),  dx = (softmax(x) - onehot(t)) / n.
 * Writes the loss to *loss; returns 0, or -1 if scratch memory ran out. */
int pynn_cross_entropy(const pynn_context *ctx, ptrdiff_t n, ptrdiff_t classes,
                       const float *logits, const int64_t *target, float *grad, double *loss);

/* loss = mean (p - t)^2,  dp = 2 (p - t) / count */
double pynn_mse(const pynn_context *ctx, ptrdiff_t count, const float *pred,
                const float *target, float *grad);

/* loss = mean (max(x, 0) - x t + log(1 + e^-|x|)),  dx = (sigmoid(x) - t) / count */
double pynn_bce_with_logits(const pynn_context *ctx, ptrdiff_t count, const float *logits,
                            const float *target, float *grad);

#endif
