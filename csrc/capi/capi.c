#define _GNU_SOURCE  /* sched_getaffinity, CPU_COUNT */
/* The C API (include/pynn.h): models loaded from files, each predict call
 * running a plan (runner.h) kept per batch size and thread count. A plan is
 * taken by one call at a time; concurrent calls build their own, so calls
 * never share scratch and a call allocates nothing once a plan is kept. */
#include "../../include/pynn.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../kernels.h"
#include "graph.h"
#include "model_file.h"
#include "runner.h"

#ifndef PYNN_VERSION
#define PYNN_VERSION "unknown"
#endif

#define MAX_THREADS 1024
/* Plans a model keeps that no call is running; beyond this the oldest goes. */
#define KEPT_PLANS 16

typedef struct {
    pynn_runner *runner;
    int busy;
    unsigned long long used;  /* when last taken, for eviction */
} kept_plan;

struct pynn_model {
    pynn_model_file *file;
    pynn_graph graph;
    char *path;
    pthread_mutex_t lock;
    kept_plan *plans;
    int plan_count, plan_capacity;
    unsigned long long clock;
};

/* The process's context (cpu.h): the best kernel path (or PYNN_ISA's), the thread count. */
static pthread_once_t context_once = PTHREAD_ONCE_INIT;
static const pynn_kernels *context_kernels;
static atomic_int context_threads;
static atomic_int team_busy;

static int environment_threads(void)
{
    const char *raw = getenv("PYNN_NUM_THREADS");
    if (raw && *raw) {
        char *end;
        const long value = strtol(raw, &end, 10);
        if (*end == 0 && value >= 1 && value <= MAX_THREADS)
            return (int)value;
    }
#ifdef CPU_COUNT
    cpu_set_t set;
    if (!sched_getaffinity(0, sizeof set, &set) && CPU_COUNT(&set) > 0)
        return CPU_COUNT(&set) < MAX_THREADS ? CPU_COUNT(&set) : MAX_THREADS;
#endif
    const long online = sysconf(_SC_NPROCESSORS_ONLN);  /* os.cpu_count(), as Python falls back to */
    return online < 1 ? 1 : online < MAX_THREADS ? (int)online : MAX_THREADS;
}

static void context_init(void)
{
    pynn_isa isa = pynn_isa_best();
    const char *requested = getenv("PYNN_ISA");
    for (int i = 0; requested && i < PYNN_ISA_COUNT; i++)
        if (!strcmp(requested, pynn_isa_name((pynn_isa)i)) && pynn_isa_compiled((pynn_isa)i)
            && pynn_isa_supported((pynn_isa)i))
            isa = (pynn_isa)i;
    context_kernels = pynn_kernels_for(isa);
    if (!atomic_load(&context_threads))
        atomic_store(&context_threads, environment_threads());
}

static pynn_context current_context(void)
{
    pthread_once(&context_once, context_init);
    pynn_context ctx = {context_kernels, atomic_load(&context_threads), &team_busy};
    return ctx;
}

static void say(char *err, size_t err_len, const char *message)
{
    if (err && err_len)
        snprintf(err, err_len, "%s", message);
}

void pynn_set_num_threads(int n)
{
    pthread_once(&context_once, context_init);
    atomic_store(&context_threads, n < 1 ? 1 : n > MAX_THREADS ? MAX_THREADS : n);
}

const char *pynn_version(void) { return PYNN_VERSION; }

pynn_model *pynn_model_load(const char *path, char *err, size_t err_len)
{
    pynn_model_file *file = pynn_model_file_read(path, err, err_len);
    if (!file)
        return NULL;
    pynn_model *m = calloc(1, sizeof *m);
    if (!m || !(m->path = strdup(path)) || pthread_mutex_init(&m->lock, NULL)) {
        if (m)
            free(m->path);
        free(m);
        pynn_model_file_free(file);
        say(err, err_len, "out of memory loading a model");
        return NULL;
    }
    m->file = file;
    if (pynn_graph_build(&m->graph, file, path, err, err_len)) {
        pthread_mutex_destroy(&m->lock);
        free(m->path);
        free(m);
        pynn_model_file_free(file);
        return NULL;
    }
    return m;
}

static int copy_shape(const pynn_shape *shape, int64_t *out, int max_rank)
{
    if (max_rank < shape->rank || (!out && shape->rank))
        return -1;
    for (int axis = 0; axis < shape->rank; axis++)
        out[axis] = shape->dims[axis];
    return shape->rank;
}

int pynn_model_input_shape(const pynn_model *m, int64_t *shape, int max_rank)
{
    return m ? copy_shape(&m->graph.input_shape, shape, max_rank) : -1;
}

