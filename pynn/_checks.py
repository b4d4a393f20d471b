"""Input validation shared by every public op, layer and loss.

Conventions (../shared/API.md): float inputs of another dtype and
non-contiguous arrays are converted with one copy; anything else raises a
TypeError/ValueError naming the op, the argument, what was expected and what
was given."""
import math
import operator
import sys

import numpy as np

_FLOAT32 = np.dtype(np.float32)


def _as_array(x, where, name):
    if isinstance(x, np.ndarray):
        return x
    if x is None or isinstance(x, (str, bytes, dict, set)):
        raise TypeError(f"{where}: {name} must be an array, got {type(x).__name__}")
    try:
        return np.asarray(x)
    except (ValueError, TypeError) as error:
        raise TypeError(f"{where}: {name} could not be read as an array ({error})") from None


def _shape_text(ndim):
    return "a scalar (0-D)" if ndim == 0 else f"{ndim}-D"


def as_float32(x, where, name, ndim=None):
    """``x`` as a C-contiguous float32 array, copying only when it must."""
    x = _as_array(x, where, name)
    if x.dtype.kind != "f":
        raise TypeError(
            f"{where}: {name} must be a floating-point array (float32), got dtype {x.dtype}"
        )
    if ndim is not None and x.ndim != ndim:
        raise ValueError(
            f"{where}: {name} must be {_shape_text(ndim)}, got shape {x.shape}"
        )
    if x.dtype != _FLOAT32 or not x.flags.c_contiguous or not x.flags.aligned:
        # views into byte buffers (pickles, model files) may be unaligned: the
        # kernels read whole floats, so those are copied too
        x = np.require(x, dtype=np.float32, requirements=("C", "A"))
    return x


def as_indices(x, where, name, ndim=None):
    """``x`` as a C-contiguous int64 array of indices; bounds are the caller's."""
    x = _as_array(x, where, name)
    if x.dtype.kind not in "iu":
        raise TypeError(f"{where}: {name} must be an integer array (int32 or int64), got dtype {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{where}: {name} must be {_shape_text(ndim)}, got shape {x.shape}")
    if x.dtype != np.int64 or not x.flags.c_contiguous or not x.flags.aligned:
        if x.dtype.kind == "u" and x.size and x.max() > np.iinfo(np.int64).max:
            raise IndexError(f"{where}: {name} holds {x.max()}, beyond any valid index")
        x = np.require(x, dtype=np.int64, requirements=("C", "A"))
    return x


def as_mask(x, where, name, ndim=None):
    """``x`` as a C-contiguous bool array."""
    x = _as_array(x, where, name)
    if x.dtype != np.bool_:
        raise TypeError(f"{where}: {name} must be a bool array, got dtype {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{where}: {name} must be {_shape_text(ndim)}, got shape {x.shape}")
    return np.ascontiguousarray(x)


def check_out(out, shape, where, inputs=(), allow_alias=()):
    """Validate an ``out=`` array: float32, C-contiguous, writable, of ``shape``.

    It must not overlap any of ``inputs``; an array in ``allow_alias`` may be
    ``out`` itself (an in-place element-wise op), but not partially overlap."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{where}: out must be a numpy array, got {type(out).__name__}")
    if out.dtype != _FLOAT32:
        raise TypeError(f"{where}: out must have dtype float32, got {out.dtype}")
    if out.shape != tuple(shape):
        raise ValueError(f"{where}: out must have shape {tuple(shape)}, got {out.shape}")
    if not out.flags.c_contiguous or not out.flags.aligned:
        raise ValueError(f"{where}: out must be C-contiguous and aligned")
    if not out.flags.writeable:
        raise ValueError(f"{where}: out must be writable, got a read-only array")
    for array in inputs:
        if np.may_share_memory(out, array):
            raise ValueError(f"{where}: out must not overlap an input")
    for array in allow_alias:
        if np.may_share_memory(out, array) and not (
            out.__array_interface__["data"][0] == array.__array_interface__["data"][0]
            and out.shape == array.shape
        ):
            raise ValueError(f"{where}: out may be the input itself but must not partly overlap it")
    return out


def as_real(value, where, name):
    """A Python float from a real scalar; bool and non-numbers are refused."""
    if isinstance(value, (bool, np.bool_)) or isinstance(value, (str, bytes)):
        raise TypeError(f"{where}: {name} must be a real number, got {type(value).__name__} {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{where}: {name} must be a real number, got {type(value).__name__} {value!r}") from None


def as_count(value, where, name, minimum=1):
    """A Python int >= ``minimum``; bool and floats are refused."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{where}: {name} must be an integer, got bool {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{where}: {name} must be an integer, got {type(value).__name__} {value!r}") from None
    if number < minimum:
        raise ValueError(f"{where}: {name} must be >= {minimum}, got {number}")
    return number


def aligned_empty(shape, dtype=np.float32):
    """``np.empty`` starting on a 64-byte boundary (a cache line; numpy's own
    arrays start on 16 bytes). Kernels stream weights and activations in
    32- and 64-byte loads, and a load across two lines costs twice."""
    dtype = np.dtype(dtype)
    count = math.prod(shape)
    slack = 64 // dtype.itemsize
    buffer = np.empty(count + slack, dtype=dtype)
    start = (-buffer.ctypes.data % 64) // dtype.itemsize
    return buffer[start:start + count].reshape(shape)


def aligned_zeros(shape, dtype=np.float32):
    """``aligned_empty(shape)`` filled with zeros."""
    array = aligned_empty(shape, dtype)
    array.fill(0)
    return array


def empty_float32(shape, where, what):
    """``aligned_empty(shape)``, refusing first, by name, a size no address
    space can hold (numpy's own message would not say which layer asked)."""
    if math.prod(shape) > sys.maxsize // 4:
        raise ValueError(f"{where}: {what} of shape {tuple(shape)} would need "
                         f"{math.prod(shape) * 4:.3g} bytes, more than any address space holds")
    return aligned_empty(shape)
