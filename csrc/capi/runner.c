/* A graph's inference plan (contract in runner.h), step for step the
 * schedule of pynn/schedule.py and the runs of pynn/_kernels/plan.pxi. */
#include "runner.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../attention.h"
#include "../batchnorm.h"
#include "../dense.h"
#include "../conv.h"
#include "../gemm.h"
#include "../layernorm.h"
#include "../plan.h"
#include "../pool.h"
#include "../tensor.h"

/* Step kinds: the plan's C kernels, and the layers plan.pxi runs through
 * their Python `infer` (each calls one kernel family here). */
typedef enum { KIND_GEMM, KIND_MAP, KIND_SOFTMAX, KIND_CONV, KIND_ADD, KIND_MEAN, KIND_OTHER } step_kind;

typedef struct {
    step_kind kind;
    const pynn_layer *layer;
    int sources[PYNN_GRAPH_MAX_INPUTS];  /* slots holding the values (views resolved) */
    int shaped[PYNN_GRAPH_MAX_INPUTS];   /* slots whose shapes the layer reads */
    int source_count;
    int target, target_count;        /* a nested model's outputs: target_count slots from target */
    int layer_relu;                  /* the layer's own activation at this call */
    int relu;                        /* a following ReLU fused by the schedule */
    const pynn_layer *batchnorm;     /* a following BatchNorm2d folded into this convolution */
} step;

struct pynn_runner {
    const pynn_graph *graph;
    pynn_shape *inputs;              /* the input shapes it runs, batch first */
    int threads;
    step *steps;
    int step_count;
    pynn_plan_step *kernel_steps;    /* per step; used by kernel kinds */
    pynn_shape *shapes;              /* per slot */
    float **slots;
    int slot_count;
    float **buffers;
    int buffer_count;
    float **folded;                  /* per step: a folded weight and bias, or NULL */
    pynn_runner **nested;            /* per step: a nested model's own plan, or NULL */
    float **scratch;                 /* per step: an attention's or transformer's arrays, or NULL */
    void **masks;                    /* per step: a masked attention's key counts and bytes, or NULL */
    float *workspace;
    int *input_slots, *output_slots; /* canonical */
    int *copied;                     /* per output: held in an input's or an earlier output's slot */
};


/* -- the schedule (pynn/schedule.py build) ----------------------------------------- */
typedef struct {
    int *alias, *readers, *private_, *producer;
    int *is_output;
} scheduling;

static int canonical(const scheduling *s, int slot)
{
    while (s->alias[slot] != slot)
        slot = s->alias[slot];
    return slot;
}

static int sole_reader(const scheduling *s, int slot)
{
    return s->private_[slot] && s->readers[slot] == 1 && !s->is_output[slot];
}

static void view(scheduling *s, int target, int source)
{
    s->alias[target] = canonical(s, source);
    s->private_[target] = sole_reader(s, source);
}

static int same_shape(const pynn_shape *a, const pynn_shape *b)
{
    if (a->rank != b->rank)
        return 0;
    for (int axis = 0; axis < a->rank; axis++)
        if (a->dims[axis] != b->dims[axis])
            return 0;
    return 1;
}

/* The kind Layer.kernel_step gives, or -1 for a view. */
static int kernel_kind(const pynn_layer *layer, const pynn_call *call, const pynn_shape *shapes)
{
    switch (layer->type) {
    case LAYER_LINEAR: return KIND_GEMM;
    case LAYER_MAP: return KIND_MAP;
    case LAYER_SOFTMAX: return KIND_SOFTMAX;
    case LAYER_VIEW_SAME: case LAYER_FLATTEN: case LAYER_RESHAPE: return -1;
    case LAYER_CONV: return KIND_CONV;
    case LAYER_GLOBAL_AVGPOOL: return KIND_MEAN;
    case LAYER_ADD:
        return call->source_count == 2 && same_shape(&shapes[call->sources[0]], &shapes[call->sources[1]])
               ? KIND_ADD : KIND_OTHER;
    default: return KIND_OTHER;
    }
}

static int build_steps(pynn_runner *r, const pynn_graph *graph, scheduling *s)
{
    for (int c = 0; c < graph->call_count; c++)
        for (int i = 0; i < graph->calls[c].source_count; i++)
            s->readers[graph->calls[c].sources[i]]++;
    for (int slot = 0; slot < graph->slot_count; slot++) {
        s->alias[slot] = slot;
        s->private_[slot] = 1;
        s->producer[slot] = -1;
    }
    for (int i = 0; i < graph->output_count; i++)
        s->is_output[graph->outputs[i].slot] = 1;
    for (int c = 0; c < graph->call_count; c++) {
        const pynn_call *call = &graph->calls[c];
        const pynn_layer *layer = &graph->layers[call->layer];
        const int source = call->sources[0], target = call->target, single = call->target_count == 1;
        const int before = s->producer[canonical(s, source)];
        if (single && before >= 0 && !layer->takes_list && sole_reader(s, source)) {
            step *b = &r->steps[before];
            /* a convolution carrying its own ReLU is not followed by its BatchNorm's input */
            if (layer->type == LAYER_BATCHNORM2D && b->kind == KIND_CONV && !b->batchnorm && !b->relu
                && !b->layer_relu) {
                b->batchnorm = layer;
                view(s, target, source);
                continue;
            }
            if (!strcmp(layer->type_name, "ReLU") && (b->kind == KIND_GEMM || b->kind == KIND_CONV
                                                      || b->kind == KIND_ADD) && !b->relu) {
                b->relu = 1;
                view(s, target, source);
                continue;
            }
        }
        const int kind = kernel_kind(layer, call, r->shapes);
        if (kind < 0) {
            view(s, target, source);
            continue;
        }
        step *st = &r->steps[r->step_count];
        st->kind = (step_kind)kind;
        st->layer = layer;
        st->source_count = call->source_count;
        for (int i = 0; i < call->source_count; i++) {
            st->sources[i] = canonical(s, call->sources[i]);
            st->shaped[i] = call->sources[i];
        }
        st->target = target;
        st->target_count = call->target_count;
        st->layer_relu = call->relu;
        if (single)
            s->producer[target] = r->step_count;
        r->step_count++;
    }
    for (int i = 0; i < graph->input_count; i++)
        r->input_slots[i] = canonical(s, graph->inputs[i].slot);
    for (int i = 0; i < graph->output_count; i++) {
        r->output_slots[i] = canonical(s, graph->outputs[i].slot);
        r->copied[i] = 0;
        for (int k = 0; k < graph->input_count; k++)
            r->copied[i] |= r->output_slots[i] == r->input_slots[k];
        for (int k = 0; k < i; k++)
            r->copied[i] |= r->output_slots[i] == r->output_slots[k];
    }
    return 0;
}

