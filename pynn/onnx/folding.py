"""Load-time evaluation of the ops exporters use for shape arithmetic
(``Shape``, ``Gather``, ``Unsqueeze``, ``Concat``, ...), on constants and on
values that depend on the batch size.

A value computed from an input's shape is a ``Probed``: its value at each of
a few batch sizes and sequence lengths. Where every probe agrees it is a constant; a ``Reshape``
target whose first entry is the batch size at every probe and whose other
entries are constant keeps the batch, which is what pynn's ``Reshape`` does."""
import math
import warnings

import numpy as np

from pynn.onnx.tensors import numpy_dtype

# (batch size, sequence length) at which shape arithmetic is evaluated; a
# model's variable per-sample axes (one sequence length) take the length
PROBES = ((2, 3), (3, 3), (7, 5))
MAX_FOLDED_ELEMENTS = 1 << 24  # what shape arithmetic and constant folding may produce


class Probed:
    """A value that depends on the batch size or the sequence length: one
    array per probe."""
    __slots__ = ("values",)

    def __init__(self, values):
        self.values = tuple(values)


def per_probe(value):
    return value.values if isinstance(value, Probed) else (value,) * len(PROBES)


def concrete(shape, probe):
    """A per-sample ``shape`` at ``probe``, batch axis first, its variable
    (None) axes the probe's length."""
    batch, length = probe
    return (batch,) + tuple(length if extent is None else extent for extent in shape)


def collapsed(values):
    """A constant where every probe gave the same array, else a ``Probed``."""
    first = values[0]
    if all(item.dtype == first.dtype and item.shape == first.shape and np.array_equal(item, first)
           for item in values[1:]):
        return first
    return Probed(values)


def evaluate(op, inputs, attributes):
    """The outputs of ``op`` on ``inputs`` (arrays, Probed values or None for
    absent optional inputs); raises ValueError when the op cannot be folded."""
    fold = FOLDERS[op]
    if not any(isinstance(value, Probed) for value in inputs):
        return [_bounded(fold(inputs, attributes))]
    columns = [per_probe(value) if value is not None else (None,) * len(PROBES)
               for value in inputs]
    results = [_bounded(fold(list(row), attributes)) for row in zip(*columns)]
    return [collapsed(results)]


def _bounded(array):
    array = np.asarray(array)
    if array.size > MAX_FOLDED_ELEMENTS:
        raise ValueError(f"the folded value of shape {array.shape} exceeds {MAX_FOLDED_ELEMENTS} "
                         f"elements")
    return array


def integers(value, what):
    """``value`` as an int64 array (axes, indices, shapes)."""
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "iu":
        got = value.dtype.name if isinstance(value, np.ndarray) else type(value).__name__
        raise ValueError(f"{what} must be an integer constant, got {got}")
    return value.astype(np.int64)


