/* Running an inference plan's kernel steps: plan.pxi builds the
 * steps from a model's layers, each step reading the previous one's output.
 *
 * A small batch spends its time streaming the weights. With several threads,
 * the calling thread and helper threads (helpers.h) then each take a share of
 * every step's outputs (a barrier between steps; small steps after the last
 * shared one run on the calling thread afterwards), so each core streams only
 * its share of the weights, and keeps it in its own L2 from call to call. */
#ifndef PYNN_PLAN_H
#define PYNN_PLAN_H

#include <stddef.h>
#include "cpu.h"
#include "gemm.h"

typedef enum {
    PYNN_STEP_GEMM,     /* y[m, n] = x[m, k] weight[n, k]ᵀ with the epilogue */
    PYNN_STEP_MAP,      /* y[i] = map(x[i], parameter) for the n elements */
    PYNN_STEP_SOFTMAX,  /* softmax of x seen as [m, n, k], along n */
} pynn_step_kind;

/* The element-wise kernels' signature (activations.h). */
typedef void (*pynn_elementwise_fn)(const pynn_context *ctx, ptrdiff_t n, const float *a,
                            const float *b, float *y, float p);

typedef struct {
    pynn_step_kind kind;
    ptrdiff_t m, n, k;
    const float *weight;
    pynn_epilogue epilogue;
    pynn_elementwise_fn map;
    float parameter;
} pynn_plan_step;

/* Runs steps[0 .. count) on x; step i writes outputs[i]. */
void pynn_plan_run(const pynn_context *ctx, const pynn_plan_step *steps, ptrdiff_t count,
                   const float *x, float *const *outputs);

#endif
