# Pooling kernels (csrc/pool.c): max, average, global and adaptive average,
# each with its backward. Geometry is validated by pynn.ops.conv; the checks here only
# keep a careless caller in bounds.

from libc.stdint cimport int64_t


cdef extern from "pool.h" nogil:
    ctypedef struct pynn_pool_shape:
        Py_ssize_t planes, height, width, out_h, out_w
        Py_ssize_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w
    void pynn_max_pool2d_forward(const pynn_context *ctx, const pynn_pool_shape *s,
                                 const float *x, float *y, int64_t *argmax)
    void pynn_max_pool2d_scatter(const pynn_context *ctx, const pynn_pool_shape *s,
                                 const float *dy, const int64_t *argmax, float *dx)
    void pynn_max_pool2d_backward(const pynn_context *ctx, const pynn_pool_shape *s,
                                  const float *dy, const float *x, float *dx)
    void pynn_avg_pool2d_forward(const pynn_context *ctx, const pynn_pool_shape *s,
                                 int count_include_pad, const float *x, float *y)
    void pynn_avg_pool2d_backward(const pynn_context *ctx, const pynn_pool_shape *s,
                                  int count_include_pad, const float *dy, float *dx)
    void pynn_global_avg_pool2d_forward(const pynn_context *ctx, Py_ssize_t planes,
                                        Py_ssize_t size, const float *x, float *y)
    void pynn_global_avg_pool2d_backward(const pynn_context *ctx, Py_ssize_t planes,
                                         Py_ssize_t size, const float *dy, float *dx)
    void pynn_adaptive_avg_pool2d_forward(const pynn_context *ctx, Py_ssize_t planes,
                                          Py_ssize_t height, Py_ssize_t width, Py_ssize_t out_h,
                                          Py_ssize_t out_w, const float *x, float *y)
    void pynn_adaptive_avg_pool2d_backward(const pynn_context *ctx, Py_ssize_t planes,
                                           Py_ssize_t height, Py_ssize_t width, Py_ssize_t out_h,
                                           Py_ssize_t out_w, const float *dy, float *dx)


cdef pynn_pool_shape pool_geometry(tuple x_shape, tuple out_hw, tuple kernel, tuple stride,
                              tuple padding, tuple dilation) except *:
    cdef pynn_pool_shape s
    if len(x_shape) != 4:
        raise ValueError(f"pool2d: x must be 4-D, got {x_shape}")
    s.planes = x_shape[0] * x_shape[1]
    s.height, s.width = x_shape[2], x_shape[3]
    s.out_h, s.out_w = out_hw
    s.kernel_h, s.kernel_w = kernel
    s.stride_h, s.stride_w = stride
    s.pad_h, s.pad_w = padding
    s.dilation_h, s.dilation_w = dilation
    if (s.height < 1 or s.width < 1 or s.kernel_h < 1 or s.kernel_w < 1 or s.stride_h < 1 or s.stride_w < 1 or s.pad_h < 0
            or s.pad_w < 0 or s.dilation_h < 1 or s.dilation_w < 1 or s.out_h < 1 or s.out_w < 1
            or (s.out_h - 1) * s.stride_h - s.pad_h >= s.height
            or (s.out_w - 1) * s.stride_w - s.pad_w >= s.width):
        raise ValueError(f"pool2d: inconsistent geometry x {x_shape}, output {out_hw}, "
                         f"kernel {kernel}, stride {stride}, padding {padding}")
    return s


def max_pool2d_forward(x, y, tuple kernel, tuple stride, tuple padding, tuple dilation,
                       argmax=None):
    """y = window maxima; argmax (int64, y's shape), if given, gets their
    flat indices within each plane for max_pool2d_scatter."""
    cdef pynn_pool_shape s = pool_geometry(x.shape, y.shape[2:], kernel, stride, padding, dilation)
    cdef const float *input = float_input(x, x.size, "x")
    cdef float *output = float_output(y, s.planes * s.out_h * s.out_w, "y")
    cdef int64_t *where = NULL
    if argmax is not None:
        where = <int64_t *>cnp.PyArray_DATA(checked(argmax, cnp.NPY_INT64,
                                                    s.planes * s.out_h * s.out_w, "argmax"))
    cdef pynn_context ctx = current_context()
    with nogil:
        pynn_max_pool2d_forward(&ctx, &s, input, output, where)
    return y


def max_pool2d_scatter(dy, argmax, dx, tuple kernel, tuple stride, tuple padding,
                       tuple dilation):
    """dx = 0, then dx[argmax] += dy, with argmax from max_pool2d_forward on
    these shapes (its indices are trusted to lie in the plane)."""
    cdef pynn_pool_shape s = pool_geometry(dx.shape, dy.shape[2:], kernel, stride, padding, dilation)
    cdef Py_ssize_t outputs = s.planes * s.out_h * s.out_w
    cdef const float *grad = float_input(dy, outputs, "dy")
    cdef const int64_t *where = index_input(argmax, outputs, "argmax")
    cdef float *output = float_output(dx, dx.size, "dx")
    cdef pynn_context ctx = current_context()
    with nogil:
        pynn_max_pool2d_scatter(&ctx, &s, grad, where, output)
    return dx


