"""Matrix products: matmul (and, with the dense-layer kernels, linear)."""
import numpy as np

from pynn._checks import as_float32, as_real, check_out
from pynn._kernels import gemm as _gemm


def matmul(a, b, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, out=None):
    """``alpha * op(a) @ op(b) + beta * out`` for 2-D float32 arrays.

    ``op(x)`` is ``x.T`` when the matching ``trans_`` flag is set; the
    transpose is read in place, never copied, and so are row slices of a
    larger array (``big[:, :k]``). With ``beta == 0`` ``out`` is only written
    (NaN in it does no harm), as in BLAS."""
    # Well-formed float32 operands go straight to the kernel, which declines
    # (returns None) anything it would have to convert or reject.
    result = _gemm.matmul(a, b, out, trans_a, trans_b, alpha, beta)
    if result is not None:
        return result
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
    result = _gemm.matmul(a, b, out, trans_a, trans_b, alpha, beta)
    if result is None:  # every refusal of the kernel is reported above
        raise ValueError("matmul: arguments refused by the kernel")
    return result
