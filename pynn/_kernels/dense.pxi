# Dense-layer reductions and embedding gather/scatter (csrc/dense.c).
#
# linear's products go through gemm.pxi; this file holds what is
# left of the dense layer's backward: the bias gradient, fused with the ReLU
# mask when the layer's activation is fused into its GEMM.
from libc.stdint cimport int64_t


cdef extern from "dense.h" nogil:
    void pynn_column_sums(const pynn_context *ctx, Py_ssize_t rows, Py_ssize_t cols,
                          const float *dy, float *db)
    void pynn_relu_mask_column_sums(const pynn_context *ctx, Py_ssize_t rows, Py_ssize_t cols,
                                    const float *dy, const float *y, float *dz, float *db)
    void pynn_scale(Py_ssize_t count, float factor, float *x)
    void pynn_embedding_gather(const pynn_context *ctx, Py_ssize_t count, Py_ssize_t dim,
                               const float *weight, const int64_t *index, float *out)
    Py_ssize_t pynn_embedding_scatter_add(const pynn_context *ctx, Py_ssize_t count,
                                          Py_ssize_t dim, const float *dy, const int64_t *index,
                                          int64_t padding_idx, float *dweight, int64_t *rows,
                                          Py_ssize_t previous_rows, unsigned char *marks)


def column_sums(dy, db):
    """db = dy.sum(axis=0) for dy [rows, cols]; returns db."""
    cdef Py_ssize_t rows = dy.shape[0], cols = dy.shape[1]
    cdef const float *g = float_input(dy, rows * cols, "dy")
    cdef float *out = float_output(db, cols, "db")
    cdef pynn_context ctx = current_context()
    with nogil:
        pynn_column_sums(&ctx, rows, cols, g, out)
    return db


def scale(x, float factor):
    """x *= factor in place, for a C-contiguous float32 x; returns x."""
    cdef Py_ssize_t count = x.size
    cdef float *data = float_output(x, count, "x")
    with nogil:
        pynn_scale(count, factor, data)
    return x


def relu_mask_column_sums(dy, y, dz, db):
    """dz = dy * (y > 0) and, unless db is None, db = dz.sum(axis=0). dz may be dy."""
    cdef Py_ssize_t rows = dy.shape[0], cols = dy.shape[1]
    cdef const float *g = float_input(dy, rows * cols, "dy")
    cdef const float *activated = float_input(y, rows * cols, "y")
    cdef float *masked = float_output(dz, rows * cols, "dz")
    cdef float *sums = NULL
    if db is not None:
        sums = float_output(db, cols, "db")
    cdef pynn_context ctx = current_context()
    with nogil:
        pynn_relu_mask_column_sums(&ctx, rows, cols, g, activated, masked, sums)
    return dz


cdef int check_indices(const int64_t *index, Py_ssize_t count, Py_ssize_t limit,
                       str where) except -1:
    cdef Py_ssize_t i, bad = -1
    with nogil:
        for i in range(count):
            if index[i] < 0 or index[i] >= limit:
                bad = i
                break
    if bad >= 0:
        raise IndexError(f"{where}: index {index[bad]} is out of range for "
                         f"{limit} embeddings (valid: 0 to {limit - 1})")
    return 0


def embedding_gather(weight, index, out, str where="Embedding"):
    """out[i] = weight[index[i]] (index flat int64); out-of-range indices raise IndexError."""
    cdef Py_ssize_t num = weight.shape[0], dim = weight.shape[1]
    cdef Py_ssize_t count = cnp.PyArray_SIZE(index)
    cdef const float *table = float_input(weight, num * dim, "weight")
    cdef const int64_t *rows = index_input(index, count, "index")
    cdef float *result = float_output(out, count * dim, "out")
    check_indices(rows, count, num, where)
    cdef pynn_context ctx = current_context()
    with nogil:
        pynn_embedding_gather(&ctx, count, dim, table, rows, result)
    return out


def embedding_scatter_add(dy, index, dweight, rows, Py_ssize_t previous_rows, marks,
                          padding_idx=None, str where="Embedding"):
    """dweight = the scatter-sum of dy over index (repeats accumulate; the
    padding_idx row gets nothing), given that only rows[:previous_rows] of it
    are non-zero: those are zeroed, then the rows of index written. rows then
    starts with the distinct rows written, whose number is returned. marks:
    a zero uint8 per embedding, left zero."""
    cdef Py_ssize_t num = dweight.shape[0], dim = dweight.shape[1]
    cdef Py_ssize_t count = cnp.PyArray_SIZE(index)
    cdef const float *g = float_input(dy, count * dim, "dy")
    cdef const int64_t *positions = index_input(index, count, "index")
    cdef float *table = float_output(dweight, num * dim, "dweight")
    cdef cnp.ndarray row_array = checked(rows, cnp.NPY_INT64, -1, "rows")
    cdef cnp.ndarray mark_array = checked(marks, cnp.NPY_UINT8, num, "marks")
    if not (cnp.PyArray_ISWRITEABLE(row_array) and cnp.PyArray_ISWRITEABLE(mark_array)):
        raise ValueError("rows and marks must be writable")
    if not 0 <= previous_rows <= cnp.PyArray_SIZE(row_array) or cnp.PyArray_SIZE(row_array) < count:
        raise ValueError(f"rows must hold max(count, previous_rows), got {cnp.PyArray_SIZE(row_array)} "
                         f"for {count} indices and {previous_rows} previous rows")
    cdef int64_t *written = <int64_t *>cnp.PyArray_DATA(row_array)
    cdef int64_t padding = -1 if padding_idx is None else padding_idx
    if not -1 <= padding < num:
        raise ValueError(f"padding_idx must be None or in [0, {num}), got {padding_idx}")
    check_indices(positions, count, num, where)
    check_indices(written, previous_rows, num, "rows")
    cdef pynn_context ctx = current_context()
    cdef Py_ssize_t distinct
    with nogil:
        distinct = pynn_embedding_scatter_add(&ctx, count, dim, g, positions, padding, table,
                                              written, previous_rows,
                                              <unsigned char *>cnp.PyArray_DATA(mark_array))
    return distinct
