/* A model file's architecture as layers and calls (pynn/architecture.py),
 * with the weights each layer reads, and the calls an inference plan runs
 * in the order Python's Sequential and Model run them: a ReLU right after a
 * Linear or convolution that is its only reader becomes that layer's
 * activation (pynn/sequential.py _fusion_plan, pynn/model.py _build_steps). */
#ifndef PYNN_CAPI_GRAPH_H
#define PYNN_CAPI_GRAPH_H

#include <stddef.h>
#include <stdint.h>

#include "../../include/pynn.h"
#include "../activations.h"
#include "../plan.h"
#include "model_file.h"

#define PYNN_GRAPH_MAX_RANK 8
#define PYNN_GRAPH_MAX_LAYERS 100000
#define PYNN_GRAPH_MAX_INPUTS 64    /* a merge layer's inputs */
#define PYNN_GRAPH_MAX_NAME 256
#define PYNN_GRAPH_MAX_DEPTH 16     /* models nested in models */
#define PYNN_GRAPH_MAX_IO 64        /* a model's inputs, and its outputs */

typedef enum {
    LAYER_LINEAR, LAYER_MAP, LAYER_SOFTMAX, LAYER_VIEW_SAME, LAYER_FLATTEN, LAYER_RESHAPE,
    LAYER_BATCHNORM1D, LAYER_BATCHNORM2D, LAYER_CONV, LAYER_MAXPOOL, LAYER_AVGPOOL,
    LAYER_GLOBAL_AVGPOOL, LAYER_ADAPTIVE_AVGPOOL, LAYER_ADD, LAYER_MULTIPLY, LAYER_CONCATENATE,
    LAYER_DOT, LAYER_LAYERNORM, LAYER_PERMUTE, LAYER_NESTED, LAYER_LOG_SOFTMAX, LAYER_AFFINE,
    LAYER_ATTENTION, LAYER_TRANSFORMER, LAYER_POSITIONAL, LAYER_EMBEDDING, LAYER_PADDING_MASK,
    LAYER_MEAN_POOLING
} pynn_layer_type;

typedef struct pynn_graph pynn_graph;

/* Writes the formatted message into err (err_len bytes, NULL or 0: none) and
 * returns -1: how the C API's builder and runner report a failure. */
int pynn_capi_error(char *err, size_t err_len, const char *format, ...)
    __attribute__((format(printf, 3, 4)));

typedef struct {
    int64_t dims[PYNN_GRAPH_MAX_RANK];
    int rank;
} pynn_shape;

/* MultiheadAttention (x, [x, mask], [q, k, v] or [q, k, v, mask]) and
 * TransformerEncoderLayer (x or [x, mask]):
 * the tensors of pynn/layers/attention.py and transformer.py, biases NULL when absent. */
typedef struct {
    int64_t embed_dim, heads, feedforward;
    const float *in_weight, *in_bias, *out_weight, *out_bias;
    const float *linear1_weight, *linear1_bias, *linear2_weight, *linear2_bias;
    const float *norm1_weight, *norm1_bias, *norm2_weight, *norm2_bias;
    int gelu, norm_first;
} pynn_attention_params;

typedef struct {
    pynn_layer_type type;
    char type_name[32];
    char name[PYNN_GRAPH_MAX_NAME];  /* for messages: "layer 3 (Linear)" or the graph name */
    int takes_list;
    /* Linear: weight [n, k]; Conv: weight [out, in / groups, kh, kw]; both: bias or NULL */
    const float *weight, *bias;
    int64_t in_features, out_features;
    int64_t in_channels, out_channels, groups;
    /* Conv and pools: the 2-D kernels' geometry; 1-D layers see [N, C, L] as [N, C, 1, L] */
    int64_t kernel[2], stride[2], padding[2], dilation[2];
    int spatial_rank;                /* 1 or 2 */
    /* BatchNorm, LayerNorm; Affine: scale and shift, either NULL when left out */
    const float *gamma, *beta, *running_mean, *running_var;
    float eps;
    int64_t num_features;
    /* pools */
    int ceil_mode, count_include_pad;
    /* element-wise maps */
    pynn_elementwise_fn map;
    float parameter;
    /* Softmax, LogSoftmax, Concatenate */
    int64_t axis;
    /* Flatten */
    int64_t start_dim, end_dim;
    /* Reshape: the per-sample shape; LayerNorm: normalized_shape; Permute: dims; Affine: shape */
    pynn_shape reshape;
    /* AdaptiveAvgPool2d: the output's (h, w), -1 keeping the input's */
    int64_t adaptive[2];
    /* LayerNorm */
    double layer_norm_eps;
    /* MultiheadAttention, TransformerEncoderLayer (its LayerNorms' eps in layer_norm_eps) */
    pynn_attention_params attention;
    /* PositionalEmbedding: weight [in_features = max_length, out_features = embedding_dim];
     * Embedding: weight [in_features = num_embeddings, out_features = embedding_dim] */
    /* a nested Sequential or Model, run as one step with its own plan (as Python runs it) */
    pynn_graph *inner;
} pynn_layer;

/* One call: a layer reading value slots and writing one. */
typedef struct {
    int layer;
    int sources[PYNN_GRAPH_MAX_INPUTS];
    int source_count;
    int target, target_count;        /* slots target .. target + target_count (a nested model's outputs) */
    int relu;                        /* the layer's activation is "relu" at this call */
} pynn_call;

/* A model input or output: one sample's shape (batch excluded, -1 for a
 * variable axis), its dtype, its slot and its name (an output's: the layer
 * that makes it). */
typedef struct {
    pynn_shape shape;
    pynn_dtype dtype;
    int slot;
    char name[PYNN_GRAPH_MAX_NAME];
} pynn_graph_io;

struct pynn_graph {
    pynn_layer *layers;
    int layer_count;
    pynn_call *calls;
    int call_count;
    int slot_count;
    pynn_dtype *slot_dtypes;         /* per slot: int64 and bool only for inputs and their views */
    pynn_graph_io *inputs, *outputs; /* inputs in slots 0 .. input_count */
    int input_count, output_count;
    int knows_input_shape;           /* a nested Sequential's input shape is its caller's */
    int64_t claim_bound;             /* the most values per sample any call may output */
};

/* The graph of a model file; 0, or -1 with a message naming the file and
 * the layer. `path` only names the file in messages. */
int pynn_graph_build(pynn_graph *graph, const pynn_model_file *file, const char *path, char *err,
                     size_t err_len);
void pynn_graph_free(pynn_graph *graph);

/* Every slot's shape for inputs of shapes `inputs[input_count]` (batch
 * included) (shapes[slot_count]); 0, or -1 with a message naming the layer
 * that refuses its input. */
int pynn_graph_shapes(const pynn_graph *graph, const pynn_shape *inputs, pynn_shape *shapes, char *err,
                      size_t err_len);
/* Input `index` of `batch` samples, its variable axes `length` long. */
pynn_shape pynn_graph_input(const pynn_graph *graph, int index, int64_t batch, int64_t length);

/* `shape` (batch first) fits one sample's `sample`, whose -1 axes take any length. */
int pynn_shape_fits(const pynn_shape *sample, const pynn_shape *shape);

/* Elements of a shape (the shapes are bounded, so this never overflows). */
int64_t pynn_shape_size(const pynn_shape *shape);

#endif
