/* Running an inference plan's kernel steps (contract in plan.h). */
#include "plan.h"
#include "activations.h"
#include "pool.h"

#include <math.h>

#include "helpers.h"

/* A step shared among threads is cut at multiples of these many outputs, so
 * each output is computed exactly as by one thread: GEMV kernels group
 * outputs by 4 (the dot kernels' grouping never changes a sum), element-wise
 * kernels run 16-float vectors. */
#define GEMM_GRAIN 16
#define MAP_GRAIN 64
/* One team for the whole plan (this thread and helper threads, helpers.h)
 * pays off only for small batches (at most this many rows per GEMM; larger
 * ones are split by the GEMM itself, over rows) with at least this many
 * multiply-adds: there a team per GEMM would start and end once per layer,
 * at a cost comparable to the layer's own work, where one team for the plan
 * pays that once, and helper threads, unlike an OpenMP team, pay it in a
 * cache line transfer. */
#define TEAM_MAX_ROWS 16
#define TEAM_MIN_WORK (1 << 16)
/* Steps smaller than this many multiply-adds or elements are one chunk, run
 * by one thread of the team while the others wait for it. */
#define SHARED_STEP_WORK (1 << 13)
/* Each thread's share of a step is claimed in this many chunks, so a
 * descheduled helper holds up at most the one it is running, while the
 * others take the rest. */
#define TEAM_CHUNKS 2

static ptrdiff_t min_size(ptrdiff_t x, ptrdiff_t y) { return x < y ? x : y; }

void pynn_fold_batchnorm(ptrdiff_t channels, ptrdiff_t per_channel, const float *weight,
                         const float *bias, const float *gamma, const float *beta,
                         const float *mean, const float *var, float eps, float *folded_weight,
                         float *folded_bias)
{
    for (ptrdiff_t c = 0; c < channels; c++) {
        const float scale = (float)(gamma[c] / sqrt((double)var[c] + eps));
        for (ptrdiff_t i = 0; i < per_channel; i++)
            folded_weight[c * per_channel + i] = weight[c * per_channel + i] * scale;
        folded_bias[c] = ((bias ? bias[c] : 0.0f) - mean[c]) * scale + beta[c];
    }
}

/* A sum step splits its elements in chunks of this many among threads,
 * from SUM_PARALLEL_FLOATS on (element-wise: any split gives the same bits). */
#define SUM_CHUNK_FLOATS (1 << 14)
#define SUM_PARALLEL_FLOATS (1 << 17)

/* y = x + other, then ReLU when asked: the residual connection's sum. */
static void add_share(ptrdiff_t n, const float *x, const float *other, float *y, int relu)
{
    if (relu) {
        for (ptrdiff_t i = 0; i < n; i++) {
            const float sum = x[i] + other[i];
            y[i] = sum > 0.0f ? sum : 0.0f;
        }
    } else {
        for (ptrdiff_t i = 0; i < n; i++)
            y[i] = x[i] + other[i];
    }
}


/* Share `part` of `parts` of the step's outputs: GEMM columns, map elements,
 * softmax rows; `ctx` sets the threads each kernel call may use itself. */
static void run_share(const pynn_context *ctx, const pynn_plan_step *s, const float *x, float *y,
                      int part, int parts)
{
    const ptrdiff_t count = s->kind == PYNN_STEP_GEMM ? s->n : s->kind == PYNN_STEP_MAP ? s->n : s->m;
    const ptrdiff_t grain = s->kind == PYNN_STEP_GEMM ? GEMM_GRAIN : s->kind == PYNN_STEP_MAP ? MAP_GRAIN : 1;
    ptrdiff_t per_part = ((count + parts - 1) / parts + grain - 1) / grain * grain;
    ptrdiff_t first = min_size(part * per_part, count);
    ptrdiff_t size = min_size(per_part, count - first);
    if (s->kind == PYNN_STEP_GEMM && s->m > 1) {
        /* Whole grains, the last share taking the rest: a share of a few
         * columns would send the GEMM to a GEMV or one-row-at-a-time path,
         * whose sums are not those of the whole product's kernel. */
        const ptrdiff_t shares = count / grain < parts ? (count / grain > 0 ? count / grain : 1) : parts;
        per_part = count / shares / grain * grain;
        first = part < shares ? part * per_part : count;
        size = part == shares - 1 ? count - first : part < shares ? per_part : 0;
    }
    if (size <= 0)
        return;
    if (s->kind == PYNN_STEP_GEMM) {
        if (s->m == 0)
            return;
        pynn_epilogue epilogue = s->epilogue;
        if (epilogue.col_bias)
            epilogue.col_bias += first;
        pynn_sgemm(ctx, 0, 1, s->m, size, s->k, 1.0f, x, s->k, s->weight + first * s->k, s->k,
             0.0f, y + first, s->n, &epilogue);
    } else if (s->kind == PYNN_STEP_MAP) {
        s->map(ctx, size, x + first, NULL, y + first, s->parameter);
    } else {
        const ptrdiff_t row = s->n * s->k;
        if (row > 0)
            pynn_softmax(ctx, size, s->n, s->k, x + first * row, y + first * row, 0);
    }
}

/* Builds without OpenMP run every kernel on one thread, plans included. */
#ifdef _OPENMP
/* The steps a team may share: those run_share splits. */
static int step_is_splittable(const pynn_plan_step *s)
{
    return s->kind == PYNN_STEP_GEMM || s->kind == PYNN_STEP_MAP || s->kind == PYNN_STEP_SOFTMAX;
}

