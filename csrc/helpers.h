/* Helper threads for parallel calls too short for an OpenMP region.
 *
 * Starting and ending an OpenMP region (libgomp's team set-up and a futex
 * wake on each side) costs a sizeable share of a batch-1 predict of a small
 * MLP. These helpers stay awake after a call, spinning on a line of their
 * own, so the next call reaches them in a cache line transfer; they sleep
 * once no call has come for a while. */
#ifndef PYNN_HELPERS_H
#define PYNN_HELPERS_H

#include <stdatomic.h>

/* The most threads a call may run on, the calling one included. */
#define PYNN_HELPERS_MAX_PARTS 64

typedef void (*pynn_helpers_body)(void *arg, int part, int parts);

/* Runs body(arg, part, parts) for every part in [0, parts): part 0 on this
 * thread, the others on helpers, and returns once all have returned. The
 * caller holds the team (pynn_team_begin answered `parts`, cpu.h), so one
 * call at a time has the helpers. Returns 0, having run nothing, when parts
 * is out of [2, MAX_PARTS] or a helper thread cannot be started; the caller
 * then runs alone. */
int pynn_helpers_run(int parts, pynn_helpers_body body, void *arg);

/* A barrier among the `parts` threads of one pynn_helpers_run, all running,
 * so a spin on one shared counter does: arrivals only grow, and a thread's
 * n-th barrier (*passed counts them, from 0) waits for n x parts of them.
 * `arrived` starts at 0 for each run. It costs one cache line passed
 * between the cores, a fraction of an OpenMP barrier. Its release/acquire
 * pair makes each thread's writes before it visible to the others after
 * it. */
void pynn_helpers_barrier(atomic_int *arrived, int parts, int *passed);

#endif
