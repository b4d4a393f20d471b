/* Helper threads (contract in helpers.h). */
#include "helpers.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
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
#define DESCHEDULED_NANOSECONDS 50000
#define MAX_WAKE_BACKOFF 64

/* Words shared between the threads of a run carry the run's generation in
 * their high half, so a thread that comes late tells the words of a newer
 * run from those of its own. */
static uint64_t tagged(uint32_t generation, uint32_t low) { return (uint64_t)generation << 32 | low; }
static uint32_t generation_of(uint64_t word) { return (uint32_t)(word >> 32); }

/* Thread i's lines (the caller is thread 0). First its mailbox, written by
 * the caller: the run posted to it, the run's body and argument, and the
 * claim cursors of share i, one per phase, so a post and the first phases'
 * cursors reach a helper in one cache line. Then the chunks it has finished,
 * on a line only it writes. */
typedef struct {
    /* the latest run posted to it: generation | phases << 16 | chunks << 8 | parts */
    _Alignas(64) _Atomic uint64_t posted;
    pynn_helpers_chunk body;  /* read only while holding a claim in that run */
    void *arg;
    /* per phase: generation | front << 16 | back; chunks [front, back) are unclaimed */
    _Atomic uint64_t cursor[PYNN_HELPERS_MAX_PHASES];
    atomic_int sleeping;  /* it waits on `wake`: a post must signal */
    pthread_mutex_t lock;
    pthread_cond_t wake;
    int woken, skips, backoff;  /* the caller's: see post */
    _Alignas(64) _Atomic uint64_t finished;  /* generation | chunks it finished in that run */
} member;

static member members[PYNN_HELPERS_MAX_PARTS];
/* Written only by the caller holding the team (helpers.h), so callers see
 * each other's updates through the team flag's acquire/release: helper
 * threads running (members 1 to started), the last run's generation and
 * counts. */
static int started;
static uint32_t generation;
static int last_by_caller, last_total;
static atomic_int held;
static pthread_once_t fork_handler_once = PTHREAD_ONCE_INIT;

enum { NO_CHUNK_LEFT = -1, RUN_OVER = -2 };

static void relax(void)
{
#if defined(PYNN_X86_64)
    _mm_pause();
#endif
}

/* One turn of a spin wait; now and then the core goes to any other thread
 * ready to run on it, which may be the very thread waited for (more
 * threads than cores). */
static void wait_a_little(unsigned *spins)
{
    relax();
    if (++*spins % 256 == 0)
        sched_yield();
}

static long long nanoseconds_since(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (long long)(now.tv_sec - start->tv_sec) * 1000000000LL + (now.tv_nsec - start->tv_nsec);
}

/* A chunk of `share` in `phase` of run `gen`: NO_CHUNK_LEFT, or RUN_OVER
 * once the caller has started another run. The share's own thread claims
 * from the front. Another thread claims from the back; the last chunk of a
 * share its owner has started, only after `patience` nanoseconds in which
 * the owner did not claim it: an owner running a little late finishes
 * sooner than a thread whose cache lacks that share's inputs, while an
 * owner that is descheduled holds the run up by no more than that. The successful exchange acquires
 * the caller's writes before it published the run. */
static int claim(int share, int phase, uint32_t gen, int own, long long patience)
{
    _Atomic uint64_t *cursor = &members[share].cursor[phase];
    uint64_t word = atomic_load_explicit(cursor, memory_order_relaxed);
    struct timespec waiting_since;
    int waiting = 0;
    for (;;) {
        if (generation_of(word) != gen)
            return RUN_OVER;
        const int front = (int)(word >> 16 & 0xffff), back = (int)(word & 0xffff);
        if (front >= back)
            return NO_CHUNK_LEFT;
        if (!own && front > 0 && back - front == 1) {
            if (!waiting) {
                clock_gettime(CLOCK_MONOTONIC, &waiting_since);
                waiting = 1;
            }
            if (nanoseconds_since(&waiting_since) < patience) {
                for (int pause = 0; pause < 16; pause++)
                    relax();
                word = atomic_load_explicit(cursor, memory_order_relaxed);
                continue;
            }
        }
        const uint64_t rest = own ? word + (1u << 16) : word - 1;
        if (atomic_compare_exchange_weak_explicit(cursor, &word, rest, memory_order_acquire,
                                                  memory_order_relaxed))
            return own ? front : back - 1;
    }
}

