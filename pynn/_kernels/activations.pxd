# The element-wise and softmax kernels, shared with the inference plans
# (plan.pyx): they take these pointers rather than compiling
# csrc/activations.c again.
from pynn._kernels.runtime cimport pynn_context

ctypedef void (*map_kernel)(const pynn_context *ctx, Py_ssize_t n, const float *a,
                            const float *b, float *y, float p) noexcept nogil
ctypedef void (*softmax_fn)(const pynn_context *ctx, Py_ssize_t outer, Py_ssize_t length,
                            Py_ssize_t inner, const float *x, float *y, int log_domain) noexcept nogil

cdef map_kernel map_kernel_named(str name) except NULL
cdef softmax_fn softmax_kernel() noexcept nogil
