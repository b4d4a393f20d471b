"""ONNX shape ops on tensors that flow from the model's inputs: each keeps
the batch axis first, as pynn's Flatten, Reshape and Permute do, or is
refused (contract as in converters.py)."""
import math

from pynn import layers
from pynn.onnx.converters import scalar
from pynn.onnx.folding import (PROBES, Probed, axes_of, axis_of, concrete, integers, per_probe,
                               reshape_target, squeezed_shape, unsqueezed_shape)


def flatten(builder, node):
    x = builder.sym(node, 0)
    axis = axis_of(builder.attributes(node).int("axis", 1), len(x.shape) + 1)
    if axis == 0 or math.prod(x.shape[:axis - 1]) != 1 and axis != 1:
        raise ValueError(f"Flatten(axis={axis}) of per-sample shape {x.shape} would mix the "
                         f"batch axis into the others")
    if axis == 1:
        return [builder.call(builder.layer(node, layers.Flatten), x)]
    return [_reshaped(builder, node, x, (math.prod(x.shape[axis - 1:]),))]


def _reshaped(builder, node, x, shape, suffix=None):
    shape = tuple(int(extent) for extent in shape)
    if shape == x.shape:
        return x
    return builder.call(builder.layer(node, layers.Reshape, shape, suffix=suffix), x)


def reshape(builder, node):
    x = builder.sym(node, 0)
    target = builder.input(node, 1)
    if target is None:
        raise ValueError("the shape input is missing")
    allowzero = builder.attributes(node).int("allowzero", 0)
    results = []
    for probe, values in zip(PROBES, per_probe(target)):
        results.append(reshape_target(concrete(x.shape, probe),
                                      integers(values, "the shape").reshape(-1), allowzero))
    batch_kept = all(result[0] == batch for result, (batch, _) in zip(results, PROBES))
    if not batch_kept or len({result[1:] for result in results}) != 1:
        raise ValueError(f"the target shape {_describe(target)} does not keep the batch axis "
                         f"first with the per-sample shape fixed (input per-sample shape "
                         f"{x.shape})")
    return [_reshaped(builder, node, x, results[0][1:])]


def _describe(value):
    if isinstance(value, Probed):
        return " / ".join(str(item.tolist()) for item in value.values) + " (for batch sizes " \
            + ", ".join(f"{batch} (length {length})" for batch, length in PROBES) + ")"
    return str(value.tolist())


def squeeze(builder, node):
    x = builder.sym(node, 0)
    if builder.input(node, 1) is None:
        raise ValueError("Squeeze without axes would remove a batch axis of 1")
    axes = axes_of(integers(builder.const(node, 1, "axes"), "axes").reshape(-1), len(x.shape) + 1)
    if 0 in axes:
        raise ValueError("Squeeze of axis 0 would remove the batch axis")
    return [_reshaped(builder, node, x, squeezed_shape(x.shape, [axis - 1 for axis in axes]))]


def unsqueeze(builder, node):
    x = builder.sym(node, 0)
    axes = integers(builder.const(node, 1, "axes"), "axes").reshape(-1)
    rank = len(x.shape) + 1 + len(axes)
    normalised = axes_of(axes, rank)
    if 0 in normalised:
        raise ValueError("Unsqueeze at axis 0 would move the batch axis")
    return [_reshaped(builder, node, x, unsqueezed_shape(x.shape, [a - 1 for a in normalised]))]


def transpose(builder, node):
    x = builder.sym(node, 0)
    rank = len(x.shape) + 1
    perm = builder.attributes(node).ints("perm", list(range(rank))[::-1])
    if len(perm) != rank or sorted(axes_of(perm, rank, "perm")) != list(range(rank)):
        raise ValueError(f"perm {perm} is not a permutation of {rank} axes")
    perm = axes_of(perm, rank, "perm")
    if perm[0] != 0:
        raise ValueError(f"perm {perm} moves the batch axis (pynn's Permute keeps it first)")
    if perm == list(range(rank)):
        return [x]
    return [builder.call(builder.layer(node, layers.Permute, perm), x)]


def concat(builder, node):
    tensors = [builder.sym(node, position) for position in range(len(node.input))]
    rank = len(tensors[0].shape) + 1
    axis = axis_of(builder.attributes(node).int("axis", 0), rank)
    if axis == 0:
        raise ValueError("Concat along axis 0 would join batches")
    return [builder.call(builder.layer(node, layers.Concatenate, axis), tensors)]


def passthrough(builder, node):
    """Identity, and Dropout at inference (its mask output refused)."""
    if node.op_type == "Dropout":
        builder.refuse_extra_outputs(node, 1)
        training = builder.input(node, 2)
        if training is not None and scalar(builder.const(node, 2, "training_mode"),
                                            "training_mode"):
            raise ValueError("training_mode=True is not supported")
    return [builder.sym(node, 0)]


def cast(builder, node):
    x = builder.sym(node, 0)
    if builder.attributes(node).int("to", 0) != {"float32": 1, "int64": 7, "bool": 9}[x.dtype]:
        raise ValueError(f"a Cast of a {x.dtype} tensor that changes its element type")
    return [x]


CONVERTERS = {
    "Flatten": flatten, "Reshape": reshape, "Squeeze": squeeze, "Unsqueeze": unsqueeze,
    "Transpose": transpose, "Concat": concat, "Identity": passthrough, "Dropout": passthrough,
    "Cast": cast,
}