/* One team for the whole plan: small batches with enough work, every step splittable. */
static int team_pays_off(const pynn_context *ctx, const pynn_plan_step *steps, ptrdiff_t count)
{
    if (ctx->num_threads < 2)
        return 0;
    ptrdiff_t work = 0;
    for (ptrdiff_t i = 0; i < count; i++) {
        if (!step_is_splittable(&steps[i]))
            return 0;
        if (steps[i].kind == PYNN_STEP_GEMM) {
            if (steps[i].m > TEAM_MAX_ROWS)
                return 0;
            work += steps[i].m * steps[i].n * steps[i].k;
        }
    }
    return work >= TEAM_MIN_WORK;
}

/* Multiply-adds of a GEMM, elements of the others. */
static ptrdiff_t step_work(const pynn_plan_step *s)
{
    return s->kind == PYNN_STEP_MAP ? s->n : s->m * s->n * s->k;
}

static int step_is_shared(const pynn_plan_step *s) { return step_work(s) >= SHARED_STEP_WORK; }

/* Steps [0, count) run by a team of helper threads (helpers.h), one phase
 * each, every share of a step cut into `chunks` claimable chunks. */
typedef struct {
    const pynn_context *alone;
    const pynn_plan_step *steps;
    float *const *slots;
    int parts, chunks;
} team_call;

/* Chunk `chunk` of share `share` of step `phase`. A step below
 * SHARED_STEP_WORK is one chunk, and so is each share of a GEMM of several
 * rows: its kernel may depend on the width it is given, where a row's is
 * the same for any width (the dot kernel), so only the grain fixes its bits. */
static void run_chunk(void *arg, int phase, int share, int chunk)
{
    const team_call *call = arg;
    const pynn_plan_step *s = &call->steps[phase];
    const int shares = step_is_shared(s) ? call->parts : 1;
    const int pieces = shares > 1 && !(s->kind == PYNN_STEP_GEMM && s->m > 1) ? call->chunks : 1;
    if (share < shares && chunk < pieces)
        run_share(call->alone, s, call->slots[s->source], call->slots[s->target],
                  share * pieces + chunk, shares * pieces);
}
#endif

int pynn_plan_run(const pynn_context *ctx, const pynn_plan_step *steps, ptrdiff_t count,
                  float *const *slots)
{
    ptrdiff_t done = 0;
#ifdef _OPENMP
    pynn_context alone = *ctx;
    alone.num_threads = 1;
    if (team_pays_off(ctx, steps, count)) {
        /* A second Python thread predicting meanwhile runs alone (cpu.h) */
        const int team = pynn_team_begin(ctx, ctx->num_threads < PYNN_HELPERS_MAX_PARTS
                                                  ? ctx->num_threads : PYNN_HELPERS_MAX_PARTS);
        if (team > 1) {
            /* Steps after the last shared one (a classifier head) run on this
             * thread once the team has ended: the team's end is the barrier
             * they need, one fewer. */
            ptrdiff_t in_team = count;
            while (in_team > 1 && !step_is_shared(&steps[in_team - 1]))
                in_team--;
            team_call call = {&alone, steps, slots, team, TEAM_CHUNKS};
            if (in_team <= PYNN_HELPERS_MAX_PHASES &&
                pynn_helpers_run(team, (int)in_team, TEAM_CHUNKS, run_chunk, &call))
                done = in_team;
            pynn_team_end(ctx, team);
        }
        ctx = &alone;  /* the team has ended, or another call's team has the cores */
    }
#endif
    for (ptrdiff_t i = done; i < count; i++) {
        const pynn_plan_step *s = &steps[i];
        if (s->kind == PYNN_STEP_CONV) {
            if (pynn_conv2d_forward(ctx, &s->conv, slots[s->source], s->weight, s->epilogue.col_bias,
                                    s->epilogue.activation, slots[s->target], s->workspace))
                return -1;
        } else if (s->kind == PYNN_STEP_MEAN) {
            pynn_global_avg_pool2d_forward(ctx, s->m, s->n, slots[s->source], slots[s->target]);
        } else if (s->kind == PYNN_STEP_MAX_POOL) {
            pynn_max_pool2d_forward(ctx, &s->pool, slots[s->source], slots[s->target], NULL);
        } else if (s->kind == PYNN_STEP_AVG_POOL) {
            pynn_avg_pool2d_forward(ctx, &s->pool, s->n != 0, slots[s->source], slots[s->target]);
        } else if (s->kind == PYNN_STEP_ADAPTIVE_POOL) {
            pynn_adaptive_avg_pool2d_forward(ctx, s->pool.planes, s->pool.height, s->pool.width,
                                             s->pool.out_h, s->pool.out_w, slots[s->source],
                                             slots[s->target]);
        } else if (s->kind == PYNN_STEP_BROADCAST) {
            pynn_broadcast_binary(ctx, s->op, s->rank, s->out_shape, s->x_shape, slots[s->source],
                                  s->other_shape, slots[s->other], slots[s->target]);
        } else if (s->kind == PYNN_STEP_ADD) {
            const float *x = slots[s->source], *other = slots[s->other];
            float *y = slots[s->target];
            const int relu = s->epilogue.activation == PYNN_ACTIVATION_RELU;
            const ptrdiff_t chunks = (s->n + SUM_CHUNK_FLOATS - 1) / SUM_CHUNK_FLOATS;
            PYNN_TEAM_FOR(ctx, s->n >= SUM_PARALLEL_FLOATS ? ctx->num_threads : 1, chunk, chunks, {
                const ptrdiff_t first = chunk * SUM_CHUNK_FLOATS;
                add_share(min_size(SUM_CHUNK_FLOATS, s->n - first), x + first, other + first,
                          y + first, relu);
            });
        } else {
            run_share(ctx, s, slots[s->source], slots[s->target], 0, 1);
        }
    }
    return 0;
}
