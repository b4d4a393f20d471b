/* Helper threads (contract in helpers.h). */
#include "helpers.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "cpu.h"
#if defined(PYNN_X86_64)
#include <immintrin.h>
#endif

/* A helper spins this long after its last call, then sleeps. A loop of calls
 * (a Python predict loop, whose gaps between calls are far shorter) finds it
 * awake; an idle process stops burning the core soon, like an OpenMP worker. */
#define SPIN_NANOSECONDS 200000

/* One helper's mailbox. The caller writes the call's fields, then `posted`;
 * the helper runs the call, then writes `finished`. The two counters sit on
 * separate cache lines, so each side spins on a line only the other writes. */
typedef struct {
    _Alignas(64) atomic_int posted;  /* calls posted to this helper */
    atomic_int sleeping;             /* it waits on `wake`: a post must signal */
    pynn_helpers_body body;
    void *arg;
    int part, parts;
    _Alignas(64) atomic_int finished;  /* calls it has run */
    pthread_mutex_t lock;
    pthread_cond_t wake;
} helper;

static helper helpers[PYNN_HELPERS_MAX_PARTS - 1];
/* Helpers running: read and grown only by the caller holding the team
 * (helpers.h), so callers see each other's updates through the team flag's
 * acquire/release. */
static int started;
static pthread_once_t fork_handler_once = PTHREAD_ONCE_INIT;

static void relax(void)
{
#if defined(PYNN_X86_64)
    _mm_pause();
#endif
}

static long long nanoseconds_since(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (long long)(now.tv_sec - start->tv_sec) * 1000000000LL + (now.tv_nsec - start->tv_nsec);
}

/* Returns once a call after the `seen` ones has been posted. The sleeping
 * flag and `posted` are sequentially consistent on both sides, so either the
 * poster sees the flag and signals, or this thread sees the new post and
 * does not wait. */
static void wait_for_call(helper *self, int seen)
{
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (unsigned spins = 1;; spins++) {
        if (atomic_load_explicit(&self->posted, memory_order_acquire) != seen)
            return;
        relax();
        if (spins % 256 == 0 && nanoseconds_since(&start) > SPIN_NANOSECONDS)
            break;
    }
    pthread_mutex_lock(&self->lock);
    atomic_store(&self->sleeping, 1);
    while (atomic_load(&self->posted) == seen)
        pthread_cond_wait(&self->wake, &self->lock);
    atomic_store(&self->sleeping, 0);
    pthread_mutex_unlock(&self->lock);
}

static void *helper_main(void *argument)
{
    helper *self = argument;
    /* the caller posts again only after this helper has finished */
    for (int seen = 0;; ) {
        wait_for_call(self, seen);
        seen++;
        self->body(self->arg, self->part, self->parts);
        atomic_store_explicit(&self->finished, seen, memory_order_release);
    }
    return NULL;
}

/* A forked child has none of its parent's threads: it starts its own. */
static void forget_helpers_in_child(void)
{
    memset(helpers, 0, sizeof helpers);
    started = 0;
}

static void register_fork_handler(void) { pthread_atfork(NULL, NULL, forget_helpers_in_child); }

static int start_helpers(int count)
{
    pthread_once(&fork_handler_once, register_fork_handler);
    while (started < count) {
        helper *fresh = &helpers[started];
        memset(fresh, 0, sizeof *fresh);
        if (pthread_mutex_init(&fresh->lock, NULL) != 0)
            return 0;
        pthread_attr_t attributes;
        pthread_t thread;
        int created = pthread_cond_init(&fresh->wake, NULL) == 0;
        created = created && pthread_attr_init(&attributes) == 0;
        if (created) {
            pthread_attr_setdetachstate(&attributes, PTHREAD_CREATE_DETACHED);
            created = pthread_create(&thread, &attributes, helper_main, fresh) == 0;
            pthread_attr_destroy(&attributes);
        }
        if (!created)
            return 0;
        started++;
    }
    return 1;
}

static void post(helper *to, pynn_helpers_body body, void *arg, int part, int parts)
{
    to->body = body;
    to->arg = arg;
    to->part = part;
    to->parts = parts;
    atomic_fetch_add(&to->posted, 1);
    if (atomic_load(&to->sleeping)) {
        pthread_mutex_lock(&to->lock);
        pthread_cond_signal(&to->wake);
        pthread_mutex_unlock(&to->lock);
    }
}

int pynn_helpers_run(int parts, pynn_helpers_body body, void *arg)
{
    if (parts < 2 || parts > PYNN_HELPERS_MAX_PARTS)
        return 0;
    const int ready = start_helpers(parts - 1);
    if (ready) {
        for (int part = 1; part < parts; part++)
            post(&helpers[part - 1], body, arg, part, parts);
        body(arg, 0, parts);
        for (int part = 1; part < parts; part++) {
            helper *from = &helpers[part - 1];
            const int posted = atomic_load_explicit(&from->posted, memory_order_relaxed);
            while (atomic_load_explicit(&from->finished, memory_order_acquire) != posted)
                relax();
        }
    }
    return ready;
}

void pynn_helpers_barrier(atomic_int *arrived, int parts, int *passed)
{
    const int target = ++*passed * parts;
    atomic_fetch_add_explicit(arrived, 1, memory_order_acq_rel);
    while (atomic_load_explicit(arrived, memory_order_acquire) < target)
        relax();
}