/* -- buffers by liveness (pynn/schedule.py _assign_buffers, _take) ------------------ */
typedef struct {
    int64_t *sizes;
    int count;
    int *free_list;
    int free_count;
} pool;

static int take(pool *p, int64_t need)
{
    int best = -1;
    for (int i = 0; i < p->free_count; i++)  /* the smallest fitting one, first of equals */
        if (p->sizes[p->free_list[i]] >= need
            && (best < 0 || p->sizes[p->free_list[i]] < p->sizes[p->free_list[best]]))
            best = i;
    if (best < 0 && p->free_count) {         /* else the largest free one, grown */
        best = 0;
        for (int i = 1; i < p->free_count; i++)
            if (p->sizes[p->free_list[i]] > p->sizes[p->free_list[best]])
                best = i;
        p->sizes[p->free_list[best]] = need;
    }
    if (best < 0) {
        p->sizes[p->count] = need;
        return p->count++;
    }
    const int buffer = p->free_list[best];
    memmove(p->free_list + best, p->free_list + best + 1, (size_t)(p->free_count - best - 1) * sizeof(int));
    p->free_count--;
    return buffer;
}

static int is_caller(const pynn_runner *r, int slot)
{
    for (int i = 0; i < r->graph->input_count; i++)
        if (r->input_slots[i] == slot)
            return 1;
    for (int i = 0; i < r->graph->output_count; i++)
        if (r->output_slots[i] == slot)
            return 1;
    return 0;
}

static int assign_buffers(pynn_runner *r, int *slot_buffers, pool *p)
{
    const int n = r->slot_count;
    int *last_read = malloc((size_t)n * sizeof *last_read);
    if (!last_read)
        return -1;
    for (int slot = 0; slot < n; slot++) {
        last_read[slot] = -1;
        slot_buffers[slot] = -1;
    }
    for (int i = 0; i < r->step_count; i++)
        for (int k = 0; k < r->steps[i].source_count; k++)
            last_read[r->steps[i].sources[k]] = i;
    for (int i = 0; i < r->step_count; i++) {
        const step *st = &r->steps[i];
        int dying[PYNN_GRAPH_MAX_INPUTS], dying_count = 0;
        for (int k = 0; k < st->source_count; k++) {
            const int source = st->sources[k];
            int seen = 0;
            for (int j = 0; j < k; j++)
                seen |= st->sources[j] == source;
            if (!seen && last_read[source] == i && slot_buffers[source] >= 0)
                dying[dying_count++] = source;
        }
        int first_dying = 0;
        if ((st->kind == KIND_ADD || st->kind == KIND_MAP) && dying_count && !is_caller(r, st->target)) {
            slot_buffers[st->target] = slot_buffers[dying[0]];
            first_dying = 1;
        } else {
            for (int t = st->target; t < st->target + st->target_count; t++)
                if (!is_caller(r, t)) {
                    const int64_t need = pynn_shape_size(&r->shapes[t]);
                    slot_buffers[t] = take(p, need > 1 ? need : 1);
                }
        }
        for (int t = st->target; t < st->target + st->target_count; t++)
            if (!is_caller(r, t) && last_read[t] < 0 && slot_buffers[t] >= 0)
                p->free_list[p->free_count++] = slot_buffers[t];
        for (int k = first_dying; k < dying_count; k++)
            p->free_list[p->free_count++] = slot_buffers[dying[k]];
    }
    free(last_read);
    return 0;
}

/* -- kernel steps (pynn/_kernels/plan.pxi describe) ---------------------------------- */
static void axis_split(const pynn_shape *shape, int64_t axis, ptrdiff_t *outer, ptrdiff_t *length,
                       ptrdiff_t *inner)
{
    *outer = *length = *inner = 1;
    if (!shape->rank)
        return;
    const int64_t at = axis < 0 ? axis + shape->rank : axis;
    for (int k = 0; k < shape->rank; k++) {
        if (k < at) *outer *= shape->dims[k];
        else if (k == at) *length = shape->dims[k];
        else *inner *= shape->dims[k];
    }
}

