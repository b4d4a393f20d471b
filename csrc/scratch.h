/* Per-thread scratch buffers that outlive a call.
 *
 * A fresh multi-MiB buffer per GEMM call costs a page fault per 4 KiB page
 * the first time it is touched (glibc hands such sizes out with mmap and
 * returns them with munmap), and under a hypervisor each fault costs more
 * than packing the page's floats: a fresh buffer made packing several times
 * slower than a reused one. So each thread keeps its buffers, grown to
 * the largest size it has needed, and frees them when it exits. */
#ifndef PYNN_SCRATCH_H
#define PYNN_SCRATCH_H

#include <stddef.h>

typedef enum {
    PYNN_SCRATCH_PACK_A = 0,
    PYNN_SCRATCH_PACK_B = 1,
    PYNN_SCRATCH_ATTENTION = 2,  /* a block of attention scores, around GEMM calls */
    PYNN_SCRATCH_SLOTS = 3
} pynn_scratch_slot;

/* A 64-byte aligned buffer of at least count floats owned by the calling
 * thread, valid until its next call for the same slot; NULL if memory runs
 * out. Contents are unspecified. */
float *pynn_scratch(pynn_scratch_slot slot, ptrdiff_t count);

#endif
