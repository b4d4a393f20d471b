/* Batch normalisation over every axis but the channel axis.
 *
 * x is [N, C, S] (S = 1 for [N, C], L for [N, C, L], H W for images); the
 * statistics of channel c run over its N S values. */
#ifndef PYNN_BATCHNORM_H
#define PYNN_BATCHNORM_H

#include <stddef.h>
#include "cpu.h"

/* Training: mean_c, var_c (biased) over the batch, invstd_c = 1/√(var_c + eps),
 * y = (x - mean_c) invstd_c weight_c + bias_c, and with relu max(y, 0).
 * mean and invstd are saved for the backward. If running_mean is not NULL
 * the running statistics move by factor: r = (1 - factor) r + factor s,
 * with the unbiased variance var_c N S / (N S - 1) (N S > 1 is the caller's
 * to check). */
void pynn_batchnorm_train_forward(const pynn_context *ctx, ptrdiff_t n, ptrdiff_t c,
                                  ptrdiff_t s, const float *x, const float *weight,
                                  const float *bias, float eps, float factor,
                                  float *running_mean, float *running_var,
                                  float *mean, float *invstd, int relu, float *y);

/* Inference: y = (x - running_mean_c) / √(running_var_c + eps) weight_c + bias_c. */
void pynn_batchnorm_eval_forward(const pynn_context *ctx, ptrdiff_t n, ptrdiff_t c,
                                 ptrdiff_t s, const float *x, const float *weight,
                                 const float *bias, float eps, const float *running_mean,
                                 const float *running_var, float *y);

/* Back through the training forward, with x̂ = (x - mean) invstd and M = N S:
 *   dbias_c = Σ g,  dweight_c = Σ g x̂,
 *   dx = weight_c invstd_c (g - dbias_c / M - x̂ dweight_c / M),
 * where g = dy, or with relu (dy of the ReLU's output) dy where the forward's
 * y was > 0 and 0 elsewhere. dx, dweight and dbias may each be NULL (not
 * computed). */
void pynn_batchnorm_backward(const pynn_context *ctx, ptrdiff_t n, ptrdiff_t c, ptrdiff_t s,
                             const float *dy, const float *x, const float *weight,
                             const float *bias, const float *mean, const float *invstd,
                             int relu, float *dx, float *dweight, float *dbias);

#endif