static pynn_conv_shape conv_geometry(const pynn_layer *layer, const pynn_shape *x)
{
    pynn_conv_shape c;
    c.batch = x->dims[0];
    c.in_channels = x->dims[1];
    c.height = layer->spatial_rank == 2 ? x->dims[2] : 1;  /* a Conv1d's [N, C, L] as [N, C, 1, L] */
    c.width = x->dims[x->rank - 1];
    c.out_channels = layer->out_channels;
    c.kernel_h = layer->kernel[0];
    c.kernel_w = layer->kernel[1];
    c.stride_h = layer->stride[0];
    c.stride_w = layer->stride[1];
    c.pad_h = layer->padding[0];
    c.pad_w = layer->padding[1];
    c.dilation_h = layer->dilation[0];
    c.dilation_w = layer->dilation[1];
    c.groups = layer->groups;
    c.out_h = (c.height + 2 * c.pad_h - c.dilation_h * (c.kernel_h - 1) - 1) / c.stride_h + 1;
    c.out_w = (c.width + 2 * c.pad_w - c.dilation_w * (c.kernel_w - 1) - 1) / c.stride_w + 1;
    return c;
}

static int describe(pynn_runner *r, int index, size_t *workspace_floats)
{
    const step *st = &r->steps[index];
    pynn_plan_step *s = &r->kernel_steps[index];
    const pynn_shape *shape = &r->shapes[st->shaped[0]];
    const pynn_layer *layer = st->layer;
    memset(s, 0, sizeof *s);
    s->source = st->sources[0];
    s->target = st->target;
    const pynn_activation relu = st->layer_relu || st->relu ? PYNN_ACTIVATION_RELU : PYNN_ACTIVATION_NONE;
    switch (st->kind) {
    case KIND_GEMM:
        s->kind = PYNN_STEP_GEMM;
        s->k = shape->dims[shape->rank - 1];
        s->m = 1;
        for (int axis = 0; axis + 1 < shape->rank; axis++)
            s->m *= shape->dims[axis];
        s->n = layer->out_features;
        s->weight = layer->weight;
        s->epilogue.col_bias = layer->bias;
        s->epilogue.activation = relu;
        return 0;
    case KIND_MAP:
        s->kind = PYNN_STEP_MAP;
        s->map = layer->map;
        s->n = pynn_shape_size(shape);
        s->parameter = layer->parameter;
        return 0;
    case KIND_SOFTMAX:
        s->kind = PYNN_STEP_SOFTMAX;
        axis_split(shape, layer->axis, &s->m, &s->n, &s->k);
        return 0;
    case KIND_ADD:
        s->kind = PYNN_STEP_ADD;
        s->other = st->sources[1];
        s->n = pynn_shape_size(shape);
        s->epilogue.activation = st->relu ? PYNN_ACTIVATION_RELU : PYNN_ACTIVATION_NONE;
        return 0;
    case KIND_MEAN:
        s->kind = PYNN_STEP_MEAN;
        s->m = shape->dims[0] * shape->dims[1];
        s->n = shape->dims[2] * shape->dims[3];
        return 0;
    case KIND_CONV: {
        s->kind = PYNN_STEP_CONV;
        s->conv = conv_geometry(layer, shape);
        s->weight = layer->weight;
        s->epilogue.col_bias = layer->bias;
        s->epilogue.activation = relu;
        const pynn_layer *norm = st->batchnorm;
        if (norm) {
            const ptrdiff_t channels = layer->out_channels;
            const ptrdiff_t per_channel =
                (layer->in_channels / layer->groups) * layer->kernel[0] * layer->kernel[1];
            float *folded = pynn_aligned_floats((size_t)(channels * per_channel + channels + 16));
            if (!folded)
                return -1;
            r->folded[index] = folded;
            /* the bias after the weights, 64-byte aligned as its own array would be */
            float *folded_bias = folded + (channels * per_channel + 15) / 16 * 16;
            pynn_fold_batchnorm(channels, per_channel, layer->weight, layer->bias, norm->gamma, norm->beta,
                                norm->running_mean, norm->running_var, norm->eps, folded, folded_bias);
            s->weight = folded;
            s->epilogue.col_bias = folded_bias;
        }
        const size_t need = pynn_conv2d_workspace_size(&s->conv, r->threads);
        if (need > *workspace_floats)
            *workspace_floats = need;
        return 0;
    }
    case KIND_OTHER:
        break;
    }
    return 0;
}

/* -- attention and the transformer encoder layer (pynn/layers/attention.py, transformer.py) -- */
static size_t whole_lines(int64_t floats) { return (size_t)((floats + 15) / 16 * 16); }

/* Whether an attention step projects one tensor with the packed [N, T, 3E]
 * GEMM: as MultiheadAttention.infer, when its query, key and value are one
 * array (one slot, read in its own shape). */
static int packed_attention(const pynn_runner *r, const step *st)
{
    if (st->source_count < 3)
        return 1;
    for (int i = 0; i < 3; i++)
        if (st->sources[i] != st->sources[0]
            || !same_shape(&r->shapes[st->sources[i]], &r->shapes[st->shaped[i]]))
            return 0;
    return 1;
}

/* The floats an attention or transformer step needs beside its inputs and
 * output, for query [N, T, E] and key [N, S, E]: the packed projection
 * [N, T, 3E] (else the three projections) and the heads' output, then the
 * transformer's six [N, T, E] and [N, T, F] arrays. */
