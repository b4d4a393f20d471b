"""How pynn's sequence layers are written in ONNX operators (the table is in
docs/onnx.md): attention, the transformer encoder layer, positions, padding
masks and mean pooling. The translations take what those of
pynn/onnx/export_layers.py take. Every length is read from the graph's
tensors (``Shape``), never baked in, so one file takes every length."""
import math

import numpy as np

from pynn.layers import (MeanPooling, MultiheadAttention, PaddingMask, PositionalEmbedding,
                         TransformerEncoderLayer)
from pynn.onnx.export_layers import _axes, _gelu, _layer_norm, _linear, _reduce, _scalar


class _Part:
    """A tensor a composite layer hands between its parts' translations (not
    a tuple: ``MultiheadAttention`` reads a tuple as its list of inputs)."""
    __slots__ = ("name", "shape", "dtype")

    def __init__(self, name, shape, dtype):
        self.name, self.shape, self.dtype = name, shape, dtype


# ONNX's Softmax of a row of -inf keys is NaN; pynn's attention gives zeros
# there, so padded keys get this bias (exp of it is 0 beside any real key)
# and rows without a key are zeroed after the attention.
_LOWEST = float(np.finfo(np.float32).min)
_FLOAT = 1  # onnx.TensorProto.FLOAT, without importing onnx here


def _slice(nodes, tensor, start, end, purpose):
    """Rows ``start:end`` of an initializer, taken in the graph so the tensor is stored once."""
    return nodes.op("Slice", [tensor, nodes.constant(f"{purpose}_starts", _axes([start])),
                              nodes.constant(f"{purpose}_ends", _axes([end])),
                              nodes.constant(f"{purpose}_axes", _axes([0]))])


def _project(nodes, x, weight, bias, final=False):
    """x Wᵀ + b for x [N, T, E] and W [out, E] (no Add without a bias)."""
    emit = nodes.out if final else nodes.op
    transposed = nodes.op("Transpose", [weight], perm=[1, 0])
    if bias is None:
        return emit("MatMul", [x, transposed])
    return emit("Add", [nodes.op("MatMul", [x, transposed]), bias])


def _key_bias(nodes, mask):
    """``(bias [N, 1, 1, S], has_key [N, 1, 1])`` of a key-padding mask [N, S]:
    a bool one (True = padding) as 0 or the lowest float, a float one with
    its -inf replaced by the lowest float; ``has_key`` is 1 where a row has a
    key that is not padding, else 0."""
    lowest = nodes.constant("lowest", _scalar(_LOWEST))
    if mask.dtype == "bool":
        padded = mask.name
        bias = nodes.op("Where", [padded, lowest, nodes.constant("zero", _scalar(0.0))])
    else:
        padded = nodes.op("IsInf", [mask.name], detect_positive=0)
        bias = nodes.op("Where", [padded, lowest, mask.name])
    kept = nodes.op("Cast", [nodes.op("Not", [padded])], to=_FLOAT)
    has_key = nodes.op("Unsqueeze", [_reduce(nodes, "ReduceMax", kept, [1]),
                                     nodes.constant("key_axes", _axes([2]))])
    return nodes.op("Unsqueeze", [bias, nodes.constant("bias_axes", _axes([1, 2]))]), has_key


def _multihead_attention(nodes, layer, x, shape):
    """Per part of ``in_proj_weight`` (q, k, v rows, sliced in the graph):
    MatMul, Add; heads by Reshape [0, 0, heads, head_dim] and Transpose; the
    scores MatMul(q, kᵀ) times 1/√head_dim, plus the mask's bias; Softmax;
    MatMul by v; Transpose and Reshape [0, 0, E] back; the output projection."""
    query, key, value, mask = layer._parts(x)
    e, heads = layer.embed_dim, layer.num_heads
    head_dim = e // heads
    weight = nodes.state("in_proj_weight", layer.params["in_proj_weight"])
    bias = layer.params.get("in_proj_bias")
    bias = None if bias is None else nodes.state("in_proj_bias", bias)
    split = nodes.constant("split_heads", _axes([0, 0, heads, head_dim]))
    projected = []
    for index, (purpose, source) in enumerate(zip("qkv", (query, key, value))):
        rows = _slice(nodes, weight, index * e, (index + 1) * e, f"{purpose}_rows")
        part_bias = None if bias is None else _slice(nodes, bias, index * e, (index + 1) * e,
                                                     f"{purpose}_bias_rows")
        heads_of = nodes.op("Reshape", [_project(nodes, source.name, rows, part_bias), split])
        perm = [0, 2, 3, 1] if purpose == "k" else [0, 2, 1, 3]  # k transposed for the scores
        projected.append(nodes.op("Transpose", [heads_of], perm=perm))
    q, k_transposed, v = projected
    scores = nodes.op("Mul", [nodes.op("MatMul", [q, k_transposed]),
                              nodes.constant("scale", _scalar(1.0 / math.sqrt(head_dim)))])
    has_key = None
    if mask is not None:
        bias_of_keys, has_key = _key_bias(nodes, mask)
        scores = nodes.op("Add", [scores, bias_of_keys])
    attended = nodes.op("MatMul", [nodes.op("Softmax", [scores], axis=-1), v])
    merged = nodes.op("Reshape", [nodes.op("Transpose", [attended], perm=[0, 2, 1, 3]),
                                  nodes.constant("merge_heads", _axes([0, 0, e]))])
    if has_key is not None:
        merged = nodes.op("Mul", [merged, has_key])
    out_bias = layer.params.get("out_proj.bias")
    return _project(nodes, merged, nodes.state("out_proj.weight", layer.params["out_proj.weight"]),
                    None if out_bias is None else nodes.state("out_proj.bias", out_bias), final=True)


