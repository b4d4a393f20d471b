# The GEMM kernel, shared with every kernel module that multiplies matrices
# (convolution): they take sgemm_kernel()'s pointer rather than compiling
# csrc/gemm*.c again.
from pynn._kernels.runtime cimport pynn_context

cdef extern from "gemm.h" nogil:
    ctypedef enum pynn_activation:
        PYNN_ACTIVATION_NONE
        PYNN_ACTIVATION_RELU
    ctypedef struct pynn_epilogue:
        const float *col_bias
        const float *row_bias
        pynn_activation activation
    ctypedef void (*pynn_sgemm_fn)(const pynn_context *ctx, int trans_a, int trans_b,
                                   Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                                   float alpha, const float *a, Py_ssize_t lda,
                                   const float *b, Py_ssize_t ldb,
                                   float beta, float *c, Py_ssize_t ldc,
                                   const pynn_epilogue *epilogue)

cdef pynn_sgemm_fn sgemm_kernel() noexcept nogil