static size_t attention_scratch(const pynn_layer *layer, const pynn_shape *query, const pynn_shape *key,
                                int packed)
{
    if (layer->type != LAYER_ATTENTION && layer->type != LAYER_TRANSFORMER)
        return 0;
    const int64_t rows = query->dims[0] * query->dims[1], e = layer->attention.embed_dim;
    const int64_t key_rows = key->dims[0] * key->dims[1];
    const size_t projections = packed ? whole_lines(rows * 3 * e)
                                      : whole_lines(rows * e) + 2 * whole_lines(key_rows * e);
    const size_t attention = projections + whole_lines(rows * e);
    if (layer->type == LAYER_ATTENTION)
        return attention;
    return attention + 5 * whole_lines(rows * e) + whole_lines(rows * layer->attention.feedforward);
}

/* A key-padding mask [N, S] (bool, nonzero where the key is padding, or
 * float32 added to the scores) as MultiheadAttention's _mask_arguments
 * hands it to the kernel (the same test, pynn_attention_key_counts): the
 * number of leading keys per sequence when the mask pads at the end, else
 * the mask broadcast over heads and queries (a
 * bool one turned over into `allowed`, since the kernel's nonzero attends). */
static void mask_arguments(int64_t batch, int64_t keys, const void *data, pynn_dtype dtype, int64_t *counts,
                           unsigned char *allowed, pynn_attention_mask *mask)
{
    const unsigned char *flags = data;
    const float *bias = data;
    memset(mask, 0, sizeof *mask);
    const int at_end = pynn_attention_key_counts(batch, keys, dtype == PYNN_BOOL ? flags : NULL,
                                                 dtype == PYNN_BOOL ? NULL : bias, counts);
    if (at_end) {
        mask->key_counts = counts;
        return;
    }
    mask->batch_stride = keys;
    mask->key_stride = 1;
    if (dtype == PYNN_FLOAT32) {
        mask->bias = bias;
        return;
    }
    for (int64_t i = 0; i < batch * keys; i++)
        allowed[i] = !flags[i];
    mask->allowed = allowed;
}

/* y[rows, n] = x[rows, k] Wᵀ + bias (and ReLU), as Linear.infer and gemm_into call the GEMM. */
static void linear_rows(const pynn_context *ctx, int64_t rows, int64_t k, int64_t n, const float *x,
                        const float *weight, const float *bias, int relu, float *y)
{
    const pynn_epilogue epilogue = {bias, NULL, relu ? PYNN_ACTIVATION_RELU : PYNN_ACTIVATION_NONE};
    if (rows * n > 0)
        pynn_sgemm(ctx, 0, 1, rows, n, k, 1.0f, x, k, weight, k, 0.0f, y, n, &epilogue);
}

static void add_rows(const pynn_context *ctx, int64_t size, const float *a, const float *b, float *y)
{
    const ptrdiff_t extent = size;
    pynn_broadcast_binary(ctx, PYNN_TENSOR_ADD, 1, &extent, &extent, a, &extent, b, y);
}

/* MultiheadAttention.infer: the in-projections (one packed GEMM when
 * `packed`, query, key and value then being one tensor, else three), the
 * kernel over strided views of them per head, the output projection. */
static int attention(const pynn_context *ctx, const pynn_attention_params *a, int64_t batch, int64_t queries,
                     int64_t keys, const float *query, const float *key, const float *value, int packed,
                     const pynn_attention_mask *mask, float *y, float *scratch)
{
    const int64_t e = a->embed_dim, rows = batch * queries, key_rows = batch * keys, d = e / a->heads;
    const pynn_attention_shape shape = {batch, a->heads, queries, keys, d, d, (float)(1.0 / sqrt((double)d))};
    pynn_attention_input q, k, v;
    float *heads_out;
    if (packed) {
        float *projected = scratch;
        heads_out = scratch + whole_lines(rows * 3 * e);
        linear_rows(ctx, rows, e, 3 * e, query, a->in_weight, a->in_bias, 0, projected);
        q = (pynn_attention_input){projected, queries * 3 * e, d, 3 * e};
        k = (pynn_attention_input){projected + e, queries * 3 * e, d, 3 * e};
        v = (pynn_attention_input){projected + 2 * e, queries * 3 * e, d, 3 * e};
    } else {
        float *parts[3] = {scratch, scratch + whole_lines(rows * e),
                           scratch + whole_lines(rows * e) + whole_lines(key_rows * e)};
        const float *sources[3] = {query, key, value};
        heads_out = parts[2] + whole_lines(key_rows * e);
        for (int part = 0; part < 3; part++)
            linear_rows(ctx, part ? key_rows : rows, e, e, sources[part], a->in_weight + part * e * e,
                        a->in_bias ? a->in_bias + part * e : NULL, 0, parts[part]);
        q = (pynn_attention_input){parts[0], queries * e, d, e};
        k = (pynn_attention_input){parts[1], keys * e, d, e};
        v = (pynn_attention_input){parts[2], keys * e, d, e};
    }
    const pynn_attention_output out = {heads_out, queries * e, d, e};
    if (pynn_attention_forward(ctx, &shape, q, k, v, mask, out, NULL, NULL))
        return -1;
    linear_rows(ctx, rows, e, e, heads_out, a->out_weight, a->out_bias, 0, y);
    return 0;
}

/* TransformerEncoderLayer._run at inference: post-norm
 * norm2(r + ff(r)) with r = norm1(x + sa(x)), pre-norm
 * r + ff(norm2(r)) with r = x + sa(norm1(x)). */
