# Fused optimizer steps over many parameters at once (csrc/optim.c).
#
# A ParameterTable holds raw pointers to every parameter, its gradient and its
# optimizer state, so one call updates them all without touching a Python
# object per tensor; it keeps references to the arrays so the pointers stay
# valid, and allocates nothing per step. A step may take, per parameter, the
# distinct rows to update (row-sparse: the other rows and their state are
# left as they are).
from libc.math cimport pow, sqrt
from libc.stdint cimport int64_t
from libc.stdlib cimport calloc, free, realloc

import numpy as np


cdef extern from "optim.h" nogil:
    ctypedef struct pynn_row_subset:
        const int64_t *rows
        Py_ssize_t count
        Py_ssize_t row_size
    void pynn_sgd_step(const pynn_context *ctx, Py_ssize_t count, const Py_ssize_t *sizes,
                       const pynn_row_subset *subsets, float **params, const float **grads, float **momentum_buffers,
                       float lr, float momentum, float weight_decay, int nesterov)
    void pynn_adam_step(const pynn_context *ctx, Py_ssize_t count, const Py_ssize_t *sizes,
                        const pynn_row_subset *subsets, float **params, const float **grads, float **exp_avgs, float **exp_avg_sqs,
                        const float *step_sizes, const float *bias_corrections2_sqrt,
                        float decay, float grad_weight_decay, float beta1, float beta2, float eps)
    ctypedef struct pynn_rmsprop_options:
        float lr, alpha, one_minus_alpha, eps, weight_decay, momentum
        int centered
    void pynn_rmsprop_step(const pynn_context *ctx, Py_ssize_t count, const Py_ssize_t *sizes,
                           const pynn_row_subset *subsets, float **params, const float **grads,
                           float **square_avgs, float **momentum_buffers, float **grad_avgs,
                           const pynn_rmsprop_options *options)
    void pynn_adagrad_step(const pynn_context *ctx, Py_ssize_t count, const Py_ssize_t *sizes,
                           const pynn_row_subset *subsets, float **params, const float **grads,
                           float **sums, const float *clrs, float weight_decay, float eps)
    Py_ssize_t pynn_grad_norm_chunks(Py_ssize_t count, const Py_ssize_t *sizes,
                                     const pynn_row_subset *subsets)
    double pynn_grad_norm(const pynn_context *ctx, Py_ssize_t count, const Py_ssize_t *sizes,
                          const pynn_row_subset *subsets, const float **grads, double norm_type,
                          double *partials)
    void pynn_grad_scale(const pynn_context *ctx, Py_ssize_t count, const Py_ssize_t *sizes,
                         const pynn_row_subset *subsets, float **grads, float factor)

# stands in for the data pointer of an empty array: the kernels loop zero times
cdef float empty_array_data = 0.0


cdef float *float_pointer(object array, str role, Py_ssize_t size) except NULL:
    if not isinstance(array, np.ndarray) or array.dtype != np.float32 \
            or not array.flags.c_contiguous or not array.flags.writeable:
        raise TypeError(f"optimizer: {role} must be a writable C-contiguous float32 array")
    if array.size != size:
        raise ValueError(f"optimizer: {role} has {array.size} elements, the parameter {size}")
    if size == 0:
        return &empty_array_data
    cdef float[::1] view = array.reshape(-1)
    return &view[0]