def _transformer_encoder_layer(nodes, layer, x, shape):
    """The parts' translations under ``<layer>.<part>`` joined by residual
    Adds: post-norm norm2(h + ff(h)) with h = norm1(x + sa(x)), pre-norm
    h + ff(norm2(h)) with h = x + sa(norm1(x)); ff is linear1, Relu or GELU's
    translation, linear2. Dropout is the identity at inference."""
    source, mask = (x[0], x[1]) if isinstance(x, list) else (x, None)

    def tensor(name):
        return _Part(name, shape, "float32")

    def attention(h):
        given = [h, mask] if mask is not None else h
        return tensor(_multihead_attention(nodes.part("self_attn"), layer.self_attn, given, shape))

    def feed_forward(h):
        hidden = tensor(_linear(nodes.part("linear1"), layer.linear1, h, shape))
        if layer.activation == "relu":
            hidden = tensor(nodes.op("Relu", [hidden.name]))
        else:
            hidden = tensor(_gelu(nodes.part("gelu"), layer.gelu, hidden, shape))
        return tensor(_linear(nodes.part("linear2"), layer.linear2, hidden, shape))

    def norm(key, h, final=False):
        return tensor(_layer_norm(nodes.part(key, final=final), getattr(layer, key), h, shape))

    def residual(h, branch):
        return tensor(nodes.op("Add", [h.name, branch.name]))

    if layer.norm_first:
        h = residual(source, attention(norm("norm1", source)))
        return nodes.out("Add", [h.name, feed_forward(norm("norm2", h)).name])
    h = norm("norm1", residual(source, attention(source)))
    return norm("norm2", residual(h, feed_forward(h)), final=True).name


def _positional_embedding(nodes, layer, x, shape):
    """x + weight[:length]: the length by Shape and Gather on x, a Slice of
    the weight to it, and Add (broadcasting over the batch)."""
    length = nodes.op("Gather", [nodes.op("Shape", [x.name]), nodes.constant("length_axis", _axes([1]))],
                      axis=0)
    rows = nodes.op("Slice", [nodes.state("weight", layer.params["weight"]),
                              nodes.constant("starts", _axes([0])), length,
                              nodes.constant("axes", _axes([0]))])
    return nodes.out("Add", [x.name, rows])


def _padding_mask(nodes, layer, x, shape):
    """Equal(mask, 0), then Where(·, -inf, 0): -inf for padding, 0 for a token."""
    padding = nodes.op("Equal", [x.name, nodes.constant("zero", np.array(0, dtype=np.int64))])
    return nodes.out("Where", [padding, nodes.constant("minus_inf", _scalar(-np.inf)),
                               nodes.constant("no_bias", _scalar(0.0))])


def _mean_pooling(nodes, layer, x, shape):
    """Cast the mask to float, Unsqueeze it to [N, T, 1], Mul the states by
    it, ReduceSum over axis 1, and Div by Max(ReduceSum of the mask, 1e-9)."""
    states, mask = x
    weights = nodes.op("Unsqueeze", [nodes.op("Cast", [mask.name], to=_FLOAT),
                                     nodes.constant("feature_axis", _axes([2]))])
    total = _reduce(nodes, "ReduceSum", nodes.op("Mul", [states.name, weights]), [1], keepdims=0)
    count = _reduce(nodes, "ReduceSum", weights, [1], keepdims=0)
    return nodes.out("Div", [total, nodes.op("Max", [count, nodes.constant("least", _scalar(1e-9))])])


TRANSLATIONS = {
    MultiheadAttention: _multihead_attention, TransformerEncoderLayer: _transformer_encoder_layer,
    PositionalEmbedding: _positional_embedding, PaddingMask: _padding_mask, MeanPooling: _mean_pooling,
}
