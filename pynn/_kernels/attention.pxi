# Scaled dot-product attention kernels (csrc/attention.c) over strided views.
#
# attention_forward(q, k, v, out, log_sum_exp=None, mask=None, is_causal=False,
#                   key_counts=None, scale=None, probabilities=None)
# attention_backward(dout, q, k, v, out, log_sum_exp, dq, dk, dv, mask=None,
#                    is_causal=False, key_counts=None, scale=None, probabilities=None)
#
# q, k, v, out (and dout, dq, dk, dv) are 4-D float32 numpy views
# [N, heads, tokens, features] with any non-negative strides whose last axis
# is contiguous and whose token rows do not overlap: q [N, H, T, D],
# k [N, H, S, D], v [N, H, S, Dv], out [N, H, T, Dv]. A packed projection
# qkv [N, T, 3E] gives q = qkv[:, :, :E].reshape(N, T, H, D).transpose(0, 2, 1, 3)
# (likewise k, v), and out may be such a view of an [N, T, E] array, so no
# transpose is ever copied. Outputs must not overlap the inputs or each other
# (not checked here). What the backward needs besides out, the forward keeps
# in either of two C-contiguous float32 arrays: log_sum_exp [N, H, T], per
# query row log Σ exp(scale q·k + mask) (-inf for a row with no key), from
# which the backward recomputes the probabilities; or probabilities
# [N, H, T, S] themselves, which spares the backward that recomputation (a
# product and an exponential per score) for T x S floats per head of memory
# (csrc/attention.h). The backward takes the probabilities when given, else
# log_sum_exp.
# mask is None or a 4-D bool (True: attend) or float32 (added) array of shape
# [N, H, T, S], any strides: a broadcast view (np.broadcast_to) costs nothing,
# e.g. a key-padding mask [N, S] as m[:, None, None, :] broadcast. key_counts
# (int64 [N]) masks keys from key_counts[n] on, and those keys cost nothing.
# is_causal masks key s > query t. scale defaults to 1 / sqrt(D).
from libc.math cimport sqrt


cdef extern from "attention.h" nogil:
    ctypedef struct pynn_attention_input:
        const float *data
        Py_ssize_t batch_stride, head_stride, token_stride
    ctypedef struct pynn_attention_output:
        float *data
        Py_ssize_t batch_stride, head_stride, token_stride
    ctypedef struct pynn_attention_shape:
        Py_ssize_t batch, heads, queries, keys, head_dim, value_dim
        float scale
    ctypedef struct pynn_attention_mask:
        const unsigned char *allowed
        const float *bias
        Py_ssize_t batch_stride, head_stride, query_stride, key_stride
        const int64_t *key_counts
        int causal
    int pynn_attention_forward(const pynn_context *ctx, const pynn_attention_shape *shape,
                               pynn_attention_input q, pynn_attention_input k,
                               pynn_attention_input v, const pynn_attention_mask *mask,
                               pynn_attention_output out, float *log_sum_exp,
                               float *probabilities)
    int pynn_attention_backward(const pynn_context *ctx, const pynn_attention_shape *shape,
                                pynn_attention_input dout, pynn_attention_input q,
                                pynn_attention_input k, pynn_attention_input v,
                                pynn_attention_input out, const float *log_sum_exp,
                                const float *probabilities, const pynn_attention_mask *mask,
                                pynn_attention_output dq, pynn_attention_output dk,
                                pynn_attention_output dv)
    int pynn_attention_key_counts(Py_ssize_t rows, Py_ssize_t keys, const unsigned char *padding,
                                  const float *bias, int64_t *counts)


cdef cnp.ndarray attention_view(object array, tuple shape, str role, bint writable):
    """A 4-D float32 view of ``shape`` whose strides the kernel can walk."""
    if not cnp.PyArray_Check(array):
        raise TypeError(f"attention: {role} must be a numpy array, got {type(array).__name__}")
    cdef cnp.ndarray a = <cnp.ndarray>array
    if cnp.PyArray_TYPE(a) != cnp.NPY_FLOAT32 or not cnp.PyArray_ISALIGNED(a):
        raise TypeError(f"attention: {role} must be an aligned float32 array, got {a.dtype}")
    if array.shape != shape:
        raise ValueError(f"attention: {role} must have shape {shape}, got {array.shape}")
    if writable and not cnp.PyArray_ISWRITEABLE(a):
        raise ValueError(f"attention: {role} must be writable")
    cdef int axis
    if cnp.PyArray_SIZE(a) == 0:  # never read nor written
        return a
    for axis in range(4):
        if a.strides[axis] < 0 or a.strides[axis] % 4:
            raise ValueError(f"attention: {role} must have non-negative strides in whole "
                             f"floats, got {array.strides}")
    if a.shape[3] > 1 and a.strides[3] != 4:
        raise ValueError(f"attention: {role}'s last axis must be contiguous, got strides "
                         f"{array.strides}")
    if a.shape[2] > 1 and a.strides[2] < 4 * a.shape[3]:
        raise ValueError(f"attention: {role}'s token rows must not overlap, got strides "
                         f"{array.strides} for shape {array.shape}")
    return a


