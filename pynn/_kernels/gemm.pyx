"""Matrix multiplication over float32 buffers (csrc/gemm.c)."""
cimport numpy as cnp
from libc.stdint cimport uintptr_t

from pynn._kernels.runtime cimport current_context, pynn_context

cnp.import_array()

cdef extern from "gemm.h" nogil:
    void pynn_sgemm(const pynn_context *ctx, int trans_a, int trans_b,
                    Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                    float alpha, const float *a, Py_ssize_t lda,
                    const float *b, Py_ssize_t ldb,
                    float beta, float *c, Py_ssize_t ldc,
                    const pynn_epilogue *epilogue)


cdef pynn_sgemm_fn sgemm_kernel() noexcept nogil:
    return pynn_sgemm


cdef inline bint float32_rows(object x, int ndim):
    """x is an ndarray of float32 whose last axis is contiguous."""
    if not cnp.PyArray_Check(x):
        return False
    cdef cnp.ndarray array = <cnp.ndarray>x
    if cnp.PyArray_TYPE(array) != cnp.NPY_FLOAT32 or cnp.PyArray_NDIM(array) != ndim \
            or not cnp.PyArray_ISALIGNED(array):
        return False
    if cnp.PyArray_IS_C_CONTIGUOUS(array):
        return True
    return ndim == 2 and array.strides[1] == 4 and array.strides[0] >= 4 * array.shape[1] \
        and array.strides[0] % 4 == 0


def is_float32_matrix(x):
    """x can be handed to matmul as it is: 2-D float32 with contiguous rows."""
    return float32_rows(x, 2)


cdef inline Py_ssize_t leading_dimension(cnp.ndarray x) noexcept:
    """Floats from one row to the next (rows are contiguous)."""
    if cnp.PyArray_IS_C_CONTIGUOUS(x) or x.shape[0] <= 1:
        return x.shape[1]
    return x.strides[0] // 4


cdef inline uintptr_t last_byte(cnp.ndarray x) noexcept:
    cdef uintptr_t start = <uintptr_t>cnp.PyArray_DATA(x)
    if x.shape[0] == 0 or x.shape[1] == 0:
        return start
    return start + (x.shape[0] - 1) * leading_dimension(x) * 4 + x.shape[1] * 4


cdef inline bint overlaps(cnp.ndarray x, cnp.ndarray y) noexcept:
    if cnp.PyArray_SIZE(x) == 0 or cnp.PyArray_SIZE(y) == 0:
        return False
    return <uintptr_t>cnp.PyArray_DATA(x) < last_byte(y) and \
        <uintptr_t>cnp.PyArray_DATA(y) < last_byte(x)


# What matmul does with operands the kernel declines: pynn.ops.dense installs
# its converting, reporting matmul here when it is imported (imports run from
# ops down to the kernels, never up).
_declined_matmul = None


def set_declined_matmul(handler):
    """Install ``handler(a, b, trans_a, trans_b, alpha, beta, out)``, called by
    ``matmul`` for anything that is not already well-formed float32."""
    global _declined_matmul
    _declined_matmul = handler


def matmul(a, b, *, bint trans_a=False, bint trans_b=False, alpha=1.0, beta=0.0, out=None):
    """``alpha * op(a) @ op(b) + beta * out`` for 2-D float32 arrays.

    ``op(x)`` is ``x.T`` when the matching ``trans_`` flag is set; the
    transpose is read in place, never copied, and so are row slices of a
    larger array (``big[:, :k]``). With ``beta == 0`` ``out`` is only written
    (NaN in it does no harm), as in BLAS."""
    # Well-formed float32 operands go straight to the kernel from here, a
    # Python call saved on batch-1 sizes; anything else is converted or
    # reported by pynn.ops.dense.
    result = run_gemm(a, b, out, trans_a, trans_b, alpha, beta, None, None, False)
    if result is not None:
        return result
    if _declined_matmul is None:
        raise RuntimeError("matmul: import pynn.ops (it converts and checks the operands)")
    return _declined_matmul(a, b, trans_a, trans_b, alpha, beta, out)


def gemm(a, b, out, bint trans_a, bint trans_b, alpha, beta,
         col_bias=None, row_bias=None, bint relu=False):
    """out = alpha * op(a) @ op(b) + beta * out, then + col_bias[j] + row_bias[i]
    and ReLU; returns out (allocated when None, with beta == 0).

    a and b are 2-D float32 arrays with contiguous rows (row slices of a larger
    array work in place), out is C-contiguous. Returns None, computing
    nothing, when any argument is not exactly that, so the caller (pynn.ops)
    converts or reports it: this path costs well under a microsecond."""
    return run_gemm(a, b, out, trans_a, trans_b, alpha, beta, col_bias, row_bias, relu)


cdef object run_gemm(object a, object b, object out, bint trans_a, bint trans_b,
                     object alpha, object beta, object col_bias, object row_bias, bint relu):
    if not (float32_rows(a, 2) and float32_rows(b, 2)):
        return None
    if type(alpha) is not float or type(beta) is not float:
        return None
    cdef cnp.ndarray left = <cnp.ndarray>a, right = <cnp.ndarray>b, result
    cdef Py_ssize_t m = left.shape[1] if trans_a else left.shape[0]
    cdef Py_ssize_t k = left.shape[0] if trans_a else left.shape[1]
    cdef Py_ssize_t n = right.shape[0] if trans_b else right.shape[1]
    if (right.shape[1] if trans_b else right.shape[0]) != k:
        return None
    cdef float alpha_value = alpha, beta_value = beta
    cdef cnp.npy_intp shape[2]
    if out is None:
        if beta_value != 0.0:
            return None
        shape[0] = m
        shape[1] = n
        result = cnp.PyArray_EMPTY(2, shape, cnp.NPY_FLOAT32, 0)
    else:
        if not (cnp.PyArray_Check(out) and float32_rows(out, 2)
                and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>out)
                and cnp.PyArray_ISWRITEABLE(<cnp.ndarray>out)):
            return None
        result = <cnp.ndarray>out
        if result.shape[0] != m or result.shape[1] != n or overlaps(result, left) \
                or overlaps(result, right):
            return None
    cdef pynn_epilogue epilogue
    epilogue.col_bias = NULL
    epilogue.row_bias = NULL
    epilogue.activation = PYNN_ACTIVATION_RELU if relu else PYNN_ACTIVATION_NONE
    if col_bias is not None:
        if not float32_rows(col_bias, 1) or (<cnp.ndarray>col_bias).shape[0] != n:
            return None
        epilogue.col_bias = <const float *>cnp.PyArray_DATA(<cnp.ndarray>col_bias)
    if row_bias is not None:
        if not float32_rows(row_bias, 1) or (<cnp.ndarray>row_bias).shape[0] != m:
            return None
        epilogue.row_bias = <const float *>cnp.PyArray_DATA(<cnp.ndarray>row_bias)
    cdef pynn_context ctx = current_context()
    cdef const float *a_data = <const float *>cnp.PyArray_DATA(left)
    cdef const float *b_data = <const float *>cnp.PyArray_DATA(right)
    cdef float *c_data = <float *>cnp.PyArray_DATA(result)
    cdef Py_ssize_t lda = leading_dimension(left), ldb = leading_dimension(right)
    if m * n > 0:
        with nogil:
            pynn_sgemm(&ctx, trans_a, trans_b, m, n, k, alpha_value, a_data, lda,
                       b_data, ldb, beta_value, c_data, n, &epilogue)
    return result
