# Tensor kernels (csrc/tensor.c): broadcasting add and multiply with their
# reductions, slice copies for concatenation, axis permutation and the
# row-wise dot product. The layers (pynn/layers/merge.py, shape.py) check the
# shapes users give; the checks here keep a careless caller in bounds.

cdef extern from "tensor.h" nogil:
    enum: PYNN_TENSOR_MAX_RANK
    ctypedef enum pynn_tensor_op:
        PYNN_TENSOR_ADD
        PYNN_TENSOR_MULTIPLY
    void pynn_broadcast_binary(const pynn_context *ctx, pynn_tensor_op op, int rank,
                               const Py_ssize_t *out_shape, const Py_ssize_t *a_shape,
                               const float *a, const Py_ssize_t *b_shape, const float *b, float *y)
    void pynn_broadcast_reduce(const pynn_context *ctx, int rank, const Py_ssize_t *out_shape,
                               const float *dy, const Py_ssize_t *other_shape, const float *other,
                               const Py_ssize_t *target_shape, float *target)
    void pynn_copy_rows(const pynn_context *ctx, Py_ssize_t rows, Py_ssize_t length,
                        const float *src, Py_ssize_t src_stride, float *dst, Py_ssize_t dst_stride)
    void pynn_permute(const pynn_context *ctx, int rank, const Py_ssize_t *x_shape,
                      const int *dims, const float *x, float *y)
    void pynn_row_dot(const pynn_context *ctx, Py_ssize_t rows, Py_ssize_t length,
                      const float *u, const float *v, float *y)
    void pynn_row_dot_backward(const pynn_context *ctx, Py_ssize_t rows, Py_ssize_t length,
                               const float *dy, const float *u, const float *v, float *du,
                               float *dv)

    void pynn_masked_mean(const pynn_context *ctx, Py_ssize_t batch, Py_ssize_t length,
                          Py_ssize_t dim, const float *x, const int64_t *mask, float *y)
    void pynn_masked_mean_backward(const pynn_context *ctx, Py_ssize_t batch, Py_ssize_t length,
                                   Py_ssize_t dim, const float *dy, const int64_t *mask, float *dx)
    void pynn_padding_bias(const pynn_context *ctx, Py_ssize_t count, const int64_t *mask, float *y)

TENSOR_MAX_RANK = PYNN_TENSOR_MAX_RANK
TENSOR_OPS = {"add": PYNN_TENSOR_ADD, "multiply": PYNN_TENSOR_MULTIPLY}


cdef int tensor_shape(tuple shape, Py_ssize_t *out, str where) except -1:
    if not 1 <= len(shape) <= PYNN_TENSOR_MAX_RANK:
        raise ValueError(f"{where}: rank must be 1 to {PYNN_TENSOR_MAX_RANK}, got shape {shape}")
    for axis in range(len(shape)):
        out[axis] = shape[axis]
    return len(shape)


cdef int check_broadcast(tuple operand, tuple full, str where, str role) except -1:
    """operand's extents are full's or 1, at the same rank."""
    if len(operand) != len(full) or any(e != f and e != 1 for e, f in zip(operand, full)):
        raise ValueError(f"{where}: {role} of shape {operand} does not broadcast to {full}")
    return 0


def broadcast_binary(str op, a, b, out):
    """out = a op b ("add" or "multiply"), a and b of out's rank broadcast to
    out's shape as numpy does; out may be a itself."""
    cdef Py_ssize_t a_shape[PYNN_TENSOR_MAX_RANK]
    cdef Py_ssize_t b_shape[PYNN_TENSOR_MAX_RANK]
    cdef Py_ssize_t out_shape[PYNN_TENSOR_MAX_RANK]
    cdef int rank = tensor_shape(out.shape, out_shape, "broadcast_binary")
    tensor_shape(a.shape, a_shape, "broadcast_binary")
    tensor_shape(b.shape, b_shape, "broadcast_binary")
    check_broadcast(a.shape, out.shape, "broadcast_binary", "a")
    check_broadcast(b.shape, out.shape, "broadcast_binary", "b")
    if op not in TENSOR_OPS:
        raise ValueError(f"broadcast_binary: op must be one of {sorted(TENSOR_OPS)}, got {op!r:.40}")
    cdef pynn_tensor_op kind = TENSOR_OPS[op]
    cdef const float *left = float_input(a, a.size, "a")
    cdef const float *right = float_input(b, b.size, "b")
    cdef float *result = float_output(out, out.size, "out")
    if out.size == 0:
        return out
    cdef pynn_context ctx = current_context()
    with nogil:
        pynn_broadcast_binary(&ctx, kind, rank, out_shape, a_shape, left, b_shape, right, result)
    return out