cdef int fill_row_subsets(pynn_row_subset *subset, const Py_ssize_t *row_count, Py_ssize_t count,
                          list rows_alive, list rows) except -1:
    """rows: None (every row) or a list with, per tensor, None or the distinct
    rows (int64, 1-D) to update; ``rows_alive`` keeps them referenced."""
    cdef Py_ssize_t i
    cdef cnp.ndarray chosen
    if rows is not None and len(rows) != count:
        raise ValueError(f"optimizer: rows must list {count} entries, got {len(rows)}")
    for i in range(count):
        subset[i].rows = NULL
        rows_alive[i] = None
        if rows is None or rows[i] is None:
            continue
        if row_count[i] == 0:
            raise ValueError(f"optimizer: parameter {i} has no rows to update separately")
        chosen = checked(rows[i], cnp.NPY_INT64, -1, "rows")
        if cnp.PyArray_NDIM(chosen) != 1:
            raise ValueError(f"optimizer: rows must be 1-D, got shape {rows[i].shape}")
        subset[i].count = cnp.PyArray_SIZE(chosen)
        check_indices(<const int64_t *>cnp.PyArray_DATA(chosen), subset[i].count,
                      row_count[i], "optimizer rows")
        subset[i].rows = <const int64_t *>cnp.PyArray_DATA(chosen)
        rows_alive[i] = chosen
    return 0


