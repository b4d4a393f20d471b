# Batch normalisation kernels (csrc/batchnorm.c) over x viewed as [N, C, S].


cdef extern from "batchnorm.h" nogil:
    void pynn_batchnorm_train_forward(const pynn_context *ctx, Py_ssize_t n, Py_ssize_t c,
                                      Py_ssize_t s, const float *x, const float *weight,
                                      const float *bias, float eps, float factor,
                                      float *running_mean, float *running_var,
                                      float *mean, float *invstd, bint relu, float *y)
    void pynn_batchnorm_eval_forward(const pynn_context *ctx, Py_ssize_t n, Py_ssize_t c,
                                     Py_ssize_t s, const float *x, const float *weight,
                                     const float *bias, float eps, const float *running_mean,
                                     const float *running_var, float *y)
    void pynn_batchnorm_backward(const pynn_context *ctx, Py_ssize_t n, Py_ssize_t c,
                                 Py_ssize_t s, const float *dy, const float *x,
                                 const float *weight, const float *bias, const float *mean,
                                 const float *invstd, bint relu, float *dx, float *dweight,
                                 float *dbias)


cdef inline Py_ssize_t spatial(tuple shape):
    cdef Py_ssize_t size = 1, extent
    for extent in shape[2:]:
        size *= extent
    return size


def batchnorm_train_forward(x, weight, bias, float eps, float factor, running_mean, running_var,
                  mean, invstd, y, bint relu=False):
    """Normalise with batch statistics (saved into mean, invstd), then with
    relu max(., 0); running statistics move by factor unless running_mean is
    None."""
    cdef Py_ssize_t n = x.shape[0], c = x.shape[1], s = spatial(x.shape), total = x.size
    cdef const float *input = float_input(x, total, "x")
    cdef const float *scale = float_input(weight, c, "weight")
    cdef const float *shift = float_input(bias, c, "bias")
    cdef float *r_mean = NULL
    cdef float *r_var = NULL
    if running_mean is not None:
        r_mean = float_output(running_mean, c, "running_mean")
        r_var = float_output(running_var, c, "running_var")
    cdef float *saved_mean = float_output(mean, c, "mean")
    cdef float *saved_invstd = float_output(invstd, c, "invstd")
    cdef float *output = float_output(y, total, "y")
    cdef pynn_context ctx = current_context()
    with nogil:
        pynn_batchnorm_train_forward(&ctx, n, c, s, input, scale, shift, eps, factor, r_mean,
                                     r_var, saved_mean, saved_invstd, relu, output)
    return y


def batchnorm_eval_forward(x, weight, bias, float eps, running_mean, running_var, y):
    cdef Py_ssize_t n = x.shape[0], c = x.shape[1], s = spatial(x.shape), total = x.size
    cdef const float *input = float_input(x, total, "x")
    cdef const float *scale = float_input(weight, c, "weight")
    cdef const float *shift = float_input(bias, c, "bias")
    cdef const float *r_mean = float_input(running_mean, c, "running_mean")
    cdef const float *r_var = float_input(running_var, c, "running_var")
    cdef float *output = float_output(y, total, "y")
    cdef pynn_context ctx = current_context()
    with nogil:
        pynn_batchnorm_eval_forward(&ctx, n, c, s, input, scale, shift, eps, r_mean, r_var,
                                    output)
    return y


def batchnorm_backward(dy, x, weight, bias, mean, invstd, dx, dweight, dbias, bint relu=False):
    """Writes dx, dweight, dbias (each skipped when None); with relu, dy is
    the gradient of the forward's ReLU output."""
    cdef Py_ssize_t n = x.shape[0], c = x.shape[1], s = spatial(x.shape), total = x.size
    cdef const float *grad = float_input(dy, total, "dy")
    cdef const float *input = float_input(x, total, "x")
    cdef const float *scale = float_input(weight, c, "weight")
    cdef const float *shift = float_input(bias, c, "bias")
    cdef const float *centre = float_input(mean, c, "mean")
    cdef const float *inverse = float_input(invstd, c, "invstd")
    cdef float *input_grad = NULL
    cdef float *weight_grad = NULL
    cdef float *bias_grad = NULL
    if dx is not None:
        input_grad = float_output(dx, total, "dx")
    if dweight is not None:
        weight_grad = float_output(dweight, c, "dweight")
    if dbias is not None:
        bias_grad = float_output(dbias, c, "dbias")
    cdef pynn_context ctx = current_context()
    with nogil:
        pynn_batchnorm_backward(&ctx, n, c, s, grad, input, scale, shift, centre, inverse, relu,
                                input_grad, weight_grad, bias_grad)
