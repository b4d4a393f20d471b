"""Activation layers over pynn.ops' kernels (contract in base.py)."""
import numpy as np

from pynn._checks import as_float32, as_real
from pynn._kernels import core as kernels
from pynn.layers.base import Layer
from pynn.ops.activations import _axis_split, _gelu_kernel


class _Activation(Layer):
    """An element-wise activation; backward reads the kept input or output
    (whichever the derivative needs, ``_saves``)."""
    _kernel = None
    _saves = "y"
    _parameter_name = None  # the attribute holding the kernel's parameter, if any

    def _parameter(self):
        return getattr(self, self._parameter_name) if self._parameter_name else 0.0

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def check_input(self, x):
        return as_float32(x, type(self).__name__, "x")

    def infer(self, x, out):
        return kernels.elementwise(self._kernel, x, None, out, self._parameter())

    def kernel_step(self, input_shape):
        watched = [(vars(self), "_kernel")]
        if self._parameter_name:
            watched.append((vars(self), self._parameter_name))
        return "map", (self._kernel, self._parameter()), watched

    def backward(self, dy, input_grad=True):
        saved = self._kept("_x" if self._saves == "x" else "_y")
        dy = self._checked_dy(dy, saved.shape)
        if not input_grad:
            return None
        return kernels.elementwise(self._kernel + "_backward", dy, saved,
                                    self.workspace("dx", dy.shape), self._parameter())


# a shared implementation, not a layer a model file may name


class ReLU(_Activation):
    """max(x, 0); backward masks by y > 0, which is x > 0."""
    _kernel = "relu"


class LeakyReLU(_Activation):
    _kernel = "leaky_relu"
    _saves = "x"
    _parameter_name = "negative_slope"

    def __init__(self, negative_slope=0.01, name=None):
        super().__init__(name=name)
        self.negative_slope = as_real(negative_slope, "LeakyReLU", "negative_slope")

    def config(self):
        return {"negative_slope": self.negative_slope}


class Sigmoid(_Activation):
    _kernel = "sigmoid"


class Tanh(_Activation):
    _kernel = "tanh"


class GELU(_Activation):
    _saves = "x"

    def __init__(self, approximate="none", name=None):
        super().__init__(name=name)
        self._kernel = _gelu_kernel(approximate, "GELU")
        self.approximate = approximate

    def config(self):
        return {"approximate": self.approximate}


class SiLU(_Activation):
    """x sigmoid(x), also called swish."""
    _kernel = "silu"
    _saves = "x"


class Hardswish(_Activation):
    _kernel = "hardswish"
    _saves = "x"


class Hardsigmoid(_Activation):
    _kernel = "hardsigmoid"
    _saves = "x"


class ReLU6(_Activation):
    _kernel = "relu6"
    _saves = "x"


class Softmax(Layer):
    """softmax along ``axis``; backward dx = y (dy - Σ dy y)."""

    def __init__(self, axis=-1, name=None):
        super().__init__(name=name)
        if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
            raise TypeError(f"{type(self).__name__}: axis must be an integer, got "
                            f"{type(axis).__name__} {axis!r}")
        self.axis = int(axis)
        self._y = None

    def config(self):
        return {"axis": self.axis}

    def output_shape(self, input_shape):
        _axis_split(tuple(input_shape), self.axis, type(self).__name__)
        return tuple(input_shape)

    def check_input(self, x):
        x = as_float32(x, type(self).__name__, "x")
        self.output_shape(x.shape)
        return x

    def infer(self, x, out):
        return kernels.softmax(x, out, *_axis_split(x.shape, self.axis, "Softmax"), False)

    def kernel_step(self, input_shape):
        return "softmax", _axis_split(input_shape, self.axis, "Softmax"), ((vars(self), "axis"),)

    def backward(self, dy, input_grad=True):
        y = self._kept("_y")
        dy = self._checked_dy(dy, y.shape)
        if not input_grad:
            return None
        return kernels.softmax_backward(dy, y, self.workspace("dx", dy.shape),
                                         *_axis_split(dy.shape, self.axis, "Softmax"), False)


class LogSoftmax(Softmax):
    """log softmax along ``axis``; backward dx = dy - softmax(x) Σ dy."""

    def infer(self, x, out):
        return kernels.softmax(x, out, *_axis_split(x.shape, self.axis, "LogSoftmax"), True)

    def kernel_step(self, input_shape):
        return None

    def backward(self, dy, input_grad=True):
        y = self._kept("_y")
        dy = self._checked_dy(dy, y.shape)
        if not input_grad:
            return None
        return kernels.softmax_backward(dy, y, self.workspace("dx", dy.shape),
                                         *_axis_split(dy.shape, self.axis, "LogSoftmax"), True)