/* Chunks of run `gen` its threads have finished, or -1 once the caller has
 * started another run. */
static long finished_in(uint32_t gen, int parts)
{
    long sum = 0;
    for (int i = 0; i < parts; i++) {
        const uint64_t word = atomic_load_explicit(&members[i].finished, memory_order_acquire);
        if (generation_of(word) == gen)
            sum += (uint32_t)word;
        else if (i == 0)
            return -1;
    }
    return sum;
}

/* Thread `me`'s part in run `gen`: the chunks it ran, or -1 when the run
 * ended without it. A phase starts once all chunks before it have finished:
 * no chunk of a phase is claimed before then, so that count is reached
 * exactly when the phases before are complete. A thread's patience for
 * another share's last chunk is the time its own chunks of the phase took. */
static int take_part(int me, uint32_t gen, int phases, int chunks, int parts)
{
    int ran = 0;
    for (int phase = 0; phase < phases; phase++) {
        const long before = (long)phase * parts * chunks;
        unsigned spins = 0;
        for (long done; phase > 0 && (done = finished_in(gen, parts)) < before;
             wait_a_little(&spins))
            if (done < 0)
                return -1;
        struct timespec start;
        clock_gettime(CLOCK_MONOTONIC, &start);
        long long patience = 0;
        for (int k = 0, ran_here = 0; k < parts; k++) {
            const int share = (me + k) % parts;
            int chunk;
            if (k == 1 && ran_here > 0)
                patience = nanoseconds_since(&start) / ran_here;
            while ((chunk = claim(share, phase, gen, k == 0, patience)) >= 0) {
                members[me].body(members[me].arg, phase, share, chunk);
                ran_here++;
                atomic_store_explicit(&members[me].finished, tagged(gen, (uint32_t)++ran),
                                      memory_order_release);
            }
            if (chunk == RUN_OVER)
                return -1;
        }
    }
    return ran;
}

/* Returns the post that follows `seen`. It spins at first, and sleeps once
 * SPIN_NANOSECONDS have passed without one, or as soon as it finds it was
 * descheduled while spinning (a gap of DESCHEDULED_NANOSECONDS between two
 * looks at the clock): the cores are oversubscribed, and a spinning helper
 * would take the time the caller or its peers need. The sleeping flag and
 * `posted` are sequentially consistent on both sides, so either the poster
 * sees the flag and signals, or this thread sees the new post and does not
 * wait. */
static uint64_t wait_for_call(member *self, uint64_t seen)
{
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    long long looked = 0;
    for (unsigned spins = 0;;) {
        const uint64_t call = atomic_load_explicit(&self->posted, memory_order_acquire);
        if (call != seen)
            return call;
        wait_a_little(&spins);
        if (spins % 256 == 0) {
            const long long now = nanoseconds_since(&start);
            if (now > SPIN_NANOSECONDS || now - looked > DESCHEDULED_NANOSECONDS)
                break;
            looked = now;
        }
    }
    pthread_mutex_lock(&self->lock);
    atomic_store(&self->sleeping, 1);
    while (atomic_load(&self->posted) == seen)
        pthread_cond_wait(&self->wake, &self->lock);
    atomic_store(&self->sleeping, 0);
    pthread_mutex_unlock(&self->lock);
    return atomic_load(&self->posted);
}

static void *helper_main(void *argument)
{
    member *self = argument;
    const int me = (int)(self - members);
    for (uint64_t call = 0;;) {
        call = wait_for_call(self, call);
        for (unsigned spins = 0; atomic_load_explicit(&held, memory_order_relaxed);)
            wait_a_little(&spins);
        take_part(me, generation_of(call), (int)(call >> 16 & 0xff), (int)(call >> 8 & 0xff),
                  (int)(call & 0xff));
    }
    return NULL;
}

/* A forked child has none of its parent's threads: it starts its own. */
static void forget_helpers_in_child(void)
{
    memset(members, 0, sizeof members);
    started = 0;
}

