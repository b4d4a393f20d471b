/* A model file's architecture as layers and calls (contract in graph.h). */
#include "graph.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../tensor.h"

/* Every slot holds fewer elements than this, batch included. */
#define MAX_ELEMENTS ((int64_t)1 << 40)
/* A sample's values at any layer are bounded by this many times the values
 * the file and the inputs hold (plus a floor for small models), as
 * pynn/architecture.py bounds the tensors an architecture claims: a small
 * hostile file cannot make a plan allocate terabytes. */
#define CLAIM_FACTOR 64
#define CLAIM_FLOOR ((int64_t)1 << 24)

typedef struct {
    const pynn_model_file *file;
    const char *path;
    char *err;
    size_t err_len;
    size_t tensors_used;
} builder;

int pynn_capi_error(char *err, size_t err_len, const char *format, ...)
{
    if (err && err_len) {
        va_list args;
        va_start(args, format);
        vsnprintf(err, err_len, format, args);
        va_end(args);
    }
    return -1;
}

int64_t pynn_shape_size(const pynn_shape *shape)
{
    int64_t size = 1;
    for (int axis = 0; axis < shape->rank; axis++)
        size *= shape->dims[axis];
    return size;
}

static int shape_text(const pynn_shape *shape, char *text, size_t length)
{
    size_t used = (size_t)snprintf(text, length, "(");
    for (int axis = 0; axis < shape->rank && used < length; axis++)
        used += (size_t)snprintf(text + used, length - used, axis ? ", %lld" : "%lld",
                                 (long long)shape->dims[axis]);
    if (used < length)
        snprintf(text + used, length - used, shape->rank == 1 ? ",)" : ")");
    return 0;
}

/* -- configs ------------------------------------------------------------------ */
static int config_int(builder *b, const pynn_layer *layer, const pynn_json *config, const char *key,
                      int64_t fallback, int64_t low, int64_t high, int64_t *out)
{
    const pynn_json *value = pynn_json_get(config, key);
    if (!value) {
        *out = fallback;
        return 0;
    }
    if (!pynn_json_int(value, out) || *out < low || *out > high)
        return pynn_capi_error(b->err, b->err_len, "%s: %s: %s must be an integer in [%lld, %lld]", b->path,
                   layer->name, key, (long long)low, (long long)high);
    return 0;
}

static int config_bool(builder *b, const pynn_layer *layer, const pynn_json *config, const char *key,
                       int fallback, int *out)
{
    const pynn_json *value = pynn_json_get(config, key);
    if (!value) {
        *out = fallback;
        return 0;
    }
    if (value->kind != PYNN_JSON_TRUE && value->kind != PYNN_JSON_FALSE)
        return pynn_capi_error(b->err, b->err_len, "%s: %s: %s must be true or false", b->path, layer->name, key);
    *out = value->kind == PYNN_JSON_TRUE;
    return 0;
}

static int config_real(builder *b, const pynn_layer *layer, const pynn_json *config, const char *key,
                       double fallback, double *out)
{
    const pynn_json *value = pynn_json_get(config, key);
    if (!value) {
        *out = fallback;
        return 0;
    }
    if (value->kind != PYNN_JSON_NUMBER)
        return pynn_capi_error(b->err, b->err_len, "%s: %s: %s must be a number", b->path, layer->name, key);
    *out = value->number;
    return 0;
}

/* An int or a list of `rank` ints, each in [low, high] (PyTorch's kernel_size,
 * stride, ...), into out[2 - rank .. 2) with `lead` before a 1-D layer's one
 * value (the 2-D kernels see [N, C, L] as [N, C, 1, L]); absent: `fallback`,
 * or `same` when given (a pool's stride defaults to its kernel). */
static int config_sizes(builder *b, const pynn_layer *layer, const pynn_json *config, const char *key,
                        int64_t fallback, int64_t lead, const int64_t *same, int64_t low, int64_t high,
                        int64_t out[2])
{
    const int rank = layer->spatial_rank;
    const pynn_json *value = pynn_json_get(config, key);
    out[0] = lead;
    if (!value || value->kind == PYNN_JSON_NULL) {
        if ((value && !same) || fallback < 0)
            return pynn_capi_error(b->err, b->err_len, "%s: %s: %s must be given", b->path, layer->name, key);
        for (int i = 2 - rank; i < 2; i++)
            out[i] = same ? same[i] : fallback;
        return 0;
    }
    if (pynn_json_int(value, &out[1])) {
        if (rank == 2)
            out[0] = out[1];
    } else if (!(value->kind == PYNN_JSON_ARRAY && value->length == (size_t)rank
                 && pynn_json_int(value->items[0], &out[2 - rank])
                 && (rank == 1 || pynn_json_int(value->items[1], &out[1])))) {
        return pynn_capi_error(b->err, b->err_len, "%s: %s: %s must be an integer or a list of %d", b->path,
                   layer->name, key, rank);
    }
    for (int i = 2 - rank; i < 2; i++)
        if (out[i] < low || out[i] > high)
            return pynn_capi_error(b->err, b->err_len, "%s: %s: %s must be in [%lld, %lld]", b->path, layer->name,
                       key, (long long)low, (long long)high);
    return 0;
}

/* Only the keys listed in `known` (NULL-terminated) may appear. */
static int config_keys(builder *b, const pynn_layer *layer, const pynn_json *config,
                       const char *const *known)
{
    for (size_t i = 0; i < config->length; i++) {
        int found = 0;
        for (const char *const *k = known; *k; k++)
            found |= !strcmp(*k, config->keys[i]);
        if (!found)
            return pynn_capi_error(b->err, b->err_len, "%s: %s: unexpected argument '%.60s'", b->path, layer->name,
                       config->keys[i]);
    }
    return 0;
}

/* The float32 tensor "<prefix><key>" of `rank` extents `dims`; NULL when absent or misfit. */
static const float *tensor(builder *b, const pynn_layer *layer, const char *prefix, const char *key,
                           int rank, const int64_t *dims, int *failed)
{
    char name[PYNN_GRAPH_MAX_NAME + 64];
    snprintf(name, sizeof name, "%s%s", prefix, key);
    const pynn_file_tensor *t = pynn_model_file_tensor(b->file, name);
    if (!t) {
        pynn_capi_error(b->err, b->err_len, "%s: %s: missing tensor '%s'", b->path, layer->name, name);
        *failed = 1;
        return NULL;
    }
    int fits = t->data != NULL && t->rank == rank;
    for (int axis = 0; fits && axis < rank; axis++)
        fits = t->shape[axis] == dims[axis];
    if (!fits) {
        pynn_shape expected = {{0}, rank}, got = {{0}, t->rank};
        char want[160], have[160];
        memcpy(expected.dims, dims, (size_t)rank * sizeof *dims);
        memcpy(got.dims, t->shape, (size_t)t->rank * sizeof *t->shape);
        shape_text(&expected, want, sizeof want);
        shape_text(&got, have, sizeof have);
        pynn_capi_error(b->err, b->err_len, "%s: %s: tensor '%s' must be F32 of shape %s, got %s of shape %s", b->path,
            layer->name, name, want, t->dtype, have);
        *failed = 1;
        return NULL;
    }
    b->tensors_used++;
    return t->data;
}

static int batchnorm_tensors(builder *b, pynn_layer *layer, const char *prefix)
{
    int failed = 0;
    const int64_t c = layer->num_features;
    layer->gamma = tensor(b, layer, prefix, "weight", 1, &c, &failed);
    if (!failed) layer->beta = tensor(b, layer, prefix, "bias", 1, &c, &failed);
    if (!failed) layer->running_mean = tensor(b, layer, prefix, "running_mean", 1, &c, &failed);
    if (!failed) layer->running_var = tensor(b, layer, prefix, "running_var", 1, &c, &failed);
    if (failed)
        return -1;
    char name[PYNN_GRAPH_MAX_NAME + 64];
    snprintf(name, sizeof name, "%snum_batches_tracked", prefix);
    const pynn_file_tensor *t = pynn_model_file_tensor(b->file, name);
    if (!t || t->rank != 0)
        return pynn_capi_error(b->err, b->err_len, "%s: %s: missing tensor '%s' (a scalar)", b->path, layer->name, name);
    b->tensors_used++;
    return 0;
}

static const struct {
    const char *type;
    pynn_elementwise_fn map;
} MAPS[] = {
    {"ReLU", pynn_relu}, {"LeakyReLU", pynn_leaky_relu}, {"Sigmoid", pynn_sigmoid},
    {"Tanh", pynn_tanh}, {"GELU", pynn_gelu}, {"SiLU", pynn_silu}, {"Hardswish", pynn_hardswish},
    {"Hardsigmoid", pynn_hardsigmoid}, {"ReLU6", pynn_relu6},
};

static const char *const SUPPORTED =
    "Linear, ReLU, LeakyReLU, Sigmoid, Tanh, GELU, SiLU, Hardswish, Hardsigmoid, ReLU6, Softmax, LogSoftmax, "
    "Affine, MultiheadAttention, TransformerEncoderLayer, PositionalEmbedding, Embedding, PaddingMask, "
    "MeanPooling, Dropout, "
    "Identity, Flatten, Reshape, Permute, BatchNorm1d, BatchNorm2d, LayerNorm, Conv1d, Conv2d, MaxPool1d, "
    "MaxPool2d, AvgPool1d, AvgPool2d, GlobalAvgPool2d, AdaptiveAvgPool2d, Add, Multiply, Concatenate, Dot";

/* A MultiheadAttention's tensors under "<prefix>" (its bias or not). */
static int attention_tensors(builder *b, pynn_layer *layer, const char *prefix, int bias)
{
    pynn_attention_params *a = &layer->attention;
    const int64_t e = a->embed_dim, in_dims[2] = {3 * e, e}, out_dims[2] = {e, e};
    int failed = 0;
    a->in_weight = tensor(b, layer, prefix, "in_proj_weight", 2, in_dims, &failed);
    if (!failed && bias) a->in_bias = tensor(b, layer, prefix, "in_proj_bias", 1, in_dims, &failed);
    if (!failed) a->out_weight = tensor(b, layer, prefix, "out_proj.weight", 2, out_dims, &failed);
    if (!failed && bias) a->out_bias = tensor(b, layer, prefix, "out_proj.bias", 1, out_dims, &failed);
    return failed ? -1 : 0;
}

