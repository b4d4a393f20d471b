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

/* The plan for `batch` rows on `threads` threads, or NULL with a message. */
pynn_runner *pynn_runner_build(const pynn_graph *graph, int64_t batch, int threads, char *err,
                               size_t err_len);
void pynn_runner_free(pynn_runner *runner);
int64_t pynn_runner_batch(const pynn_runner *runner);
int pynn_runner_threads(const pynn_runner *runner);

/* y = the model's output for x (the plan's shapes); 0, or -1 with a message. */
int pynn_runner_run(pynn_runner *runner, const pynn_context *ctx, const float *x, float *y, char *err,
                    size_t err_len);

#endif