cdef class ParameterTable:
    """Parameters, gradients, up to three state arrays per parameter (None: no
    state, the slot is never read) and optionally an int64 array of step counts."""
    cdef readonly Py_ssize_t count
    cdef list keep_alive
    cdef float **param
    cdef const float **grad
    cdef float **first
    cdef float **second
    cdef float **third
    cdef Py_ssize_t *size
    cdef Py_ssize_t *row_count   # rows of each parameter (its first axis; 0 for a scalar)
    cdef pynn_row_subset *subset
    cdef list rows_alive
    cdef int64_t *steps
    cdef float *step_size
    cdef float *bias_correction2_sqrt

    def __cinit__(self, list params, list grads, list first_state, list second_state=None,
                  steps=None, list third_state=None):
        self.count = len(params)
        if len(grads) != self.count or len(first_state) != self.count or \
                (second_state is not None and len(second_state) != self.count) or \
                (third_state is not None and len(third_state) != self.count):
            raise ValueError("optimizer: parameter, gradient and state lists differ in length")
        self.keep_alive = [params, grads, first_state, second_state, steps, third_state]
        n = max(self.count, 1)
        self.param = <float **>calloc(n, sizeof(float *))
        self.grad = <const float **>calloc(n, sizeof(float *))
        self.first = <float **>calloc(n, sizeof(float *))
        self.second = <float **>calloc(n, sizeof(float *))
        self.third = <float **>calloc(n, sizeof(float *))
        self.size = <Py_ssize_t *>calloc(n, sizeof(Py_ssize_t))
        self.row_count = <Py_ssize_t *>calloc(n, sizeof(Py_ssize_t))
        self.subset = <pynn_row_subset *>calloc(n, sizeof(pynn_row_subset))
        self.rows_alive = [None] * self.count
        self.step_size = <float *>calloc(n, sizeof(float))
        self.bias_correction2_sqrt = <float *>calloc(n, sizeof(float))
        if not (self.param and self.grad and self.first and self.second and self.third and self.size
                and self.row_count and self.subset and self.step_size and self.bias_correction2_sqrt):
            raise MemoryError()
        cdef Py_ssize_t i
        for i in range(self.count):
            self.size[i] = params[i].size
            if params[i].ndim and params[i].shape[0]:
                self.row_count[i] = params[i].shape[0]
                self.subset[i].row_size = self.size[i] // self.row_count[i]
            self.param[i] = float_pointer(params[i], "parameter", self.size[i])
            self.grad[i] = float_pointer(grads[i], "gradient", self.size[i])
            if first_state[i] is not None:
                self.first[i] = float_pointer(first_state[i], "state", self.size[i])
            if second_state is not None and second_state[i] is not None:
                self.second[i] = float_pointer(second_state[i], "state", self.size[i])
            if third_state is not None and third_state[i] is not None:
                self.third[i] = float_pointer(third_state[i], "state", self.size[i])
        cdef int64_t[::1] step_view
        if steps is not None:
            if not isinstance(steps, np.ndarray) or steps.dtype != np.int64 \
                    or steps.shape != (self.count,) or not steps.flags.c_contiguous:
                raise TypeError("optimizer: steps must be a contiguous int64 array, one per parameter")
            if self.count:
                step_view = steps
                self.steps = &step_view[0]

    def __dealloc__(self):
        free(self.param)
        free(<void *>self.grad)
        free(self.first)
        free(self.second)
        free(self.third)
        free(self.size)
        free(self.row_count)
        free(self.subset)
        free(self.step_size)
        free(self.bias_correction2_sqrt)

    cdef int use_rows(self, list rows) except -1:
        return fill_row_subsets(self.subset, self.row_count, self.count, self.rows_alive, rows)

    def sgd(self, float lr, float momentum, float weight_decay, bint nesterov, list rows=None):
        """One SGD step for every parameter (momentum buffers start at zero,
        which reproduces PyTorch's first step exactly: 0 * momentum + d = d);
        ``rows`` as ``use_rows``."""
        cdef pynn_context ctx = current_context()
        cdef Py_ssize_t i
        self.use_rows(rows)
        for i in range(self.count):
            if momentum != 0.0 and self.first[i] == NULL:
                raise ValueError("optimizer: SGD with momentum needs a buffer per parameter")
        with nogil:
            pynn_sgd_step(&ctx, self.count, self.size, self.subset, self.param, self.grad,
                          self.first, lr, momentum, weight_decay, nesterov)

    def adam(self, double lr, double beta1, double beta2, double eps, double weight_decay,
             bint decoupled, list rows=None):
        """One Adam(W) step for every parameter, counting it in ``steps`` (a
        row-sparse one too). The bias corrections are computed in double
        precision, as torch.optim does; ``rows`` as ``use_rows``."""
        cdef Py_ssize_t i
        if self.count and (self.steps == NULL or self.second[0] == NULL or self.first[0] == NULL):
            raise ValueError("optimizer: Adam needs two state arrays and a step count per parameter")
        self.use_rows(rows)
        cdef pynn_context ctx = current_context()
        cdef float decay = <float>(1.0 - lr * weight_decay) if decoupled else 1.0
        cdef float grad_weight_decay = 0.0 if decoupled else <float>weight_decay
        cdef double step
        with nogil:
            for i in range(self.count):
                self.steps[i] += 1
                step = <double>self.steps[i]
                self.step_size[i] = <float>(lr / (1.0 - pow(beta1, step)))
                self.bias_correction2_sqrt[i] = <float>sqrt(1.0 - pow(beta2, step))
            pynn_adam_step(&ctx, self.count, self.size, self.subset, self.param, self.grad,
                           self.first, self.second, self.step_size, self.bias_correction2_sqrt, decay,
                           grad_weight_decay, <float>beta1, <float>beta2, <float>eps)

    def rmsprop(self, double lr, double alpha, double eps, double weight_decay, double momentum,
                bint centered, list rows=None):
        """One RMSprop step for every parameter: square averages in the first
        state slot, momentum buffers in the second (momentum != 0), centred
        gradient averages in the third (centered); counts it in ``steps``.
        ``1 - alpha`` is rounded from double, as torch.optim passes it."""
        cdef Py_ssize_t i
        cdef pynn_rmsprop_options options
        if self.steps == NULL and self.count:
            raise ValueError("optimizer: RMSprop needs a step count per parameter")
        for i in range(self.count):
            if self.first[i] == NULL or (momentum != 0.0 and self.second[i] == NULL) \
                    or (centered and self.third[i] == NULL):
                raise ValueError("optimizer: RMSprop needs a square average per parameter, and "
                                 "momentum buffers and gradient averages when it uses them")
        self.use_rows(rows)
        options.lr, options.alpha, options.one_minus_alpha = <float>lr, <float>alpha, <float>(1.0 - alpha)
        options.eps, options.weight_decay, options.momentum = <float>eps, <float>weight_decay, <float>momentum
        options.centered = centered
        cdef pynn_context ctx = current_context()
        with nogil:
            for i in range(self.count):
                self.steps[i] += 1
            pynn_rmsprop_step(&ctx, self.count, self.size, self.subset, self.param, self.grad,
                              self.first, self.second, self.third, &options)

    def adagrad(self, double lr, double lr_decay, double weight_decay, double eps, list rows=None):
        """One Adagrad step for every parameter (sums in the first state slot),
        counting it in ``steps``; each parameter's rate ``lr / (1 + (t - 1)
        lr_decay)`` is computed in double precision, as torch.optim does."""
        cdef Py_ssize_t i
        if self.count and (self.steps == NULL or self.first[0] == NULL):
            raise ValueError("optimizer: Adagrad needs a sum and a step count per parameter")
        self.use_rows(rows)
        cdef pynn_context ctx = current_context()
        with nogil:
            for i in range(self.count):
                self.steps[i] += 1
                self.step_size[i] = <float>(lr / (1.0 + <double>(self.steps[i] - 1) * lr_decay))
            pynn_adagrad_step(&ctx, self.count, self.size, self.subset, self.param, self.grad,
                              self.first, self.step_size, <float>weight_decay, <float>eps)


