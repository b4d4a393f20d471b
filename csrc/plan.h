/* Running an inference plan's kernel steps: plan.pxi builds the
 * steps from a model's graph (pynn/schedule.py), in a topological order.
 * Every step reads and writes slots: entries of a pointer table the caller
 * fills (the model's inputs and outputs, and buffers the plan owns), so a
 * step may read any earlier step's output.
 *
 * A small batch spends its time streaming the weights. With several threads,
 * the calling thread and helper threads (helpers.h) then each take a share of
 * every step's outputs (a step starts once the one before has finished; small
 * steps after the last shared one run on the calling thread afterwards), so
 * each core streams only its share of the weights, and keeps it in its own
 * L2 from call to call. Shares are claimed in chunks, so the calling thread
 * takes over the work of a helper that has not started (descheduled), and
 * the result does not depend on which thread ran a chunk. */
#ifndef PYNN_PLAN_H
#define PYNN_PLAN_H

#include <stddef.h>
#include "conv.h"
#include "cpu.h"
#include "gemm.h"
#include "pool.h"
#include "tensor.h"

typedef enum {
    PYNN_STEP_GEMM,     /* y[m, n] = x[m, k] weight[n, k]ᵀ with the epilogue */
    PYNN_STEP_MAP,      /* y[i] = map(x[i], parameter) for the n elements */
    PYNN_STEP_SOFTMAX,  /* softmax of x seen as [m, n, k], along n */
    PYNN_STEP_CONV,     /* y = conv(x, weight) + bias, then the epilogue's activation */
    PYNN_STEP_ADD,      /* y[i] = x[i] + other[i] for n elements, then the activation */
    PYNN_STEP_MEAN,     /* y[p] = the mean of x's plane p, for m planes of n elements */
    PYNN_STEP_MAX_POOL, /* y = the maximum of each of x's windows (pool) */
    PYNN_STEP_AVG_POOL, /* y = the mean of each window (pool); n != 0: the divisor counts padding */
    PYNN_STEP_ADAPTIVE_POOL, /* y = the mean of each adaptive window (pool's planes and sizes) */
    PYNN_STEP_BROADCAST,     /* y = x op other, broadcast over `rank` axes as numpy does */
} pynn_step_kind;

/* The element-wise kernels' signature (activations.h). */
typedef void (*pynn_elementwise_fn)(const pynn_context *ctx, ptrdiff_t n, const float *a,
                            const float *b, float *y, float p);

typedef struct {
    pynn_step_kind kind;
    ptrdiff_t source, other, target;  /* slots: x, ADD's second operand, y */
    ptrdiff_t m, n, k;
    const float *weight;
    pynn_epilogue epilogue;           /* GEMM and CONV: column bias (CONV: per channel), activation */
    pynn_elementwise_fn map;
    float parameter;
    pynn_conv_shape conv;
    float *workspace;                 /* CONV's scratch, owned by the plan */
    pynn_pool_shape pool;
    pynn_tensor_op op;                /* BROADCAST: its operation, rank and shapes */
    int rank;
    ptrdiff_t out_shape[PYNN_TENSOR_MAX_RANK], x_shape[PYNN_TENSOR_MAX_RANK],
              other_shape[PYNN_TENSOR_MAX_RANK];
} pynn_plan_step;

/* Runs steps[0 .. count) over the slot table. Returns 0, or -1 when a
 * convolution could not allocate scratch. */
int pynn_plan_run(const pynn_context *ctx, const pynn_plan_step *steps, ptrdiff_t count,
                  float *const *slots);

/* BatchNorm at inference folded into the convolution before it, per output
 * channel c of `per_channel` weights:
 *   scale = gamma[c] / sqrt(var[c] + eps),  w' = w scale,
 *   b' = (b[c] - mean[c]) scale + beta[c]   (b NULL reads as 0). */
void pynn_fold_batchnorm(ptrdiff_t channels, ptrdiff_t per_channel, const float *weight,
                         const float *bias, const float *gamma, const float *beta,
                         const float *mean, const float *var, float eps, float *folded_weight,
                         float *folded_bias);

#endif
