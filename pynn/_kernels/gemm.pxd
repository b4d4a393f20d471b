# The GEMM kernel, shared with every kernel module that multiplies matrices
# (dense layers, convolution): cimport sgemm from here.
from pynn._kernels.runtime cimport pynn_context

cdef extern from "gemm.h" nogil:
    ctypedef enum pynn_activation:
        PYNN_ACTIVATION_NONE
        PYNN_ACTIVATION_RELU
    ctypedef struct pynn_epilogue:
        const float *col_bias
        const float *row_bias
        pynn_activation activation

cdef void sgemm(const pynn_context *ctx, bint trans_a, bint trans_b,
                Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                float alpha, const float *a, Py_ssize_t lda,
                const float *b, Py_ssize_t ldb,
                float beta, float *c, Py_ssize_t ldc,
                const pynn_epilogue *epilogue) noexcept nogil