static int read_attention(builder *b, pynn_layer *layer, const pynn_json *config, const char *prefix)
{
    static const char *const keys[] = {"embed_dim", "num_heads", "bias", NULL};
    pynn_attention_params *a = &layer->attention;
    int bias = 1;
    layer->type = LAYER_ATTENTION;
    if (config_keys(b, layer, config, keys)
        || config_int(b, layer, config, "embed_dim", -1, 1, MAX_ELEMENTS / 4, &a->embed_dim)
        || config_int(b, layer, config, "num_heads", -1, 1, MAX_ELEMENTS, &a->heads)
        || config_bool(b, layer, config, "bias", 1, &bias))
        return -1;
    if (a->embed_dim % a->heads)
        return pynn_capi_error(b->err, b->err_len, "%s: %s: embed_dim must be divisible by num_heads", b->path,
                   layer->name);
    return attention_tensors(b, layer, prefix, bias);
}

static int read_transformer(builder *b, pynn_layer *layer, const pynn_json *config, const char *prefix)
{
    static const char *const keys[] = {"d_model", "nhead", "dim_feedforward", "dropout", "activation",
                                       "layer_norm_eps", "norm_first", NULL};
    pynn_attention_params *a = &layer->attention;
    const pynn_json *activation = pynn_json_get(config, "activation");
    double dropout;
    layer->type = LAYER_TRANSFORMER;
    if (config_keys(b, layer, config, keys)
        || config_int(b, layer, config, "d_model", -1, 1, MAX_ELEMENTS / 4, &a->embed_dim)
        || config_int(b, layer, config, "nhead", -1, 1, MAX_ELEMENTS, &a->heads)
        || config_int(b, layer, config, "dim_feedforward", 2048, 1, MAX_ELEMENTS, &a->feedforward)
        || config_real(b, layer, config, "dropout", 0.1, &dropout)
        || config_real(b, layer, config, "layer_norm_eps", 1e-5, &layer->layer_norm_eps)
        || config_bool(b, layer, config, "norm_first", 0, &a->norm_first))
        return -1;
    if (activation && (activation->kind != PYNN_JSON_STRING
                       || (strcmp(activation->string, "relu") && strcmp(activation->string, "gelu"))))
        return pynn_capi_error(b->err, b->err_len, "%s: %s: activation must be \"relu\" or \"gelu\"", b->path,
                   layer->name);
    a->gelu = activation && !strcmp(activation->string, "gelu");
    if (a->embed_dim % a->heads || !(layer->layer_norm_eps >= 0.0))
        return pynn_capi_error(b->err, b->err_len, "%s: %s: d_model must be divisible by nhead, layer_norm_eps >= 0",
                   b->path, layer->name);
    char inner[PYNN_GRAPH_MAX_NAME + 16];
    snprintf(inner, sizeof inner, "%sself_attn.", prefix);
    if (attention_tensors(b, layer, inner, 1))
        return -1;
    const int64_t e = a->embed_dim, f = a->feedforward, up[2] = {f, e}, down[2] = {e, f};
    int failed = 0;
    a->linear1_weight = tensor(b, layer, prefix, "linear1.weight", 2, up, &failed);
    if (!failed) a->linear1_bias = tensor(b, layer, prefix, "linear1.bias", 1, up, &failed);
    if (!failed) a->linear2_weight = tensor(b, layer, prefix, "linear2.weight", 2, down, &failed);
    if (!failed) a->linear2_bias = tensor(b, layer, prefix, "linear2.bias", 1, down, &failed);
    if (!failed) a->norm1_weight = tensor(b, layer, prefix, "norm1.weight", 1, &e, &failed);
    if (!failed) a->norm1_bias = tensor(b, layer, prefix, "norm1.bias", 1, &e, &failed);
    if (!failed) a->norm2_weight = tensor(b, layer, prefix, "norm2.weight", 1, &e, &failed);
    if (!failed) a->norm2_bias = tensor(b, layer, prefix, "norm2.bias", 1, &e, &failed);
    return failed ? -1 : 0;
}

