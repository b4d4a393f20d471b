"""Layer normalisation and its backward pass (csrc/layernorm.c), as
torch.nn.functional.layer_norm: each sample is normalised over its trailing
``normalized_shape`` axes by their mean and biased variance."""
import math

import numpy as np

from pynn._checks import as_count, as_float32, as_real, check_out
from pynn._kernels import core as kernels


def normalized_shape_of(normalized_shape, where):
    """``normalized_shape`` (an int or a sequence of ints) as a non-empty tuple."""
    if isinstance(normalized_shape, (int, np.integer)) and not isinstance(normalized_shape,
                                                                          (bool, np.bool_)):
        normalized_shape = (normalized_shape,)
    if isinstance(normalized_shape, (str, bytes)) or not hasattr(normalized_shape, "__iter__"):
        raise TypeError(f"{where}: normalized_shape must be an integer or a sequence of integers, "
                        f"got {type(normalized_shape).__name__} {normalized_shape!r:.60}")
    shape = tuple(as_count(side, where, "normalized_shape", minimum=0)
                  for side in normalized_shape)
    if not shape:
        raise ValueError(f"{where}: normalized_shape must name at least one axis, got ()")
    return shape


def checked_eps(eps, where):
    eps = as_real(eps, where, "eps")
    if not eps >= 0.0:
        raise ValueError(f"{where}: eps must be >= 0, got {eps}")
    return eps


def rows_and_length(shape, normalized_shape, where):
    """(rows, length): an array of ``shape`` seen as [rows, length] with
    length = prod(normalized_shape), which must be its trailing axes."""
    count = len(normalized_shape)
    if len(shape) < count or tuple(shape[len(shape) - count:]) != normalized_shape:
        raise ValueError(f"{where}: the trailing axes of x must be normalized_shape "
                         f"{normalized_shape}, got x of shape {tuple(shape)}")
    length = math.prod(normalized_shape)
    return math.prod(shape[:len(shape) - count]), length


def _affine(array, normalized_shape, where, name):
    if array is None:
        return None
    array = as_float32(array, where, name)
    if array.shape != normalized_shape:
        raise ValueError(f"{where}: {name} must have normalized_shape {normalized_shape}, "
                         f"got shape {array.shape}")
    return array


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, out=None):
    """(x - mean) / √(var + eps) * weight + bias over the trailing
    ``normalized_shape`` axes (biased variance); weight and bias, of shape
    ``normalized_shape``, may each be None."""
    where = "layer_norm"
    normalized_shape = normalized_shape_of(normalized_shape, where)
    eps = checked_eps(eps, where)
    x = as_float32(x, where, "x")
    rows, length = rows_and_length(x.shape, normalized_shape, where)
    weight = _affine(weight, normalized_shape, where, "weight")
    bias = _affine(bias, normalized_shape, where, "bias")
    if out is None:
        out = np.empty(x.shape, dtype=np.float32)
    else:
        inputs = tuple(array for array in (x, weight, bias) if array is not None)
        out = check_out(out, x.shape, where, inputs=inputs)
    return kernels.layer_norm(x, weight, bias, eps, out, rows, length)


def layer_norm_backward(dy, x, normalized_shape, weight=None, eps=1e-5, bias=None):
    """(dx, dweight, dbias) for dy, the gradient of layer_norm(x, ...)'s
    output. dweight is None when weight is None, dbias None when bias is
    None (the forward's bias, passed only to ask for its gradient: its
    values do not enter any of the three)."""
    where = "layer_norm_backward"
    normalized_shape = normalized_shape_of(normalized_shape, where)
    eps = checked_eps(eps, where)
    dy = as_float32(dy, where, "dy")
    x = as_float32(x, where, "x")
    if dy.shape != x.shape:
        raise ValueError(f"{where}: dy and x must have the same shape, got {dy.shape} and {x.shape}")
    rows, length = rows_and_length(x.shape, normalized_shape, where)
    weight = _affine(weight, normalized_shape, where, "weight")
    bias = _affine(bias, normalized_shape, where, "bias")
    dx = np.empty(x.shape, dtype=np.float32)
    dweight = None if weight is None else np.empty(normalized_shape, dtype=np.float32)
    dbias = None if bias is None else np.empty(normalized_shape, dtype=np.float32)
    kernels.layer_norm_backward(dy, x, weight, eps, dx, dweight, dbias, rows, length)
    return dx, dweight, dbias
