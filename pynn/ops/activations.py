"""Activation functions and their backward passes (csrc/activations.c).

Element-wise ops take any rank; ``out`` may be the input itself (in place).
Each ``<name>_backward(dy, a, ...)`` takes what PyTorch's backward takes: the
forward input ``x`` for relu, leaky_relu, gelu, silu, hardswish, hardsigmoid
and relu6, the forward output ``y`` for sigmoid, tanh, softmax and
log_softmax. At a kink the backward takes PyTorch's side."""
import math

import numpy as np

from pynn._checks import as_float32, as_real, check_out
from pynn._kernels import core as kernels


def _output(out, shape, where, inputs, alias):
    if out is None:
        return np.empty(shape, dtype=np.float32)
    return check_out(out, shape, where, inputs=inputs, allow_alias=alias)


def _forward(kernel, where, x, out, parameter=0.0):
    x = as_float32(x, where, "x")
    out = _output(out, x.shape, where, (), (x,))
    return kernels.elementwise(kernel, x, None, out, parameter)


def _backward(kernel, where, dy, a, a_name, out, parameter=0.0):
    dy = as_float32(dy, where, "dy")
    a = as_float32(a, where, a_name)
    if dy.shape != a.shape:
        raise ValueError(f"{where}: dy and {a_name} must have the same shape, "
                         f"got {dy.shape} and {a.shape}")
    out = _output(out, dy.shape, where, (a,), (dy,))
    return kernels.elementwise(kernel, dy, a, out, parameter)


def relu(x, out=None):
    """max(x, 0); NaN stays NaN."""
    return _forward("relu", "relu", x, out)


def relu_backward(dy, x, out=None):
    """dx = dy where x > 0, else 0."""
    return _backward("relu_backward", "relu_backward", dy, x, "x", out)


def _slope(negative_slope, where):
    return as_real(negative_slope, where, "negative_slope")


def leaky_relu(x, negative_slope=0.01, out=None):
    """x where x > 0, else negative_slope * x."""
    slope = _slope(negative_slope, "leaky_relu")
    return _forward("leaky_relu", "leaky_relu", x, out, slope)


def leaky_relu_backward(dy, x, negative_slope=0.01, out=None):
    """dx = dy where x > 0, else negative_slope * dy."""
    slope = _slope(negative_slope, "leaky_relu_backward")
    return _backward("leaky_relu_backward", "leaky_relu_backward", dy, x, "x", out, slope)


def sigmoid(x, out=None):
    """The logistic function 1 / (1 + exp(-x))."""
    return _forward("sigmoid", "sigmoid", x, out)


def sigmoid_backward(dy, y, out=None):
    """dx = dy * y * (1 - y), y = sigmoid(x)."""
    return _backward("sigmoid_backward", "sigmoid_backward", dy, y, "y", out)


def tanh(x, out=None):
    return _forward("tanh", "tanh", x, out)


def tanh_backward(dy, y, out=None):
    """dx = dy * (1 - y²), y = tanh(x)."""
    return _backward("tanh_backward", "tanh_backward", dy, y, "y", out)


def _gelu_kernel(approximate, where):
    if approximate == "none":
        return "gelu"
    if approximate == "tanh":
        return "gelu_tanh"
    raise ValueError(f'{where}: approximate must be "none" or "tanh", got {approximate!r}')


def gelu(x, approximate="none", out=None):
    """x Φ(x) with Φ(x) = (1 + erf(x/√2)) / 2, or with approximate="tanh"
    x (1 + tanh(√(2/π) (x + 0.044715 x³))) / 2."""
    return _forward(_gelu_kernel(approximate, "gelu"), "gelu", x, out)


def gelu_backward(dy, x, approximate="none", out=None):
    """dx = dy * d/dx gelu(x); exact: Φ(x) + x φ(x)."""
    kernel = _gelu_kernel(approximate, "gelu_backward") + "_backward"
    return _backward(kernel, "gelu_backward", dy, x, "x", out)


def silu(x, out=None):
    """x * sigmoid(x)."""
    return _forward("silu", "silu", x, out)


def silu_backward(dy, x, out=None):
    """dx = dy * s (1 + x (1 - s)), s = sigmoid(x)."""
    return _backward("silu_backward", "silu_backward", dy, x, "x", out)


def hardswish(x, out=None):
    """x * min(max(x + 3, 0), 6) / 6."""
    return _forward("hardswish", "hardswish", x, out)


def hardswish_backward(dy, x, out=None):
    """dx = 0 where x <= -3, dy (x / 3 + 1/2) where -3 < x < 3, dy from 3 on."""
    return _backward("hardswish_backward", "hardswish_backward", dy, x, "x", out)


def hardsigmoid(x, out=None):
    """min(max(x + 3, 0), 6) / 6."""
    return _forward("hardsigmoid", "hardsigmoid", x, out)


def hardsigmoid_backward(dy, x, out=None):
    """dx = dy / 6 where -3 < x < 3, else 0."""
    return _backward("hardsigmoid_backward", "hardsigmoid_backward", dy, x, "x", out)


def relu6(x, out=None):
    """min(max(x, 0), 6); NaN stays NaN."""
    return _forward("relu6", "relu6", x, out)


def relu6_backward(dy, x, out=None):
    """dx = dy where 0 < x < 6, else 0."""
    return _backward("relu6_backward", "relu6_backward", dy, x, "x", out)


def _axis_split(shape, axis, where):
    """(outer, length, inner): the array seen as [outer, length, inner] along ``axis``."""
    ndim = max(len(shape), 1)
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{where}: axis must be an integer, got {type(axis).__name__} {axis!r}")
    if not -ndim <= axis < ndim:
        raise np.exceptions.AxisError(
            f"{where}: axis {axis} is out of range for an array of shape {shape}")
    if not shape:
        return 1, 1, 1
    axis %= ndim
    return (math.prod(shape[:axis]), shape[axis],
            math.prod(shape[axis + 1:]))


def _softmax(where, x, axis, out, log_domain):
    x = as_float32(x, where, "x")
    outer, length, inner = _axis_split(x.shape, axis, where)
    out = _output(out, x.shape, where, (), (x,))
    return kernels.softmax(x, out, outer, length, inner, log_domain)


def _softmax_backward(where, dy, y, axis, out, log_domain):
    dy = as_float32(dy, where, "dy")
    y = as_float32(y, where, "y")
    if dy.shape != y.shape:
        raise ValueError(f"{where}: dy and y must have the same shape, got {dy.shape} and {y.shape}")
    outer, length, inner = _axis_split(dy.shape, axis, where)
    out = _output(out, dy.shape, where, (y,), (dy,))
    return kernels.softmax_backward(dy, y, out, outer, length, inner, log_domain)


def softmax(x, axis=-1, out=None):
    """exp(x - max) / sum(exp(x - max)) along ``axis``."""
    return _softmax("softmax", x, axis, out, False)


def softmax_backward(dy, y, axis=-1, out=None):
    """dx = y (dy - sum(dy y)) along ``axis``, y = softmax(x)."""
    return _softmax_backward("softmax_backward", dy, y, axis, out, False)


def log_softmax(x, axis=-1, out=None):
    """x - max - log(sum(exp(x - max))) along ``axis``."""
    return _softmax("log_softmax", x, axis, out, True)


def log_softmax_backward(dy, y, axis=-1, out=None):
    """dx = dy - exp(y) sum(dy) along ``axis``, y = log_softmax(x)."""
    return _softmax_backward("log_softmax_backward", dy, y, axis, out, True)
