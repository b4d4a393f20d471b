"""Fused optimizer steps over many parameters at once (csrc/optim.c).

A ParameterTable holds raw pointers to every parameter, its gradient and its
optimizer state, so one call updates them all without touching Python objects
per tensor; it keeps references to the arrays so the pointers stay valid."""
from libc.math cimport pow, sqrt
from libc.stdlib cimport calloc, free

import numpy as np

from pynn._kernels.runtime cimport current_context, pynn_context

cdef extern from "optim.h" nogil:
    void pynn_sgd_step(const pynn_context *ctx, Py_ssize_t n, float *param, const float *grad,
                       float *momentum_buffer, float lr, float momentum, float weight_decay,
                       int nesterov, int first_step)
    void pynn_adam_step(const pynn_context *ctx, Py_ssize_t n, float *param, const float *grad,
                        float *exp_avg, float *exp_avg_sq, float decay, float grad_weight_decay,
                        float beta1, float beta2, float eps,
                        float step_size, float bias_correction2_sqrt)


cdef float *float_pointer(object array, str role, Py_ssize_t size) except NULL:
    if not isinstance(array, np.ndarray) or array.dtype != np.float32 \
            or not array.flags.c_contiguous or not array.flags.writeable:
        raise TypeError(f"optimizer: {role} must be a writable C-contiguous float32 array")
    if array.size != size:
        raise ValueError(f"optimizer: {role} has {array.size} elements, the parameter {size}")
    cdef float[::1] view = array.reshape(-1)
    if size == 0:
        return <float *>1  # never dereferenced: the kernels loop zero times
    return &view[0]


cdef class ParameterTable:
    """Parameters, gradients and up to two state arrays per parameter."""
    cdef readonly Py_ssize_t count
    cdef list keep_alive
    cdef float **param
    cdef float **grad
    cdef float **first
    cdef float **second
    cdef Py_ssize_t *size

    def __cinit__(self, list params, list grads, list first_state, list second_state=None):
        self.count = len(params)
        if len(grads) != self.count or len(first_state) != self.count or \
                (second_state is not None and len(second_state) != self.count):
            raise ValueError("optimizer: parameter, gradient and state lists differ in length")
        self.keep_alive = [params, grads, first_state, second_state]
        n = max(self.count, 1)
        self.param = <float **>calloc(n, sizeof(float *))
        self.grad = <float **>calloc(n, sizeof(float *))
        self.first = <float **>calloc(n, sizeof(float *))
        self.second = <float **>calloc(n, sizeof(float *))
        self.size = <Py_ssize_t *>calloc(n, sizeof(Py_ssize_t))
        if not (self.param and self.grad and self.first and self.second and self.size):
            raise MemoryError()
        cdef Py_ssize_t i
        for i in range(self.count):
            self.size[i] = params[i].size
            self.param[i] = float_pointer(params[i], "parameter", self.size[i])
            self.grad[i] = float_pointer(grads[i], "gradient", self.size[i])
            # SGD without momentum has no state: its slot stays NULL, never read
            if first_state[i] is not None:
                self.first[i] = float_pointer(first_state[i], "state", self.size[i])
            if second_state is not None:
                self.second[i] = float_pointer(second_state[i], "state", self.size[i])

    def __dealloc__(self):
        free(self.param)
        free(self.grad)
        free(self.first)
        free(self.second)
        free(self.size)

    def sgd(self, float lr, float momentum, float weight_decay, bint nesterov, list first_step):
        """One SGD step for every parameter; ``first_step[i]`` starts its momentum buffer."""
        cdef pynn_context ctx = current_context()
        cdef Py_ssize_t i
        cdef char *starting = <char *>calloc(max(self.count, 1), 1)
        if not starting:
            raise MemoryError()
        for i in range(self.count):
            starting[i] = bool(first_step[i])
        with nogil:
            for i in range(self.count):
                pynn_sgd_step(&ctx, self.size[i], self.param[i], self.grad[i], self.first[i],
                              lr, momentum, weight_decay, nesterov, starting[i])
        free(starting)

    def adam(self, double lr, double beta1, double beta2, double eps, double weight_decay,
             bint decoupled, list steps):
        """One Adam(W) step for every parameter; ``steps[i]`` is its step count after this one.
        The bias corrections are computed in double precision, as torch.optim does."""
        if self.second[0] == NULL and self.count:
            raise ValueError("optimizer: Adam needs two state arrays per parameter")
        cdef pynn_context ctx = current_context()
        cdef Py_ssize_t i
        cdef float decay = <float>(1.0 - lr * weight_decay) if decoupled else 1.0
        cdef float grad_weight_decay = 0.0 if decoupled else <float>weight_decay
        cdef double *step_size = <double *>calloc(max(self.count, 1), sizeof(double))
        cdef double *bias_correction2_sqrt = <double *>calloc(max(self.count, 1), sizeof(double))
        if not (step_size and bias_correction2_sqrt):
            free(step_size)
            free(bias_correction2_sqrt)
            raise MemoryError()
        for i in range(self.count):
            step_size[i] = lr / (1.0 - pow(beta1, <double>steps[i]))
            bias_correction2_sqrt[i] = sqrt(1.0 - pow(beta2, <double>steps[i]))
        with nogil:
            for i in range(self.count):
                pynn_adam_step(&ctx, self.size[i], self.param[i], self.grad[i], self.first[i],
                               self.second[i], decay, grad_weight_decay, <float>beta1,
                               <float>beta2, <float>eps, <float>step_size[i],
                               <float>bias_correction2_sqrt[i])
        free(step_size)
        free(bias_correction2_sqrt)