/* The layer an architecture entry describes, its tensors named "<prefix><param>". */
static int read_layer(builder *b, const pynn_json *entry, const char *label, const char *prefix,
                      pynn_layer *layer)
{
    const pynn_json *type = pynn_json_get(entry, "type"), *config = pynn_json_get(entry, "config");
    const pynn_json *name = pynn_json_get(entry, "name");
    memset(layer, 0, sizeof *layer);
    if (!type || type->kind != PYNN_JSON_STRING || !config || config->kind != PYNN_JSON_OBJECT
        || entry->length != 2u + (name != NULL) || (name && name->kind != PYNN_JSON_STRING
                                                      && name->kind != PYNN_JSON_NULL))
        return pynn_capi_error(b->err, b->err_len, "%s: %s must be {\"type\": name, \"config\": {...}}", b->path, label);
    if (strlen(type->string) >= sizeof layer->type_name)
        return pynn_capi_error(b->err, b->err_len, "%s: %s has unknown layer type '%.40s'", b->path, label, type->string);
    snprintf(layer->type_name, sizeof layer->type_name, "%s", type->string);
    snprintf(layer->name, sizeof layer->name, "%.200s (%.40s)", label, type->string);
    const char *t = type->string;
    int failed = 0;
    double real = 0.0;
    for (size_t i = 0; i < sizeof MAPS / sizeof *MAPS; i++) {
        if (strcmp(t, MAPS[i].type))
            continue;
        layer->type = LAYER_MAP;
        layer->map = MAPS[i].map;
        if (!strcmp(t, "LeakyReLU")) {
            static const char *const keys[] = {"negative_slope", NULL};
            if (config_keys(b, layer, config, keys)
                || config_real(b, layer, config, "negative_slope", 0.01, &real))
                return -1;
            layer->parameter = (float)real;
        } else if (!strcmp(t, "GELU")) {
            static const char *const keys[] = {"approximate", NULL};
            const pynn_json *approximate = pynn_json_get(config, "approximate");
            if (config_keys(b, layer, config, keys))
                return -1;
            if (approximate && (approximate->kind != PYNN_JSON_STRING
                                || (strcmp(approximate->string, "none")
                                    && strcmp(approximate->string, "tanh"))))
                return pynn_capi_error(b->err, b->err_len, "%s: %s: approximate must be \"none\" or \"tanh\"", b->path,
                           layer->name);
            if (approximate && !strcmp(approximate->string, "tanh"))
                layer->map = pynn_gelu_tanh;
        } else {
            static const char *const keys[] = {NULL};
            if (config_keys(b, layer, config, keys))
                return -1;
        }
        return 0;
    }
    if (!strcmp(t, "Linear")) {
        static const char *const keys[] = {"in_features", "out_features", "bias", NULL};
        int bias;
        layer->type = LAYER_LINEAR;
        if (config_keys(b, layer, config, keys)
            || config_int(b, layer, config, "in_features", -1, 1, MAX_ELEMENTS, &layer->in_features)
            || config_int(b, layer, config, "out_features", -1, 1, MAX_ELEMENTS, &layer->out_features)
            || config_bool(b, layer, config, "bias", 1, &bias))
            return -1;
        const int64_t dims[2] = {layer->out_features, layer->in_features};
        layer->weight = tensor(b, layer, prefix, "weight", 2, dims, &failed);
        if (!failed && bias)
            layer->bias = tensor(b, layer, prefix, "bias", 1, dims, &failed);
        return failed ? -1 : 0;
    }
    if (!strcmp(t, "Softmax") || !strcmp(t, "LogSoftmax")) {
        static const char *const keys[] = {"axis", NULL};
        layer->type = t[0] == 'S' ? LAYER_SOFTMAX : LAYER_LOG_SOFTMAX;
        return config_keys(b, layer, config, keys)
               || config_int(b, layer, config, "axis", -1, -PYNN_GRAPH_MAX_RANK, PYNN_GRAPH_MAX_RANK,
                             &layer->axis)
                  ? -1 : 0;
    }
    if (!strcmp(t, "MultiheadAttention"))
        return read_attention(b, layer, config, prefix);
    if (!strcmp(t, "TransformerEncoderLayer"))
        return read_transformer(b, layer, config, prefix);
    if (!strcmp(t, "PositionalEmbedding")) {
        static const char *const keys[] = {"max_length", "embedding_dim", NULL};
        layer->type = LAYER_POSITIONAL;
        if (config_keys(b, layer, config, keys)
            || config_int(b, layer, config, "max_length", -1, 1, MAX_ELEMENTS, &layer->in_features)
            || config_int(b, layer, config, "embedding_dim", -1, 1, MAX_ELEMENTS, &layer->out_features))
            return -1;
        const int64_t dims[2] = {layer->in_features, layer->out_features};
        layer->weight = tensor(b, layer, prefix, "weight", 2, dims, &failed);
        return failed ? -1 : 0;
    }
    if (!strcmp(t, "Affine")) {
        static const char *const keys[] = {"shape", "scale", "shift", NULL};
        const pynn_json *shape = pynn_json_get(config, "shape");
        int scale, shift;
        layer->type = LAYER_AFFINE;
        if (config_keys(b, layer, config, keys) || config_bool(b, layer, config, "scale", 1, &scale)
            || config_bool(b, layer, config, "shift", 1, &shift))
            return -1;
        int fits = shape && shape->kind == PYNN_JSON_ARRAY && shape->length < PYNN_TENSOR_MAX_RANK
                   && (scale || shift);
        int64_t size = 1;
        layer->reshape.rank = fits ? (int)shape->length : 0;
        for (int axis = 0; fits && axis < layer->reshape.rank; axis++) {
            int64_t *extent = &layer->reshape.dims[axis];
            fits = pynn_json_int(shape->items[axis], extent) && *extent >= 0
                   && !(*extent && size > MAX_ELEMENTS / *extent);
            size *= fits ? *extent : 1;
        }
        if (!fits)
            return pynn_capi_error(b->err, b->err_len, "%s: %s: shape must be a list of fewer than %d sizes, with scale, "
                       "shift or both", b->path, layer->name, PYNN_TENSOR_MAX_RANK);
        if (scale)
            layer->gamma = tensor(b, layer, prefix, "scale", layer->reshape.rank, layer->reshape.dims, &failed);
        if (shift && !failed)
            layer->beta = tensor(b, layer, prefix, "shift", layer->reshape.rank, layer->reshape.dims, &failed);
        return failed ? -1 : 0;
    }
    if (!strcmp(t, "Dropout") || !strcmp(t, "Identity")) {
        static const char *const dropout[] = {"p", "seed", NULL}, *const none[] = {NULL};
        layer->type = LAYER_VIEW_SAME;
        return config_keys(b, layer, config, t[0] == 'D' ? dropout : none);
    }
    if (!strcmp(t, "Flatten")) {
        static const char *const keys[] = {"start_dim", "end_dim", NULL};
        layer->type = LAYER_FLATTEN;
        return config_keys(b, layer, config, keys)
               || config_int(b, layer, config, "start_dim", 1, -PYNN_GRAPH_MAX_RANK, PYNN_GRAPH_MAX_RANK,
                             &layer->start_dim)
               || config_int(b, layer, config, "end_dim", -1, -PYNN_GRAPH_MAX_RANK, PYNN_GRAPH_MAX_RANK,
                             &layer->end_dim) ? -1 : 0;
    }
    if (!strcmp(t, "Reshape")) {
        static const char *const keys[] = {"shape", NULL};
        const pynn_json *shape = pynn_json_get(config, "shape");
        layer->type = LAYER_RESHAPE;
        if (config_keys(b, layer, config, keys))
            return -1;
        if (!shape || shape->kind != PYNN_JSON_ARRAY || shape->length >= PYNN_GRAPH_MAX_RANK)
            return pynn_capi_error(b->err, b->err_len, "%s: %s: shape must be a list of fewer than %d sizes", b->path,
                       layer->name, PYNN_GRAPH_MAX_RANK);
        layer->reshape.rank = (int)shape->length;
        for (size_t axis = 0; axis < shape->length; axis++) {
            int64_t *extent = &layer->reshape.dims[axis];
            if (!pynn_json_int(shape->items[axis], extent) || *extent < -1 || *extent > MAX_ELEMENTS)
                return pynn_capi_error(b->err, b->err_len, "%s: %s: shape entries must be sizes or -1", b->path,
                           layer->name);
        }
        return 0;
    }
    if (!strcmp(t, "BatchNorm1d") || !strcmp(t, "BatchNorm2d")) {
        static const char *const keys[] = {"num_features", "eps", "momentum", NULL};
        layer->type = t[9] == '1' ? LAYER_BATCHNORM1D : LAYER_BATCHNORM2D;
        if (config_keys(b, layer, config, keys)
            || config_int(b, layer, config, "num_features", -1, 1, MAX_ELEMENTS, &layer->num_features)
            || config_real(b, layer, config, "eps", 1e-5, &real))
            return -1;
        if (!(real > 0.0))
            return pynn_capi_error(b->err, b->err_len, "%s: %s: eps must be > 0", b->path, layer->name);
        layer->eps = (float)real;
        return batchnorm_tensors(b, layer, prefix);
    }
    if (!strcmp(t, "Conv2d") || !strcmp(t, "Conv1d")) {
        static const char *const keys[] = {"in_channels", "out_channels", "kernel_size", "stride", "padding",
                                           "dilation", "groups", "bias", NULL};
        int bias;
        layer->type = LAYER_CONV;
        layer->spatial_rank = t[4] == '2' ? 2 : 1;
        if (config_keys(b, layer, config, keys)
            || config_int(b, layer, config, "in_channels", -1, 1, MAX_ELEMENTS, &layer->in_channels)
            || config_int(b, layer, config, "out_channels", -1, 1, MAX_ELEMENTS, &layer->out_channels)
            || config_sizes(b, layer, config, "kernel_size", -1, 1, NULL, 1, 1 << 20, layer->kernel)
            || config_sizes(b, layer, config, "stride", 1, 1, NULL, 1, 1 << 20, layer->stride)
            || config_sizes(b, layer, config, "padding", 0, 0, NULL, 0, 1 << 20, layer->padding)
            || config_sizes(b, layer, config, "dilation", 1, 1, NULL, 1, 1 << 20, layer->dilation)
            || config_int(b, layer, config, "groups", 1, 1, MAX_ELEMENTS, &layer->groups)
            || config_bool(b, layer, config, "bias", 1, &bias))
            return -1;
        if (layer->in_channels % layer->groups || layer->out_channels % layer->groups)
            return pynn_capi_error(b->err, b->err_len, "%s: %s: groups=%lld must divide in_channels and out_channels",
                       b->path, layer->name, (long long)layer->groups);
        const int64_t dims[4] = {layer->out_channels, layer->in_channels / layer->groups, layer->kernel[0],
                                 layer->kernel[1]};
        const int64_t dims_1d[3] = {dims[0], dims[1], dims[3]};
        layer->weight = tensor(b, layer, prefix, "weight", layer->spatial_rank + 2,
                               layer->spatial_rank == 2 ? dims : dims_1d, &failed);
        if (!failed && bias)
            layer->bias = tensor(b, layer, prefix, "bias", 1, dims, &failed);
        return failed ? -1 : 0;
    }
    if (!strcmp(t, "MaxPool2d") || !strcmp(t, "AvgPool2d") || !strcmp(t, "MaxPool1d")
        || !strcmp(t, "AvgPool1d")) {
        static const char *const max_keys[] = {"kernel_size", "stride", "padding", "dilation", "ceil_mode",
                                               NULL};
        static const char *const avg_keys[] = {"kernel_size", "stride", "padding", "ceil_mode",
                                               "count_include_pad", NULL};
        const int max = t[0] == 'M';
        layer->type = max ? LAYER_MAXPOOL : LAYER_AVGPOOL;
        layer->spatial_rank = t[7] == '2' ? 2 : 1;
        if (config_keys(b, layer, config, max ? max_keys : avg_keys)
            || config_sizes(b, layer, config, "kernel_size", -1, 1, NULL, 1, 1 << 20, layer->kernel)
            || config_sizes(b, layer, config, "stride", 1, 1, layer->kernel, 1, 1 << 20, layer->stride)
            || config_sizes(b, layer, config, "padding", 0, 0, NULL, 0, 1 << 20, layer->padding)
            || config_sizes(b, layer, config, "dilation", 1, 1, NULL, 1, 1 << 20, layer->dilation)
            || config_bool(b, layer, config, "ceil_mode", 0, &layer->ceil_mode)
            || config_bool(b, layer, config, "count_include_pad", 1, &layer->count_include_pad))
            return -1;
        if (layer->padding[0] > layer->kernel[0] / 2 || layer->padding[1] > layer->kernel[1] / 2)
            return pynn_capi_error(b->err, b->err_len, "%s: %s: padding must be at most half the kernel size", b->path,
                       layer->name);
        return 0;
    }
    if (!strcmp(t, "AdaptiveAvgPool2d")) {
        static const char *const keys[] = {"output_size", NULL};
        const pynn_json *size = pynn_json_get(config, "output_size");
        layer->type = LAYER_ADAPTIVE_AVGPOOL;
        if (config_keys(b, layer, config, keys))
            return -1;
        int fits = size != NULL;
        if (fits && size->kind == PYNN_JSON_ARRAY && size->length == 2) {
            for (int i = 0; i < 2 && fits; i++) {
                layer->adaptive[i] = -1;
                fits = size->items[i]->kind == PYNN_JSON_NULL
                       || pynn_json_int(size->items[i], &layer->adaptive[i]);
            }
        } else {
            fits = fits && pynn_json_int(size, &layer->adaptive[0]);
            layer->adaptive[1] = layer->adaptive[0];
        }
        for (int i = 0; i < 2 && fits; i++)
            fits = layer->adaptive[i] >= -1 && layer->adaptive[i] <= MAX_ELEMENTS;
        if (!fits)
            return pynn_capi_error(b->err, b->err_len, "%s: %s: output_size must be a size or a pair of sizes or nulls",
                       b->path, layer->name);
        return 0;
    }
    if (!strcmp(t, "LayerNorm")) {
        static const char *const keys[] = {"normalized_shape", "eps", "elementwise_affine", "bias", NULL};
        const pynn_json *shape = pynn_json_get(config, "normalized_shape");
        int affine, bias;
        layer->type = LAYER_LAYERNORM;
        if (config_keys(b, layer, config, keys)
            || config_real(b, layer, config, "eps", 1e-5, &layer->layer_norm_eps)
            || config_bool(b, layer, config, "elementwise_affine", 1, &affine)
            || config_bool(b, layer, config, "bias", 1, &bias))
            return -1;
        if (!(layer->layer_norm_eps >= 0.0))
            return pynn_capi_error(b->err, b->err_len, "%s: %s: eps must be >= 0", b->path, layer->name);
        if (shape && pynn_json_int(shape, &layer->reshape.dims[0])) {
            layer->reshape.rank = 1;
        } else if (shape && shape->kind == PYNN_JSON_ARRAY && shape->length >= 1
                   && shape->length < PYNN_GRAPH_MAX_RANK) {
            layer->reshape.rank = (int)shape->length;
            for (size_t axis = 0; axis < shape->length; axis++)
                if (!pynn_json_int(shape->items[axis], &layer->reshape.dims[axis]))
                    layer->reshape.dims[0] = -1;
        } else {
            layer->reshape.dims[0] = -1;
        }
        int64_t length = 1;
        for (int axis = 0; axis < layer->reshape.rank; axis++) {
            const int64_t extent = layer->reshape.dims[axis];
            if (extent < 0 || extent > MAX_ELEMENTS || (extent && length > MAX_ELEMENTS / extent))
                return pynn_capi_error(b->err, b->err_len, "%s: %s: normalized_shape must be a list of sizes", b->path,
                           layer->name);
            length *= extent;
        }
        if (!layer->reshape.rank)
            return pynn_capi_error(b->err, b->err_len, "%s: %s: normalized_shape must be a list of sizes", b->path,
                       layer->name);
        if (affine)
            layer->gamma = tensor(b, layer, prefix, "weight", layer->reshape.rank, layer->reshape.dims,
                                  &failed);
        if (affine && bias && !failed)
            layer->beta = tensor(b, layer, prefix, "bias", layer->reshape.rank, layer->reshape.dims, &failed);
        return failed ? -1 : 0;
    }
    if (!strcmp(t, "Permute")) {
        static const char *const keys[] = {"dims", NULL};
        const pynn_json *dims = pynn_json_get(config, "dims");
        layer->type = LAYER_PERMUTE;
        if (config_keys(b, layer, config, keys))
            return -1;
        int seen = 0, fits = dims && dims->kind == PYNN_JSON_ARRAY && dims->length >= 1
                             && dims->length <= PYNN_GRAPH_MAX_RANK;
        layer->reshape.rank = fits ? (int)dims->length : 0;
        for (int axis = 0; fits && axis < layer->reshape.rank; axis++) {
            int64_t *at = &layer->reshape.dims[axis];
            fits = pynn_json_int(dims->items[axis], at) && *at >= -layer->reshape.rank
                   && *at < layer->reshape.rank;
            if (fits && *at < 0)
                *at += layer->reshape.rank;
            fits = fits && !(seen & (1 << *at));
            seen |= fits ? 1 << *at : 0;
        }
        if (!fits || layer->reshape.dims[0] != 0)
            return pynn_capi_error(b->err, b->err_len, "%s: %s: dims must be a permutation of at most %d axes starting "
                       "with 0", b->path, layer->name, PYNN_GRAPH_MAX_RANK);
        return 0;
    }
    if (!strcmp(t, "Embedding")) {
        static const char *const keys[] = {"num_embeddings", "embedding_dim", "padding_idx", NULL};
        int64_t padding;
        layer->type = LAYER_EMBEDDING;
        if (config_keys(b, layer, config, keys)
            || config_int(b, layer, config, "num_embeddings", -1, 1, MAX_ELEMENTS, &layer->in_features)
            || config_int(b, layer, config, "embedding_dim", -1, 1, MAX_ELEMENTS, &layer->out_features)
            || config_int(b, layer, config, "padding_idx", 0, -layer->in_features, layer->in_features - 1,
                          &padding))
            return -1;
        const int64_t dims[2] = {layer->in_features, layer->out_features};
        layer->weight = tensor(b, layer, prefix, "weight", 2, dims, &failed);
        return failed ? -1 : 0;
    }
    if (!strcmp(t, "PaddingMask") || !strcmp(t, "MeanPooling")) {
        static const char *const keys[] = {NULL};
        layer->type = t[0] == 'P' ? LAYER_PADDING_MASK : LAYER_MEAN_POOLING;
        layer->takes_list = layer->type == LAYER_MEAN_POOLING;
        return config_keys(b, layer, config, keys);
    }
    if (!strcmp(t, "Dot")) {
        static const char *const keys[] = {NULL};
        layer->type = LAYER_DOT;
        layer->takes_list = 1;
        return config_keys(b, layer, config, keys);
    }
    if (!strcmp(t, "GlobalAvgPool2d")) {
        static const char *const keys[] = {NULL};
        layer->type = LAYER_GLOBAL_AVGPOOL;
        return config_keys(b, layer, config, keys);
    }
    if (!strcmp(t, "Add") || !strcmp(t, "Multiply")) {
        static const char *const keys[] = {NULL};
        layer->type = t[0] == 'A' ? LAYER_ADD : LAYER_MULTIPLY;
        layer->takes_list = 1;
        return config_keys(b, layer, config, keys);
    }
    if (!strcmp(t, "Concatenate")) {
        static const char *const keys[] = {"axis", NULL};
        layer->type = LAYER_CONCATENATE;
        layer->takes_list = 1;
        if (config_keys(b, layer, config, keys)
            || config_int(b, layer, config, "axis", 1, -PYNN_GRAPH_MAX_RANK, PYNN_GRAPH_MAX_RANK,
                          &layer->axis))
            return -1;
        if (layer->axis == 0)
            return pynn_capi_error(b->err, b->err_len, "%s: %s: axis 0 is the batch axis", b->path, layer->name);
        return 0;
    }
    return pynn_capi_error(b->err, b->err_len, "%s: %s: layer type '%s' is not supported by the C API (it runs %s)",
               b->path, label, t, SUPPORTED);
}

