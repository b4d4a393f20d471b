"""Matrix products: matmul (and, with the dense-layer kernels, linear)."""
import math

import numpy as np

from pynn._checks import as_float32, as_real, check_out
from pynn._kernels import dense as _dense
from pynn._kernels import gemm as _gemm


matmul = _gemm.matmul  # in Cython: batch-1 sizes take one call from Python to C


def validated_matmul(a, b, trans_a, trans_b, alpha, beta, out):
    """matmul for arguments the kernel declined: converted, or reported."""
    if not _gemm.is_float32_matrix(a):
        a = as_float32(a, "matmul", "a", ndim=2)
    if not _gemm.is_float32_matrix(b):
        b = as_float32(b, "matmul", "b", ndim=2)
    alpha = as_real(alpha, "matmul", "alpha")
    beta = as_real(beta, "matmul", "beta")
    m, k_a = (a.shape[1], a.shape[0]) if trans_a else a.shape
    k_b, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if k_a != k_b:
        raise ValueError(
            f"matmul: inner dimensions differ: op(a) is {m}x{k_a}, op(b) is {k_b}x{n}"
        )
    if out is None:
        if beta != 0.0:
            raise ValueError(f"matmul: beta={beta} reads out, but out was not given")
    else:
        check_out(out, (m, n), "matmul", inputs=(a, b))
    result = _gemm.gemm(a, b, out, trans_a, trans_b, alpha, beta)
    if result is None:  # every refusal of the kernel is reported above
        raise ValueError("matmul: arguments refused by the kernel")
    return result


_gemm.set_declined_matmul(validated_matmul)


def gemm_into(where, *arguments):
    """The GEMM kernel on arrays the caller has already validated; a refusal
    (a parameter replaced by one of another dtype or layout, say) raises
    rather than leaving the output unwritten."""
    result = _gemm.gemm(*arguments)
    if result is None:
        shapes = ", ".join(f"{a.dtype}{a.shape}" for a in arguments[:3] if isinstance(a, np.ndarray))
        raise ValueError(f"{where}: operands must be float32 with contiguous rows, "
                         f"C-contiguous output; got {shapes}")
    return result


def _rows(x):
    """A C-contiguous array as the 2-D view [every leading axis, last axis]."""
    if x.ndim == 2:  # the usual case, and a reshape costs as much as a batch-1 GEMV
        return x
    return x.reshape(math.prod(x.shape[:-1]), x.shape[-1])


def _linear_activation(activation, where):
    if activation is None or activation == "relu":
        return activation == "relu"
    raise ValueError(f'{where}: activation must be None or "relu", got {activation!r}')


def _check_linear(x, weight, where):
    weight = as_float32(weight, where, "weight", ndim=2)
    x = as_float32(x, where, "x")
    if x.ndim == 0 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"{where}: x must end in in_features={weight.shape[1]} "
                         f"(weight {weight.shape}), got shape {x.shape}")
    return x, weight


def linear(x, weight, bias=None, out=None, *, activation=None):
    """``x @ weight.T + bias`` over the last axis of ``x`` (any leading axes),
    as one GEMM whose epilogue adds the bias; ``activation="relu"`` applies
    ReLU in that same epilogue (a Linear followed by a ReLU, fused)."""
    relu = _linear_activation(activation, "linear")
    # Well-formed 2-D float32 operands go straight to the kernel, which
    # declines (returns None) anything it would have to convert or reject.
    result = _gemm.gemm(x, weight, out, False, True, 1.0, 0.0, bias, None, relu)
    if result is not None:
        return result
    x, weight = _check_linear(x, weight, "linear")
    out_features = weight.shape[0]
    if bias is not None:
        bias = as_float32(bias, "linear", "bias", ndim=1)
        if bias.shape[0] != out_features:
            raise ValueError(f"linear: bias must have shape ({out_features},) to match weight "
                             f"{weight.shape}, got {bias.shape}")
    shape = x.shape[:-1] + (out_features,)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    else:
        check_out(out, shape, "linear", inputs=(x, weight) + ((bias,) if bias is not None else ()))
    gemm_into("linear", _rows(x), weight, _rows(out), False, True, 1.0, 0.0, bias, None, relu)
    return out


def linear_backward(dy, x, weight, out=None, *, input_grad=True, weight_grad=True):
    """``(dx, dweight, dbias)`` for ``y = x @ weight.T + bias``:
    dx = dY W,  dW = dYᵀ X,  db = column sums of dY (rows = every leading axis).

    ``out`` may be a tuple ``(dx, dweight, dbias)`` of arrays to write into
    (None entries are allocated). ``input_grad=False`` skips dx and
    ``weight_grad=False`` skips dW and db (None is returned in their place)."""
    where = "linear_backward"
    x, weight = _check_linear(x, weight, where)
    out_features, in_features = weight.shape
    dy = as_float32(dy, where, "dy")
    expected = x.shape[:-1] + (out_features,)
    if dy.shape != expected:
        raise ValueError(f"{where}: dy must have shape {expected} for x {x.shape} and weight "
                         f"{weight.shape}, got {dy.shape}")
    dx, dweight, dbias = (None, None, None) if out is None else out
    rows_dy, rows_x = _rows(dy), _rows(x)
    inputs = (dy, x, weight)
    if input_grad:
        dx = _gradient_buffer(dx, x.shape, where, "dx")
        # x is read after dx is written (by dW = dYᵀ X), so it may not overlap either
        if np.may_share_memory(dx, x) or \
                _gemm.gemm(rows_dy, weight, _rows(dx), False, False, 1.0, 0.0) is None:
            _refuse_overlap(dx, x.shape, where, "dx", inputs)
    else:
        dx = None
    if weight_grad:
        dweight = _gradient_buffer(dweight, weight.shape, where, "dweight")
        dbias = _gradient_buffer(dbias, (out_features,), where, "dbias")
        if np.may_share_memory(dweight, weight) or \
                _gemm.gemm(rows_dy, rows_x, dweight, True, False, 1.0, 0.0) is None:
            _refuse_overlap(dweight, weight.shape, where, "dweight", inputs)
        if np.may_share_memory(dbias, dy) or np.may_share_memory(dbias, x):
            _refuse_overlap(dbias, dbias.shape, where, "dbias", inputs)
        _dense.column_sums(rows_dy, dbias)
    else:
        dweight = dbias = None
    return dx, dweight, dbias


def _gradient_buffer(array, shape, where, name):
    """A new float32 array of ``shape``, or ``array`` when it is a writable
    C-contiguous one (the GEMM itself refuses one that overlaps an input)."""
    if array is None:
        return np.empty(shape, dtype=np.float32)
    if (type(array) is np.ndarray and array.dtype == np.float32 and array.shape == shape
            and array.flags.c_contiguous and array.flags.aligned and array.flags.writeable):
        return array
    return check_out(array, shape, f"{where} ({name})")


def _refuse_overlap(array, shape, where, name, inputs):
    check_out(array, shape, f"{where} ({name})", inputs=inputs)
    raise ValueError(f"{where} ({name}): arguments refused by the kernel")
