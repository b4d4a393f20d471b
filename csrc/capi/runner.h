/* A graph's inference plan for one batch size and thread count: the same
 * schedule pynn/schedule.py builds for Python's predict (views as aliases,
 * a BatchNorm2d folded into the convolution it alone reads, a ReLU fused
 * into the GEMM, convolution or sum it alone reads, buffers shared by
 * liveness), run with the same kernels in the same order, so the outputs
 * are the same bits. A plan owns its buffers; one caller runs it at a time. */
#ifndef PYNN_CAPI_RUNNER_H
#define PYNN_CAPI_RUNNER_H

#include "graph.h"

typedef struct pynn_runner pynn_runner;

/* The plan for inputs of shapes `inputs[graph->input_count]` (batch first)
 * on `threads` threads, or NULL with a message. */
pynn_runner *pynn_runner_build(const pynn_graph *graph, const pynn_shape *inputs, int threads, char *err,
                               size_t err_len);
void pynn_runner_free(pynn_runner *runner);
/* The plan is the one for these input shapes and threads (-1: any). */
int pynn_runner_runs(const pynn_runner *runner, const pynn_shape *inputs, int threads);
/* The shape a slot holds in this plan. */
const pynn_shape *pynn_runner_shape(const pynn_runner *runner, int slot);

/* outputs = the model's outputs for inputs (the plan's shapes and the
 * graph's dtypes); 0, or -1 with a message. */
int pynn_runner_run(pynn_runner *runner, const pynn_context *ctx, const void *const *inputs, void *const *outputs,
                    char *err, size_t err_len);

#endif
