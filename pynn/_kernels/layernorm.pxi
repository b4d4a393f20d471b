# Layer normalisation kernels (csrc/layernorm.c) over x viewed as [rows, length].


cdef extern from "layernorm.h" nogil:
    void pynn_layer_norm_forward(const pynn_context *ctx, Py_ssize_t rows, Py_ssize_t length,
                                 const float *x, const float *weight, const float *bias,
                                 double eps, float *y)
    void pynn_layer_norm_forward_keeping(const pynn_context *ctx, Py_ssize_t rows,
                                         Py_ssize_t length, const float *x, const float *weight,
                                         const float *bias, double eps, float *y, double *stats)
    int pynn_layer_norm_residual_forward(const pynn_context *ctx, Py_ssize_t rows,
                                         Py_ssize_t length, const float *x, const float *other,
                                         const float *weight, const float *bias, double eps,
                                         float *y)
    int pynn_layer_norm_backward(const pynn_context *ctx, Py_ssize_t rows, Py_ssize_t length,
                                 const float *dy, const float *x, const float *weight,
                                 double eps, const double *stats, float *dx, float *dweight,
                                 float *dbias)


cdef const float *optional_layer_norm_input(object array, Py_ssize_t size, str role) except? NULL:
    if array is None:
        return NULL
    return float_input(array, size, role)


cdef float *optional_layer_norm_output(object array, Py_ssize_t size, str role) except? NULL:
    return NULL if array is None else float_output(array, size, role)


cdef double *optional_statistics(object stats, Py_ssize_t rows) except? NULL:
    if stats is None:
        return NULL
    cdef cnp.ndarray a = checked(stats, cnp.NPY_FLOAT64, 2 * rows, "stats")
    if not cnp.PyArray_ISWRITEABLE(a):
        raise ValueError("stats must be writable")
    return <double *>cnp.PyArray_DATA(a)


def layer_norm(x, weight, bias, double eps, y, Py_ssize_t rows, Py_ssize_t length, stats=None,
               other=None):
    """y = layer_norm(x) over rows of length values; weight and bias may be
    None. stats (float64 [rows, 2], or None) receives each row's mean and
    1 / sqrt(var + eps) for layer_norm_backward. With ``other`` (a residual
    branch, not with stats) y = layer_norm(x + other), the float sum (as
    add_into's) kept row by row, never written out; y must then overlap
    neither x nor other."""
    cdef const float *input = float_input(x, rows * length, "x")
    cdef const float *scale = optional_layer_norm_input(weight, length, "weight")
    cdef const float *shift = optional_layer_norm_input(bias, length, "bias")
    cdef float *output = float_output(y, rows * length, "y")
    cdef double *kept = optional_statistics(stats, rows)
    cdef const float *branch = optional_layer_norm_input(other, rows * length, "other")
    cdef pynn_context ctx = current_context()
    cdef Py_ssize_t size = rows * length
    cdef int status = 0
    if branch != NULL and (kept != NULL or (output < input + size and input < output + size)
                           or (output < branch + size and branch < output + size)):
        raise ValueError("layer_norm: with other, y must overlap neither x nor other, and stats "
                         "is not kept")
    with nogil:
        if branch != NULL:
            status = pynn_layer_norm_residual_forward(&ctx, rows, length, input, branch, scale,
                                                      shift, eps, output)
        else:
            pynn_layer_norm_forward_keeping(&ctx, rows, length, input, scale, shift, eps, output,
                                            kept)
    if status:
        raise MemoryError("layer_norm: no memory for the rows' sums")
    return y


def layer_norm_backward(dy, x, weight, double eps, dx, dweight, dbias, Py_ssize_t rows,
                        Py_ssize_t length, stats=None):
    """Writes dx, dweight, dbias (each skipped when None), from layer_norm's
    stats of x when given (else recomputed: the same values)."""
    cdef const float *grad = float_input(dy, rows * length, "dy")
    cdef const float *input = float_input(x, rows * length, "x")
    cdef const float *scale = optional_layer_norm_input(weight, length, "weight")
    cdef float *input_grad = optional_layer_norm_output(dx, rows * length, "dx")
    cdef float *weight_grad = optional_layer_norm_output(dweight, length, "dweight")
    cdef float *bias_grad = optional_layer_norm_output(dbias, length, "dbias")
    cdef const double *kept = optional_statistics(stats, rows)
    cdef pynn_context ctx = current_context()
    cdef int status
    with nogil:
        status = pynn_layer_norm_backward(&ctx, rows, length, grad, input, scale, eps, kept,
                                          input_grad, weight_grad, bias_grad)
    if status != 0:
        raise MemoryError(f"layer_norm_backward: no memory for the partial sums of {length} "
                          f"gradients")