int pynn_model_output_shape(const pynn_model *m, int64_t *shape, int max_rank)
{
    return m ? copy_shape(&m->graph.output_shape, shape, max_rank) : -1;
}

/* A kept plan for (batch, threads) no call is running, marked busy; else -1. */
static int take_plan(pynn_model *m, int64_t batch, int threads)
{
    for (int i = 0; i < m->plan_count; i++) {
        kept_plan *p = &m->plans[i];
        if (!p->busy && pynn_runner_batch(p->runner) == batch && pynn_runner_threads(p->runner) == threads) {
            p->busy = 1;
            p->used = ++m->clock;
            return i;
        }
    }
    return -1;
}

/* Keeps `runner` busy in the model's list (evicting the oldest idle plan
 * beyond KEPT_PLANS); its index, or -1 when the list cannot grow. */
static int keep_plan(pynn_model *m, pynn_runner *runner, pynn_runner **evicted)
{
    *evicted = NULL;
    int idle = 0, oldest = -1;
    for (int i = 0; i < m->plan_count; i++)
        if (!m->plans[i].busy) {
            idle++;
            if (oldest < 0 || m->plans[i].used < m->plans[oldest].used)
                oldest = i;
        }
    int at;
    if (idle >= KEPT_PLANS) {
        *evicted = m->plans[oldest].runner;
        at = oldest;
    } else {
        if (m->plan_count == m->plan_capacity) {
            const int grown = m->plan_capacity ? 2 * m->plan_capacity : 4;
            kept_plan *plans = realloc(m->plans, (size_t)grown * sizeof *plans);
            if (!plans)
                return -1;
            m->plans = plans;
            m->plan_capacity = grown;
        }
        at = m->plan_count++;
    }
    m->plans[at].runner = runner;
    m->plans[at].busy = 1;
    m->plans[at].used = ++m->clock;
    return at;
}

int pynn_model_predict(pynn_model *m, const float *x, int64_t batch, float *y, char *err, size_t err_len)
{
    if (!m || !x || !y) {
        say(err, err_len, "pynn_model_predict: the model, x and y must not be NULL");
        return -1;
    }
    const int64_t rows = pynn_shape_size(&m->graph.input_shape);
    if (batch < 0 || (rows && batch > ((int64_t)1 << 40) / rows)) {
        if (err && err_len)
            snprintf(err, err_len, "pynn_model_predict: %s: batch %lld is out of range", m->path,
                     (long long)batch);
        return -1;
    }
    if (batch == 0)
        return 0;
    const pynn_context ctx = current_context();
    pthread_mutex_lock(&m->lock);
    int index = take_plan(m, batch, ctx.num_threads);
    pthread_mutex_unlock(&m->lock);
    if (index < 0) {
        char why[512] = "";
        pynn_runner *runner = pynn_runner_build(&m->graph, batch, ctx.num_threads, why, sizeof why);
        if (!runner) {
            if (err && err_len)
                snprintf(err, err_len, "pynn_model_predict: %s: %s", m->path, why);
            return -1;
        }
        pynn_runner *evicted;
        pthread_mutex_lock(&m->lock);
        index = keep_plan(m, runner, &evicted);
        pthread_mutex_unlock(&m->lock);
        pynn_runner_free(evicted);
        if (index < 0) {
            pynn_runner_free(runner);
            say(err, err_len, "pynn_model_predict: out of memory");
            return -1;
        }
    }
    pthread_mutex_lock(&m->lock);
    pynn_runner *runner = m->plans[index].runner;  /* the list may have moved, not our entry */
    pthread_mutex_unlock(&m->lock);
    char why[256] = "";
    const int failed = pynn_runner_run(runner, &ctx, x, y, why, sizeof why);
    pthread_mutex_lock(&m->lock);
    for (int i = 0; i < m->plan_count; i++)
        if (m->plans[i].runner == runner)
            m->plans[i].busy = 0;
    pthread_mutex_unlock(&m->lock);
    if (failed && err && err_len)
        snprintf(err, err_len, "pynn_model_predict: %s: %s", m->path, why);
    return failed ? -1 : 0;
}

void pynn_model_free(pynn_model *m)
{
    if (!m)
        return;
    for (int i = 0; i < m->plan_count; i++)
        pynn_runner_free(m->plans[i].runner);
    free(m->plans);
    pynn_graph_free(&m->graph);
    pynn_model_file_free(m->file);
    pthread_mutex_destroy(&m->lock);
    free(m->path);
    free(m);
}
