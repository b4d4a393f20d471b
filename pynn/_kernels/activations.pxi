# Activation kernels over float32 buffers (csrc/activations.c, csrc/vmath.c).
#
# Arrays arrive validated by pynn.ops (C-contiguous float32 of matching sizes);
# the kernels run without the GIL.


ctypedef void (*map_kernel)(const pynn_context *ctx, Py_ssize_t n, const float *a,
                            const float *b, float *y, float p) noexcept nogil

cdef extern from "cpu.h" nogil:
    ctypedef struct pynn_caches:
        long l1d, l2, l3
        int l2_sharing, l3_sharing
    const pynn_caches *pynn_cache_info()

cdef extern from "activations.h" nogil:
    void pynn_vexp(const pynn_context *, Py_ssize_t, const float *, const float *, float *, float)
    void pynn_vtanh(const pynn_context *, Py_ssize_t, const float *, const float *, float *, float)
    void pynn_verf(const pynn_context *, Py_ssize_t, const float *, const float *, float *, float)

cdef extern from "activations.h" nogil:
    void pynn_relu(const pynn_context *, Py_ssize_t, const float *, const float *, float *, float)
    void pynn_relu_backward(const pynn_context *, Py_ssize_t, const float *, const float *, float *, float)
    void pynn_leaky_relu(const pynn_context *, Py_ssize_t, const float *, const float *, float *, float)
    void pynn_leaky_relu_backward(const pynn_context *, Py_ssize_t, const float *, const float *, float *, float)
    void pynn_sigmoid(const pynn_context *, Py_ssize_t, const float *, const float *, float *, float)
    void pynn_sigmoid_backward(const pynn_context *, Py_ssize_t, const float *, const float *, float *, float)
    void pynn_tanh(const pynn_context *, Py_ssize_t, const float *, const float *, float *, float)
    void pynn_tanh_backward(const pynn_context *, Py_ssize_t, const float *, const float *, float *, float)
    void pynn_gelu(const pynn_context *, Py_ssize_t, const float *, const float *, float *, float)
    void pynn_gelu_backward(const pynn_context *, Py_ssize_t, const float *, const float *, float *, float)
    void pynn_gelu_tanh(const pynn_context *, Py_ssize_t, const float *, const float *, float *, float)
    void pynn_gelu_tanh_backward(const pynn_context *, Py_ssize_t, const float *, const float *, float *, float)
    void pynn_silu(const pynn_context *, Py_ssize_t, const float *, const float *, float *, float)
    void pynn_silu_backward(const pynn_context *, Py_ssize_t, const float *, const float *, float *, float)
    void pynn_hardswish(const pynn_context *, Py_ssize_t, const float *, const float *, float *, float)
    void pynn_hardswish_backward(const pynn_context *, Py_ssize_t, const float *, const float *, float *, float)
    void pynn_hardsigmoid(const pynn_context *, Py_ssize_t, const float *, const float *, float *, float)
    void pynn_hardsigmoid_backward(const pynn_context *, Py_ssize_t, const float *, const float *, float *, float)
    void pynn_relu6(const pynn_context *, Py_ssize_t, const float *, const float *, float *, float)
    void pynn_relu6_backward(const pynn_context *, Py_ssize_t, const float *, const float *, float *, float)
    void pynn_dropout(const pynn_context *, Py_ssize_t, const float *, const float *, float *, float)
    void pynn_softmax(const pynn_context *ctx, Py_ssize_t outer, Py_ssize_t length, Py_ssize_t inner,
                      const float *x, float *y, int log_domain)
    void pynn_softmax_backward(const pynn_context *ctx, Py_ssize_t outer, Py_ssize_t length,
                               Py_ssize_t inner, const float *dy, const float *y, float *dx,
                               int log_domain)

# Kernel names, in the order of kernel_table
KERNELS = ("exp", "tanh_math", "erf", "relu", "relu_backward", "leaky_relu",
           "leaky_relu_backward", "sigmoid", "sigmoid_backward", "tanh", "tanh_backward",
           "gelu", "gelu_backward", "gelu_tanh", "gelu_tanh_backward", "silu", "silu_backward",
           "hardswish", "hardswish_backward", "hardsigmoid", "hardsigmoid_backward", "relu6",
           "relu6_backward", "dropout")
cdef map_kernel[24] kernel_table = [
    pynn_vexp, pynn_vtanh, pynn_verf, pynn_relu, pynn_relu_backward, pynn_leaky_relu,
    pynn_leaky_relu_backward, pynn_sigmoid, pynn_sigmoid_backward, pynn_tanh, pynn_tanh_backward,
    pynn_gelu, pynn_gelu_backward, pynn_gelu_tanh, pynn_gelu_tanh_backward, pynn_silu,
    pynn_silu_backward, pynn_hardswish, pynn_hardswish_backward, pynn_hardsigmoid,
    pynn_hardsigmoid_backward, pynn_relu6, pynn_relu6_backward, pynn_dropout]
cdef dict kernel_index = {name: i for i, name in enumerate(KERNELS)}


cdef map_kernel map_kernel_named(str name) except NULL:
    return kernel_table[kernel_index[name]]



def cache_sizes():
    """This CPU's data caches as the kernels found them: bytes, and the logical
    processors sharing the L2 and the L3 (the L3 0 when there is none); the
    element-wise kernels stream their output past caches it would not fit."""
    cdef const pynn_caches *caches = pynn_cache_info()
    return {"l1d": caches.l1d, "l2": caches.l2, "l3": caches.l3,
            "l2_sharing": caches.l2_sharing, "l3_sharing": caches.l3_sharing}


def elementwise(str name, a, b, out, float p=0.0):
    """out = name(a[, b], p) element by element; returns out."""
    cdef Py_ssize_t n = cnp.PyArray_SIZE(a) if cnp.PyArray_Check(a) else 0
    cdef map_kernel kernel = map_kernel_named(name)
    cdef const float *a_data = float_input(a, -1, "a")
    cdef const float *b_data = NULL
    if b is not None:
        b_data = float_input(b, n, "b")
    cdef float *y = float_output(out, n, "out")
    cdef pynn_context ctx = current_context()
    if (name.endswith("_backward") or name == "dropout") and b_data == NULL:
        raise ValueError(f"{name} needs its second input")
    with nogil:
        kernel(&ctx, n, a_data, b_data, y, p)
    return out


def softmax(x, out, Py_ssize_t outer, Py_ssize_t length, Py_ssize_t inner, bint log_domain):
    """softmax (or log_softmax) of x viewed as [outer, length, inner] along the middle axis."""
    cdef Py_ssize_t n = outer * length * inner
    cdef const float *x_data = float_input(x, n, "x")
    cdef float *y = float_output(out, n, "out")
    cdef pynn_context ctx = current_context()
    with nogil:
        pynn_softmax(&ctx, outer, length, inner, x_data, y, log_domain)
    return out


def softmax_backward(dy, y, out, Py_ssize_t outer, Py_ssize_t length, Py_ssize_t inner,
                     bint log_domain):
    cdef Py_ssize_t n = outer * length * inner
    cdef const float *dy_data = float_input(dy, n, "dy")
    cdef const float *y_data = float_input(y, n, "y")
    cdef float *dx = float_output(out, n, "out")
    cdef pynn_context ctx = current_context()
    with nogil:
        pynn_softmax_backward(&ctx, outer, length, inner, dy_data, y_data, dx, log_domain)
    return out
