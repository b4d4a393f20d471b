"""Merge layers: Add, Multiply, Concatenate, Dot (contract in base.py). Each
takes a list of float32 arrays, the batch axis first and equal in all."""
import math
import operator
import sys

import numpy as np

from pynn._checks import as_float32
from pynn._kernels import core as kernels
from pynn.layers.base import Layer


class _Merge(Layer):
    """What every merge layer shares: the list check, the error words, and a
    backward that checks dy and returns None without input gradients."""
    takes_list = True
    input_counts = range(1, 2 ** 31)  # how many inputs the layer takes

    def __init__(self, name=None):
        super().__init__(name=name)
        self._x = self._y = None
        self._known_shapes = {}

    def output_shape(self, input_shapes):
        """``_output_shape``, remembered for the last few combinations of
        input shapes: a training forward asks for it twice per call."""
        try:
            key = tuple(map(tuple, input_shapes))
            hash(key)
        except TypeError:  # not a list of shapes: _output_shape says what is wrong
            key = None
        shape = self._known_shapes.get(key)
        if shape is None:
            shape = self._output_shape(input_shapes)
            if key is not None:
                if len(self._known_shapes) >= 8:
                    self._known_shapes.clear()
                self._known_shapes[key] = shape
        return shape

    def _refuse(self, shapes, reason):
        given = ", ".join(str(tuple(shape)) for shape in shapes)
        return ValueError(f"{type(self).__name__}: {reason} (input shapes {given})")

    def _checked_shapes(self, shapes):
        """``shapes`` as tuples, after the count and batch-axis checks."""
        where = type(self).__name__
        if not isinstance(shapes, (list, tuple)):
            raise TypeError(f"{where}: takes a list of input shapes, got {type(shapes).__name__}")
        shapes = [tuple(shape) for shape in shapes]
        counts = self.input_counts
        if len(shapes) not in counts:
            wanted = f"{counts[0]}" if len(counts) == 1 else f"at least {counts[0]}"
            raise self._refuse(shapes, f"takes {wanted} inputs, got {len(shapes)}")
        if any(len(shape) == 0 for shape in shapes):
            raise self._refuse(shapes, "every input needs the batch axis first")
        if any(shape[0] != shapes[0][0] for shape in shapes):
            raise self._refuse(shapes, "the batch sizes differ")
        return shapes

    def check_input(self, x):
        arrays = self._arrays(x)
        self.output_shape([array.shape for array in arrays])
        return arrays

    def _arrays(self, x):
        """``x`` as a list of float32 arrays, their shapes not yet checked."""
        where = type(self).__name__
        if not isinstance(x, (list, tuple)):
            raise TypeError(f"{where}: takes a list of arrays, got {type(x).__name__}")
        return [as_float32(item, where, f"input {position}") for position, item in enumerate(x)]

    def forward(self, x, training=False):
        """The template, asking for the output shape once (check_input's check)."""
        x = self._arrays(x)
        shape = self.output_shape([item.shape for item in x])
        if not training:
            return self.infer(x, np.empty(shape, dtype=np.float32))
        return self._forward_training(x, self.workspace("y", shape))

    def backward(self, dy, input_grad=True):
        x = self._kept("_x")
        dy = self._checked_dy(dy, self._kept("_y").shape)
        if not input_grad:
            return None
        dx = [self.workspace(f"dx{position}", item.shape) for position, item in enumerate(x)]
        self._input_gradients(dy, x, dx)
        return dx


class _Broadcasting(_Merge):
    """Add and Multiply: numpy broadcasting over the axes after the batch."""
    operation = None  # the kernel's name for the operation

    def _output_shape(self, input_shapes):
        shapes = self._checked_shapes(input_shapes)
        rank = max(len(shape) for shape in shapes)
        per_sample = []
        for axis in range(1, rank):  # numpy's rule, right-aligned: one extent besides 1
            extents = {shape[axis - rank] for shape in shapes if axis - rank >= -len(shape) + 1} - {1}
            if len(extents) > 1:
                raise self._refuse(shapes, "the shapes after the batch axis do not broadcast")
            per_sample.append(extents.pop() if extents else 1)
        per_sample = tuple(per_sample)
        if len(per_sample) + 1 > kernels.TENSOR_MAX_RANK:
            raise self._refuse(shapes, f"more than {kernels.TENSOR_MAX_RANK} axes")
        shape = (shapes[0][0],) + per_sample
        if math.prod(shape) > sys.maxsize // 4:
            raise self._refuse(shapes, f"the output {shape} would need more bytes than any "
                                       f"address space holds")
        return shape

    def _padded_shape(self, shape, rank):
        """``shape`` with 1s after its batch axis, right-aligned to ``rank`` axes."""
        return tuple(shape[:1]) + (1,) * (rank - len(shape)) + tuple(shape[1:])

    def _padded(self, x, rank):
        """``x`` viewed with its padded shape."""
        return x.reshape(self._padded_shape(x.shape, rank))

    def kernel_step(self, input_shape):
        """Two inputs run as the plan's broadcasting step."""
        if len(input_shape) != 2:
            return None
        out_shape = self._output_shape(input_shape)
        x_shape, other_shape = (self._padded_shape(shape, len(out_shape)) for shape in input_shape)
        return "broadcast", (self.operation, out_shape, x_shape, other_shape), ()

    def infer(self, x, out):
        padded = [self._padded(item, out.ndim) for item in x]
        if len(padded) == 1:
            return kernels.copy_into_slice(padded[0], out, 0, 0)
        kernels.broadcast_binary(self.operation, padded[0], padded[1], out)
        for item in padded[2:]:
            kernels.broadcast_binary(self.operation, out, item, out)
        return out