def max_pool2d_backward(dy, x, dx, tuple kernel, tuple stride, tuple padding, tuple dilation):
    cdef pynn_pool_shape s = pool_geometry(x.shape, dy.shape[2:], kernel, stride, padding, dilation)
    cdef const float *grad = float_input(dy, s.planes * s.out_h * s.out_w, "dy")
    cdef const float *input = float_input(x, x.size, "x")
    cdef float *output = float_output(dx, x.size, "dx")
    cdef pynn_context ctx = current_context()
    with nogil:
        pynn_max_pool2d_backward(&ctx, &s, grad, input, output)
    return dx


def avg_pool2d_forward(x, y, tuple kernel, tuple stride, tuple padding, bint count_include_pad):
    cdef pynn_pool_shape s = pool_geometry(x.shape, y.shape[2:], kernel, stride, padding, (1, 1))
    cdef const float *input = float_input(x, x.size, "x")
    cdef float *output = float_output(y, s.planes * s.out_h * s.out_w, "y")
    cdef pynn_context ctx = current_context()
    with nogil:
        pynn_avg_pool2d_forward(&ctx, &s, count_include_pad, input, output)
    return y


def avg_pool2d_backward(dy, dx, tuple kernel, tuple stride, tuple padding,
                        bint count_include_pad):
    cdef pynn_pool_shape s = pool_geometry(dx.shape, dy.shape[2:], kernel, stride, padding, (1, 1))
    cdef const float *grad = float_input(dy, s.planes * s.out_h * s.out_w, "dy")
    cdef float *output = float_output(dx, dx.size, "dx")
    cdef pynn_context ctx = current_context()
    with nogil:
        pynn_avg_pool2d_backward(&ctx, &s, count_include_pad, grad, output)
    return dx


def global_avg_pool2d_forward(x, y):
    """y [N, C] = the mean of each [H, W] plane of x [N, C, H, W]."""
    cdef Py_ssize_t planes = x.shape[0] * x.shape[1], size = x.shape[2] * x.shape[3]
    if size < 1:
        raise ValueError(f"global_avg_pool2d: empty planes in x {x.shape}")
    cdef const float *input = float_input(x, planes * size, "x")
    cdef float *output = float_output(y, planes, "y")
    cdef pynn_context ctx = current_context()
    with nogil:
        pynn_global_avg_pool2d_forward(&ctx, planes, size, input, output)
    return y


def global_avg_pool2d_backward(dy, dx):
    cdef Py_ssize_t planes = dx.shape[0] * dx.shape[1], size = dx.shape[2] * dx.shape[3]
    if size < 1:
        raise ValueError(f"global_avg_pool2d_backward: empty planes in dx {dx.shape}")
    cdef const float *grad = float_input(dy, planes, "dy")
    cdef float *output = float_output(dx, planes * size, "dx")
    cdef pynn_context ctx = current_context()
    with nogil:
        pynn_global_avg_pool2d_backward(&ctx, planes, size, grad, output)
    return dx


cdef tuple adaptive_planes(tuple x_shape, tuple y_shape):
    """(planes, H, W, OH, OW) of an adaptive pool from x [N, C, H, W] to y [N, C, OH, OW]."""
    if len(x_shape) != 4 or len(y_shape) != 4 or x_shape[:2] != y_shape[:2] \
            or min(x_shape[2:]) < 1 or min(y_shape[2:]) < 0:
        raise ValueError(f"adaptive_avg_pool2d: inconsistent shapes x {x_shape}, y {y_shape}")
    return (x_shape[0] * x_shape[1],) + x_shape[2:] + y_shape[2:]


def adaptive_avg_pool2d_forward(x, y):
    """y [N, C, OH, OW] = the means of x's adaptive windows (PyTorch's rule)."""
    cdef Py_ssize_t planes, height, width, out_h, out_w
    planes, height, width, out_h, out_w = adaptive_planes(x.shape, y.shape)
    cdef const float *input = float_input(x, planes * height * width, "x")
    cdef float *output = float_output(y, planes * out_h * out_w, "y")
    cdef pynn_context ctx = current_context()
    with nogil:
        pynn_adaptive_avg_pool2d_forward(&ctx, planes, height, width, out_h, out_w, input, output)
    return y


def adaptive_avg_pool2d_backward(dy, dx):
    """dx [N, C, H, W] from dy [N, C, OH, OW]: each window's dy spread evenly over it."""
    cdef Py_ssize_t planes, height, width, out_h, out_w
    planes, height, width, out_h, out_w = adaptive_planes(dx.shape, dy.shape)
    cdef const float *grad = float_input(dy, planes * out_h * out_w, "dy")
    cdef float *output = float_output(dx, planes * height * width, "dx")
    cdef pynn_context ctx = current_context()
    with nogil:
        pynn_adaptive_avg_pool2d_backward(&ctx, planes, height, width, out_h, out_w, grad, output)
    return dx
