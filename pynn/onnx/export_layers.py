"""How each pynn layer is written in ONNX operators (the table is in
docs/onnx.md). A translation takes the layer's ``LayerNodes``
(pynn/onnx/exporter.py), the layer, its input value (a list for merge
layers) and its output shape, writes nodes and returns the name of the
output. Shapes hold a batch of 2 and variable axes of length 3; only their
fixed extents are written (``LayerNodes.variable`` and ``Value.variable``
tell which axes follow the length)."""
import math

import numpy as np

from pynn.layers import (GELU, AdaptiveAvgPool2d, Add, AvgPool1d, AvgPool2d, BatchNorm1d,
                         BatchNorm2d, Concatenate, Conv1d, Conv2d, Dot, Dropout, Embedding, Flatten,
                         GlobalAvgPool2d, Hardsigmoid, Hardswish, Identity, LayerNorm, LeakyReLU,
                         Linear, MaxPool1d, MaxPool2d, Multiply, Permute, ReLU, ReLU6, Reshape, Sigmoid,
                         SiLU, Softmax, Tanh)
from pynn.layers.activations import LogSoftmax
from pynn.layers.affine import Affine


def _scalar(value):
    return np.array(value, dtype=np.float32)


def _axes(values):
    return np.array(values, dtype=np.int64)


def _reduce(nodes, op_type, x, axes, final=False, keepdims=1):
    """A reduction over ``axes``; ReduceMean and ReduceMax take them as an
    attribute before operator set 18, as an input from 18 on (ReduceSum from
    13 on)."""
    emit = nodes.out if final else nodes.op
    if op_type != "ReduceSum" and nodes.opset < 18:
        return emit(op_type, [x], axes=list(axes), keepdims=keepdims)
    return emit(op_type, [x, nodes.constant("axes", _axes(axes))], keepdims=keepdims)


# -- dense ------------------------------------------------------------------------
def _linear(nodes, layer, x, shape):
    """Gemm on [N, in]; on other ranks MatMul by the transposed weight, then Add."""
    weight = nodes.state("weight", layer.params["weight"])
    bias = nodes.state("bias", layer.params["bias"]) if "bias" in layer.params else None
    if len(x.shape) == 2:
        return nodes.out("Gemm", [x.name, weight] + ([bias] if bias else []), transB=1)
    transposed = nodes.op("Transpose", [weight], perm=[1, 0])
    if bias is None:
        return nodes.out("MatMul", [x.name, transposed])
    return nodes.out("Add", [nodes.op("MatMul", [x.name, transposed]), bias])


def _embedding(nodes, layer, x, shape):
    return nodes.out("Gather", [nodes.state("weight", layer.params["weight"]), x.name], axis=0)


def _identity(nodes, layer, x, shape):
    """Identity, and Dropout at inference."""
    return nodes.out("Identity", [x.name])


# -- activations ------------------------------------------------------------------
def _elementwise(op_type, **attributes):
    def translate(nodes, layer, x, shape):
        return nodes.out(op_type, [x.name], **{key: value(layer) for key, value in attributes.items()})
    return translate


def _gelu(nodes, layer, x, shape):
    """Gelu from operator set 20 on; before it PyTorch's patterns: exact
    x · 0.5 (1 + erf(x / √2)), tanh 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))."""
    if nodes.opset >= 20:
        return nodes.out("Gelu", [x.name], approximate=layer.approximate)
    if layer.approximate == "none":
        scaled = nodes.op("Div", [x.name, nodes.constant("sqrt_2", _scalar(math.sqrt(2.0)))])
        shifted = nodes.op("Add", [nodes.op("Erf", [scaled]), nodes.constant("one", _scalar(1.0))])
        return nodes.out("Mul", [nodes.op("Mul", [x.name, shifted]), nodes.constant("half", _scalar(0.5))])
    cube = nodes.op("Pow", [x.name, nodes.constant("three", _scalar(3.0))])
    inner = nodes.op("Add", [x.name, nodes.op("Mul", [cube, nodes.constant("coefficient",
                                                                              _scalar(0.044715))])])
    inner = nodes.op("Mul", [inner, nodes.constant("sqrt_2_over_pi", _scalar(math.sqrt(2.0 / math.pi)))])
    shifted = nodes.op("Add", [nodes.op("Tanh", [inner]), nodes.constant("one", _scalar(1.0))])
    return nodes.out("Mul", [nodes.op("Mul", [x.name, shifted]), nodes.constant("half", _scalar(0.5))])


