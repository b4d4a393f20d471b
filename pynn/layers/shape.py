"""Shape layers: Flatten, Reshape, Permute, Identity (contract in base.py)."""
import math
import operator

import numpy as np

from pynn._checks import as_float32
from pynn._kernels import core as kernels
from pynn.layers.base import Layer


def _integers(values, where, name):
    """``values`` (an int or a sequence of ints) as a tuple of Python ints."""
    if isinstance(values, (int, np.integer)) and not isinstance(values, (bool, np.bool_)):
        values = (values,)
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{where}: {name} must be a sequence of integers, got "
                        f"{type(values).__name__} {values!r:.60}")
    values = tuple(values)
    for value in values:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{where}: {name} must hold integers, got {type(value).__name__} "
                            f"{value!r:.40} in {values!r:.60}")
    return tuple(operator.index(value) for value in values)


class _View(Layer):
    """A layer whose output is a view of its input: forward returns it
    without the template's output buffer, backward reshapes dy back."""

    def __init__(self, name=None):
        super().__init__(name=name)
        self._input_shape = None

    def check_input(self, x):
        x = as_float32(x, type(self).__name__, "x")
        self.output_shape(x.shape)
        return x

    def infer(self, x, out):
        return x.reshape(out.shape)

    def kernel_step(self, input_shape):
        return "view", (), ()

    def forward(self, x, training=False):
        x = self.check_input(x)
        if training:
            self._input_shape = x.shape
        return x.reshape(self.output_shape(x.shape))

    def backward(self, dy, input_grad=True):
        shape = self._kept("_input_shape")
        dy = self._checked_dy(dy, self.output_shape(shape))
        return dy.reshape(shape) if input_grad else None


class Flatten(_View):
    """Merges axes start_dim..end_dim into one (a view, no copy)."""

    def __init__(self, start_dim=1, end_dim=-1, name=None):
        super().__init__(name=name)
        for argument, value in (("start_dim", start_dim), ("end_dim", end_dim)):
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"Flatten: {argument} must be an integer, got {type(value).__name__} {value!r}")
        self.start_dim, self.end_dim = int(start_dim), int(end_dim)

    def config(self):
        return {"start_dim": self.start_dim, "end_dim": self.end_dim}

    def output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        ndim = max(len(input_shape), 1)
        start = self.start_dim + ndim if self.start_dim < 0 else self.start_dim
        end = self.end_dim + ndim if self.end_dim < 0 else self.end_dim
        if not (0 <= start < ndim and 0 <= end < ndim) or start > end:
            raise ValueError(f"Flatten: start_dim={self.start_dim}, end_dim={self.end_dim} do not "
                             f"fit an input of shape {input_shape}")
        if not input_shape:
            return (1,)
        merged = math.prod(input_shape[start:end + 1])
        return input_shape[:start] + (merged,) + input_shape[end + 1:]


class Reshape(_View):
    """Each sample reshaped to ``shape`` (the batch axis kept; one entry may
    be -1, inferred from the others), a view of the input, no copy."""

    def __init__(self, shape, name=None):
        super().__init__(name=name)
        self.shape = _integers(shape, "Reshape", "shape")
        if any(extent < -1 for extent in self.shape) or self.shape.count(-1) > 1:
            raise ValueError(f"Reshape: shape entries must be sizes >= 0, one of them may be -1, "
                             f"got {self.shape}")

    def config(self):
        return {"shape": list(self.shape)}

    def output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if not input_shape:
            raise ValueError("Reshape: the input needs the batch axis first, got shape ()")
        size = math.prod(input_shape[1:])
        known = math.prod(extent for extent in self.shape if extent != -1)
        shape = self.shape
        if -1 in shape and known > 0 and size % known == 0:
            shape = tuple(size // known if extent == -1 else extent for extent in shape)
        if -1 in shape or math.prod(shape) != size:
            raise ValueError(f"Reshape: cannot reshape per-sample shape {input_shape[1:]} "
                             f"({size} elements) into {self.shape}")
        return input_shape[:1] + shape


class Identity(_View):
    """y = x (the input itself, as torch.nn.Identity)."""

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def infer(self, x, out):
        return x

    def forward(self, x, training=False):
        x = self.check_input(x)
        if training:
            self._input_shape = x.shape
        return x


class Permute(Layer):
    """y = x with its axes reordered, as torch.permute(x, dims): the batch
    axis stays first (dims[0] == 0). The output is a new contiguous array;
    backward applies the inverse permutation to dy."""

    def __init__(self, dims, name=None):
        super().__init__(name=name)
        dims = _integers(dims, "Permute", "dims")
        rank = len(dims)
        normalised = tuple(axis + rank if axis < 0 else axis for axis in dims)
        if sorted(normalised) != list(range(rank)):
            raise ValueError(f"Permute: dims must be a permutation of the input's axes 0 to "
                             f"{rank - 1}, got {dims}")
        if normalised[0] != 0:
            raise ValueError(f"Permute: dims[0] must be 0, the batch axis staying first, got {dims}")
        if rank > kernels.TENSOR_MAX_RANK:
            raise ValueError(f"Permute: at most {kernels.TENSOR_MAX_RANK} axes, got dims {dims}")
        self.dims = normalised
        self._inverse = tuple(int(axis) for axis in np.argsort(normalised))
        self._input_shape = None

    def config(self):
        return {"dims": list(self.dims)}

    def output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != len(self.dims):
            raise ValueError(f"Permute: dims {self.dims} need an input of {len(self.dims)} axes, "
                             f"got shape {input_shape}")
        return tuple(input_shape[axis] for axis in self.dims)

    def check_input(self, x):
        x = as_float32(x, "Permute", "x")
        self.output_shape(x.shape)
        return x

    def infer(self, x, out):
        return kernels.permute(x, self.dims, out)

    def _forward_training(self, x, out):
        self._input_shape = x.shape
        self._y = self.infer(x, out)
        return self._y

    def backward(self, dy, input_grad=True):
        shape = self._kept("_input_shape")
        dy = self._checked_dy(dy, self.output_shape(shape))
        if not input_grad:
            return None
        return kernels.permute(dy, self._inverse, self.workspace("dx", shape))