def add_into(a, b, out):
    """out = a + b for three arrays of one shape; out may be a."""
    if a.shape != b.shape or out.shape != a.shape:
        raise ValueError(f"add_into: a {a.shape}, b {b.shape} and out {out.shape} must have one shape")
    cdef Py_ssize_t size = a.size
    cdef const float *left = float_input(a, size, "a")
    cdef const float *right = float_input(b, size, "b")
    cdef float *result = float_output(out, size, "out")
    if size == 0:
        return out
    cdef pynn_context ctx = current_context()
    with nogil:
        pynn_broadcast_binary(&ctx, PYNN_TENSOR_ADD, 1, &size, &size, left, &size, right, result)
    return out


def broadcast_reduce(dy, other, target):
    """target = dy (times other, broadcast to dy's shape, unless other is
    None) summed over the axes where target has extent 1 and dy does not:
    the gradient of one operand of broadcast_binary."""
    cdef Py_ssize_t out_shape[PYNN_TENSOR_MAX_RANK]
    cdef Py_ssize_t other_shape[PYNN_TENSOR_MAX_RANK]
    cdef Py_ssize_t target_shape[PYNN_TENSOR_MAX_RANK]
    cdef int rank = tensor_shape(dy.shape, out_shape, "broadcast_reduce")
    tensor_shape(target.shape, target_shape, "broadcast_reduce")
    check_broadcast(target.shape, dy.shape, "broadcast_reduce", "target")
    cdef const float *factor = NULL
    if other is not None:
        tensor_shape(other.shape, other_shape, "broadcast_reduce")
        check_broadcast(other.shape, dy.shape, "broadcast_reduce", "other")
        factor = float_input(other, other.size, "other")
    cdef const float *grad = float_input(dy, dy.size, "dy")
    cdef float *result = float_output(target, target.size, "target")
    if target.size == 0:
        return target
    if dy.size == 0:  # sums over nothing
        target.fill(0.0)
        return target
    cdef pynn_context ctx = current_context()
    with nogil:
        pynn_broadcast_reduce(&ctx, rank, out_shape, grad, other_shape, factor, target_shape, result)
    return target


cdef int slice_geometry(tuple part, tuple whole, int axis, Py_ssize_t offset, str where,
                        Py_ssize_t *rows, Py_ssize_t *length, Py_ssize_t *stride) except -1:
    """part is whole's slice [offset, offset + part[axis]) along axis: as
    rows of length elements within whole's rows of stride elements."""
    if (len(part) != len(whole) or not 0 <= axis < len(whole) or offset < 0
            or offset + part[axis] > whole[axis]
            or any(p != w for i, (p, w) in enumerate(zip(part, whole)) if i != axis)):
        raise ValueError(f"{where}: shape {part} is not a slice of {whole} along axis {axis} "
                         f"at {offset}")
    cdef Py_ssize_t inner = 1
    for extent in part[axis + 1:]:
        inner *= extent
    rows[0] = 1
    for extent in part[:axis]:
        rows[0] *= extent
    length[0] = part[axis] * inner
    stride[0] = whole[axis] * inner
    return offset * inner


def copy_into_slice(x, out, int axis, Py_ssize_t offset):
    """out[..., offset:offset + x.shape[axis], ...] = x along axis (a
    concatenation's forward for one input)."""
    cdef Py_ssize_t rows, length, stride
    cdef Py_ssize_t start = slice_geometry(x.shape, out.shape, axis, offset, "copy_into_slice",
                                           &rows, &length, &stride)
    cdef const float *source = float_input(x, x.size, "x")
    cdef float *target = float_output(out, out.size, "out")
    cdef pynn_context ctx = current_context()
    with nogil:
        pynn_copy_rows(&ctx, rows, length, source, length, target + start, stride)
    return out


def copy_from_slice(dy, dx, int axis, Py_ssize_t offset):
    """dx = dy[..., offset:offset + dx.shape[axis], ...] along axis (a
    concatenation's backward for one input)."""
    cdef Py_ssize_t rows, length, stride
    cdef Py_ssize_t start = slice_geometry(dx.shape, dy.shape, axis, offset, "copy_from_slice",
                                           &rows, &length, &stride)
    cdef const float *source = float_input(dy, dy.size, "dy")
    cdef float *target = float_output(dx, dx.size, "dx")
    cdef pynn_context ctx = current_context()
    with nogil:
        pynn_copy_rows(&ctx, rows, length, source + start, stride, target, length)
    return dx