static int transformer(const pynn_context *ctx, const pynn_layer *layer, int64_t batch, int64_t tokens,
                       const float *x, const pynn_attention_mask *mask, float *y, float *scratch)
{
    const pynn_attention_params *a = &layer->attention;
    const int64_t e = a->embed_dim, f = a->feedforward, rows = batch * tokens, size = rows * e;
    const double eps = layer->layer_norm_eps;
    float *attended = scratch + whole_lines(rows * 3 * e) + whole_lines(size);
    float *residual = attended + whole_lines(size), *normed = residual + whole_lines(size);
    float *summed = normed + whole_lines(size), *fed = summed + whole_lines(size);
    float *hidden = fed + whole_lines(size);
    if (size == 0)
        return 0;
    const float *attention_input = x;
    if (a->norm_first) {
        pynn_layer_norm_forward(ctx, rows, e, x, a->norm1_weight, a->norm1_bias, eps, normed);
        attention_input = normed;
    }
    if (attention(ctx, a, batch, tokens, tokens, attention_input, attention_input, attention_input, 1, mask,
                  attended, scratch))
        return -1;
    add_rows(ctx, size, x, attended, residual);
    const float *fed_input = residual;
    if (a->norm_first) {
        pynn_layer_norm_forward(ctx, rows, e, residual, a->norm2_weight, a->norm2_bias, eps, normed);
    } else {
        pynn_layer_norm_forward(ctx, rows, e, residual, a->norm1_weight, a->norm1_bias, eps, normed);
        fed_input = normed;
    }
    linear_rows(ctx, rows, e, f, normed, a->linear1_weight, a->linear1_bias, !a->gelu, hidden);
    if (a->gelu)
        pynn_gelu(ctx, rows * f, hidden, NULL, hidden, 0.0f);
    linear_rows(ctx, rows, f, e, hidden, a->linear2_weight, a->linear2_bias, 0, fed);
    if (a->norm_first) {
        add_rows(ctx, size, fed_input, fed, y);
    } else {
        add_rows(ctx, size, fed_input, fed, summed);
        pynn_layer_norm_forward(ctx, rows, e, summed, a->norm2_weight, a->norm2_bias, eps, y);
    }
    return 0;
}

void pynn_runner_free(pynn_runner *r)
{
    if (!r)
        return;
    for (int i = 0; i < r->buffer_count; i++)
        free(r->buffers[i]);
    for (int i = 0; r->folded && i < r->step_count; i++)
        free(r->folded[i]);
    for (int i = 0; r->nested && i < r->step_count; i++)
        pynn_runner_free(r->nested[i]);
    for (int i = 0; r->scratch && i < r->step_count; i++)
        free(r->scratch[i]);
    for (int i = 0; r->masks && i < r->step_count; i++)
        free(r->masks[i]);
    free(r->masks);
    free(r->inputs);
    free(r->input_slots);
    free(r->output_slots);
    free(r->copied);
    free(r->nested);
    free(r->scratch);
    free(r->buffers);
    free(r->folded);
    free(r->workspace);
    free(r->steps);
    free(r->kernel_steps);
    free(r->shapes);
    free(r->slots);
    free(r);
}

/* A nested model's step: its own plan for the step's inputs, as Python's
 * nested model runs its own plan inside the caller's (pynn/model.py infer). */
static int build_nested(pynn_runner *r, int index, char *err, size_t err_len)
{
    const step *st = &r->steps[index];
    pynn_shape inputs[PYNN_GRAPH_MAX_INPUTS];
    char why[400] = "";
    for (int i = 0; i < st->source_count; i++)
        inputs[i] = r->shapes[st->shaped[i]];
    r->nested[index] = pynn_runner_build(st->layer->inner, inputs, r->threads, why, sizeof why);
    if (!r->nested[index])
        return pynn_capi_error(err, err_len, "%s: %s", st->layer->name, why);
    return 0;
}

/* The bytes a masked attention step needs for its key counts and flags. */
static size_t mask_scratch(const pynn_runner *r, const step *st)
{
    const pynn_layer_type type = st->layer->type;
    if ((type != LAYER_ATTENTION && type != LAYER_TRANSFORMER) || st->source_count % 2)
        return 0;
    const pynn_shape *mask = &r->shapes[st->shaped[st->source_count - 1]];
    return (size_t)(mask->dims[0] * (int64_t)sizeof(int64_t) + mask->dims[0] * mask->dims[1]) + 1;
}

