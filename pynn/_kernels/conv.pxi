# Convolution kernels (csrc/conv.c, csrc/conv_direct.c): direct or im2col + GEMM,
# forward and backward.
#
# Geometry arrives as (stride, padding, dilation) pairs and groups, already
# validated by pynn.ops.conv; the checks here only keep a careless caller from
# reading or writing out of bounds.


cdef extern from "conv.h" nogil:
    ctypedef struct pynn_conv_shape:
        Py_ssize_t batch, in_channels, height, width
        Py_ssize_t out_channels, kernel_h, kernel_w
        Py_ssize_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups
        Py_ssize_t out_h, out_w
    size_t pynn_conv2d_workspace_size(const pynn_conv_shape *s, int threads)
    int pynn_conv2d_forward(const pynn_context *ctx, const pynn_conv_shape *s, const float *x,
                            const float *weight, const float *bias, pynn_activation activation,
                            float *y, float *workspace)
    int pynn_conv2d_backward(const pynn_context *ctx, const pynn_conv_shape *s, const float *dy,
                             const float *x, const float *weight, float *dx, float *dweight,
                             float *dbias, float *workspace)



cdef pynn_conv_shape conv_geometry(tuple x_shape, tuple weight_shape, tuple stride, tuple padding,
                              tuple dilation, Py_ssize_t groups) except *:
    cdef pynn_conv_shape s
    if len(x_shape) != 4 or len(weight_shape) != 4:
        raise ValueError(f"conv2d: x and weight must be 4-D, got {x_shape} and {weight_shape}")
    s.batch, s.in_channels, s.height, s.width = x_shape
    s.out_channels, _, s.kernel_h, s.kernel_w = weight_shape
    s.stride_h, s.stride_w = stride
    s.pad_h, s.pad_w = padding
    s.dilation_h, s.dilation_w = dilation
    s.groups = groups
    if (groups < 1 or s.in_channels % groups or s.out_channels % groups
            or weight_shape[1] * groups != s.in_channels or s.stride_h < 1 or s.stride_w < 1
            or s.dilation_h < 1 or s.dilation_w < 1 or s.pad_h < 0 or s.pad_w < 0
            or s.kernel_h < 1 or s.kernel_w < 1 or s.height < 1 or s.width < 1):
        raise ValueError(f"conv2d: inconsistent geometry x {x_shape}, weight {weight_shape}, "
                         f"stride {stride}, padding {padding}, dilation {dilation}, groups {groups}")
    s.out_h = (s.height + 2 * s.pad_h - s.dilation_h * (s.kernel_h - 1) - 1) // s.stride_h + 1
    s.out_w = (s.width + 2 * s.pad_w - s.dilation_w * (s.kernel_w - 1) - 1) // s.stride_w + 1
    if s.out_h < 1 or s.out_w < 1:
        raise ValueError(f"conv2d: the kernel does not fit the padded input {x_shape}")
    return s


cdef float *workspace_pointer(object workspace, const pynn_conv_shape *s) except? NULL:
    if workspace is None:
        return NULL
    cdef Py_ssize_t needed = pynn_conv2d_workspace_size(s, current_context().num_threads)
    cdef cnp.ndarray array = <cnp.ndarray?>workspace
    if cnp.PyArray_TYPE(array) != cnp.NPY_FLOAT32 or not cnp.PyArray_IS_C_CONTIGUOUS(array) \
            or cnp.PyArray_SIZE(array) < needed or not cnp.PyArray_ISWRITEABLE(array):
        raise ValueError(f"conv2d: workspace must be a writable float32 array of at least "
                         f"{needed} elements")
    return <float *>cnp.PyArray_DATA(array)


def conv2d_output_size(tuple x_shape, tuple weight_shape, tuple stride, tuple padding, tuple dilation,
                Py_ssize_t groups):
    """(OH, OW) of the convolution."""
    cdef pynn_conv_shape s = conv_geometry(x_shape, weight_shape, stride, padding, dilation, groups)
    return s.out_h, s.out_w


def conv2d_workspace_size(tuple x_shape, tuple weight_shape, tuple stride, tuple padding,
                   tuple dilation, Py_ssize_t groups):
    """Floats of scratch conv2d_forward/backward use for these shapes at the
    current thread count."""
    cdef pynn_conv_shape s = conv_geometry(x_shape, weight_shape, stride, padding, dilation, groups)
    return max(<Py_ssize_t>pynn_conv2d_workspace_size(&s, current_context().num_threads), 1)


def conv2d_forward(x, weight, bias, y, tuple stride, tuple padding, tuple dilation,
                   Py_ssize_t groups, bint relu=False, workspace=None):
    """y = weight ⋆ x + bias (then ReLU if relu); returns y. workspace: optional
    float32 scratch of workspace_size() elements, else allocated per call."""
    cdef pynn_conv_shape s = conv_geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    cdef const float *input = float_input(x, s.batch * s.in_channels * s.height * s.width, "x")
    cdef const float *kernel = float_input(weight, weight.size, "weight")
    cdef const float *shift = NULL
    if bias is not None:
        shift = float_input(bias, s.out_channels, "bias")
    cdef float *output = float_output(y, s.batch * s.out_channels * s.out_h * s.out_w, "y")
    cdef float *scratch = workspace_pointer(workspace, &s)
    cdef pynn_activation activation = PYNN_ACTIVATION_RELU if relu else PYNN_ACTIVATION_NONE
    cdef pynn_context ctx = current_context()
    cdef int status
    with nogil:
        status = pynn_conv2d_forward(&ctx, &s, input, kernel, shift, activation, output, scratch)
    if status:
        raise MemoryError("conv2d: could not allocate the unfolded input")
    return y


def conv2d_backward(dy, x, weight, dx, dweight, dbias, tuple stride, tuple padding,
                    tuple dilation, Py_ssize_t groups, workspace=None):
    """Writes dx, dweight, dbias (each skipped when None)."""
    cdef pynn_conv_shape s = conv_geometry(x.shape, weight.shape, stride, padding, dilation, groups)
    cdef Py_ssize_t input_size = s.batch * s.in_channels * s.height * s.width
    cdef const float *grad = float_input(dy, s.batch * s.out_channels * s.out_h * s.out_w, "dy")
    cdef const float *input = float_input(x, input_size, "x")
    cdef const float *kernel = float_input(weight, weight.size, "weight")
    cdef float *input_grad = NULL
    cdef float *weight_grad = NULL
    cdef float *bias_grad = NULL
    if dx is not None:
        input_grad = float_output(dx, input_size, "dx")
    if dweight is not None:
        weight_grad = float_output(dweight, weight.size, "dweight")
    if dbias is not None:
        bias_grad = float_output(dbias, s.out_channels, "dbias")
    cdef float *scratch = workspace_pointer(workspace, &s)
    cdef pynn_context ctx = current_context()
    cdef int status
    with nogil:
        status = pynn_conv2d_backward(&ctx, &s, grad, input, kernel, input_grad, weight_grad,
                                      bias_grad, scratch)
    if status:
        raise MemoryError("conv2d_backward: could not allocate the unfolded input")
