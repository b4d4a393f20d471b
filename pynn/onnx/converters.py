"""ONNX ops on tensors that flow from the model's inputs, as pynn layers:
the layers with weights, activations, pooling (shape ops in shapes.py,
arithmetic in arithmetic.py).

Each converter takes the graph builder (pynn/onnx/importer.py) and a node,
calls pynn layers on the node's symbolic inputs and returns the values of
the node's outputs. Weights are constants of the file; anything pynn cannot
express exactly raises ValueError, which the builder reports with the node."""
import math

import numpy as np

from pynn import layers
from pynn.onnx.folding import axis_of

def assign(layer, key, values):
    """Write ``values`` (cast to float32) into the layer's parameter or buffer ``key``."""
    target = layer.params[key] if key in layer.params else layer.buffers[key]
    values = np.asarray(values)
    if values.shape != target.shape:
        raise ValueError(f"{key} has shape {values.shape}, expected {target.shape}")
    if values.dtype.kind not in "fiu":
        raise ValueError(f"{key} must hold numbers, got {values.dtype.name}")
    target[...] = values.astype(np.float32)


def float_constant(value, what):
    if value.dtype.kind not in "fiu":
        raise ValueError(f"{what} must hold numbers, got {value.dtype.name}")
    return value.astype(np.float32)


def scalar(value, what):
    value = np.asarray(value)
    if value.size != 1:
        raise ValueError(f"{what} must be a single number, got shape {value.shape}")
    return float(value.reshape(()))


def _spatial(x, what):
    """The number of spatial axes of ``x`` ([N, C, L] or [N, C, H, W])."""
    spatial = len(x.shape) - 1
    if spatial not in (1, 2):
        raise ValueError(f"{what} takes [N, C, L] or [N, C, H, W] inputs, got per-sample shape "
                         f"{x.shape}")
    return spatial


def _window(attributes, spatial, kernel_shape, extents):
    """(strides, symmetric padding, dilations) of a Conv or pooling node
    over spatial ``extents``."""
    strides = attributes.ints("strides", [1] * spatial)
    dilations = attributes.ints("dilations", [1] * spatial)
    pads = attributes.ints("pads", [0] * (2 * spatial))
    if len(strides) != spatial or len(dilations) != spatial or len(pads) != 2 * spatial:
        raise ValueError(f"strides {strides}, dilations {dilations} and pads {pads} do not fit "
                         f"{spatial} spatial axes")
    auto_pad = attributes.string("auto_pad", "NOTSET")
    if auto_pad == "VALID":
        pads = [0] * (2 * spatial)
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = _same_pads(extents, kernel_shape, strides, dilations, auto_pad)
    elif auto_pad != "NOTSET":
        raise ValueError(f"auto_pad {auto_pad!r:.40} is not an ONNX choice")
    if pads[:spatial] != pads[spatial:]:
        raise ValueError(f"asymmetric pads {pads} are not supported (pynn pads each axis "
                         f"symmetrically)")
    if any(value < 1 for value in strides + dilations) or any(value < 0 for value in pads):
        raise ValueError(f"strides {strides} and dilations {dilations} must be >= 1, pads >= 0")
    return tuple(strides), tuple(pads[:spatial]), tuple(dilations)