pynn_runner *pynn_runner_build(const pynn_graph *graph, const pynn_shape *inputs, int threads, char *err,
                               size_t err_len)
{
    const size_t slots = (size_t)graph->slot_count, calls = (size_t)graph->call_count + 1;
    pynn_runner *r = calloc(1, sizeof *r);
    scheduling s = {0};
    pool p = {0};
    int *slot_buffers = NULL;
    if (!r)
        goto out_of_memory;
    r->graph = graph;
    r->threads = threads;
    r->slot_count = graph->slot_count;
    r->shapes = calloc(slots, sizeof *r->shapes);
    r->slots = calloc(slots, sizeof *r->slots);
    r->steps = calloc(calls, sizeof *r->steps);
    r->kernel_steps = calloc(calls, sizeof *r->kernel_steps);
    r->folded = calloc(calls, sizeof *r->folded);
    r->nested = calloc(calls, sizeof *r->nested);
    r->scratch = calloc(calls, sizeof *r->scratch);
    r->masks = calloc(calls, sizeof *r->masks);
    r->inputs = calloc((size_t)graph->input_count, sizeof *r->inputs);
    r->input_slots = calloc((size_t)graph->input_count, sizeof *r->input_slots);
    r->output_slots = calloc((size_t)graph->output_count, sizeof *r->output_slots);
    r->copied = calloc((size_t)graph->output_count, sizeof *r->copied);
    s.is_output = calloc(slots, sizeof(int));
    s.alias = calloc(slots, sizeof(int));
    s.readers = calloc(slots, sizeof(int));
    s.private_ = calloc(slots, sizeof(int));
    s.producer = calloc(slots, sizeof(int));
    p.sizes = calloc(slots + 1, sizeof *p.sizes);  /* a buffer per written slot at most */
    p.free_list = calloc(2 * calls * PYNN_GRAPH_MAX_INPUTS, sizeof(int));
    slot_buffers = calloc(slots, sizeof(int));
    if (!r->shapes || !r->slots || !r->steps || !r->kernel_steps || !r->folded || !r->nested || !r->scratch
        || !r->masks || !r->inputs || !r->input_slots || !r->output_slots || !r->copied || !s.is_output
        || !s.alias
        || !s.readers
        || !s.private_ || !s.producer || !p.sizes || !p.free_list || !slot_buffers)
        goto out_of_memory;
    memcpy(r->inputs, inputs, (size_t)graph->input_count * sizeof *inputs);
    if (pynn_graph_shapes(graph, inputs, r->shapes, err, err_len))
        goto failed;
    build_steps(r, graph, &s);
    if (assign_buffers(r, slot_buffers, &p))
        goto out_of_memory;
    r->buffers = calloc((size_t)p.count + 1, sizeof *r->buffers);
    if (!r->buffers)
        goto out_of_memory;
    for (int i = 0; i < p.count; i++, r->buffer_count++)
        if (!(r->buffers[i] = pynn_aligned_floats((size_t)p.sizes[i])))
            goto out_of_memory;
    for (int slot = 0; slot < r->slot_count; slot++)
        if (slot_buffers[slot] >= 0)
            r->slots[slot] = r->buffers[slot_buffers[slot]];
    size_t workspace = 0;
    for (int i = 0; i < r->step_count; i++) {
        if (describe(r, i, &workspace))
            goto out_of_memory;
        if (r->steps[i].layer->type == LAYER_NESTED && build_nested(r, i, err, err_len))
            goto failed;
        const step *st = &r->steps[i];
        const size_t scratch = attention_scratch(st->layer, &r->shapes[st->shaped[0]],
                                                 &r->shapes[st->shaped[st->source_count >= 3]],
                                                 packed_attention(r, st));
        if (scratch && !(r->scratch[i] = pynn_aligned_floats(scratch)))
            goto out_of_memory;
        const size_t mask_bytes = mask_scratch(r, st);
        if (mask_bytes && !(r->masks[i] = pynn_aligned_floats(mask_bytes / sizeof(float) + 1)))
            goto out_of_memory;
    }
    if (!(r->workspace = pynn_aligned_floats(workspace ? workspace : 1)))
        goto out_of_memory;
    for (int i = 0; i < r->step_count; i++)
        r->kernel_steps[i].workspace = r->workspace;
    goto done;
out_of_memory:
    pynn_capi_error(err, err_len, "out of memory building the plan for a batch of %lld", (long long)inputs[0].dims[0]);
failed:
    pynn_runner_free(r);
    r = NULL;
done:
    free(s.alias);
    free(s.readers);
    free(s.private_);
    free(s.producer);
    free(s.is_output);
    free(p.sizes);
    free(p.free_list);
    free(slot_buffers);
    return r;
}

const pynn_shape *pynn_runner_shape(const pynn_runner *r, int slot) { return &r->shapes[slot]; }

int pynn_runner_runs(const pynn_runner *r, const pynn_shape *inputs, int threads)
{
    if (threads >= 0 && r->threads != threads)
        return 0;
    for (int i = 0; i < r->graph->input_count; i++)
        if (!same_shape(&r->inputs[i], &inputs[i]))
            return 0;
    return 1;
}

/* -- running (pynn/_kernels/plan.pxi run_steps, run_python) ----------------------------- */
static pynn_pool_shape pool_geometry(const pynn_layer *layer, const pynn_shape *x, const pynn_shape *y)
{
    pynn_pool_shape s;
    const int planar = layer->spatial_rank == 2;  /* 1-D pools see [N, C, L] as [N, C, 1, L] */
    s.planes = x->dims[0] * x->dims[1];
    s.height = planar ? x->dims[2] : 1;
    s.width = x->dims[x->rank - 1];
    s.out_h = planar ? y->dims[2] : 1;
    s.out_w = y->dims[y->rank - 1];
    s.kernel_h = layer->kernel[0];
    s.kernel_w = layer->kernel[1];
    s.stride_h = layer->stride[0];
    s.stride_w = layer->stride[1];
    s.pad_h = layer->padding[0];
    s.pad_w = layer->padding[1];
    s.dilation_h = layer->type == LAYER_MAXPOOL ? layer->dilation[0] : 1;
    s.dilation_w = layer->type == LAYER_MAXPOOL ? layer->dilation[1] : 1;
    return s;
}

/* An input of a broadcasting merge with 1s after its batch axis, `rank` axes in all. */
static void padded(const pynn_shape *x, int rank, ptrdiff_t *dims)
{
    const int ones = rank - x->rank;
    dims[0] = x->dims[0];
    for (int axis = 1; axis < rank; axis++)
        dims[axis] = axis <= ones ? 1 : x->dims[axis - ones];
}