class Add(_Broadcasting):
    """y = x₀ + x₁ + …, broadcasting the axes after the batch axis as numpy
    does; dxᵢ = dy summed over the axes xᵢ was broadcast along."""
    operation = "add"

    def infer(self, x, out):
        """Inputs of the output's shape add as flat arrays, one pass each."""
        if len(x) > 1 and all(item.shape == out.shape for item in x):
            kernels.add_into(x[0], x[1], out)
            for item in x[2:]:
                kernels.add_into(out, item, out)
            return out
        return super().infer(x, out)

    def kernel_step(self, input_shape):
        """Two inputs of one shape (a residual connection) run as the plan's sum step."""
        if len(input_shape) == 2 and tuple(input_shape[0]) == tuple(input_shape[1]):
            return "add", (), ()
        return super().kernel_step(input_shape)

    def backward(self, dy, input_grad=True):
        """An input of the output's shape gets ``dy`` itself (no copy, as in a
        residual connection); a broadcast one gets ``dy`` summed into its shape."""
        x = self._kept("_x")
        dy = self._checked_dy(dy, self._kept("_y").shape)
        if not input_grad:
            return None
        dx = []
        for position, item in enumerate(x):
            if item.shape == dy.shape:
                dx.append(dy)
                continue
            gradient = self.workspace(f"dx{position}", item.shape)
            kernels.broadcast_reduce(dy, None, self._padded(gradient, dy.ndim))
            dx.append(gradient)
        return dx


class Multiply(_Broadcasting):
    """y = a · b element-wise with numpy broadcasting after the batch axis
    (a squeeze-excite gate [N, C, 1, 1] times [N, C, H, W]); da = dy · b and
    db = dy · a, each summed over the axes its input was broadcast along."""
    operation = "multiply"
    input_counts = range(2, 3)

    def _input_gradients(self, dy, x, dx):
        a, b = (self._padded(item, dy.ndim) for item in x)
        kernels.broadcast_reduce(dy, b, self._padded(dx[0], dy.ndim))
        kernels.broadcast_reduce(dy, a, self._padded(dx[1], dy.ndim))


class Concatenate(_Merge):
    """y = the inputs joined along ``axis`` (the batch axis counts as 0, as
    in torch.cat; negative counts from the end; never the batch axis)."""

    def __init__(self, axis=1, name=None):
        super().__init__(name=name)
        if isinstance(axis, (bool, np.bool_)):
            raise TypeError(f"Concatenate: axis must be an integer, got bool {axis!r}")
        try:
            self.axis = operator.index(axis)
        except TypeError:
            raise TypeError(f"Concatenate: axis must be an integer, got "
                            f"{type(axis).__name__} {axis!r:.40}") from None
        if self.axis == 0:
            raise ValueError("Concatenate: axis 0 is the batch axis; join along another one")

    def config(self):
        return {"axis": self.axis}

    def _axis_of(self, shapes):
        """The non-negative axis for these (checked) shapes."""
        rank = len(shapes[0])
        if any(len(shape) != rank for shape in shapes):
            raise self._refuse(shapes, "the inputs have different numbers of axes")
        axis = self.axis + rank if self.axis < 0 else self.axis
        if not 1 <= axis < rank:
            raise self._refuse(shapes, f"axis {self.axis} is not an axis after the batch axis "
                                       f"of {rank}-axis inputs")
        for shape in shapes:
            if shape[:axis] + shape[axis + 1:] != shapes[0][:axis] + shapes[0][axis + 1:]:
                raise self._refuse(shapes, f"the shapes differ outside axis {axis}")
        return axis

    def _output_shape(self, input_shapes):
        shapes = self._checked_shapes(input_shapes)
        axis = self._axis_of(shapes)
        joined = sum(shape[axis] for shape in shapes)
        return shapes[0][:axis] + (joined,) + shapes[0][axis + 1:]

    def infer(self, x, out):
        axis, offset = self._axis_of([item.shape for item in x]), 0
        for item in x:
            kernels.copy_into_slice(item, out, axis, offset)
            offset += item.shape[axis]
        return out

    def _input_gradients(self, dy, x, dx):
        axis, offset = self._axis_of([item.shape for item in x]), 0
        for gradient in dx:
            kernels.copy_from_slice(dy, gradient, axis, offset)
            offset += gradient.shape[axis]


class Dot(_Merge):
    """y[n] = u[n] · v[n] for two [N, D] inputs, shape [N, 1] (a user · item
    score); du = dy v, dv = dy u."""
    input_counts = range(2, 3)

    def _output_shape(self, input_shapes):
        shapes = self._checked_shapes(input_shapes)
        if any(len(shape) != 2 for shape in shapes):
            raise self._refuse(shapes, "takes two [N, D] inputs (a vector per sample); "
                                       "flatten or reshape others first")
        if shapes[0] != shapes[1]:
            raise self._refuse(shapes, "the vectors' lengths differ")
        return (shapes[0][0], 1)

    def infer(self, x, out):
        return kernels.row_dot(x[0], x[1], out)

    def _input_gradients(self, dy, x, dx):
        kernels.row_dot_backward(dy, x[0], x[1], dx[0], dx[1])