def axis_of(axis, rank, what="axis"):
    axis = int(axis)
    if not -rank <= axis < rank:
        raise ValueError(f"{what} {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def axes_of(values, rank, what="axes"):
    axes = [axis_of(axis, rank, what) for axis in values]
    if len(set(axes)) != len(axes):
        raise ValueError(f"{what} {list(values)} repeat an axis")
    return axes


def reshape_target(shape, target, allowzero):
    """The output shape of ONNX Reshape of ``shape`` into ``target``: 0 copies
    the input's extent (unless ``allowzero``), one -1 takes what is left."""
    target = [int(extent) for extent in target]
    if target.count(-1) > 1 or any(extent < -1 for extent in target):
        raise ValueError(f"reshape target {target} may hold one -1 and sizes >= 0")
    result = []
    for axis, extent in enumerate(target):
        if extent == 0 and not allowzero:
            if axis >= len(shape):
                raise ValueError(f"reshape target {target} copies axis {axis} of a rank-"
                                 f"{len(shape)} input")
            extent = shape[axis]
        result.append(extent)
    size = math.prod(shape)
    if -1 in result:
        known = math.prod(extent for extent in result if extent != -1)
        if known == 0 or size % known:
            raise ValueError(f"cannot reshape {tuple(shape)} into {target}")
        result[result.index(-1)] = size // known
    if math.prod(result) != size:
        raise ValueError(f"cannot reshape {tuple(shape)} ({size} elements) into {target}")
    return tuple(result)


def squeezed_shape(shape, axes):
    """The shape after ONNX Squeeze (``axes`` None: every extent of 1)."""
    if axes is None:
        return tuple(extent for extent in shape if extent != 1)
    axes = axes_of(axes, len(shape))
    if any(shape[axis] != 1 for axis in axes):
        raise ValueError(f"squeeze axes {axes} must have extent 1 in shape {tuple(shape)}")
    return tuple(extent for axis, extent in enumerate(shape) if axis not in axes)


def unsqueezed_shape(shape, axes):
    rank = len(shape) + len(axes)
    axes = set(axes_of(axes, rank))
    extents = iter(shape)
    return tuple(1 if axis in axes else next(extents) for axis in range(rank))


def _identity(inputs, attributes):
    return inputs[0]


def _shape(inputs, attributes):
    shape = inputs[0].shape
    start, end = attributes.int("start", 0), attributes.int("end", len(shape))
    return np.array(shape[slice(start, end)], dtype=np.int64)


def _size(inputs, attributes):
    return np.array(inputs[0].size, dtype=np.int64)


def _gather(inputs, attributes):
    data, indices = inputs[0], integers(inputs[1], "Gather indices")
    if data.ndim == 0:
        raise ValueError("Gather data must have at least one axis")
    axis = axis_of(attributes.int("axis", 0), data.ndim)
    extent = data.shape[axis]
    if indices.size and (indices.min() < -extent or indices.max() >= extent):
        raise ValueError(f"Gather indices must lie in [{-extent}, {extent - 1}], got "
                         f"{indices.min()} to {indices.max()}")
    return np.take(data, np.where(indices < 0, indices + extent, indices), axis=axis)


def _unsqueeze(inputs, attributes):
    axes = integers(inputs[1], "Unsqueeze axes").reshape(-1)
    return inputs[0].reshape(unsqueezed_shape(inputs[0].shape, axes))


def _squeeze(inputs, attributes):
    axes = None if len(inputs) < 2 or inputs[1] is None else integers(
        inputs[1], "Squeeze axes").reshape(-1)
    return inputs[0].reshape(squeezed_shape(inputs[0].shape, axes))


def _concat(inputs, attributes):
    if not inputs or any(item is None for item in inputs):
        raise ValueError("Concat needs its inputs")
    rank = inputs[0].ndim
    if rank == 0 or any(item.ndim != rank for item in inputs):
        raise ValueError("Concat inputs must share one rank >= 1")
    return np.concatenate(inputs, axis=axis_of(attributes.int("axis", 0), rank))


def _slice(inputs, attributes):
    data = inputs[0]
    starts = integers(inputs[1], "Slice starts").reshape(-1)
    ends = integers(inputs[2], "Slice ends").reshape(-1)
    count = len(starts)
    axes = (np.arange(count) if len(inputs) < 4 or inputs[3] is None
            else integers(inputs[3], "Slice axes").reshape(-1))
    steps = (np.ones(count, np.int64) if len(inputs) < 5 or inputs[4] is None
             else integers(inputs[4], "Slice steps").reshape(-1))
    if not len(ends) == len(axes) == len(steps) == count:
        raise ValueError("Slice starts, ends, axes and steps must have one length")
    index = [slice(None)] * data.ndim
    for axis, start, end, step in zip(axes_of(axes, data.ndim), starts, ends, steps):
        if step == 0:
            raise ValueError("Slice steps must not be 0")
        extent = data.shape[axis]
        clamp = (lambda v: min(max(int(v), -extent - 1), extent + 1))
        index[axis] = slice(clamp(start), clamp(end), int(step))
    return data[tuple(index)]


def _cast(inputs, attributes):
    dtype = numpy_dtype(attributes.int("to", 0), "Cast")
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return inputs[0].astype(dtype)


def _checked_broadcast(a, b, mixed=False):
    shape = np.broadcast_shapes(a.shape, b.shape)
    if math.prod(shape) > MAX_FOLDED_ELEMENTS:
        raise ValueError(f"the folded value of shape {shape} exceeds {MAX_FOLDED_ELEMENTS} elements")
    if a.dtype != b.dtype and not mixed:
        raise ValueError(f"the operands' element types differ: {a.dtype.name} and {b.dtype.name}")
    return a, b


def _arithmetic(function, mixed=False):
    def fold(inputs, attributes):
        if len(inputs) != 2 or inputs[0] is None or inputs[1] is None:
            raise ValueError("takes two inputs")
        a, b = _checked_broadcast(inputs[0], inputs[1], mixed)
        with np.errstate(all="ignore"):
            return np.asarray(function(a, b, attributes)).astype(a.dtype)
    return fold


def _divide(a, b, attributes):
    if a.dtype.kind in "iu":
        if np.any(b == 0):
            raise ValueError("integer division by zero")
        quotient = np.abs(a) // np.abs(b)  # ONNX integer division truncates toward zero
        return np.where((a < 0) != (b < 0), -quotient, quotient)
    return a / b


def _modulo(a, b, attributes):
    if a.dtype.kind in "iu" and np.any(b == 0):
        raise ValueError("integer modulo by zero")
    return np.fmod(a, b) if attributes.int("fmod", 0) else np.mod(a, b)


def _power(a, b, attributes):
    if a.dtype.kind in "iu" and np.any(b < 0):
        raise ValueError("integer powers must be >= 0")
    return np.power(a, b)


def _unary(function):
    def fold(inputs, attributes):
        with np.errstate(all="ignore"):
            return function(inputs[0])
    return fold


def _reshape(inputs, attributes):
    target = integers(inputs[1], "Reshape shape").reshape(-1)
    return inputs[0].reshape(reshape_target(inputs[0].shape, target, attributes.int("allowzero", 0)))


def _transpose(inputs, attributes):
    rank = inputs[0].ndim
    perm = attributes.ints("perm", list(range(rank))[::-1])
    if sorted(axes_of(perm, rank, "perm")) != list(range(rank)):
        raise ValueError(f"perm {perm} is not a permutation of {rank} axes")
    return np.transpose(inputs[0], axes_of(perm, rank, "perm"))


FOLDERS = {
    "Identity": _identity, "Shape": _shape, "Size": _size, "Gather": _gather,
    "Unsqueeze": _unsqueeze, "Squeeze": _squeeze, "Concat": _concat, "Slice": _slice,
    "Cast": _cast, "Reshape": _reshape, "Transpose": _transpose,
    "Add": _arithmetic(lambda a, b, attributes: a + b),
    "Sub": _arithmetic(lambda a, b, attributes: a - b),
    "Mul": _arithmetic(lambda a, b, attributes: a * b),
    "Div": _arithmetic(_divide), "Mod": _arithmetic(_modulo), "Pow": _arithmetic(_power, mixed=True),
    "Sqrt": _unary(np.sqrt), "Neg": _unary(np.negative), "Floor": _unary(np.floor),
    "Ceil": _unary(np.ceil), "Abs": _unary(np.abs),
}