cdef pynn_attention_input attention_input(object array, tuple shape, str role) except *:
    cdef cnp.ndarray a = attention_view(array, shape, role, False)
    cdef pynn_attention_input view
    view.data = <const float *>cnp.PyArray_DATA(a)
    view.batch_stride = a.strides[0] // 4
    view.head_stride = a.strides[1] // 4
    view.token_stride = a.strides[2] // 4
    return view


cdef pynn_attention_output attention_output(object array, tuple shape, str role) except *:
    cdef cnp.ndarray a = attention_view(array, shape, role, True)
    cdef pynn_attention_output view
    view.data = <float *>cnp.PyArray_DATA(a)
    view.batch_stride = a.strides[0] // 4
    view.head_stride = a.strides[1] // 4
    view.token_stride = a.strides[2] // 4
    return view


cdef pynn_attention_mask attention_mask(object mask, bint is_causal, object key_counts,
                                        tuple shape) except *:
    cdef pynn_attention_mask m
    m.allowed = NULL
    m.bias = NULL
    m.batch_stride = m.head_stride = m.query_stride = m.key_stride = 0
    m.causal = is_causal
    m.key_counts = NULL
    if key_counts is not None:
        m.key_counts = index_input(key_counts, shape[0], "key_counts")
    if mask is None:
        return m
    if not cnp.PyArray_Check(mask):
        raise TypeError(f"attention: mask must be a numpy array, got {type(mask).__name__}")
    cdef cnp.ndarray a = <cnp.ndarray>mask
    cdef int type_num = cnp.PyArray_TYPE(a)
    if type_num != cnp.NPY_BOOL and type_num != cnp.NPY_FLOAT32 or not cnp.PyArray_ISALIGNED(a):
        raise TypeError(f"attention: mask must be an aligned bool or float32 array, got {a.dtype}")
    if mask.shape != shape:
        raise ValueError(f"attention: mask must have shape {shape} (a broadcast view will do), "
                         f"got {mask.shape}")
    cdef Py_ssize_t item = a.itemsize
    if any(stride % item for stride in mask.strides):
        raise ValueError(f"attention: mask's strides must be whole elements, got {mask.strides}")
    if type_num == cnp.NPY_BOOL:
        m.allowed = <const unsigned char *>cnp.PyArray_DATA(a)
    else:
        m.bias = <const float *>cnp.PyArray_DATA(a)
    m.batch_stride = a.strides[0] // item
    m.head_stride = a.strides[1] // item
    m.query_stride = a.strides[2] // item
    m.key_stride = a.strides[3] // item
    return m


cdef pynn_attention_shape attention_shape(object q, object k, object v, object scale) except *:
    for array, role in ((q, "q"), (k, "k"), (v, "v")):
        if not cnp.PyArray_Check(array) or (<cnp.ndarray>array).ndim != 4:
            raise ValueError(f"attention: {role} must be a 4-D numpy array")
    cdef pynn_attention_shape s
    s.batch, s.heads, s.queries, s.head_dim = q.shape
    s.keys = k.shape[2]
    s.value_dim = v.shape[3]
    s.scale = (1.0 / sqrt(s.head_dim) if s.head_dim else 1.0) if scale is None else scale
    return s