def _affine(nodes, layer, x, shape):
    """x · scale + shift, the constant buffers as initializers, broadcast as numpy does."""
    scale, shift = layer.buffers.get("scale"), layer.buffers.get("shift")
    if shift is None:
        return nodes.out("Mul", [x.name, nodes.state("scale", scale)])
    scaled = x.name if scale is None else nodes.op("Mul", [x.name, nodes.state("scale", scale)])
    return nodes.out("Add", [scaled, nodes.state("shift", shift)])


def _silu(nodes, layer, x, shape):
    return nodes.out("Mul", [x.name, nodes.op("Sigmoid", [x.name])])


def _hardsigmoid(nodes, x, final):
    """relu6(x + 3) / 6 as clip(x / 6 + 1/2, 0, 1)."""
    return (nodes.out if final else nodes.op)("HardSigmoid", [x], alpha=1.0 / 6.0, beta=0.5)


def _hardswish(nodes, layer, x, shape):
    """HardSwish from operator set 14 on; before it x · HardSigmoid(x)."""
    if nodes.opset >= 14:
        return nodes.out("HardSwish", [x.name])
    return nodes.out("Mul", [x.name, _hardsigmoid(nodes, x.name, final=False)])


def _relu6(nodes, layer, x, shape):
    return nodes.out("Clip", [x.name, nodes.constant("min", _scalar(0.0)),
                              nodes.constant("max", _scalar(6.0))])


# -- convolution and pooling ------------------------------------------------------------
def _convolution(nodes, layer, x, shape):
    inputs = [x.name, nodes.state("weight", layer.params["weight"])]
    if "bias" in layer.params:
        inputs.append(nodes.state("bias", layer.params["bias"]))
    return nodes.out("Conv", inputs, kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                     pads=list(layer.padding) * 2, dilations=list(layer.dilation), group=layer.groups)