static void register_fork_handler(void) { pthread_atfork(NULL, NULL, forget_helpers_in_child); }

static int start_helpers(int count)
{
    pthread_once(&fork_handler_once, register_fork_handler);
    while (started < count) {
        member *fresh = &members[started + 1];
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

/* Posts `call`, waking the helper if it sleeps; but when the last wakes
 * came too late for it to take any chunk (the cores are oversubscribed),
 * the next posts leave it asleep, as many as wakes in vain in a row allow
 * (doubling, up to MAX_WAKE_BACKOFF): a wake is a system call, made for no
 * gain there. */
static void post(member *to, uint64_t call)
{
    atomic_store(&to->posted, call);
    to->woken = 0;
    if (atomic_load(&to->sleeping)) {
        if (to->skips > 0) {
            to->skips--;
            return;
        }
        pthread_mutex_lock(&to->lock);
        pthread_cond_signal(&to->wake);
        pthread_mutex_unlock(&to->lock);
        to->woken = 1;
    }
}

/* After run `gen`: whether the wake, if any, was in vain (see post). */
static void count_wake(member *to, uint32_t gen)
{
    const uint64_t word = atomic_load_explicit(&to->finished, memory_order_relaxed);
    if (generation_of(word) == gen && (uint32_t)word > 0)
        to->backoff = 0;
    else if (to->woken) {
        to->backoff = to->backoff ? to->backoff * 2 : 1;
        if (to->backoff > MAX_WAKE_BACKOFF)
            to->backoff = MAX_WAKE_BACKOFF;
        to->skips = to->backoff;
    }
}

int pynn_helpers_run(int parts, int phases, int chunks, pynn_helpers_chunk body, void *arg)
{
    if (parts < 2 || parts > PYNN_HELPERS_MAX_PARTS || phases < 1 ||
        phases > PYNN_HELPERS_MAX_PHASES || chunks < 1 || chunks > PYNN_HELPERS_MAX_CHUNKS)
        return 0;
    if (!start_helpers(parts - 1))
        return 0;
    const uint32_t gen = ++generation;
    for (int i = 0; i < parts; i++) {
        members[i].body = body;
        members[i].arg = arg;
    }
    atomic_store_explicit(&members[0].finished, tagged(gen, 0), memory_order_relaxed);
    for (int share = 0; share < parts; share++)
        for (int phase = 0; phase < phases; phase++)
            atomic_store_explicit(&members[share].cursor[phase], tagged(gen, (uint32_t)chunks),
                                  memory_order_release);
    const uint64_t call = tagged(gen, (uint32_t)(phases << 16 | chunks << 8 | parts));
    for (int i = 1; i < parts; i++)
        post(&members[i], call);
    last_by_caller = take_part(0, gen, phases, chunks, parts);
    last_total = phases * parts * chunks;
    for (unsigned spins = 0; finished_in(gen, parts) < last_total;)
        wait_a_little(&spins);
    for (int i = 1; i < parts; i++)
        count_wake(&members[i], gen);
    return 1;
}

#ifdef _OPENMP
typedef struct {
    pynn_helpers_share body;
    void *arg;
    int parts;
} split_call;

static void split_chunk(void *arg, int phase, int share, int chunk)
{
    const split_call *call = arg;
    (void)phase;
    (void)chunk;
    call->body(call->arg, share, call->parts);
}
#endif

void pynn_helpers_split(const pynn_context *ctx, int wanted, pynn_helpers_share body, void *arg)
{
#ifdef _OPENMP
    const int team = pynn_team_begin(ctx, wanted < PYNN_HELPERS_MAX_PARTS ? wanted
                                                                          : PYNN_HELPERS_MAX_PARTS);
    int done = 0;
    if (team > 1) {
        split_call call = {body, arg, team};
        done = pynn_helpers_run(team, 1, 1, split_chunk, &call);
    }
    pynn_team_end(ctx, team);
    if (done)
        return;
#else
    (void)ctx;
    (void)wanted;
#endif
    body(arg, 0, 1);
}

void pynn_helpers_hold(int hold) { atomic_store(&held, hold); }

void pynn_helpers_last_run(int *by_caller, int *total)
{
    *by_caller = last_by_caller;
    *total = last_total;
}