def attention_forward(q, k, v, out, log_sum_exp=None, mask=None, bint is_causal=False,
                      key_counts=None, scale=None, probabilities=None):
    """out = softmax(scale q kᵀ + mask) v per (batch, head); see the top of
    this file for the views. Returns out."""
    cdef pynn_attention_shape s = attention_shape(q, k, v, scale)
    cdef tuple key_shape = (s.batch, s.heads, s.keys, s.head_dim)
    cdef pynn_attention_input query = attention_input(q, q.shape, "q")
    cdef pynn_attention_input key = attention_input(k, key_shape, "k")
    cdef pynn_attention_input value = attention_input(v, (s.batch, s.heads, s.keys, s.value_dim),
                                                      "v")
    cdef pynn_attention_output result = attention_output(
        out, (s.batch, s.heads, s.queries, s.value_dim), "out")
    cdef float *kept = NULL
    cdef float *kept_probabilities = NULL
    if log_sum_exp is not None:
        kept = float_output(log_sum_exp, s.batch * s.heads * s.queries, "log_sum_exp")
    if probabilities is not None:
        kept_probabilities = float_output(probabilities, s.batch * s.heads * s.queries * s.keys,
                                          "probabilities")
    cdef pynn_attention_mask m = attention_mask(mask, is_causal, key_counts,
                                                (s.batch, s.heads, s.queries, s.keys))
    cdef pynn_context ctx = current_context()
    cdef int status
    with nogil:
        status = pynn_attention_forward(&ctx, &s, query, key, value, &m, result, kept,
                                        kept_probabilities)
    if status != 0:
        raise MemoryError(f"attention: no memory for the scores of {s.keys} keys")
    return out


def attention_backward(dout, q, k, v, out, log_sum_exp, dq, dk, dv, mask=None,
                       bint is_causal=False, key_counts=None, scale=None, probabilities=None):
    """Writes dq, dk, dv for dout, the gradient of attention_forward's out,
    from that call's out and its probabilities, or when those are None its
    log_sum_exp (the same mask, is_causal, key_counts and scale)."""
    cdef pynn_attention_shape s = attention_shape(q, k, v, scale)
    cdef tuple key_shape = (s.batch, s.heads, s.keys, s.head_dim)
    cdef tuple value_shape = (s.batch, s.heads, s.keys, s.value_dim)
    cdef tuple out_shape = (s.batch, s.heads, s.queries, s.value_dim)
    cdef pynn_attention_input grad = attention_input(dout, out_shape, "dout")
    cdef pynn_attention_input query = attention_input(q, q.shape, "q")
    cdef pynn_attention_input key = attention_input(k, key_shape, "k")
    cdef pynn_attention_input value = attention_input(v, value_shape, "v")
    cdef pynn_attention_input result = attention_input(out, out_shape, "out")
    cdef const float *kept = NULL
    cdef const float *kept_probabilities = NULL
    if probabilities is not None:
        kept_probabilities = float_input(probabilities, s.batch * s.heads * s.queries * s.keys,
                                         "probabilities")
    else:
        kept = float_input(log_sum_exp, s.batch * s.heads * s.queries, "log_sum_exp")
    cdef pynn_attention_output query_grad = attention_output(dq, q.shape, "dq")
    cdef pynn_attention_output key_grad = attention_output(dk, key_shape, "dk")
    cdef pynn_attention_output value_grad = attention_output(dv, value_shape, "dv")
    cdef pynn_attention_mask m = attention_mask(mask, is_causal, key_counts,
                                                (s.batch, s.heads, s.queries, s.keys))
    cdef pynn_context ctx = current_context()
    cdef int status
    with nogil:
        status = pynn_attention_backward(&ctx, &s, grad, query, key, value, result, kept,
                                         kept_probabilities, &m, query_grad, key_grad,
                                         value_grad)
    if status != 0:
        raise MemoryError(f"attention_backward: no memory for the scores of {s.keys} keys")


def attention_key_counts(mask, counts):
    """Whether the C-contiguous key-padding mask [N, S], bool (True: padding)
    or float32 (added to the scores), pads exactly each row's end (0 then
    -inf for a float mask); then counts (int64 [N]) holds each row's keys."""
    if not cnp.PyArray_Check(mask) or (<cnp.ndarray>mask).ndim != 2:
        raise ValueError("attention_key_counts: mask must be a 2-D numpy array")
    cdef bint is_bool = cnp.PyArray_TYPE(<cnp.ndarray>mask) == cnp.NPY_BOOL
    cdef cnp.ndarray a = checked(mask, cnp.NPY_BOOL if is_bool else cnp.NPY_FLOAT32, -1, "mask")
    cdef Py_ssize_t rows = a.shape[0], keys = a.shape[1]
    cdef cnp.ndarray lengths = checked(counts, cnp.NPY_INT64, rows, "counts")
    if not cnp.PyArray_ISWRITEABLE(lengths):
        raise ValueError("counts must be writable")
    cdef const unsigned char *padding = NULL
    cdef const float *bias = NULL
    if is_bool:
        padding = <const unsigned char *>cnp.PyArray_DATA(a)
    else:
        bias = <const float *>cnp.PyArray_DATA(a)
    cdef int found
    with nogil:
        found = pynn_attention_key_counts(rows, keys, padding, bias,
                                          <int64_t *>cnp.PyArray_DATA(lengths))
    return bool(found)