static int run_other(const pynn_runner *r, const pynn_context *ctx, int index, char *err, size_t err_len)
{
    const step *st = &r->steps[index];
    const pynn_layer *layer = st->layer;
    const pynn_shape *xs = &r->shapes[st->shaped[0]], *ys = &r->shapes[st->target];
    const float *x = r->slots[st->sources[0]];
    float *y = r->slots[st->target];
    switch (layer->type) {
    case LAYER_BATCHNORM1D:
    case LAYER_BATCHNORM2D: {
        ptrdiff_t spatial = 1;
        for (int axis = 2; axis < xs->rank; axis++)
            spatial *= xs->dims[axis];
        pynn_batchnorm_eval_forward(ctx, xs->dims[0], xs->dims[1], spatial, x, layer->gamma, layer->beta,
                                    layer->eps, layer->running_mean, layer->running_var, y);
        return 0;
    }
    case LAYER_MAXPOOL: {
        const pynn_pool_shape s = pool_geometry(layer, xs, ys);
        pynn_max_pool2d_forward(ctx, &s, x, y, NULL);
        return 0;
    }
    case LAYER_AVGPOOL: {
        const pynn_pool_shape s = pool_geometry(layer, xs, ys);
        pynn_avg_pool2d_forward(ctx, &s, layer->count_include_pad, x, y);
        return 0;
    }
    case LAYER_ADD:
    case LAYER_MULTIPLY: {
        const pynn_tensor_op op = layer->type == LAYER_ADD ? PYNN_TENSOR_ADD : PYNN_TENSOR_MULTIPLY;
        const int rank = ys->rank;
        ptrdiff_t out_dims[PYNN_TENSOR_MAX_RANK], a_dims[PYNN_TENSOR_MAX_RANK], b_dims[PYNN_TENSOR_MAX_RANK];
        const ptrdiff_t size = pynn_shape_size(ys);
        if (st->source_count == 1) {
            pynn_copy_rows(ctx, 1, size, x, size, y, size);
            return 0;
        }
        if (size == 0)
            return 0;
        for (int axis = 0; axis < rank; axis++)
            out_dims[axis] = ys->dims[axis];
        padded(xs, rank, a_dims);
        padded(&r->shapes[st->shaped[1]], rank, b_dims);
        pynn_broadcast_binary(ctx, op, rank, out_dims, a_dims, x, b_dims, r->slots[st->sources[1]], y);
        for (int k = 2; k < st->source_count; k++) {
            padded(&r->shapes[st->shaped[k]], rank, b_dims);
            pynn_broadcast_binary(ctx, op, rank, out_dims, out_dims, y, b_dims, r->slots[st->sources[k]], y);
        }
        return 0;
    }
    case LAYER_ATTENTION:
    case LAYER_TRANSFORMER: {
        const int count = st->source_count, crossed = count >= 3;
        const pynn_shape *keys = &r->shapes[st->shaped[crossed]];
        pynn_attention_mask mask = {0};
        if (count % 2 == 0) {
            const pynn_shape *m = &r->shapes[st->shaped[count - 1]];
            int64_t *counts = r->masks[index];
            mask_arguments(m->dims[0], m->dims[1], r->slots[st->sources[count - 1]],
                           r->graph->slot_dtypes[st->shaped[count - 1]], counts,
                           (unsigned char *)(counts + m->dims[0]), &mask);
        }
        const int failed = layer->type == LAYER_TRANSFORMER
            ? transformer(ctx, layer, xs->dims[0], xs->dims[1], x, &mask, y, r->scratch[index])
            : attention(ctx, &layer->attention, xs->dims[0], xs->dims[1], keys->dims[1], x,
                        r->slots[st->sources[crossed]], r->slots[st->sources[2 * crossed]], packed_attention(r, st),
                        &mask, y, r->scratch[index]);
        if (failed)
            return pynn_capi_error(err, err_len, "%s: no memory for the attention scores", layer->name);
        return 0;
    }
    case LAYER_EMBEDDING: {
        const int64_t *rows = (const int64_t *)r->slots[st->sources[0]];
        const ptrdiff_t count = pynn_shape_size(xs);
        for (ptrdiff_t i = 0; i < count; i++)
            if (rows[i] < 0 || rows[i] >= layer->in_features)
                return pynn_capi_error(err, err_len, "%s: index %lld is out of range for %lld embeddings (valid: 0 "
                                       "to %lld)", layer->name, (long long)rows[i], (long long)layer->in_features,
                                       (long long)layer->in_features - 1);
        pynn_embedding_gather(ctx, count, layer->out_features, layer->weight, rows, y);
        return 0;
    }
    case LAYER_PADDING_MASK:
        pynn_padding_bias(ctx, pynn_shape_size(xs), (const int64_t *)r->slots[st->sources[0]], y);
        return 0;
    case LAYER_MEAN_POOLING:
        pynn_masked_mean(ctx, xs->dims[0], xs->dims[1], xs->dims[2], x, (const int64_t *)r->slots[st->sources[1]],
                         y);
        return 0;
    case LAYER_POSITIONAL: {  /* x + weight[:T] broadcast over the batch */
        const ptrdiff_t dims[3] = {xs->dims[0], xs->dims[1], xs->dims[2]};
        const ptrdiff_t rows[3] = {1, xs->dims[1], xs->dims[2]};
        if (pynn_shape_size(xs))
            pynn_broadcast_binary(ctx, PYNN_TENSOR_ADD, 3, dims, dims, x, rows, layer->weight, y);
        return 0;
    }
    case LAYER_LOG_SOFTMAX: {
        ptrdiff_t outer, length, inner;
        axis_split(xs, layer->axis, &outer, &length, &inner);
        pynn_softmax(ctx, outer, length, inner, x, y, 1);
        return 0;
    }
    case LAYER_AFFINE: {  /* x · scale, then + shift, the constants with a batch axis of 1 */
        const int rank = ys->rank;
        ptrdiff_t out_dims[PYNN_TENSOR_MAX_RANK], x_dims[PYNN_TENSOR_MAX_RANK], c_dims[PYNN_TENSOR_MAX_RANK];
        if (pynn_shape_size(ys) == 0)
            return 0;
        for (int axis = 0; axis < rank; axis++) {
            const int at = axis - (rank - layer->reshape.rank);
            out_dims[axis] = ys->dims[axis];
            c_dims[axis] = at >= 0 ? layer->reshape.dims[at] : 1;
        }
        padded(xs, rank, x_dims);
        const float *source = x;
        if (layer->gamma) {
            pynn_broadcast_binary(ctx, PYNN_TENSOR_MULTIPLY, rank, out_dims, x_dims, source, c_dims, layer->gamma,
                                  y);
            source = y;
        }
        if (layer->beta)
            pynn_broadcast_binary(ctx, PYNN_TENSOR_ADD, rank, out_dims, source == y ? out_dims : x_dims, source,
                                  c_dims, layer->beta, y);
        return 0;
    }
    case LAYER_ADAPTIVE_AVGPOOL:
        pynn_adaptive_avg_pool2d_forward(ctx, xs->dims[0] * xs->dims[1], xs->dims[2], xs->dims[3],
                                         ys->dims[2], ys->dims[3], x, y);
        return 0;
    case LAYER_LAYERNORM: {
        const ptrdiff_t length = pynn_shape_size(&layer->reshape);
        ptrdiff_t rows = 1;
        for (int axis = 0; axis < xs->rank - layer->reshape.rank; axis++)
            rows *= xs->dims[axis];
        pynn_layer_norm_forward(ctx, rows, length, x, layer->gamma, layer->beta, layer->layer_norm_eps, y);
        return 0;
    }
    case LAYER_PERMUTE: {
        ptrdiff_t dims[PYNN_TENSOR_MAX_RANK];
        int order[PYNN_TENSOR_MAX_RANK];
        for (int axis = 0; axis < xs->rank; axis++) {
            dims[axis] = xs->dims[axis];
            order[axis] = (int)layer->reshape.dims[axis];
        }
        if (pynn_shape_size(xs))
            pynn_permute(ctx, xs->rank, dims, order, x, y);
        return 0;
    }
    case LAYER_DOT:
        pynn_row_dot(ctx, xs->dims[0], xs->dims[1], x, r->slots[st->sources[1]], y);
        return 0;
    case LAYER_CONCATENATE: {
        const int rank = ys->rank;
        const int64_t axis = layer->axis < 0 ? layer->axis + rank : layer->axis;
        ptrdiff_t offset = 0;
        for (int k = 0; k < st->source_count; k++) {
            const pynn_shape *part = &r->shapes[st->shaped[k]];
            ptrdiff_t inner = 1, rows = 1;
            for (int a = (int)axis + 1; a < rank; a++)
                inner *= part->dims[a];
            for (int a = 0; a < axis; a++)
                rows *= part->dims[a];
            const ptrdiff_t length = part->dims[axis] * inner, stride = ys->dims[axis] * inner;
            pynn_copy_rows(ctx, rows, length, r->slots[st->sources[k]], length, y + offset * inner, stride);
            offset += part->dims[axis];
        }
        return 0;
    }
    case LAYER_NESTED: {
        const void *inputs[PYNN_GRAPH_MAX_INPUTS];
        void *outputs[PYNN_GRAPH_MAX_IO];
        for (int k = 0; k < st->target_count; k++)
            outputs[k] = r->slots[st->target + k];
        for (int i = 0; i < st->source_count; i++)
            inputs[i] = r->slots[st->sources[i]];
        return pynn_runner_run(r->nested[index], ctx, inputs, outputs, err, err_len);
    }
    default:
        return 0;
    }
}

