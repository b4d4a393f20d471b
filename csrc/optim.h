/* Optimizer updates: one fused pass over a parameter, its gradient and its
 * state, following torch.optim's single-tensor (foreach=False) formulas.
 *
 * SGD (dampening 0; b starts at zero, so the first step gives b = d exactly,
 * PyTorch's first-step rule):
 *   d = g + wd p;  b = mu b + d;
 *   d = nesterov ? d + mu b : b;  p -= lr d      (mu == 0: p -= lr d)
 * Adam / AdamW (the caller passes decay = 1 - lr wd for AdamW, else 1, and
 * grad_weight_decay = wd for Adam, else 0):
 *   p *= decay;  g += grad_weight_decay p
 *   m += (1 - b1)(g - m);  v = b2 v + (1 - b2) g g
 *   p -= step_size m / (sqrt(v) / bias_correction2_sqrt + eps)
 *   with step_size = lr / (1 - b1^t), bias_correction2_sqrt = sqrt(1 - b2^t)
 * Element-wise, so the result does not depend on the thread count. */
#ifndef PYNN_OPTIM_H
#define PYNN_OPTIM_H

#include <stddef.h>
#include "cpu.h"

/* Each updates ``count`` tensors (sizes[i] elements each) in one call. A NULL
 * momentum buffer is allowed when momentum == 0. */
void pynn_sgd_step(const pynn_context *ctx, ptrdiff_t count, const ptrdiff_t *sizes,
                   float *const *params, const float *const *grads,
                   float *const *momentum_buffers, float lr, float momentum,
                   float weight_decay, int nesterov);

void pynn_adam_step(const pynn_context *ctx, ptrdiff_t count, const ptrdiff_t *sizes,
                    float *const *params, const float *const *grads, float *const *exp_avgs,
                    float *const *exp_avg_sqs, const float *step_sizes,
                    const float *bias_corrections2_sqrt, float decay, float grad_weight_decay,
                    float beta1, float beta2, float eps);

#endif
