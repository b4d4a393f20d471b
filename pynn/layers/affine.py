"""Affine: an element-wise scale and shift by constant tensors (contract in
base.py), what a graph's arithmetic with constants (x / 255, x - mean,
x * 0.5) becomes when no neighbouring layer can absorb it."""
import math
import sys

import numpy as np

from pynn._checks import as_float32
from pynn._kernels import core as kernels
from pynn.layers.base import Layer
from pynn.layers.shape import _integers


class Affine(Layer):
    """y = x · scale + shift, with the buffers ``scale`` (ones) and ``shift``
    (zeros) of per-sample ``shape`` broadcast against each sample as numpy
    does, right-aligned (a ``(C, 1, 1)`` shape scales the channels of
    ``[N, C, H, W]``); either may be left out. Constants, not parameters:
    training leaves them unchanged. dx = dy · scale, summed over the axes x
    was broadcast along. The graph importer (pynn/onnx) fills the buffers."""

    def __init__(self, shape, scale=True, shift=True, name=None):
        super().__init__(name=name)
        self.shape = _integers(shape, "Affine", "shape")
        if any(extent < 0 for extent in self.shape):
            raise ValueError(f"Affine: shape entries must be sizes >= 0, got {self.shape}")
        if len(self.shape) + 1 > kernels.TENSOR_MAX_RANK:
            raise ValueError(f"Affine: at most {kernels.TENSOR_MAX_RANK - 1} axes per sample, "
                             f"got shape {self.shape}")
        if math.prod(self.shape) > sys.maxsize // 4:
            raise ValueError(f"Affine: shape {self.shape} needs more bytes than any address "
                             f"space holds")
        for flag, value in (("scale", scale), ("shift", shift)):
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"Affine: {flag} must be a bool, got {type(value).__name__} "
                                f"{value!r:.40}")
        if not (scale or shift):
            raise ValueError("Affine: scale, shift or both must be True")
        if scale:
            self.buffers["scale"] = np.ones(self.shape, dtype=np.float32)
        if shift:
            self.buffers["shift"] = np.zeros(self.shape, dtype=np.float32)
        self._x = self._y = None

    def config(self):
        return {"shape": list(self.shape), "scale": "scale" in self.buffers,
                "shift": "shift" in self.buffers}

    def output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        rank = max(len(input_shape), len(self.shape) + 1)
        if not input_shape or rank > kernels.TENSOR_MAX_RANK:
            raise ValueError(f"Affine: x needs the batch axis first and at most "
                             f"{kernels.TENSOR_MAX_RANK} axes, got shape {input_shape}")
        sample = (1,) * (rank - len(input_shape)) + input_shape[1:]
        constant = (1,) * (rank - 1 - len(self.shape)) + self.shape
        if any(a != b and 1 not in (a, b) for a, b in zip(sample, constant)):
            raise ValueError(f"Affine: shape {self.shape} does not broadcast against samples of "
                             f"shape {input_shape[1:]}")
        shape = input_shape[:1] + tuple(b if a == 1 else a for a, b in zip(sample, constant))
        if math.prod(shape) > sys.maxsize // 4:
            raise ValueError(f"Affine: the output {shape} would need more bytes than any address "
                             f"space holds")
        return shape

    def check_input(self, x):
        x = as_float32(x, "Affine", "x")
        self.output_shape(x.shape)
        return x

    def _constant(self, key, rank):
        """A buffer with a batch axis of 1, right-aligned to ``rank`` axes."""
        return self.buffers[key].reshape((1,) * (rank - len(self.shape)) + self.shape)

    def _sample(self, array, rank):
        """A batch-first array with 1s after its batch axis, right-aligned to ``rank`` axes."""
        return array.reshape(array.shape[:1] + (1,) * (rank - array.ndim) + array.shape[1:])

    def infer(self, x, out):
        rank = out.ndim
        source = self._sample(x, rank)
        if "scale" in self.buffers:
            kernels.broadcast_binary("multiply", source, self._constant("scale", rank), out)
            source = out
        if "shift" in self.buffers:
            kernels.broadcast_binary("add", source, self._constant("shift", rank), out)
        return out

    def backward(self, dy, input_grad=True):
        x = self._kept("_x")
        dy = self._checked_dy(dy, self._kept("_y").shape)
        if not input_grad:
            return None
        rank = dy.ndim
        scale = self._constant("scale", rank) if "scale" in self.buffers else None
        if scale is None and x.shape == dy.shape:
            return dy
        dx = self.workspace("dx", x.shape)
        kernels.broadcast_reduce(dy, scale, self._sample(dx, rank))
        return dx