/* -- shapes --------------------------------------------------------------------- */
static int refuse(char *err, size_t err_len, const pynn_layer *layer, const pynn_shape *shapes, int count,
                  const char *why)
{
    char text[640] = "";
    size_t used = 0;
    for (int i = 0; i < count && i < 4 && used < sizeof text; i++) {
        if (i)
            used += (size_t)snprintf(text + used, sizeof text - used, " and ");
        if (used < sizeof text)
            shape_text(&shapes[i], text + used, sizeof text - used);
        used = strlen(text);
    }
    return pynn_capi_error(err, err_len, "%s refuses input shape %s: %s", layer->name, text, why);
}

static int64_t window_count(int64_t extent, int64_t kernel, int64_t stride, int64_t padding,
                            int64_t dilation, int ceil_mode)
{
    const int64_t span = extent + 2 * padding - dilation * (kernel - 1) - 1;
    if (span < 0)
        return 0;
    int64_t count = (span + (ceil_mode ? stride - 1 : 0)) / stride + 1;
    if (ceil_mode && (count - 1) * stride >= extent + padding)
        count--;
    return count;
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

/* The output shape of `layer` for inputs `in[count]` (a nested model's
 * outputs' into out[0 .. its output count)); 0 or -1 with a message. */
static int layer_shape(const pynn_layer *layer, const pynn_shape *in, int count, pynn_shape *out, char *err,
                       size_t err_len)
{
    const pynn_shape *x = &in[0];
    *out = *x;
    switch (layer->type) {
    case LAYER_LINEAR:
        if (x->rank < 1 || x->dims[x->rank - 1] != layer->in_features)
            return refuse(err, err_len, layer, in, 1, "the last axis must hold in_features");
        out->dims[x->rank - 1] = layer->out_features;
        return 0;
    case LAYER_MAP:
    case LAYER_VIEW_SAME:
        return 0;
    case LAYER_ATTENTION:
    case LAYER_TRANSFORMER: {
        /* x, [x, mask], [q, k, v] or [q, k, v, mask]: query [N, T, E], key and value [N, S, E], mask [N, S] */
        const pynn_shape *key = count >= 3 ? &in[1] : x, *mask = count % 2 == 0 ? &in[count - 1] : NULL;
        const int64_t e = layer->attention.embed_dim;
        if (x->rank != 3 || x->dims[2] != e || key->rank != 3 || key->dims[2] != e || key->dims[0] != x->dims[0]
            || (count >= 3 && !same_shape(key, &in[2]))
            || (mask && (mask->rank != 2 || mask->dims[0] != key->dims[0] || mask->dims[1] != key->dims[1])))
            return refuse(err, err_len, layer, in, count, count >= 3
                          ? "it needs query [N, T, embed_dim], key and value [N, S, embed_dim], mask [N, S]"
                          : "it needs x [N, T, embed_dim] and a mask [N, T]");
        return 0;
    }
    case LAYER_EMBEDDING:
        if (x->rank >= PYNN_GRAPH_MAX_RANK)
            return refuse(err, err_len, layer, in, 1, "the indices have too many axes");
        out->dims[out->rank++] = layer->out_features;
        return 0;
    case LAYER_PADDING_MASK:
        return x->rank == 2 ? 0 : refuse(err, err_len, layer, in, 1, "the attention mask must be [N, T]");
    case LAYER_MEAN_POOLING:
        if (count != 2 || x->rank != 3 || in[1].rank != 2 || in[1].dims[0] != x->dims[0]
            || in[1].dims[1] != x->dims[1])
            return refuse(err, err_len, layer, in, count, "it takes states [N, T, D] and a mask [N, T]");
        out->rank = 2;
        out->dims[1] = x->dims[2];
        return 0;
    case LAYER_POSITIONAL:
        if (x->rank != 3 || x->dims[2] != layer->out_features || x->dims[1] > layer->in_features)
            return refuse(err, err_len, layer, in, 1, "it needs [N, T <= max_length, embedding_dim]");
        return 0;
    case LAYER_AFFINE: {
        const pynn_shape *constant = &layer->reshape;
        const int rank = x->rank > constant->rank + 1 ? x->rank : constant->rank + 1;
        if (x->rank < 1 || rank > PYNN_TENSOR_MAX_RANK)
            return refuse(err, err_len, layer, in, 1, "it needs the batch axis first and at most 8 axes");
        out->rank = rank;
        for (int axis = 1; axis < rank; axis++) {  /* both right-aligned, as numpy broadcasts */
            const int at_x = axis - (rank - x->rank), at_c = axis - (rank - constant->rank);
            const int64_t a = at_x >= 1 ? x->dims[at_x] : 1, c = at_c >= 0 ? constant->dims[at_c] : 1;
            if (a != c && a != 1 && c != 1)
                return refuse(err, err_len, layer, in, 1, "the shape does not broadcast against the samples");
            out->dims[axis] = a == 1 ? c : a;
        }
        return 0;
    }
    case LAYER_LOG_SOFTMAX:
    case LAYER_SOFTMAX: {
        const int64_t ndim = x->rank > 1 ? x->rank : 1;
        if (layer->axis < -ndim || layer->axis >= ndim)
            return refuse(err, err_len, layer, in, 1, "the axis is out of range");
        return 0;
    }
    case LAYER_FLATTEN: {
        const int64_t ndim = x->rank > 1 ? x->rank : 1;
        const int64_t start = layer->start_dim < 0 ? layer->start_dim + ndim : layer->start_dim;
        const int64_t end = layer->end_dim < 0 ? layer->end_dim + ndim : layer->end_dim;
        if (start < 0 || start >= ndim || end < 0 || end >= ndim || start > end)
            return refuse(err, err_len, layer, in, 1, "start_dim and end_dim do not fit");
        if (x->rank == 0) {
            out->rank = 1;
            out->dims[0] = 1;
            return 0;
        }
        int64_t merged = 1;
        for (int64_t axis = start; axis <= end; axis++)
            merged *= x->dims[axis];
        out->rank = (int)(x->rank - (end - start));
        out->dims[start] = merged;
        for (int64_t axis = end + 1; axis < x->rank; axis++)
            out->dims[axis - (end - start)] = x->dims[axis];
        return 0;
    }
    case LAYER_RESHAPE: {
        if (x->rank < 1)
            return refuse(err, err_len, layer, in, 1, "the input needs the batch axis first");
        int64_t size = 1, known = 1, unknown = -1;
        for (int axis = 1; axis < x->rank; axis++)
            size *= x->dims[axis];
        for (int axis = 0; axis < layer->reshape.rank; axis++) {
            if (layer->reshape.dims[axis] == -1) {
                if (unknown >= 0)
                    return refuse(err, err_len, layer, in, 1, "the shape has more than one -1");
                unknown = axis;
            } else if (known > 0 && layer->reshape.dims[axis] > MAX_ELEMENTS / known) {
                return refuse(err, err_len, layer, in, 1, "the shape is too large");
            } else {
                known *= layer->reshape.dims[axis];
            }
        }
        out->rank = layer->reshape.rank + 1;
        for (int axis = 0; axis < layer->reshape.rank; axis++)
            out->dims[axis + 1] = layer->reshape.dims[axis];
        if (unknown >= 0) {
            if (known == 0 || size % known)
                return refuse(err, err_len, layer, in, 1, "the per-sample size does not fit the shape");
            out->dims[unknown + 1] = size / known;
        } else if (known != size) {
            return refuse(err, err_len, layer, in, 1, "the per-sample size does not fit the shape");
        }
        return 0;
    }
    case LAYER_BATCHNORM1D:
    case LAYER_BATCHNORM2D: {
        const int fits = layer->type == LAYER_BATCHNORM2D ? x->rank == 4 : (x->rank == 2 || x->rank == 3);
        if (!fits || x->dims[1] != layer->num_features)
            return refuse(err, err_len, layer, in, 1, "it needs num_features channels on axis 1 "
                                                      "(BatchNorm1d: 2-D or 3-D, BatchNorm2d: 4-D)");
        return 0;
    }
    case LAYER_CONV: {
        const int lead = 2 - layer->spatial_rank;
        if (x->rank != 2 + layer->spatial_rank || x->dims[1] != layer->in_channels || x->dims[2] < 1
            || x->dims[x->rank - 1] < 1)
            return refuse(err, err_len, layer, in, 1, layer->spatial_rank == 2
                          ? "it needs [N, in_channels, H, W] with H, W >= 1"
                          : "it needs [N, in_channels, L] with L >= 1");
        out->dims[1] = layer->out_channels;
        for (int axis = lead; axis < 2; axis++) {
            const int64_t padded = x->dims[2 + axis - lead] + 2 * layer->padding[axis];
            const int64_t reach = layer->dilation[axis] * (layer->kernel[axis] - 1) + 1;
            if (reach > padded)
                return refuse(err, err_len, layer, in, 1, "the kernel spans more than the padded input");
            out->dims[2 + axis - lead] = (padded - reach) / layer->stride[axis] + 1;
        }
        return 0;
    }
    case LAYER_MAXPOOL:
    case LAYER_AVGPOOL: {
        const int lead = 2 - layer->spatial_rank;
        if (x->rank != 2 + layer->spatial_rank || x->dims[2] < 1 || x->dims[x->rank - 1] < 1)
            return refuse(err, err_len, layer, in, 1, layer->spatial_rank == 2
                          ? "it needs [N, C, H, W] with H, W >= 1" : "it needs [N, C, L] with L >= 1");
        for (int axis = lead; axis < 2; axis++) {
            int64_t *extent = &out->dims[2 + axis - lead];
            *extent = window_count(*extent, layer->kernel[axis], layer->stride[axis], layer->padding[axis],
                                   layer->dilation[axis], layer->ceil_mode);
            if (*extent < 1)
                return refuse(err, err_len, layer, in, 1, "the window does not fit the padded input");
        }
        return 0;
    }
    case LAYER_ADAPTIVE_AVGPOOL:
        if (x->rank != 4 || x->dims[2] < 1 || x->dims[3] < 1)
            return refuse(err, err_len, layer, in, 1, "it needs [N, C, H, W] with H, W >= 1");
        for (int axis = 0; axis < 2; axis++) {
            if (layer->adaptive[axis] >= 0)
                out->dims[2 + axis] = layer->adaptive[axis];
            if (out->dims[2 + axis] && x->dims[2 + axis] > MAX_ELEMENTS / out->dims[2 + axis])
                return refuse(err, err_len, layer, in, 1, "output_size is too large");
        }
        return 0;
    case LAYER_LAYERNORM: {
        const int count = layer->reshape.rank;
        int fits = x->rank >= count;
        for (int axis = 0; fits && axis < count; axis++)
            fits = x->dims[x->rank - count + axis] == layer->reshape.dims[axis];
        return fits ? 0 : refuse(err, err_len, layer, in, 1, "the trailing axes must be normalized_shape");
    }
    case LAYER_PERMUTE:
        if (x->rank != layer->reshape.rank)
            return refuse(err, err_len, layer, in, 1, "dims name a different number of axes");
        for (int axis = 0; axis < x->rank; axis++)
            out->dims[axis] = x->dims[layer->reshape.dims[axis]];
        return 0;
    case LAYER_NESTED: {
        const pynn_graph *inner = layer->inner;
        char why[400] = "";
        if (count != inner->input_count)
            return refuse(err, err_len, layer, in, count, "it takes one input per Input of the nested model");
        for (int i = 0; i < count && inner->knows_input_shape; i++)
            if (!pynn_shape_fits(&inner->inputs[i].shape, &in[i]))
                return refuse(err, err_len, layer, in, count, "it is not the shape of the nested model's Input");
        pynn_shape *shapes = calloc((size_t)inner->slot_count, sizeof *shapes);
        if (!shapes)
            return pynn_capi_error(err, err_len, "%s: out of memory", layer->name);
        const int failed = pynn_graph_shapes(inner, in, shapes, why, sizeof why);
        for (int i = 0; i < inner->output_count; i++)  /* one slot per output (pynn_call) */
            out[i] = shapes[inner->outputs[i].slot];
        free(shapes);
        return failed ? pynn_capi_error(err, err_len, "%s: %s", layer->name, why) : 0;
    }
    case LAYER_DOT:
        if (count != 2 || x->rank != 2 || !same_shape(&in[0], &in[1]))
            return refuse(err, err_len, layer, in, count, "it takes two [N, D] inputs of one shape");
        out->dims[1] = 1;
        return 0;
    case LAYER_GLOBAL_AVGPOOL:
        if (x->rank != 4 || x->dims[2] < 1 || x->dims[3] < 1)
            return refuse(err, err_len, layer, in, 1, "it needs [N, C, H, W] with H, W >= 1");
        out->rank = 2;
        return 0;
    case LAYER_ADD:
    case LAYER_MULTIPLY: {
        int rank = 0;
        if (layer->type == LAYER_MULTIPLY && count != 2)
            return refuse(err, err_len, layer, in, count, "it takes 2 inputs");
        for (int i = 0; i < count; i++) {
            if (in[i].rank < 1 || in[i].dims[0] != x->dims[0])
                return refuse(err, err_len, layer, in, count, "every input needs the same batch axis first");
            rank = in[i].rank > rank ? in[i].rank : rank;
        }
        out->rank = rank;
        for (int axis = 1; axis < rank; axis++) {
            int64_t extent = 1;
            for (int i = 0; i < count; i++) {
                const int from_end = rank - axis;
                if (from_end > in[i].rank - 1)
                    continue;
                const int64_t e = in[i].dims[in[i].rank - from_end];
                if (e != 1 && extent != 1 && e != extent)
                    return refuse(err, err_len, layer, in, count,
                                  "the shapes after the batch axis do not broadcast");
                if (e != 1)
                    extent = e;
            }
            out->dims[axis] = extent;
        }
        return 0;
    }
    case LAYER_CONCATENATE: {
        const int rank = x->rank;
        const int64_t axis = layer->axis < 0 ? layer->axis + rank : layer->axis;
        if (axis < 1 || axis >= rank)
            return refuse(err, err_len, layer, in, count, "the axis is not an axis after the batch axis");
        int64_t joined = 0;
        for (int i = 0; i < count; i++) {
            if (in[i].rank != rank)
                return refuse(err, err_len, layer, in, count, "the inputs have different numbers of axes");
            for (int k = 0; k < rank; k++)
                if (k != axis && in[i].dims[k] != x->dims[k])
                    return refuse(err, err_len, layer, in, count, "the shapes differ outside the axis");
            joined += in[i].dims[axis];
        }
        out->dims[axis] = joined;
        return 0;
    }
    }
    return refuse(err, err_len, layer, in, count, "unknown layer");
}

pynn_shape pynn_graph_input(const pynn_graph *graph, int index, int64_t batch, int64_t length)
{
    const pynn_shape *sample = &graph->inputs[index].shape;
    pynn_shape input = {{batch}, sample->rank + 1};
    for (int axis = 0; axis < sample->rank; axis++)
        input.dims[axis + 1] = sample->dims[axis] < 0 ? length : sample->dims[axis];
    return input;
}

int pynn_shape_fits(const pynn_shape *sample, const pynn_shape *shape)
{
    if (shape->rank != sample->rank + 1)
        return 0;
    for (int axis = 0; axis < sample->rank; axis++)
        if (sample->dims[axis] >= 0 && sample->dims[axis] != shape->dims[axis + 1])
            return 0;
    return 1;
}

int pynn_graph_shapes(const pynn_graph *graph, const pynn_shape *inputs, pynn_shape *shapes, char *err,
                      size_t err_len)
{
    const int64_t batch = inputs[0].rank && inputs[0].dims[0] > 1 ? inputs[0].dims[0] : 1;
    /* the bound grows with the inputs a call gives (variable axes) */
    int64_t bound = graph->claim_bound;
    for (int i = 0; i < graph->input_count; i++) {
        shapes[graph->inputs[i].slot] = inputs[i];
        if (bound)
            bound += CLAIM_FACTOR * (pynn_shape_size(&inputs[i]) / batch);
    }
    for (int c = 0; c < graph->call_count; c++) {
        const pynn_call *call = &graph->calls[c];
        const pynn_layer *layer = &graph->layers[call->layer];
        pynn_shape in[PYNN_GRAPH_MAX_INPUTS];
        for (int i = 0; i < call->source_count; i++)
            in[i] = shapes[call->sources[i]];
        if (layer_shape(layer, in, call->source_count, &shapes[call->target], err, err_len))
            return -1;
        for (int k = 0; k < call->target_count; k++) {
            const pynn_shape *out = &shapes[call->target + k];
            if (out->rank < 1 || out->dims[0] != inputs[0].dims[0])
                return pynn_capi_error(err, err_len, "%s: the output must keep the batch axis first", layer->name);
            int64_t size = 1;
            for (int axis = 0; axis < out->rank; axis++) {
                if (out->dims[axis] < 0 || (out->dims[axis] && size > MAX_ELEMENTS / out->dims[axis]))
                    return pynn_capi_error(err, err_len, "%s: the output would hold more than 2^40 values",
                                           layer->name);
                size *= out->dims[axis];
            }
            /* a small hostile file must not make a plan allocate terabytes (see CLAIM_FACTOR) */
            if (bound && size / batch > bound)
                return pynn_capi_error(err, err_len, "%s outputs %lld values per sample, more than %lld: 64 times the "
                           "values the file and the inputs hold", layer->name, (long long)(size / batch),
                           (long long)bound);
        }
    }
    return 0;
}

/* -- architectures ---------------------------------------------------------------- */
static int is_relu(const pynn_layer *layer) { return !strcmp(layer->type_name, "ReLU"); }
static int fuses_relu(const pynn_layer *layer)
{
    return layer->type == LAYER_LINEAR || layer->type == LAYER_CONV;  /* Linear, Conv1d, Conv2d */
}

static int read_input_shape(builder *b, const pynn_json *shape, pynn_shape *out, const char *what)
{
    if (!shape || shape->kind != PYNN_JSON_ARRAY || shape->length >= PYNN_GRAPH_MAX_RANK)
        return pynn_capi_error(b->err, b->err_len, "%s: %s must be a list of fewer than %d sizes", b->path, what,
                   PYNN_GRAPH_MAX_RANK);
    out->rank = (int)shape->length;
    int64_t size = 1;
    for (size_t axis = 0; axis < shape->length; axis++) {
        int64_t *extent = &out->dims[axis];
        if (shape->items[axis]->kind == PYNN_JSON_NULL) {
            *extent = -1;  /* a variable axis */
            continue;
        }
        if (!pynn_json_int(shape->items[axis], extent) || *extent < 0
            || (*extent && size > MAX_ELEMENTS / *extent))
            return pynn_capi_error(b->err, b->err_len, "%s: %s must be a list of sizes of fewer than 2^40 values in all",
                       b->path, what);
        size *= *extent;
    }
    return 0;
}

/* The dtype a layer reads at input `position` of `count` (FLOAT32 where it
 * also takes BOOL); -1 for any (views). */
static int accepted_dtype(const pynn_layer *layer, int position)
{
    switch (layer->type) {
    case LAYER_EMBEDDING: case LAYER_PADDING_MASK: return PYNN_INT64;
    case LAYER_MEAN_POOLING: return position == 1 ? PYNN_INT64 : PYNN_FLOAT32;
    case LAYER_NESTED: return position < layer->inner->input_count ? (int)layer->inner->inputs[position].dtype : -1;
    case LAYER_VIEW_SAME: case LAYER_FLATTEN: case LAYER_RESHAPE: return -1;
    default: return PYNN_FLOAT32;
    }
}

/* The key-padding mask of an attention call (bool or float32), its last input of 2 or 4. */
static int is_attention_mask(const pynn_layer *layer, int count, int position)
{
    return (layer->type == LAYER_ATTENTION || layer->type == LAYER_TRANSFORMER) && count % 2 == 0
           && position == count - 1;
}

/* Every slot's dtype, each call's inputs checked against what its layer
 * reads (views keep their input's), the outputs float32. */
static int slot_dtypes(builder *b, pynn_graph *graph, const char *label)
{
    if (!(graph->slot_dtypes = calloc((size_t)graph->slot_count, sizeof *graph->slot_dtypes)))
        return pynn_capi_error(b->err, b->err_len, "%s: out of memory", b->path);
    for (int i = 0; i < graph->input_count; i++)
        graph->slot_dtypes[graph->inputs[i].slot] = graph->inputs[i].dtype;
    static const char *const names[] = {"float32", "int64", "bool"};
    for (int c = 0; c < graph->call_count; c++) {
        const pynn_call *call = &graph->calls[c];
        const pynn_layer *layer = &graph->layers[call->layer];
        for (int i = 0; i < call->source_count; i++) {
            const pynn_dtype given = graph->slot_dtypes[call->sources[i]];
            const int wanted = accepted_dtype(layer, i);
            const int fits = wanted < 0 || (int)given == wanted
                             || (given == PYNN_BOOL && is_attention_mask(layer, call->source_count, i));
            if (!fits)
                return pynn_capi_error(b->err, b->err_len, "%s: %s%s: input %d is %s, the layer reads %s there",
                                       b->path, label, layer->name, i, names[given], names[wanted]);
        }
        const int wanted = accepted_dtype(layer, 0);
        for (int k = 0; k < call->target_count; k++)
            graph->slot_dtypes[call->target + k] = wanted < 0 && layer->type != LAYER_NESTED
                                                   ? graph->slot_dtypes[call->sources[0]] : PYNN_FLOAT32;
    }
    for (int i = 0; i < graph->output_count; i++)
        if (graph->slot_dtypes[graph->outputs[i].slot] != PYNN_FLOAT32)
            return pynn_capi_error(b->err, b->err_len, "%s: %soutput %d is %s; the C API gives float32 outputs",
                                   b->path, label, i, names[graph->slot_dtypes[graph->outputs[i].slot]]);
    return 0;
}

/* A Sequential's layers, their tensors named "<prefix><index>.<param>", their
 * messages "<label>layer <index>". */
static int build_sequential(builder *b, pynn_graph *graph, const pynn_json *architecture, const char *prefix,
                            const char *label)
{
    if (architecture->kind != PYNN_JSON_ARRAY || architecture->length == 0
        || architecture->length > PYNN_GRAPH_MAX_LAYERS)
        return pynn_capi_error(b->err, b->err_len, "%s: %sthe layers must be a non-empty list of at most %d", b->path,
                   label, PYNN_GRAPH_MAX_LAYERS);
    const int count = (int)architecture->length;
    graph->layers = calloc((size_t)count, sizeof *graph->layers);
    graph->calls = calloc((size_t)count, sizeof *graph->calls);
    if (!graph->layers || !graph->calls)
        return pynn_capi_error(b->err, b->err_len, "%s: out of memory", b->path);
    graph->layer_count = count;
    for (int i = 0; i < count; i++) {
        char layer_label[PYNN_GRAPH_MAX_NAME], layer_prefix[PYNN_GRAPH_MAX_NAME];
        snprintf(layer_label, sizeof layer_label, "%slayer %d", label, i);
        snprintf(layer_prefix, sizeof layer_prefix, "%s%d.", prefix, i);
        if (read_layer(b, architecture->items[i], layer_label, layer_prefix, &graph->layers[i]))
            return -1;
        if (graph->layers[i].takes_list)
            return pynn_capi_error(b->err, b->err_len, "%s: %s takes a list of inputs, which a Sequential cannot give",
                       b->path, graph->layers[i].name);
    }
    /* a ReLU right after a Linear or convolution runs in its epilogue (sequential.py _fusion_plan) */
    int slot = 0;
    for (int i = 0; i < count; i++) {
        if (is_relu(&graph->layers[i]) && i && fuses_relu(&graph->layers[i - 1]))
            continue;
        pynn_call *call = &graph->calls[graph->call_count++];
        call->layer = i;
        call->sources[0] = slot;
        call->source_count = 1;
        call->target = ++slot;
        call->target_count = 1;
        call->relu = fuses_relu(&graph->layers[i]) && i + 1 < count && is_relu(&graph->layers[i + 1]);
    }
    graph->slot_count = slot + 1;
    if (!(graph->inputs = calloc(1, sizeof *graph->inputs)) || !(graph->outputs = calloc(1, sizeof *graph->outputs)))
        return pynn_capi_error(b->err, b->err_len, "%s: out of memory", b->path);
    graph->input_count = graph->output_count = 1;
    const int first = accepted_dtype(&graph->layers[0], 0);
    graph->inputs[0].dtype = first < 0 ? PYNN_FLOAT32 : (pynn_dtype)first;
    graph->outputs[0].slot = slot;
    return slot_dtypes(b, graph, label);
}

/* A reference ["input", i] or ["call", j, k]: its tensor (inputs first,
 * then call j's outputs from first[j], outputs[j] of them), or -1. */
static int reference_tensor(const pynn_json *reference, int inputs, int calls_made, const int *first,
                            const int *outputs)
{
    int64_t index, output;
    if (!reference || reference->kind != PYNN_JSON_ARRAY || reference->length < 2
        || reference->items[0]->kind != PYNN_JSON_STRING || !pynn_json_int(reference->items[1], &index))
        return -1;
    if (!strcmp(reference->items[0]->string, "input") && reference->length == 2 && index >= 0 && index < inputs)
        return (int)index;
    if (!strcmp(reference->items[0]->string, "call") && reference->length == 3 && index >= 0
        && index < calls_made && pynn_json_int(reference->items[2], &output) && output >= 0
        && output < outputs[index])
        return first[index] + (int)output;
    return -1;
}

/* The numbers of inputs a layer's call may take. */
static int takes_count(const pynn_layer *layer, size_t count)
{
    switch (layer->type) {
    case LAYER_ATTENTION: return count >= 1 && count <= 4;
    case LAYER_TRANSFORMER: return count <= 2;
    case LAYER_NESTED: return (int)count == layer->inner->input_count;
    default: return layer->takes_list || count == 1;
    }
}

static int build_model(builder *b, pynn_graph *graph, const pynn_json *architecture, const char *prefix,
                       const char *label, int depth);

/* A nested Sequential ({"type", "name", "layers"}) or Model ({"type", "graph"})
 * called as one layer: tensors under "<prefix><its name>.". */
static int read_nested(builder *b, const pynn_json *entry, const char *kind, const char *label,
                       const char *prefix, int depth, pynn_layer *layer)
{
    const int sequential = !strcmp(kind, "Sequential");
    const pynn_json *graph = pynn_json_get(entry, "graph");
    const pynn_json *name = pynn_json_get(sequential ? entry : graph, "name");
    memset(layer, 0, sizeof *layer);
    layer->type = LAYER_NESTED;
    snprintf(layer->type_name, sizeof layer->type_name, "%s", kind);
    snprintf(layer->name, sizeof layer->name, "%.200s (%.40s)", label, kind);
    if (depth >= PYNN_GRAPH_MAX_DEPTH)
        return pynn_capi_error(b->err, b->err_len, "%s: %s: models nested deeper than %d levels", b->path, label,
                   PYNN_GRAPH_MAX_DEPTH);
    if (entry->length != (sequential ? 3u : 2u) || !name || name->kind != PYNN_JSON_STRING
        || name->length > PYNN_GRAPH_MAX_NAME / 2)
        return pynn_capi_error(b->err, b->err_len, "%s: %s must be %s with a name of at most %d bytes", b->path, label,
                   sequential ? "{\"type\": \"Sequential\", \"name\", \"layers\"}"
                              : "{\"type\": \"Model\", \"graph\"}", PYNN_GRAPH_MAX_NAME / 2);
    if (!(layer->inner = calloc(1, sizeof *layer->inner)))
        return pynn_capi_error(b->err, b->err_len, "%s: out of memory", b->path);
    char inner_prefix[PYNN_GRAPH_MAX_NAME * 2], inner_label[PYNN_GRAPH_MAX_NAME];
    snprintf(inner_prefix, sizeof inner_prefix, "%s%s.", prefix, name->string);
    snprintf(inner_label, sizeof inner_label, "%.240s ", label);
    if (strlen(inner_prefix) >= PYNN_GRAPH_MAX_NAME)
        return pynn_capi_error(b->err, b->err_len, "%s: %s: nested names longer than %d bytes", b->path, label,
                   PYNN_GRAPH_MAX_NAME);
    const pynn_json *layers = pynn_json_get(entry, "layers");
    if (sequential)
        return layers ? build_sequential(b, layer->inner, layers, inner_prefix, inner_label)
                      : pynn_capi_error(b->err, b->err_len, "%s: %s has no layers", b->path, label);
    return build_model(b, layer->inner, graph, inner_prefix, inner_label, depth + 1);
}

static int build_model(builder *b, pynn_graph *graph, const pynn_json *architecture, const char *prefix,
                       const char *label, int depth)
{
    if (architecture->kind != PYNN_JSON_OBJECT)
        return pynn_capi_error(b->err, b->err_len, "%s: %sthe graph must be a JSON object", b->path, label);
    const pynn_json *inputs = pynn_json_get(architecture, "inputs");
    const pynn_json *layers = pynn_json_get(architecture, "layers");
    const pynn_json *calls = pynn_json_get(architecture, "calls");
    const pynn_json *outputs = pynn_json_get(architecture, "outputs");
    if (!inputs || inputs->kind != PYNN_JSON_ARRAY || !layers || layers->kind != PYNN_JSON_ARRAY || !calls
        || calls->kind != PYNN_JSON_ARRAY || !outputs || outputs->kind != PYNN_JSON_ARRAY)
        return pynn_capi_error(b->err, b->err_len, "%s: %sthe graph must hold the lists inputs, layers, calls and "
                   "outputs", b->path, label);
    if (inputs->length < 1 || inputs->length > PYNN_GRAPH_MAX_IO || outputs->length < 1
        || outputs->length > PYNN_GRAPH_MAX_IO)
        return pynn_capi_error(b->err, b->err_len, "%s: %sthe graph must have 1 to %d inputs and outputs", b->path,
                               label, PYNN_GRAPH_MAX_IO);
    if (layers->length > PYNN_GRAPH_MAX_LAYERS || calls->length > PYNN_GRAPH_MAX_LAYERS || calls->length == 0)
        return pynn_capi_error(b->err, b->err_len, "%s: %sthe graph must have 1 to %d calls", b->path, label,
                   PYNN_GRAPH_MAX_LAYERS);
    const int input_count = (int)inputs->length;
    int tensors = input_count;
    graph->input_count = input_count;
    graph->output_count = (int)outputs->length;
    graph->inputs = calloc((size_t)input_count, sizeof *graph->inputs);
    graph->outputs = calloc(outputs->length, sizeof *graph->outputs);
    if (!graph->inputs || !graph->outputs)
        return pynn_capi_error(b->err, b->err_len, "%s: out of memory", b->path);
    for (int i = 0; i < input_count; i++) {
        static const char *const dtypes[] = {"float32", "int64", "bool"};
        pynn_graph_io *io = &graph->inputs[i];
        const pynn_json *input = inputs->items[i], *dtype = pynn_json_get(input, "dtype");
        const pynn_json *name = pynn_json_get(input, "name");
        char what[64];
        snprintf(what, sizeof what, "input %d's shape", i);
        if (read_input_shape(b, pynn_json_get(input, "shape"), &io->shape, what))
            return -1;
        io->slot = i;
        io->dtype = (pynn_dtype)-1;
        for (int d = 0; d < 3 && dtype && dtype->kind == PYNN_JSON_STRING; d++)
            if (!strcmp(dtype->string, dtypes[d]))
                io->dtype = (pynn_dtype)d;
        if ((int)io->dtype < 0)
            return pynn_capi_error(b->err, b->err_len, "%s: %sinput %d's dtype must be float32, int64 or bool",
                                   b->path, label, i);
        if (name && name->kind == PYNN_JSON_STRING)
            snprintf(io->name, sizeof io->name, "%s", name->string);
    }
    graph->knows_input_shape = 1;
    graph->layer_count = (int)layers->length;
    graph->layers = calloc(layers->length + 1, sizeof *graph->layers);
    graph->calls = calloc(calls->length, sizeof *graph->calls);
    /* per call its first tensor and its number of outputs; per tensor (at most
     * PYNN_GRAPH_MAX_IO per call) its readers before fusion, the call + 1 a
     * ReLU reading it would fuse into, its slot after fusion, whether it is an output */
    int *first = calloc(calls->length, sizeof *first), *made_count = calloc(calls->length, sizeof *made_count);
    int *readers = NULL, *fusing_call = NULL, *slot_of = NULL, *is_output = NULL;
    int result = -1;
    if (!graph->layers || !graph->calls || !first || !made_count) {
        pynn_capi_error(b->err, b->err_len, "%s: out of memory", b->path);
        goto done;
    }
    for (size_t i = 0; i < layers->length; i++) {
        const pynn_json *entry = layers->items[i], *name = pynn_json_get(entry, "name");
        const pynn_json *type = pynn_json_get(entry, "type");
        char layer_label[PYNN_GRAPH_MAX_NAME], layer_prefix[PYNN_GRAPH_MAX_NAME * 2];
        if (type && type->kind == PYNN_JSON_STRING && (!strcmp(type->string, "Sequential")
                                                       || !strcmp(type->string, "Model"))) {
            snprintf(layer_label, sizeof layer_label, "%slayer %zu", label, i);
            if (read_nested(b, entry, type->string, layer_label, prefix, depth, &graph->layers[i]))
                goto done;
            continue;
        }
        if (!name || name->kind != PYNN_JSON_STRING || name->length > PYNN_GRAPH_MAX_NAME / 2) {
            pynn_capi_error(b->err, b->err_len, "%s: %slayer %zu must have a name of at most %d bytes", b->path, label, i,
                PYNN_GRAPH_MAX_NAME / 2);
            goto done;
        }
        snprintf(layer_label, sizeof layer_label, "%slayer '%s'", label, name->string);
        snprintf(layer_prefix, sizeof layer_prefix, "%s%s.", prefix, name->string);
        if (strlen(layer_prefix) >= PYNN_GRAPH_MAX_NAME) {
            pynn_capi_error(b->err, b->err_len, "%s: %s: nested names longer than %d bytes", b->path, layer_label,
                PYNN_GRAPH_MAX_NAME);
            goto done;
        }
        if (read_layer(b, entry, layer_label, layer_prefix, &graph->layers[i]))
            goto done;
    }
    for (size_t j = 0; j < calls->length; j++) {
        const pynn_json *entry = calls->items[j], *refs = pynn_json_get(entry, "inputs");
        int64_t layer;
        if (!pynn_json_int(pynn_json_get(entry, "layer"), &layer) || layer < 0 || layer >= graph->layer_count
            || !refs || refs->kind != PYNN_JSON_ARRAY || entry->length != 2 || refs->length < 1
            || refs->length > PYNN_GRAPH_MAX_INPUTS) {
            pynn_capi_error(b->err, b->err_len, "%s: %scall %zu must be {\"layer\": index, \"inputs\": [1 to %d "
                "references]}", b->path, label, j, PYNN_GRAPH_MAX_INPUTS);
            goto done;
        }
        const pynn_layer *callee = &graph->layers[layer];
        first[j] = tensors;
        made_count[j] = callee->type == LAYER_NESTED ? callee->inner->output_count : 1;
        tensors += made_count[j];
    }
    readers = calloc((size_t)tensors, sizeof *readers);
    fusing_call = calloc((size_t)tensors, sizeof *fusing_call);
    slot_of = calloc((size_t)tensors, sizeof *slot_of);
    is_output = calloc((size_t)tensors, sizeof *is_output);
    if (!readers || !fusing_call || !slot_of || !is_output) {
        pynn_capi_error(b->err, b->err_len, "%s: out of memory", b->path);
        goto done;
    }
    for (size_t j = 0; j < calls->length; j++) {
        const pynn_json *entry = calls->items[j], *refs = pynn_json_get(entry, "inputs");
        int64_t layer;
        pynn_json_int(pynn_json_get(entry, "layer"), &layer);
        if (!takes_count(&graph->layers[layer], refs->length)) {
            pynn_capi_error(b->err, b->err_len, "%s: %scall %zu: %s does not take %zu inputs", b->path, label, j,
                graph->layers[layer].name, refs->length);
            goto done;
        }
        for (size_t r = 0; r < refs->length; r++) {
            const int source = reference_tensor(refs->items[r], input_count, (int)j, first, made_count);
            if (source < 0) {
                pynn_capi_error(b->err, b->err_len, "%s: %scall %zu: input %zu is not an input or an output of an "
                    "earlier call", b->path, label, j, r);
                goto done;
            }
            readers[source]++;
        }
    }
    for (size_t i = 0; i < outputs->length; i++) {
        const int output = reference_tensor(outputs->items[i], input_count, (int)calls->length, first,
                                            made_count);
        if (output < 0) {
            pynn_capi_error(b->err, b->err_len, "%s: %soutput %zu is not an input or an output of a call",
                            b->path, label, i);
            goto done;
        }
        graph->outputs[i].slot = output;  /* a tensor until the slots are known */
        is_output[output] = 1;
    }
    /* the calls as model.py _build_steps makes them: a ReLU that is the only reader of a
     * Linear's or convolution's output (not a model output) becomes that call's activation */
    int slots = input_count;
    for (int i = 0; i < input_count; i++)
        slot_of[i] = i;
    for (size_t j = 0; j < calls->length; j++) {
        const pynn_json *refs = pynn_json_get(calls->items[j], "inputs");
        int64_t layer;
        pynn_json_int(pynn_json_get(calls->items[j], "layer"), &layer);
        int original[PYNN_GRAPH_MAX_INPUTS];
        for (size_t r = 0; r < refs->length; r++)
            original[r] = reference_tensor(refs->items[r], input_count, (int)j, first, made_count);
        const int source = original[0], made = first[j];
        if (is_relu(&graph->layers[layer]) && fusing_call[source] && readers[source] == 1 && !is_output[source]) {
            graph->calls[fusing_call[source] - 1].relu = 1;
            fusing_call[source] = 0;
            slot_of[made] = slot_of[source];
            continue;
        }
        pynn_call *call = &graph->calls[graph->call_count];
        call->layer = (int)layer;
        call->source_count = (int)refs->length;
        for (size_t r = 0; r < refs->length; r++)
            call->sources[r] = slot_of[original[r]];
        call->target = slots;
        call->target_count = made_count[j];
        for (int k = 0; k < made_count[j]; k++)
            slot_of[made + k] = slots++;
        if (fuses_relu(&graph->layers[layer]))
            fusing_call[made] = graph->call_count + 1;
        graph->call_count++;
    }
    graph->slot_count = slots;
    for (int i = 0; i < graph->output_count; i++) {
        pynn_graph_io *io = &graph->outputs[i];
        const int tensor = io->slot;
        io->slot = slot_of[tensor];
        if (tensor < input_count)
            snprintf(io->name, sizeof io->name, "%s", graph->inputs[tensor].name);
        else
            for (int c = 0; c < graph->call_count; c++)
                if (graph->calls[c].target <= io->slot
                    && io->slot < graph->calls[c].target + graph->calls[c].target_count) {
                    const pynn_json *entry = layers->items[graph->calls[c].layer];
                    const pynn_json *name = pynn_json_get(entry, "name");
                    if (!name || name->kind != PYNN_JSON_STRING)
                        name = pynn_json_get(pynn_json_get(entry, "graph"), "name");
                    snprintf(io->name, sizeof io->name, "%s", name && name->kind == PYNN_JSON_STRING
                             ? name->string : graph->layers[graph->calls[c].layer].type_name);
                }
    }
    result = slot_dtypes(b, graph, label);
done:
    free(first);
    free(made_count);
    free(readers);
    free(fusing_call);
    free(slot_of);
    free(is_output);
    return result;
}

static void set_claim_bound(pynn_graph *graph, int64_t bound)
{
    graph->claim_bound = bound;
    for (int i = 0; i < graph->layer_count; i++)
        if (graph->layers[i].inner)
            set_claim_bound(graph->layers[i].inner, bound);
}

/* Every slot's shape for inputs of `batch` samples whose variable axes are `length` long. */
static int probe(const pynn_graph *graph, int64_t batch, int64_t length, pynn_shape *shapes, char *err,
                 size_t err_len)
{
    pynn_shape inputs[PYNN_GRAPH_MAX_IO];
    for (int i = 0; i < graph->input_count; i++)
        inputs[i] = pynn_graph_input(graph, i, batch, length);
    return pynn_graph_shapes(graph, inputs, shapes, err, err_len);
}

/* The outputs' per-sample shapes, found as Python checks a call: with two
 * batch sizes (a layer that mixes the batch axis into the others gives
 * different per-sample shapes) and, with variable input axes, the first two
 * lengths every layer takes (an output axis that differs follows them: -1). */
static int output_shapes(pynn_graph *graph, const char *path, char *err, size_t err_len)
{
    int variable = 0, found = 0, failed = 0;
    for (int i = 0; i < graph->input_count; i++)
        for (int axis = 0; axis < graph->inputs[i].shape.rank; axis++)
            variable |= graph->inputs[i].shape.dims[axis] < 0;
    pynn_shape *shapes = calloc((size_t)graph->slot_count, sizeof *shapes);
    pynn_shape *paired = calloc((size_t)graph->slot_count, sizeof *paired);
    char why[400] = "";
    if (!shapes || !paired)
        failed = pynn_capi_error(err, err_len, "%s: out of memory", path);
    for (int64_t length = 1; !failed && length <= (variable ? 64 : 1) && found < 2; length++) {
        if (probe(graph, 1, length, shapes, why, sizeof why) || probe(graph, 2, length, paired, why, sizeof why))
            continue;
        for (int slot = 0; slot < graph->slot_count && !failed; slot++)
            if (shapes[slot].rank != paired[slot].rank
                || memcmp(shapes[slot].dims + 1, paired[slot].dims + 1,
                          (size_t)(shapes[slot].rank > 1 ? shapes[slot].rank - 1 : 0) * sizeof(int64_t)))
                failed = pynn_capi_error(err, err_len, "%s: a per-sample shape depends on the batch size", path);
        for (int i = 0; i < graph->output_count && !failed; i++) {
            const pynn_shape *made = &shapes[graph->outputs[i].slot];
            pynn_shape *sample = &graph->outputs[i].shape;
            if (found && sample->rank != made->rank - 1)
                failed = pynn_capi_error(err, err_len, "%s: output %d's rank depends on the input's length", path, i);
            for (int axis = 0; axis + 1 < made->rank && !failed; axis++)
                sample->dims[axis] = found && sample->dims[axis] != made->dims[axis + 1] ? -1 : made->dims[axis + 1];
            sample->rank = made->rank - 1;
        }
        found++;
    }
    if (!failed && !found)
        failed = pynn_capi_error(err, err_len, variable ? "%s: no length up to 64 of the variable axes fits: %s"
                                                        : "%s: %s", path, why);
    free(shapes);
    free(paired);
    return failed;
}

int pynn_graph_build(pynn_graph *graph, const pynn_model_file *file, const char *path, char *err,
                     size_t err_len)
{
    builder b = {file, path, err, err_len, 0};
    memset(graph, 0, sizeof *graph);
    const char *format = pynn_model_file_metadata(file, "format");
    const char *text = pynn_model_file_metadata(file, "architecture");
    const int sequential = format && !strcmp(format, "pynn.Sequential");
    if (!format || !text || (!sequential && strcmp(format, "pynn.Model")))
        return pynn_capi_error(err, err_len, "%s: not a pynn model file (no pynn.Sequential or pynn.Model architecture "
                   "in its metadata)", path);
    char why[256] = "";
    pynn_json *architecture = pynn_json_parse(text, strlen(text), why, sizeof why);
    if (!architecture)
        return pynn_capi_error(err, err_len, "%s: the architecture is not valid JSON: %s", path, why);
    int failed = sequential ? build_sequential(&b, graph, architecture, "", "")
                            : build_model(&b, graph, architecture, "", "", 0);
    pynn_json_free(architecture);
    if (!failed && b.tensors_used != file->count)
        failed = pynn_capi_error(err, err_len, "%s: the file holds %zu tensors, the architecture reads %zu", path,
                     file->count, b.tensors_used);
    if (!failed && sequential) {
        const char *recorded = pynn_model_file_metadata(file, "input_shape");
        pynn_json *shape = recorded ? pynn_json_parse(recorded, strlen(recorded), why, sizeof why) : NULL;
        pynn_shape *input = &graph->inputs[0].shape;
        graph->knows_input_shape = 1;
        if (shape && shape->kind != PYNN_JSON_NULL) {
            failed = read_input_shape(&b, shape, input, "the input_shape metadata");
        } else if (graph->layers[0].type == LAYER_LINEAR) {
            input->rank = 1;
            input->dims[0] = graph->layers[0].in_features;
        } else {
            failed = pynn_capi_error(err, err_len, "%s: the file records no input shape (set model.input_shape before "
                         "saving)", path);
        }
        pynn_json_free(shape);
    }
    if (!failed) {
        int64_t held = 0;
        for (int i = 0; i < graph->input_count; i++)
            held += pynn_shape_size(&graph->inputs[i].shape) < 0 ? 0 : pynn_shape_size(&graph->inputs[i].shape);
        for (size_t i = 0; i < file->count; i++)
            held += file->tensors[i].count;
        set_claim_bound(graph, held < CLAIM_FLOOR / CLAIM_FACTOR ? CLAIM_FLOOR : CLAIM_FACTOR * held);
        failed = output_shapes(graph, path, err, err_len);
    }
    if (failed)
        pynn_graph_free(graph);
    return failed ? -1 : 0;
}

void pynn_graph_free(pynn_graph *graph)
{
    for (int i = 0; graph->layers && i < graph->layer_count; i++)
        if (graph->layers[i].inner) {
            pynn_graph_free(graph->layers[i].inner);
            free(graph->layers[i].inner);
        }
    free(graph->layers);
    free(graph->calls);
    free(graph->slot_dtypes);
    free(graph->inputs);
    free(graph->outputs);
    memset(graph, 0, sizeof *graph);
}