def _same_pads(extents, kernel_shape, strides, dilations, auto_pad):
    """ONNX's SAME padding (output extent ceil(input / stride)), which pynn
    takes where each axis's total padding is even."""
    if len(strides) != len(extents) or len(dilations) != len(extents):
        raise ValueError(f"strides {strides} and dilations {dilations} do not fit the input")
    totals = [max(0, (-(-extent // max(stride, 1)) - 1) * stride + (kernel - 1) * dilation + 1
                  - extent)
              for extent, kernel, stride, dilation in zip(extents, kernel_shape, strides, dilations)]
    if any(total % 2 for total in totals):
        raise ValueError(f"auto_pad={auto_pad} pads unevenly here ({totals}); pynn pads each "
                         f"axis symmetrically")
    return [total // 2 for total in totals] * 2


def conv(builder, node):
    x = builder.sym(node, 0)
    weight = float_constant(builder.const(node, 1, "the weight"), "the weight")
    bias = builder.input(node, 2)
    spatial = _spatial(x, "Conv")
    attributes = builder.attributes(node)
    if weight.ndim != spatial + 2:
        raise ValueError(f"the weight of shape {weight.shape} does not fit {spatial} spatial axes")
    kernel = attributes.ints("kernel_shape", list(weight.shape[2:]))
    if tuple(kernel) != weight.shape[2:]:
        raise ValueError(f"kernel_shape {kernel} differs from the weight's {weight.shape[2:]}")
    strides, padding, dilations = _window(attributes, spatial, kernel, x.shape[1:])
    groups = attributes.int("group", 1)
    out_channels = weight.shape[0]
    if groups < 1 or x.shape[0] != weight.shape[1] * groups:
        raise ValueError(f"an input of {x.shape[0]} channels does not fit the weight "
                         f"{weight.shape} with group={groups}")
    kind = layers.Conv1d if spatial == 1 else layers.Conv2d
    layer = builder.layer(node, kind, x.shape[0], out_channels, weight.shape[2:], stride=strides,
                          padding=padding, dilation=dilations, groups=groups,
                          bias=bias is not None)
    assign(layer, "weight", weight)
    if bias is not None:
        assign(layer, "bias", builder.const(node, 2, "the bias").reshape(-1))
    return [builder.call(layer, x, foldable=True)]


def gemm(builder, node):
    x = builder.sym(node, 0)
    weight = float_constant(builder.const(node, 1, "B (the weight)"), "B")
    attributes = builder.attributes(node)
    if attributes.int("transA", 0):
        raise ValueError("transA=1 would transpose the batch axis away")
    if len(x.shape) != 1 or weight.ndim != 2:
        raise ValueError(f"Gemm takes [N, K] inputs and a 2-D weight, got per-sample shape "
                         f"{x.shape} and weight {weight.shape}")
    if not attributes.int("transB", 0):
        weight = weight.T
    weight = weight * np.float32(attributes.float("alpha", 1.0))
    out_features, in_features = weight.shape
    bias = builder.input(node, 2)
    layer = builder.layer(node, layers.Linear, in_features, out_features, bias=bias is not None)
    assign(layer, "weight", weight)
    if bias is not None:
        bias = float_constant(builder.const(node, 2, "C (the bias)"), "C")
        if bias.ndim > 2 or (bias.ndim == 2 and bias.shape[0] != 1):
            raise ValueError(f"C of shape {bias.shape} varies over the batch")
        bias = np.broadcast_to(bias.reshape(-1) if bias.ndim else bias, (out_features,))
        assign(layer, "bias", bias * np.float32(attributes.float("beta", 1.0)))
    return [builder.call(layer, x, foldable=True)]


def matmul(builder, node):
    x = builder.sym(node, 0)
    weight = float_constant(builder.const(node, 1, "the second operand (the weight)"), "B")
    if weight.ndim != 2 or not x.shape:
        raise ValueError(f"MatMul by a constant takes a 2-D constant and a per-sample input of "
                         f"at least one axis, got {weight.shape} and {x.shape}")
    bias = builder.foldable_bias(node, weight.shape[1], len(x.shape))
    named = node
    if bias is not None:  # pynn writes a Linear as "<layer>/MatMul" and the Add "<layer>"
        add = builder.first_reader[node.output[0]]
        if add.name and node.name.startswith(add.name + "/"):
            named = add
    layer = builder.layer(named, layers.Linear, weight.shape[0], weight.shape[1],
                          bias=bias is not None)
    assign(layer, "weight", weight.T)
    if bias is not None:
        assign(layer, "bias", np.zeros(weight.shape[1], np.float32))
    return [builder.call(layer, x, foldable=True)]


def batch_normalization(builder, node):
    x = builder.sym(node, 0)
    attributes = builder.attributes(node)
    if attributes.int("training_mode", 0):
        raise ValueError("training_mode=1 is not supported; export the model in eval mode")
    builder.refuse_extra_outputs(node, 1)
    kind = layers.BatchNorm2d if len(x.shape) == 3 else layers.BatchNorm1d
    momentum = 1.0 - attributes.float("momentum", 0.9)
    layer = builder.layer(node, kind, x.shape[0] if x.shape else 0,
                          eps=attributes.float("epsilon", 1e-5),
                          momentum=min(max(momentum, 0.0), 1.0))
    for position, key in enumerate(("weight", "bias", "running_mean", "running_var"), start=1):
        assign(layer, key, builder.const(node, position, key).reshape(-1))
    return [builder.call(layer, x, node.output[0])]


def layer_normalization(builder, node):
    x = builder.sym(node, 0)
    attributes = builder.attributes(node)
    builder.refuse_extra_outputs(node, 1)
    axis = axis_of(attributes.int("axis", -1), len(x.shape) + 1)
    if axis == 0:
        raise ValueError("axis 0 would normalise over the batch")
    shape = x.shape[axis - 1:]
    scale = builder.const(node, 1, "the scale")
    bias = builder.input(node, 2)
    return [_layer_norm(builder, node, x, shape, attributes.float("epsilon", 1e-5), scale,
                        None if bias is None else builder.const(node, 2, "the bias"))]


def _layer_norm(builder, node, x, shape, eps, scale, bias):
    check_normalized_size(shape, scale)
    layer = builder.layer(node, layers.LayerNorm, list(shape), eps=eps,
                          bias=bias is not None)
    assign(layer, "weight", np.broadcast_to(float_constant(scale, "the scale"), shape))
    if bias is not None:
        assign(layer, "bias", np.broadcast_to(float_constant(bias, "the bias"), shape))
    return builder.call(layer, x)


def check_normalized_size(shape, scale):
    """A LayerNorm's parameters come from the file: a small scale broadcast
    over a huge normalised shape is refused rather than allocated."""
    size = math.prod(shape)
    if size > max(1 << 16, 0 if scale is None else np.size(scale)):
        raise ValueError(f"the normalised shape {tuple(shape)} is larger than the file's scale "
                         f"of {0 if scale is None else np.size(scale)} values")


def _activation(kind, **fixed):
    def convert(builder, node):
        layer = builder.layer(node, kind, **fixed)
        return [builder.call(layer, builder.sym(node, 0))]
    return convert


def leaky_relu(builder, node):
    slope = builder.attributes(node).float("alpha", 0.01)
    return [builder.call(builder.layer(node, layers.LeakyReLU, slope), builder.sym(node, 0))]


def gelu(builder, node):
    approximate = builder.attributes(node).string("approximate", "none")
    return [builder.call(builder.layer(node, layers.GELU, approximate), builder.sym(node, 0))]


def hard_sigmoid(builder, node):
    attributes = builder.attributes(node)
    alpha, beta = attributes.float("alpha", 0.2), attributes.float("beta", 0.5)
    if abs(alpha - 1.0 / 6.0) > 1e-6 or abs(beta - 0.5) > 1e-6:
        raise ValueError(f"alpha={alpha}, beta={beta}: pynn's Hardsigmoid is alpha=1/6, beta=0.5")
    return [builder.call(builder.layer(node, layers.Hardsigmoid), builder.sym(node, 0))]


def clip(builder, node):
    low = builder.input(node, 1)
    high = builder.input(node, 2)
    low = -math.inf if low is None else scalar(builder.const(node, 1, "min"), "min")
    high = math.inf if high is None else scalar(builder.const(node, 2, "max"), "max")
    if (low, high) == (0.0, 6.0):
        kind = layers.ReLU6
    elif (low, high) == (0.0, math.inf):
        kind = layers.ReLU
    else:
        raise ValueError(f"Clip({low}, {high}): pynn has Clip(0, 6) (ReLU6) and Clip(0, inf) "
                         f"(ReLU)")
    return [builder.call(builder.layer(node, kind), builder.sym(node, 0))]


def _softmax(kind):
    def convert(builder, node):
        x = builder.sym(node, 0)
        axis = axis_of(builder.attributes(node).int("axis", -1), len(x.shape) + 1)
        if axis == 0:
            raise ValueError("axis 0 would mix the samples of a batch")
        return [builder.call(builder.layer(node, kind, axis), x)]
    return convert


def _pool_arguments(builder, node, x, what):
    attributes = builder.attributes(node)
    spatial = _spatial(x, what)
    kernel = attributes.ints("kernel_shape", None)
    if kernel is None or len(kernel) != spatial or any(extent < 1 for extent in kernel):
        raise ValueError(f"kernel_shape {kernel} does not fit {spatial} spatial axes")
    strides, padding, dilations = _window(attributes, spatial, kernel, x.shape[1:])
    return attributes, spatial, tuple(kernel), strides, padding, dilations


def max_pool(builder, node):
    x = builder.sym(node, 0)
    attributes, spatial, kernel, strides, padding, dilations = _pool_arguments(
        builder, node, x, "MaxPool")
    builder.refuse_extra_outputs(node, 1)
    if attributes.int("storage_order", 0):
        raise ValueError("storage_order=1 is not supported")
    kind = layers.MaxPool1d if spatial == 1 else layers.MaxPool2d
    layer = builder.layer(node, kind, kernel, strides, padding, dilations,
                          bool(attributes.int("ceil_mode", 0)))
    return [builder.call(layer, x)]


def average_pool(builder, node):
    x = builder.sym(node, 0)
    attributes, spatial, kernel, strides, padding, dilations = _pool_arguments(
        builder, node, x, "AveragePool")
    if any(value != 1 for value in dilations):
        raise ValueError(f"dilations {list(dilations)}: pynn's average pooling has none")
    kind = layers.AvgPool1d if spatial == 1 else layers.AvgPool2d
    layer = builder.layer(node, kind, kernel, strides, padding, bool(attributes.int("ceil_mode", 0)),
                          bool(attributes.int("count_include_pad", 0)))
    return [builder.call(layer, x)]


def _global_average(builder, node, x, keep_shape):
    """GlobalAvgPool2d over the spatial axes of ``x``, reshaped to ``keep_shape``."""
    spatial = _spatial(x, node.op_type)
    if spatial == 1:
        x = builder.call(builder.layer(node, layers.Reshape, x.shape + (1,), suffix="as_2d"), x)
    pooled = builder.call(builder.layer(node, layers.GlobalAvgPool2d), x)
    if keep_shape is None or tuple(keep_shape) == pooled.shape:
        return pooled
    return builder.call(builder.layer(node, layers.Reshape, keep_shape, suffix="keepdims"), pooled)


def global_average_pool(builder, node):
    x = builder.sym(node, 0)
    return [_global_average(builder, node, x, (x.shape[0],) + (1,) * (len(x.shape) - 1))]


def reduce_mean(builder, node):
    """ReduceMean over every spatial axis, or over the tokens of [N, T, E]:
    global average pooling."""
    x = builder.sym(node, 0)
    axes = builder.reduce_axes(node, len(x.shape) + 1)
    keepdims = builder.attributes(node).int("keepdims", 1)
    if len(x.shape) == 2 and axes == [1]:
        return [_token_mean(builder, node, x, keepdims)]
    if len(x.shape) not in (2, 3) or sorted(axes) != list(range(2, len(x.shape) + 1)):
        raise ValueError(f"ReduceMean over axes {axes} of per-sample shape {x.shape}: pynn "
                         f"reduces the spatial axes of [N, C, L] or [N, C, H, W] (or the "
                         f"LayerNorm pattern)")
    keep = (x.shape[0],) + (1,) * (len(x.shape) - 1) if keepdims else None
    return [_global_average(builder, node, x, keep)]


def _token_mean(builder, node, x, keepdims):
    """The mean over the tokens of x [N, T, E] (T may vary): Permute to
    [N, E, T], Reshape to [N, E, T, 1], GlobalAvgPool2d."""
    features = x.shape[1]
    if features is None:
        raise ValueError(f"the features of per-sample shape {x.shape} must have a fixed size")
    channels_first = builder.call(builder.layer(node, layers.Permute, (0, 2, 1), suffix="tokens_last"), x)
    as_2d = builder.call(builder.layer(node, layers.Reshape, (features, -1, 1), suffix="as_2d"),
                         channels_first)
    pooled = builder.call(builder.layer(node, layers.GlobalAvgPool2d), as_2d)
    if not keepdims:
        return pooled
    return builder.call(builder.layer(node, layers.Reshape, (1, features), suffix="keepdims"), pooled)


def gather(builder, node):
    """A row lookup in a constant table: Embedding."""
    table = builder.input(node, 0)
    indices = builder.sym(node, 1)
    if builder.is_symbolic(table) or not isinstance(table, np.ndarray):
        raise ValueError("Gather is supported on a constant table (an embedding)")
    if builder.attributes(node).int("axis", 0) != 0 or table.ndim != 2:
        raise ValueError(f"Gather of rows (axis 0) of a 2-D table is supported, got a table of "
                         f"shape {table.shape}")
    if indices.dtype != "int64":
        raise ValueError(f"the indices must be int64, got {indices.dtype}")
    layer = builder.layer(node, layers.Embedding, table.shape[0], table.shape[1])
    assign(layer, "weight", float_constant(table, "the table"))
    return [builder.call(layer, indices)]


CONVERTERS = {
    "Conv": conv, "Gemm": gemm, "MatMul": matmul, "BatchNormalization": batch_normalization,
    "LayerNormalization": layer_normalization,
    "Relu": _activation(layers.ReLU), "Sigmoid": _activation(layers.Sigmoid),
    "Tanh": _activation(layers.Tanh), "HardSwish": _activation(layers.Hardswish),
    "LeakyRelu": leaky_relu, "Gelu": gelu, "HardSigmoid": hard_sigmoid, "Clip": clip,
    "Softmax": _softmax(layers.Softmax), "LogSoftmax": _softmax(layers.LogSoftmax),
    "MaxPool": max_pool, "AveragePool": average_pool, "GlobalAveragePool": global_average_pool,
    "ReduceMean": reduce_mean, "Gather": gather,
}