def permute(x, tuple dims, out):
    """out = x.transpose(dims), written contiguously."""
    cdef Py_ssize_t x_shape[PYNN_TENSOR_MAX_RANK]
    cdef int order[PYNN_TENSOR_MAX_RANK]
    cdef int rank = tensor_shape(x.shape, x_shape, "permute")
    if sorted(dims) != list(range(rank)):
        raise ValueError(f"permute: dims {dims} is not a permutation of the {rank} axes of {x.shape}")
    if out.shape != tuple(x.shape[axis] for axis in dims):
        raise ValueError(f"permute: out of shape {out.shape} does not match x {x.shape} "
                         f"permuted by {dims}")
    for axis in range(rank):
        order[axis] = dims[axis]
    cdef const float *source = float_input(x, x.size, "x")
    cdef float *target = float_output(out, x.size, "out")
    if x.size == 0:
        return out
    cdef pynn_context ctx = current_context()
    with nogil:
        pynn_permute(&ctx, rank, x_shape, order, source, target)
    return out


def row_dot(u, v, y):
    """y[n] = sum_d u[n, d] v[n, d] for u, v [rows, length]; y has rows elements."""
    if u.ndim != 2 or v.shape != u.shape:
        raise ValueError(f"row_dot: u {u.shape} and v {v.shape} must be one [rows, length] shape")
    cdef Py_ssize_t rows = u.shape[0], length = u.shape[1]
    cdef const float *left = float_input(u, rows * length, "u")
    cdef const float *right = float_input(v, rows * length, "v")
    cdef float *result = float_output(y, rows, "y")
    cdef pynn_context ctx = current_context()
    with nogil:
        pynn_row_dot(&ctx, rows, length, left, right, result)
    return y


def row_dot_backward(dy, u, v, du, dv):
    """du = dy v and dv = dy u, row by row (dy has one element per row)."""
    if u.ndim != 2 or v.shape != u.shape:
        raise ValueError(f"row_dot_backward: u {u.shape} and v {v.shape} must be one "
                         f"[rows, length] shape")
    cdef Py_ssize_t rows = u.shape[0], length = u.shape[1]
    cdef const float *grad = float_input(dy, rows, "dy")
    cdef const float *left = float_input(u, rows * length, "u")
    cdef const float *right = float_input(v, rows * length, "v")
    cdef float *left_grad = float_output(du, rows * length, "du")
    cdef float *right_grad = float_output(dv, rows * length, "dv")
    cdef pynn_context ctx = current_context()
    with nogil:
        pynn_row_dot_backward(&ctx, rows, length, grad, left, right, left_grad, right_grad)
    return du, dv


def masked_mean(x, mask, y):
    """y[n] = the mask-weighted mean of x[n] over its tokens: x [batch, length,
    dim] float32, mask [batch, length] int64, y [batch, dim]."""
    if x.ndim != 3 or mask.shape != x.shape[:2] or y.shape != (x.shape[0], x.shape[2]):
        raise ValueError(f"masked_mean: x {x.shape}, mask {mask.shape} and y {y.shape} must be "
                         f"[batch, length, dim], [batch, length] and [batch, dim]")
    cdef Py_ssize_t batch = x.shape[0], length = x.shape[1], dim = x.shape[2]
    cdef const float *source = float_input(x, x.size, "x")
    cdef const int64_t *weights = index_input(mask, mask.size, "mask")
    cdef float *result = float_output(y, y.size, "y")
    cdef pynn_context ctx = current_context()
    with nogil:
        pynn_masked_mean(&ctx, batch, length, dim, source, weights, result)
    return y


def masked_mean_backward(dy, mask, dx):
    """dx of masked_mean: dx [batch, length, dim] from dy [batch, dim]."""
    if dx.ndim != 3 or mask.shape != dx.shape[:2] or dy.shape != (dx.shape[0], dx.shape[2]):
        raise ValueError(f"masked_mean_backward: dy {dy.shape}, mask {mask.shape} and dx "
                         f"{dx.shape} must be [batch, dim], [batch, length] and [batch, length, dim]")
    cdef Py_ssize_t batch = dx.shape[0], length = dx.shape[1], dim = dx.shape[2]
    cdef const float *grad = float_input(dy, dy.size, "dy")
    cdef const int64_t *weights = index_input(mask, mask.size, "mask")
    cdef float *result = float_output(dx, dx.size, "dx")
    cdef pynn_context ctx = current_context()
    with nogil:
        pynn_masked_mean_backward(&ctx, batch, length, dim, grad, weights, result)
    return dx


def padding_bias(mask, y):
    """y = 0 where the int64 attention mask is non-zero, -inf where it is zero."""
    if y.shape != mask.shape:
        raise ValueError(f"padding_bias: mask {mask.shape} and y {y.shape} must have one shape")
    cdef Py_ssize_t count = mask.size
    cdef const int64_t *source = index_input(mask, count, "mask")
    cdef float *result = float_output(y, count, "y")
    cdef pynn_context ctx = current_context()
    with nogil:
        pynn_padding_bias(&ctx, count, source, result)
    return y
