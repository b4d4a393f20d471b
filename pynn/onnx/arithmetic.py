"""ONNX Add, Sub, Mul and Div on tensors that flow from the model's inputs
(contract as in converters.py)."""
import numpy as np

from pynn import layers
from pynn.onnx.converters import assign, float_constant
from pynn.onnx.folding import PROBES, Probed


def binary(builder, node):
    """Add, Sub, Mul, Div: between two tensors as merge layers; with a
    constant folded into the Linear or convolution before it when that is
    its only reader, else as an Affine layer."""
    op = node.op_type
    a, b = builder.input(node, 0), builder.input(node, 1)
    if a is None or b is None:
        raise ValueError("takes two inputs")
    if builder.is_symbolic(a) and builder.is_symbolic(b):
        if len(a.shape) != len(b.shape):
            raise ValueError(f"operands of per-sample ranks {len(a.shape)} and {len(b.shape)} "
                             f"would broadcast the batch axis against another")
        if op in ("Add", "Mul"):
            kind = layers.Add if op == "Add" else layers.Multiply
            return [builder.call(builder.layer(node, kind), [a, b])]
        if op == "Sub":
            negated = builder.layer(node, layers.Affine, (), shift=False, suffix="negate")
            assign(negated, "scale", np.float32(-1.0))
            return [builder.call(builder.layer(node, layers.Add), [a, builder.call(negated, b)])]
        raise ValueError("Div of two tensors is not supported")
    symbolic_first = builder.is_symbolic(a)
    x, constant = (a, b) if symbolic_first else (b, a)
    if isinstance(constant, Probed):
        if op == "Add":
            positions = _positions(builder, node, x, constant)
            if positions is not None:
                return [positions]
        raise ValueError("an operand depends on the batch size or the length")
    constant = float_constant(constant, "the constant operand")
    if constant.ndim > len(x.shape) + 1 or (constant.ndim == len(x.shape) + 1
                                           and constant.shape[0] != 1):
        raise ValueError(f"the constant of shape {constant.shape} would broadcast over the batch")
    if constant.ndim == len(x.shape) + 1:
        constant = constant[0]
    scale = shift = None
    if op == "Add":
        shift = constant
    elif op == "Sub":
        if symbolic_first:
            shift = -constant
        else:
            scale, shift = np.full((), -1.0, np.float32), constant
    elif op == "Mul":
        scale = constant
    elif symbolic_first:
        with np.errstate(divide="ignore"):
            scale = np.float32(1.0) / constant
    else:
        raise ValueError("a constant divided by a tensor is not supported")
    folded = builder.fold_affine(node, x, scale, shift)
    if folded is not None:
        return [folded]
    shape = np.broadcast_shapes(*(item.shape for item in (scale, shift) if item is not None))
    layer = builder.layer(node, layers.Affine, shape, scale=scale is not None,
                          shift=shift is not None)
    for key, value in (("scale", scale), ("shift", shift)):
        if value is not None:
            assign(layer, key, np.broadcast_to(value, shape))
    return [builder.call(layer, x)]


def _positions(builder, node, x, rows):
    """``x + table[:length]`` for x [N, T, D] of a variable length T, the rows
    a Slice of a constant table [max_length, D] (PositionalEmbedding), or None."""
    name = next((item for item in node.input if builder.values.get(item) is rows), None)
    producer = builder.producers.get(name)
    table = builder.values.get(producer.input[0]) if producer is not None and \
        producer.op_type == "Slice" and producer.input else None
    if not isinstance(table, np.ndarray) or table.ndim != 2 or table.dtype.kind != "f" or \
            x.shape != (None, table.shape[1]):
        return None
    if not all(np.array_equal(value, table[:length]) for value, (_, length) in zip(rows.values, PROBES)):
        return None
    layer = builder.layer(node, layers.PositionalEmbedding, table.shape[0], table.shape[1])
    assign(layer, "weight", table)
    return builder.call(layer, x)


def _channel_vector(layer, shape, constant):
    """A per-sample ``constant`` as one value per output channel of ``layer``
    (axis 0 of a convolution's sample, the last of a Linear's), or None."""
    rank = len(shape)
    if constant.ndim > rank:
        return None
    padded = constant.reshape((1,) * (rank - constant.ndim) + constant.shape)
    channel_axis = rank - 1 if isinstance(layer, layers.Linear) else 0
    channels = shape[channel_axis]
    if any(extent != 1 for axis, extent in enumerate(padded.shape) if axis != channel_axis):
        return None
    if padded.shape[channel_axis] not in (1, channels):
        return None
    return np.broadcast_to(padded.reshape(-1), (channels,)).astype(np.float32)


def per_channel(layer, shape, scale, shift):
    """(scale, shift) as vectors over the output channels of a Linear or
    convolution whose output has per-sample ``shape``, or None."""
    if not isinstance(layer, (layers.Linear, layers.Conv1d, layers.Conv2d)) or not shape:
        return None
    vectors = [None if constant is None else _channel_vector(layer, shape, constant)
               for constant in (scale, shift)]
    if any(vector is None and constant is not None
           for vector, constant in zip(vectors, (scale, shift))):
        return None
    return vectors


def matmul_bias_fits(value, features, rank):
    """Whether a constant added to a MatMul's per-sample output of ``rank``
    axes is a bias over its ``features`` columns."""
    return (value.dtype.kind == "f" and 1 <= value.ndim <= rank and value.shape[-1] == features
            and all(extent == 1 for extent in value.shape[:-1]))


CONVERTERS = dict.fromkeys(("Add", "Sub", "Mul", "Div"), binary)