cdef class GradientTable:
    """Raw pointers to a model's gradients, for their joint norm and scaling
    (csrc/optim.c); keeps references to the arrays so the pointers stay valid.
    The partial sums' buffer grows when a step needs more and is reused."""
    cdef readonly Py_ssize_t count
    cdef list keep_alive
    cdef float **grad
    cdef Py_ssize_t *size
    cdef Py_ssize_t *row_count
    cdef pynn_row_subset *subset
    cdef list rows_alive
    cdef double *partials
    cdef Py_ssize_t partials_size

    def __cinit__(self, list grads):
        self.count = len(grads)
        self.keep_alive = list(grads)
        n = max(self.count, 1)
        self.grad = <float **>calloc(n, sizeof(float *))
        self.size = <Py_ssize_t *>calloc(n, sizeof(Py_ssize_t))
        self.row_count = <Py_ssize_t *>calloc(n, sizeof(Py_ssize_t))
        self.subset = <pynn_row_subset *>calloc(n, sizeof(pynn_row_subset))
        self.rows_alive = [None] * self.count
        if not (self.grad and self.size and self.row_count and self.subset):
            raise MemoryError()
        cdef Py_ssize_t i
        for i in range(self.count):
            self.size[i] = grads[i].size
            if grads[i].ndim and grads[i].shape[0]:
                self.row_count[i] = grads[i].shape[0]
                self.subset[i].row_size = self.size[i] // self.row_count[i]
            self.grad[i] = float_pointer(grads[i], "gradient", self.size[i])

    def __dealloc__(self):
        free(self.grad)
        free(self.size)
        free(self.row_count)
        free(self.subset)
        free(self.partials)

    def norm(self, double norm_type, list rows=None):
        """The ``norm_type``-norm (> 0, or inf) of every gradient together;
        ``rows`` as ParameterTable.use_rows (only those rows may be non-zero)."""
        if not (norm_type > 0.0):
            raise ValueError(f"gradient norm: norm_type must be > 0, got {norm_type}")
        fill_row_subsets(self.subset, self.row_count, self.count, self.rows_alive, rows)
        cdef Py_ssize_t chunks = pynn_grad_norm_chunks(self.count, self.size, self.subset)
        cdef double *grown
        if chunks > self.partials_size:
            grown = <double *>realloc(self.partials, chunks * sizeof(double))
            if grown == NULL:
                raise MemoryError()
            self.partials, self.partials_size = grown, chunks
        cdef pynn_context ctx = current_context()
        cdef double total
        with nogil:
            total = pynn_grad_norm(&ctx, self.count, self.size, self.subset,
                                   <const float **>self.grad, norm_type, self.partials)
        return total

    def scale(self, float factor, list rows=None):
        """Every gradient times ``factor`` (in ``rows`` only where given)."""
        fill_row_subsets(self.subset, self.row_count, self.count, self.rows_alive, rows)
        cdef pynn_context ctx = current_context()
        with nogil:
            pynn_grad_scale(&ctx, self.count, self.size, self.subset, self.grad, factor)
