"""Matrix multiplication over float32 buffers (csrc/gemm.c)."""
from pynn._kernels.runtime cimport current_context, pynn_context

cdef extern from "gemm.h" nogil:
    void pynn_sgemm(const pynn_context *ctx, int trans_a, int trans_b,
                    Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                    float alpha, const float *a, Py_ssize_t lda,
                    const float *b, Py_ssize_t ldb,
                    float beta, float *c, Py_ssize_t ldc,
                    const pynn_epilogue *epilogue)


cdef void sgemm(const pynn_context *ctx, bint trans_a, bint trans_b,
                Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                float alpha, const float *a, Py_ssize_t lda,
                const float *b, Py_ssize_t ldb,
                float beta, float *c, Py_ssize_t ldc,
                const pynn_epilogue *epilogue) noexcept nogil:
    pynn_sgemm(ctx, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, epilogue)


def matmul(const float[:, ::1] a, const float[:, ::1] b, float[:, ::1] c,
           bint trans_a, bint trans_b, float alpha, float beta):
    """c = alpha * op(a) @ op(b) + beta * c; shapes checked by the caller (pynn.ops)."""
    cdef Py_ssize_t m = c.shape[0], n = c.shape[1]
    cdef Py_ssize_t k = a.shape[0] if trans_a else a.shape[1]
    if (a.shape[1] if trans_a else a.shape[0]) != m or \
            (b.shape[0] if trans_b else b.shape[1]) != n or \
            (b.shape[1] if trans_b else b.shape[0]) != k:
        raise ValueError("gemm.matmul: operand shapes do not agree")
    if m == 0 or n == 0:
        return
    cdef pynn_context ctx = current_context()
    cdef const float *a_data = &a[0, 0] if a.shape[0] * a.shape[1] > 0 else NULL
    cdef const float *b_data = &b[0, 0] if b.shape[0] * b.shape[1] > 0 else NULL
    with nogil:
        pynn_sgemm(&ctx, trans_a, trans_b, m, n, k, alpha, a_data, a.shape[1],
                   b_data, b.shape[1], beta, &c[0, 0], c.shape[1], NULL)
