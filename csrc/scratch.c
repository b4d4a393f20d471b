/* Per-thread scratch buffers (contract in scratch.h). A pthread key rather
 * than a _Thread_local pointer, so a thread's buffers are freed when it exits
 * (Python threads come and go; OpenMP's pool threads stay). */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#include "scratch.h"

typedef struct {
    float *data[PYNN_SCRATCH_SLOTS];
    size_t capacity[PYNN_SCRATCH_SLOTS];  /* floats */
} thread_scratch;

static pthread_key_t scratch_key;
static pthread_once_t scratch_key_once = PTHREAD_ONCE_INIT;
static int scratch_key_ready;

static void free_thread_scratch(void *pointer)
{
    thread_scratch *scratch = pointer;
    for (int slot = 0; slot < PYNN_SCRATCH_SLOTS; slot++) free(scratch->data[slot]);
    free(scratch);
}

static void create_scratch_key(void)
{
    scratch_key_ready = pthread_key_create(&scratch_key, free_thread_scratch) == 0;
}

float *pynn_scratch(pynn_scratch_slot slot, ptrdiff_t count)
{
    pthread_once(&scratch_key_once, create_scratch_key);
    if (!scratch_key_ready || count < 0) return NULL;
    thread_scratch *scratch = pthread_getspecific(scratch_key);
    if (!scratch) {
        scratch = calloc(1, sizeof *scratch);
        if (!scratch || pthread_setspecific(scratch_key, scratch) != 0) {
            free(scratch);
            return NULL;
        }
    }
    /* Whole 64-byte lines, and at least one, as aligned_alloc requires. */
    const size_t wanted = ((size_t)(count > 0 ? count : 1) + 15) / 16 * 16;
    if (wanted > (size_t)PTRDIFF_MAX / sizeof(float)) return NULL;
    if (scratch->capacity[slot] < wanted) {
        free(scratch->data[slot]);
        scratch->data[slot] = aligned_alloc(64, wanted * sizeof(float));
        scratch->capacity[slot] = scratch->data[slot] ? wanted : 0;
    }
    return scratch->data[slot];
}