int pynn_runner_run(pynn_runner *r, const pynn_context *ctx, const void *const *inputs, void *const *outputs,
                    char *err, size_t err_len)
{
    const pynn_graph *graph = r->graph;
    /* read only: no step writes an input's slot */
    for (int i = 0; i < graph->input_count; i++)
        r->slots[r->input_slots[i]] = (float *)inputs[i];
    for (int i = 0; i < graph->output_count; i++)
        if (!r->copied[i])
            r->slots[r->output_slots[i]] = outputs[i];
    int index = 0, failed = 0;
    while (index < r->step_count && !failed) {
        if (r->steps[index].kind == KIND_OTHER) {
            failed = run_other(r, ctx, index, err, err_len);
            index++;
            continue;
        }
        int stop = index + 1;
        while (stop < r->step_count && r->steps[stop].kind != KIND_OTHER)
            stop++;
        if (pynn_plan_run(ctx, r->kernel_steps + index, stop - index, r->slots))
            failed = pynn_capi_error(err, err_len, "a convolution could not allocate its scratch");
        index = stop;
    }
    for (int i = 0; i < graph->output_count && !failed; i++)
        if (r->copied[i])
            memcpy(outputs[i], r->slots[r->output_slots[i]],
                   (size_t)pynn_shape_size(&r->shapes[graph->outputs[i].slot]) * sizeof(float));
    for (int i = 0; i < graph->input_count; i++)
        r->slots[r->input_slots[i]] = NULL;
    for (int i = 0; i < graph->output_count; i++)
        if (!r->copied[i])
            r->slots[r->output_slots[i]] = NULL;
    return failed ? -1 : 0;
}