def _window(layer, input_shape, shape, dilation):
    """``(attributes, overhang)`` of a pool. With ceil_mode, ONNX's rule keeps
    a last window that starts in the right padding, which PyTorch's drops;
    then ceil_mode is off and the end padding grows by how far PyTorch's last
    window reaches past it (``overhang``, per axis; None when nothing grows)."""
    attributes = {"kernel_shape": list(layer.kernel_size), "strides": list(layer.stride)}
    symmetric = list(layer.padding) * 2
    spans = [extent + 2 * pad - step * (kernel - 1) - 1 for extent, pad, step, kernel
             in zip(input_shape[2:], layer.padding, dilation, layer.kernel_size)]
    onnx_counts = [-(-span // stride) + 1 for span, stride in zip(spans, layer.stride)]
    if not layer.ceil_mode or onnx_counts == list(shape[2:]):
        return dict(attributes, pads=symmetric, ceil_mode=int(layer.ceil_mode)), None
    overhang = [max(0, (count - 1) * stride + step * (kernel - 1) + 1 - extent - 2 * pad)
                for count, stride, step, kernel, extent, pad
                in zip(shape[2:], layer.stride, dilation, layer.kernel_size, input_shape[2:],
                       layer.padding)]
    if not any(overhang):
        return dict(attributes, pads=symmetric, ceil_mode=0), None
    pads = list(layer.padding) + [pad + extra for pad, extra in zip(layer.padding, overhang)]
    return dict(attributes, pads=pads, ceil_mode=0), overhang


def _padded(nodes, x, begin, end, value):
    """``x`` padded along its spatial axes by a Pad node writing ``value``."""
    pads = _axes([0, 0] + list(begin) + [0, 0] + list(end))
    return nodes.op("Pad", [x, nodes.constant("pads", pads), nodes.constant("value", _scalar(value))])


def _has_window_of_padding_only(layer, input_shape, shape):
    """Whether a (dilated) window of the pool covers padding alone, its
    maximum -inf, where ONNX Runtime gives the lowest float."""
    for extent, count, kernel, stride, pad, step in zip(input_shape[2:], shape[2:], layer.kernel_size,
                                                         layer.stride, layer.padding, layer.dilation):
        for start in range(-pad, count * stride - pad, stride):
            if not any(0 <= start + tap * step < extent for tap in range(kernel)):
                return True
    return False


def _refuse_variable_windows(nodes, layer, x):
    """Window geometry worked out from extents holds for every length only
    along fixed axes, or along variable ones without padding or ceil_mode."""
    variable = any(x.variable[2:])
    if variable and (getattr(layer, "ceil_mode", True) or any(
            pad for pad, free in zip(layer.padding, x.variable[2:]) if free)):
        raise ValueError(f"pynn.onnx.export: layer {nodes.name!r} pools with padding or ceil_mode "
                         "along a variable axis, whose windows ONNX's rule would not place as pynn's")


def _max_pool(nodes, layer, x, shape):
    """MaxPool; a Pad node writes the padding as -inf instead when the end
    padding grows (see ``_window``; ONNX Runtime takes no padding as wide as
    the kernel) or a window covers padding alone."""
    _refuse_variable_windows(nodes, layer, x)
    attributes, overhang = _window(layer, x.shape, shape, layer.dilation)
    source = x.name
    if overhang is not None or _has_window_of_padding_only(layer, x.shape, shape):
        source = _padded(nodes, source, layer.padding, attributes["pads"][layer.rank:], -np.inf)
        attributes["pads"] = [0] * (2 * layer.rank)
    return nodes.out("MaxPool", [source], dilations=list(layer.dilation), **attributes)


def _avg_pool(nodes, layer, x, shape):
    """AveragePool; when the end padding grows (see ``_window``) and the
    padding counts, a Pad node writes the padding as zeros and the pool
    counts no padding, so that the divisor counts the padding and not the
    overhang, as PyTorch's does."""
    _refuse_variable_windows(nodes, layer, x)
    attributes, overhang = _window(layer, x.shape, shape, (1,) * layer.rank)
    if layer.count_include_pad and overhang is not None:
        source = _padded(nodes, x.name, layer.padding, layer.padding, 0.0)
        attributes["pads"] = [0] * layer.rank + overhang
        return nodes.out("AveragePool", [source], count_include_pad=0, **attributes)
    return nodes.out("AveragePool", [x.name], count_include_pad=int(layer.count_include_pad),
                     **attributes)


def _global_avg_pool2d(nodes, layer, x, shape):
    return nodes.out("Flatten", [nodes.op("GlobalAveragePool", [x.name])], axis=1)


def _adaptive_weights(size, out):
    """[out, size]: row i averages PyTorch's adaptive window i,
    [floor(i size / out), ceil((i + 1) size / out))."""
    weights = np.zeros((out, size), dtype=np.float32)
    for i in range(out):
        start, end = (i * size) // out, -(-((i + 1) * size) // out)
        weights[i, start:end] = 1.0 / (end - start)
    return weights


def _adaptive_avg_pool2d(nodes, layer, x, shape):
    """GlobalAveragePool to 1 × 1; AveragePool when the output size divides
    the input's; otherwise the window means as two MatMuls by constant
    weights, over the width and then the height."""
    (height, width), (out_height, out_width) = x.shape[2:], shape[2:]
    if (out_height, out_width) == (1, 1):
        return nodes.out("GlobalAveragePool", [x.name])
    if any(x.variable[2:]):
        raise ValueError(f"pynn.onnx.export: layer {nodes.name!r} pools adaptively along a variable "
                         "axis; the export takes fixed extents there unless the output is 1 × 1")
    if out_height and out_width and not height % out_height and not width % out_width:
        kernel = [height // out_height, width // out_width]
        return nodes.out("AveragePool", [x.name], kernel_shape=kernel, strides=kernel)
    columns = nodes.op("MatMul", [x.name, nodes.constant("width_weights",
                                                         _adaptive_weights(width, out_width).T)])
    return nodes.out("MatMul", [nodes.constant("height_weights", _adaptive_weights(height, out_height)),
                                columns])


# -- normalisation ----------------------------------------------------------------------
def _batch_norm(nodes, layer, x, shape):
    """BatchNormalization at inference; ``momentum`` is ONNX's, 1 - PyTorch's."""
    inputs = [x.name] + [nodes.state(key, layer.params[key]) for key in ("weight", "bias")]
    inputs += [nodes.state(key, layer.buffers[key]) for key in ("running_mean", "running_var")]
    extra = {} if layer.momentum is None else {"momentum": 1.0 - layer.momentum}
    return nodes.out("BatchNormalization", inputs, epsilon=layer.eps, **extra)


def _layer_norm(nodes, layer, x, shape):
    """LayerNormalization from operator set 17 on (a scale of ones without
    ``elementwise_affine``); before it the decomposition PyTorch writes:
    (x - mean) / sqrt(mean((x - mean)²) + eps) · weight + bias."""
    axes = list(range(-len(layer.normalized_shape), 0))
    weight, bias = layer.params.get("weight"), layer.params.get("bias")
    if nodes.opset >= 17:
        scale = (nodes.state("weight", weight) if weight is not None
                 else nodes.constant("scale", np.ones(layer.normalized_shape, np.float32)))
        inputs = [x.name, scale] + ([nodes.state("bias", bias)] if bias is not None else [])
        return nodes.out("LayerNormalization", inputs, axis=axes[0], epsilon=layer.eps)
    centred = nodes.op("Sub", [x.name, _reduce(nodes, "ReduceMean", x.name, axes)])
    variance = _reduce(nodes, "ReduceMean", nodes.op("Mul", [centred, centred]), axes)
    deviation = nodes.op("Sqrt", [nodes.op("Add", [variance, nodes.constant("eps", _scalar(layer.eps))])])
    if weight is None:
        return nodes.out("Div", [centred, deviation])
    normalized = nodes.op("Div", [centred, deviation])
    if bias is None:
        return nodes.out("Mul", [normalized, nodes.state("weight", weight)])
    return nodes.out("Add", [nodes.op("Mul", [normalized, nodes.state("weight", weight)]),
                             nodes.state("bias", bias)])


# -- shapes -------------------------------------------------------------------------
def _reshape_to(nodes, x, shape, batch_kept=True):
    """Reshape by the constant [0, *per-sample shape] (0 copies the batch
    extent), or [-1, ...] where the batch axis is merged into the first; an
    axis that follows the length is 0 where it copies the input's axis at
    its place, else -1 (once)."""
    fixed = [extent for extent, free in zip(shape[1:], nodes.variable[1:]) if not free]
    if 0 in fixed:
        raise ValueError(f"pynn.onnx.export: layer {nodes.name!r} gives per-sample shape {shape[1:]}; "
                         "ONNX's Reshape cannot write a zero extent beside a dynamic batch")
    target = [0 if batch_kept else -1]
    for axis, (extent, free) in enumerate(zip(shape[1:], nodes.variable[1:]), 1):
        copies = axis < len(x.shape) and x.variable[axis] and x.shape[axis] == extent
        target.append(extent if not free else 0 if copies else -1)
    if target.count(-1) > 1:
        raise ValueError(f"pynn.onnx.export: layer {nodes.name!r} reshapes variable axes in a way one "
                         "ONNX Reshape cannot express (more than one extent to infer)")
    return nodes.out("Reshape", [x.name, nodes.constant("shape", _axes(target))])


def _flatten(nodes, layer, x, shape):
    """ONNX's Flatten where it is the same (start_dim 1 to the last axis), else Reshape."""
    rank = len(x.shape)
    start = layer.start_dim + rank if layer.start_dim < 0 else layer.start_dim
    end = layer.end_dim + rank if layer.end_dim < 0 else layer.end_dim
    if start == 1 and end == rank - 1:
        return nodes.out("Flatten", [x.name], axis=1)
    return _reshape_to(nodes, x, shape, batch_kept=start > 0)


def _reshape(nodes, layer, x, shape):
    return _reshape_to(nodes, x, shape)


def _permute(nodes, layer, x, shape):
    return nodes.out("Transpose", [x.name], perm=list(layer.dims))


# -- merge layers -------------------------------------------------------------------------
def _aligned(nodes, values, rank):
    """The inputs' names, with 1s inserted after the batch axis of those of
    fewer axes (pynn's broadcasting aligns the axes after the batch axis)."""
    names = []
    for value in values:
        missing = rank - len(value.shape)
        if missing:
            axes = nodes.constant("axes", _axes(range(1, 1 + missing)))
            names.append(nodes.op("Unsqueeze", [value.name, axes]))
        else:
            names.append(value.name)
    return names


def _add(nodes, layer, values, shape):
    """Identity for one input, Add for two, Sum for more."""
    names = _aligned(nodes, values, len(shape))
    return nodes.out({1: "Identity", 2: "Add"}.get(len(names), "Sum"), names)


def _multiply(nodes, layer, values, shape):
    return nodes.out("Mul", _aligned(nodes, values, len(shape)))


def _concatenate(nodes, layer, values, shape):
    axis = layer.axis + len(shape) if layer.axis < 0 else layer.axis
    return nodes.out("Concat", [value.name for value in values], axis=axis)


def _dot(nodes, layer, values, shape):
    """Mul, then ReduceSum over axis 1 keeping it: [N, D] · [N, D] -> [N, 1]."""
    product = nodes.op("Mul", [value.name for value in values])
    return _reduce(nodes, "ReduceSum", product, [1], final=True)


# layer class -> translation; exporter.py adds export_transformer.py's, and refuses
# a class missing from both by name
TRANSLATIONS = {
    Linear: _linear, Embedding: _embedding, Dropout: _identity, Identity: _identity,
    ReLU: _elementwise("Relu"), Sigmoid: _elementwise("Sigmoid"), Tanh: _elementwise("Tanh"),
    LeakyReLU: _elementwise("LeakyRelu", alpha=lambda layer: layer.negative_slope),
    Softmax: _elementwise("Softmax", axis=lambda layer: layer.axis),
    LogSoftmax: _elementwise("LogSoftmax", axis=lambda layer: layer.axis), Affine: _affine,
    GELU: _gelu, SiLU: _silu, Hardswish: _hardswish, ReLU6: _relu6,
    Hardsigmoid: lambda nodes, layer, x, shape: _hardsigmoid(nodes, x.name, final=True),
    Conv1d: _convolution, Conv2d: _convolution,
    MaxPool1d: _max_pool, MaxPool2d: _max_pool, AvgPool1d: _avg_pool, AvgPool2d: _avg_pool,
    GlobalAvgPool2d: _global_avg_pool2d, AdaptiveAvgPool2d: _adaptive_avg_pool2d,
    BatchNorm1d: _batch_norm, BatchNorm2d: _batch_norm, LayerNorm: _layer_norm,
    Flatten: _flatten, Reshape: _reshape, Permute: _permute,
    Add: _add, Multiply: _multiply, Concatenate: _concatenate, Dot: _dot,
}
