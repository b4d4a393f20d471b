/* Helper threads for parallel calls too short for an OpenMP region.
 *
 * Starting and ending an OpenMP region (libgomp's team set-up and a futex
 * wake on each side) costs a sizeable share of a batch-1 predict of a small
 * MLP. These helpers stay awake after a call, spinning on a line of their
 * own, so the next call reaches them in a cache line transfer; they sleep
 * once no call has come for a while.
 *
 * A run's work is claimed, not assigned: a helper that is descheduled (more
 * runnable threads than cores) must not hold the caller up. The caller
 * claims chunks too, and can run every chunk itself; it waits for a helper
 * only while that helper runs a chunk it has claimed. */
#ifndef PYNN_HELPERS_H
#define PYNN_HELPERS_H

#include "cpu.h"

/* The most threads a run may use, the calling one included; the most phases
 * and chunks per share a run may have. */
#define PYNN_HELPERS_MAX_PARTS 64
#define PYNN_HELPERS_MAX_PHASES 32
#define PYNN_HELPERS_MAX_CHUNKS 255

/* Computes chunk `chunk` of share `share` of phase `phase`. */
typedef void (*pynn_helpers_chunk)(void *arg, int phase, int share, int chunk);

/* Runs body(arg, phase, share, chunk) once for every phase < phases,
 * share < parts and chunk < chunks, phase after phase: a phase's chunks
 * start once all of the previous phase's have returned, whose writes they
 * then see. Thread i (the caller is 0, helpers 1 to parts - 1) claims its
 * own share's chunks first, from the front, so on every run each thread
 * computes the same outputs and finds their inputs in its own cache; then
 * it claims what is left of the other shares, from the back. Which thread
 * runs a chunk never changes what the chunk computes.
 *
 * A helper touches the run (body, arg, anything they point to) only while
 * it holds a chunk it claimed in this run, so once this returns, no helper
 * reads the run again, however late it wakes up.
 *
 * The caller holds the team (pynn_team_begin answered `parts`, cpu.h), so
 * one run at a time has the helpers. Returns 0, having run nothing, when
 * the counts are out of range or a helper thread cannot be started; the
 * caller then runs alone. */
int pynn_helpers_run(int parts, int phases, int chunks, pynn_helpers_chunk body, void *arg);

/* Computes share `share` of `parts` shares of a call's work. */
typedef void (*pynn_helpers_share)(void *arg, int share, int parts);

/* One call's work in shares: body(arg, share, parts) for every share < parts,
 * on up to `wanted` threads of the helper team when this call can take the
 * team (pynn_team_begin) and OpenMP is on; otherwise body(arg, 0, 1) on this
 * thread alone. A share's outputs must not depend on `parts`, so the result
 * is the same bits on any thread count. */
void pynn_helpers_split(const pynn_context *ctx, int wanted, pynn_helpers_share body, void *arg);

/* For tests: while held, helpers take no chunk (as if descheduled), so the
 * caller runs every chunk itself. */
void pynn_helpers_hold(int held);

/* For tests: chunks the calling thread ran in the last run, and the run's
 * chunks in all. */
void pynn_helpers_last_run(int *by_caller, int *total);

#endif
