#define _GNU_SOURCE  /* sched_getaffinity, CPU_COUNT */
/* The C API (include/pynn.h): models loaded from files, each call running a
 * plan (runner.h) kept per input shapes and thread count. A plan is
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
    return m ? copy_shape(&m->graph.inputs[0].shape, shape, max_rank) : -1;
}

int pynn_model_output_shape(const pynn_model *m, int64_t *shape, int max_rank)
{
    return m ? copy_shape(&m->graph.outputs[0].shape, shape, max_rank) : -1;
}

int pynn_model_input_count(const pynn_model *m) { return m ? m->graph.input_count : -1; }
int pynn_model_output_count(const pynn_model *m) { return m ? m->graph.output_count : -1; }

static int io_info(const pynn_graph_io *io, int count, int index, const char **name, pynn_dtype *dtype,
                   int64_t *shape, int max_rank)
{
    if (index < 0 || index >= count)
        return -1;
    if (name)
        *name = io[index].name[0] ? io[index].name : NULL;
    if (dtype)
        *dtype = io[index].dtype;
    return copy_shape(&io[index].shape, shape, max_rank);
}

int pynn_model_input_info(const pynn_model *m, int index, const char **name, pynn_dtype *dtype, int64_t *shape,
                          int max_rank)
{
    return m ? io_info(m->graph.inputs, m->graph.input_count, index, name, dtype, shape, max_rank) : -1;
}

int pynn_model_output_info(const pynn_model *m, int index, const char **name, pynn_dtype *dtype, int64_t *shape,
                           int max_rank)
{
    return m ? io_info(m->graph.outputs, m->graph.output_count, index, name, dtype, shape, max_rank) : -1;
}

/* A kept plan for these input shapes and threads no call is running, marked busy; else -1. */
static int take_plan(pynn_model *m, const pynn_shape *inputs, int threads)
{
    for (int i = 0; i < m->plan_count; i++) {
        kept_plan *p = &m->plans[i];
        if (!p->busy && pynn_runner_runs(p->runner, inputs, threads)) {
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

static int check_outputs(const pynn_model *m, const char *caller, const pynn_runner *runner,
                         const pynn_tensor *outputs, char *err, size_t err_len);

/* Runs the plan for `shapes` (checked) on inputs and outputs (when given,
 * `tensors` are the outputs checked against the plan's shapes); 0, or -1
 * with a message after "<caller>: <file>: ". */
static int run_plan(pynn_model *m, const char *caller, const pynn_shape *shapes, const void *const *inputs,
                    void *const *outputs, const pynn_tensor *tensors, char *err, size_t err_len)
{
    const pynn_context ctx = current_context();
    pthread_mutex_lock(&m->lock);
    int index = take_plan(m, shapes, ctx.num_threads);
    pthread_mutex_unlock(&m->lock);
    if (index < 0) {
        char why[512] = "";
        pynn_runner *runner = pynn_runner_build(&m->graph, shapes, ctx.num_threads, why, sizeof why);
        if (!runner)
            return pynn_capi_error(err, err_len, "%s: %s: %s", caller, m->path, why);
        pynn_runner *evicted;
        pthread_mutex_lock(&m->lock);
        index = keep_plan(m, runner, &evicted);
        pthread_mutex_unlock(&m->lock);
        pynn_runner_free(evicted);
        if (index < 0) {
            pynn_runner_free(runner);
            return pynn_capi_error(err, err_len, "%s: out of memory", caller);
        }
    }
    pthread_mutex_lock(&m->lock);
    pynn_runner *runner = m->plans[index].runner;  /* the list may have moved, not our entry */
    pthread_mutex_unlock(&m->lock);
    char why[256] = "";
    int failed = tensors ? check_outputs(m, caller, runner, tensors, err, err_len) : 0;
    if (!failed && pynn_runner_run(runner, &ctx, inputs, outputs, why, sizeof why))
        failed = pynn_capi_error(err, err_len, "%s: %s: %s", caller, m->path, why);
    pthread_mutex_lock(&m->lock);
    for (int i = 0; i < m->plan_count; i++)
        if (m->plans[i].runner == runner)
            m->plans[i].busy = 0;
    pthread_mutex_unlock(&m->lock);
    return failed ? -1 : 0;
}

int pynn_model_predict(pynn_model *m, const float *x, int64_t batch, float *y, char *err, size_t err_len)
{
    if (!m || !x || !y) {
        say(err, err_len, "pynn_model_predict: the model, x and y must not be NULL");
        return -1;
    }
    const pynn_graph_io *input = &m->graph.inputs[0];
    int fixed = 1;
    for (int axis = 0; axis < input->shape.rank; axis++)
        fixed &= input->shape.dims[axis] >= 0;
    if (m->graph.input_count != 1 || m->graph.output_count != 1 || input->dtype != PYNN_FLOAT32 || !fixed)
        return pynn_capi_error(err, err_len, "pynn_model_predict: %s: the model takes %d inputs (the first %s%s) "
                               "and gives %d outputs; run it with pynn_model_run", m->path, m->graph.input_count,
                               input->dtype == PYNN_INT64 ? "int64" : input->dtype == PYNN_BOOL ? "bool" : "float32",
                               fixed ? "" : " with a variable axis", m->graph.output_count);
    const int64_t rows = pynn_shape_size(&input->shape);
    if (batch < 0 || (rows && batch > ((int64_t)1 << 40) / rows))
        return pynn_capi_error(err, err_len, "pynn_model_predict: %s: batch %lld is out of range", m->path,
                               (long long)batch);
    if (batch == 0)
        return 0;
    const pynn_shape shape = pynn_graph_input(&m->graph, 0, batch, 0);
    const void *inputs[1] = {x};
    void *outputs[1] = {y};
    return run_plan(m, "pynn_model_predict", &shape, inputs, outputs, NULL, err, err_len);
}

static void shape_text(const int64_t *dims, int rank, char *text, size_t length)
{
    size_t used = (size_t)snprintf(text, length, "(");
    for (int axis = 0; axis < rank && used < length; axis++)
        used += (size_t)snprintf(text + used, length - used, axis ? ", %lld" : "%lld", (long long)dims[axis]);
    if (used < length)
        snprintf(text + used, length - used, ")");
}

static const char *dtype_name(pynn_dtype dtype)
{
    return dtype == PYNN_FLOAT32 ? "float32" : dtype == PYNN_INT64 ? "int64" : dtype == PYNN_BOOL ? "bool" : "unknown";
}

/* "input 1 ('user')": how messages name an input. */
static void input_label(const pynn_graph *graph, int index, char *label, size_t length)
{
    const char *name = graph->inputs[index].name;
    snprintf(label, length, name[0] ? "input %d ('%.100s')" : "input %d", index, name);
}

/* The inputs checked against the model's (count, dtype, shape, one batch
 * size, data) into shapes[]; 0, or -1 with a message naming the input. */
static int checked_inputs(const pynn_model *m, const char *caller, const pynn_tensor *inputs, int n_inputs,
                          pynn_shape *shapes, char *err, size_t err_len)
{
    const pynn_graph *graph = &m->graph;
    if (!inputs || n_inputs != graph->input_count)
        return pynn_capi_error(err, err_len, "%s: %s: the model takes %d inputs, got %d", caller, m->path,
                               graph->input_count, inputs ? n_inputs : 0);
    for (int i = 0; i < n_inputs; i++) {
        const pynn_tensor *t = &inputs[i];
        const pynn_graph_io *io = &graph->inputs[i];
        char label[160];
        input_label(graph, i, label, sizeof label);
        if (t->dtype != io->dtype)
            return pynn_capi_error(err, err_len, "%s: %s: %s must be %s, got %s", caller, m->path, label,
                                   dtype_name(io->dtype), dtype_name(t->dtype));
        int fits = t->rank == io->shape.rank + 1 && t->rank <= PYNN_MAX_RANK;
        int64_t size = 1;
        for (int axis = 0; fits && axis < t->rank; axis++) {
            fits = t->shape[axis] >= 0 && (!t->shape[axis] || size <= ((int64_t)1 << 40) / t->shape[axis]);
            size *= fits ? t->shape[axis] : 1;
        }
        shapes[i].rank = fits ? t->rank : 0;
        for (int axis = 0; axis < shapes[i].rank; axis++)
            shapes[i].dims[axis] = t->shape[axis];
        if (!fits || !pynn_shape_fits(&io->shape, &shapes[i])) {
            char want[160] = "(batch";
            size_t used = strlen(want);
            for (int axis = 0; axis < io->shape.rank && used < sizeof want; axis++)
                used += (size_t)snprintf(want + used, sizeof want - used, io->shape.dims[axis] < 0 ? ", any"
                                         : ", %lld", (long long)io->shape.dims[axis]);
            if (used < sizeof want)
                snprintf(want + used, sizeof want - used, ")");
            char got[200] = "a shape of more than 8 axes";
            if (t->rank >= 0 && t->rank <= PYNN_MAX_RANK)
                shape_text(t->shape, t->rank, got, sizeof got);
            return pynn_capi_error(err, err_len, "%s: %s: %s must have shape %s, got %s", caller, m->path,
                                   label, want, got);
        }
        if (shapes[i].dims[0] != shapes[0].dims[0])
            return pynn_capi_error(err, err_len, "%s: %s: %s has %lld samples, input 0 has %lld", caller, m->path,
                                   label, (long long)shapes[i].dims[0], (long long)shapes[0].dims[0]);
    }
    return 0;
}

static int check_outputs(const pynn_model *m, const char *caller, const pynn_runner *runner,
                         const pynn_tensor *outputs, char *err, size_t err_len)
{
    for (int i = 0; i < m->graph.output_count; i++) {
        const pynn_tensor *t = &outputs[i];
        const pynn_shape *made = pynn_runner_shape(runner, m->graph.outputs[i].slot);
        int fits = t->dtype == PYNN_FLOAT32 && t->rank == made->rank;
        for (int axis = 0; fits && axis < t->rank; axis++)
            fits = t->shape[axis] == made->dims[axis];
        if (!fits) {
            char want[200];
            shape_text(made->dims, made->rank, want, sizeof want);
            return pynn_capi_error(err, err_len, "%s: %s: output %d must be float32 of shape %s "
                                   "(pynn_model_output_shapes tells)", caller, m->path, i, want);
        }
        if (!t->data && pynn_shape_size(made))
            return pynn_capi_error(err, err_len, "%s: %s: output %d has no data", caller, m->path, i);
    }
    return 0;
}

/* Every output's shape for checked input shapes (a kept plan's when there
 * is one); 0, or -1 with a message. */
static int shapes_for(pynn_model *m, const char *caller, const pynn_shape *inputs, pynn_shape *outputs,
                      char *err, size_t err_len)
{
    int known = 0;
    pthread_mutex_lock(&m->lock);
    for (int p = 0; p < m->plan_count && !known; p++)
        if ((known = pynn_runner_runs(m->plans[p].runner, inputs, -1)))
            for (int i = 0; i < m->graph.output_count; i++)
                outputs[i] = *pynn_runner_shape(m->plans[p].runner, m->graph.outputs[i].slot);
    pthread_mutex_unlock(&m->lock);
    if (known)
        return 0;
    pynn_shape *shapes = calloc((size_t)m->graph.slot_count, sizeof *shapes);
    char why[400] = "";
    if (!shapes)
        return pynn_capi_error(err, err_len, "%s: out of memory", caller);
    const int failed = pynn_graph_shapes(&m->graph, inputs, shapes, why, sizeof why);
    for (int i = 0; i < m->graph.output_count && !failed; i++)
        outputs[i] = shapes[m->graph.outputs[i].slot];
    free(shapes);
    return failed ? pynn_capi_error(err, err_len, "%s: %s: %s", caller, m->path, why) : 0;
}

int pynn_model_output_shapes(pynn_model *m, const pynn_tensor *inputs, int n_inputs, pynn_tensor *outputs,
                             int n_outputs, char *err, size_t err_len)
{
    static const char caller[] = "pynn_model_output_shapes";
    pynn_shape given[PYNN_GRAPH_MAX_IO], made[PYNN_GRAPH_MAX_IO];
    if (!m)
        return pynn_capi_error(err, err_len, "%s: the model must not be NULL", caller);
    if (!outputs || n_outputs != m->graph.output_count)
        return pynn_capi_error(err, err_len, "%s: %s: the model gives %d outputs, got room for %d", caller, m->path,
                               m->graph.output_count, outputs ? n_outputs : 0);
    if (checked_inputs(m, caller, inputs, n_inputs, given, err, err_len)
        || shapes_for(m, caller, given, made, err, err_len))
        return -1;
    for (int i = 0; i < n_outputs; i++) {
        if (made[i].rank > PYNN_MAX_RANK)
            return pynn_capi_error(err, err_len, "%s: %s: output %d has more than %d axes", caller, m->path, i,
                                   PYNN_MAX_RANK);
        outputs[i].dtype = PYNN_FLOAT32;
        outputs[i].rank = made[i].rank;
        memcpy(outputs[i].shape, made[i].dims, (size_t)made[i].rank * sizeof *made[i].dims);
    }
    return 0;
}

int pynn_model_run(pynn_model *m, const pynn_tensor *inputs, int n_inputs, pynn_tensor *outputs, int n_outputs,
                   char *err, size_t err_len)
{
    static const char caller[] = "pynn_model_run";
    pynn_shape given[PYNN_GRAPH_MAX_IO];
    const void *input_data[PYNN_GRAPH_MAX_IO];
    void *output_data[PYNN_GRAPH_MAX_IO];
    if (!m)
        return pynn_capi_error(err, err_len, "%s: the model must not be NULL", caller);
    if (!outputs || n_outputs != m->graph.output_count)
        return pynn_capi_error(err, err_len, "%s: %s: the model gives %d outputs, got %d", caller, m->path,
                               m->graph.output_count, outputs ? n_outputs : 0);
    if (checked_inputs(m, caller, inputs, n_inputs, given, err, err_len))
        return -1;
    int empty = 0;
    for (int i = 0; i < n_inputs; i++) {
        char label[160];
        input_label(&m->graph, i, label, sizeof label);
        if (!inputs[i].data && pynn_shape_size(&given[i]))
            return pynn_capi_error(err, err_len, "%s: %s: %s has no data", caller, m->path, label);
        input_data[i] = inputs[i].data;
        empty |= given[i].dims[0] == 0;
    }
    for (int i = 0; i < n_outputs; i++)
        output_data[i] = outputs[i].data;
    if (empty) {  /* no plan for no samples: the outputs' shapes from the graph */
        pynn_shape made[PYNN_GRAPH_MAX_IO];
        if (shapes_for(m, caller, given, made, err, err_len))
            return -1;
        for (int i = 0; i < n_outputs; i++)
            if (outputs[i].dtype != PYNN_FLOAT32 || outputs[i].rank != made[i].rank
                || memcmp(outputs[i].shape, made[i].dims, (size_t)made[i].rank * sizeof *made[i].dims))
                return pynn_capi_error(err, err_len, "%s: %s: output %d must be float32 of the shape "
                                       "pynn_model_output_shapes tells", caller, m->path, i);
        return 0;
    }
    return run_plan(m, caller, given, input_data, output_data, outputs, err, err_len);
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
