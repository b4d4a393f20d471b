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
 * RMSprop (a = alpha; c the centred average, m the momentum buffer):
 *   g += wd p;  s = a s + (1 - a) g g;  c += (1 - a)(g - c)
 *   d = sqrt(centered ? s - c c : s) + eps
 *   momentum: m = mu m + g / d; p -= lr m;  else p -= lr g / d
 * Adagrad (clr = lr / (1 + (t - 1) lr_decay), per tensor):
 *   g += wd p;  s += g g;  p -= clr g / (sqrt(s) + eps)
 * Element-wise, so the result does not depend on the thread count.
 *
 * Gradient norm: sum |g|^q (q = 2, 1, or any other q > 0) or max |g| (q =
 * inf) over every tensor, accumulated in double per fixed chunk and the
 * chunks summed in order, so the norm does not depend on the thread count.
 *
 * Row-sparse updates: a tensor with a row subset is updated only in those
 * rows (its state too); the other rows are left as they are (lazy, as
 * torch.optim.SparseAdam), which for plain SGD is the dense result whenever
 * their gradient is zero. */
#ifndef PYNN_OPTIM_H
#define PYNN_OPTIM_H

#include <stddef.h>
#include <stdint.h>
#include "cpu.h"

/* The distinct rows of a [*, row_size] tensor an update touches; rows ==
 * NULL: the whole tensor. */
typedef struct {
    const int64_t *rows;
    ptrdiff_t count;
    ptrdiff_t row_size;
} pynn_row_subset;

/* Each updates ``count`` tensors (sizes[i] elements each, or subsets[i]'s
 * rows) in one call. A NULL momentum buffer is allowed when momentum == 0. */
void pynn_sgd_step(const pynn_context *ctx, ptrdiff_t count, const ptrdiff_t *sizes,
                   const pynn_row_subset *subsets, float *const *params,
                   const float *const *grads, float *const *momentum_buffers, float lr,
                   float momentum, float weight_decay, int nesterov);

void pynn_adam_step(const pynn_context *ctx, ptrdiff_t count, const ptrdiff_t *sizes,
                    const pynn_row_subset *subsets, float *const *params,
                    const float *const *grads, float *const *exp_avgs,
                    float *const *exp_avg_sqs, const float *step_sizes,
                    const float *bias_corrections2_sqrt, float decay, float grad_weight_decay,
                    float beta1, float beta2, float eps);

typedef struct {
    float lr, alpha, one_minus_alpha, eps, weight_decay, momentum;
    int centered;
} pynn_rmsprop_options;

/* square_avgs always; momentum_buffers when momentum != 0; grad_avgs when centered. */
void pynn_rmsprop_step(const pynn_context *ctx, ptrdiff_t count, const ptrdiff_t *sizes,
                       const pynn_row_subset *subsets, float *const *params,
                       const float *const *grads, float *const *square_avgs,
                       float *const *momentum_buffers, float *const *grad_avgs,
                       const pynn_rmsprop_options *options);

/* clrs: each tensor's learning rate for this step. */
void pynn_adagrad_step(const pynn_context *ctx, ptrdiff_t count, const ptrdiff_t *sizes,
                       const pynn_row_subset *subsets, float *const *params,
                       const float *const *grads, float *const *sums, const float *clrs,
                       float weight_decay, float eps);

/* The partial sums the norm of these tensors needs room for. */
ptrdiff_t pynn_grad_norm_chunks(ptrdiff_t count, const ptrdiff_t *sizes,
                                const pynn_row_subset *subsets);

/* The norm_type-norm of all the tensors together (norm_type > 0, or INFINITY
 * for the largest magnitude); partials holds pynn_grad_norm_chunks doubles. */
double pynn_grad_norm(const pynn_context *ctx, ptrdiff_t count, const ptrdiff_t *sizes,
                      const pynn_row_subset *subsets, const float *const *grads,
                      double norm_type, double *partials);

/* grads *= factor (row-sparse tensors in their rows only). */
void pynn_grad_scale(const pynn_context *ctx, ptrdiff_t count, const ptrdiff_t *sizes,
                     const pynn_row_subset *subsets, float *const *grads, float factor);

#endif
