# Inference plans: a model's layers for one input shape, run as one loop.
#
# pynn.Sequential builds a plan per thread and input shape and keeps it. Layers
# whose ``kernel_step`` names a C kernel (Linear's GEMM, the element-wise
# activations, softmax) become C steps, and consecutive C steps run in one call
# without the GIL; views (Flatten, Dropout at inference) become nothing; every
# other layer is a Python step that calls its ``infer``. Intermediates land in
# buffers the plan owns, so threads never share one.
#
# A C step holds raw pointers into its layer's arrays. The plan therefore
# remembers every object it read (its ``watched`` entries: a dict, a key, the
# object found), and ``current()`` turns false as soon as one is replaced:
# a new weight array, another activation wiring. The model then builds a fresh
# plan, so a plan never reads an array the layer no longer holds.
from cpython.object cimport PyObject
from libc.stdlib cimport calloc, free

import math

import numpy as np

from pynn._checks import aligned_empty


cdef extern from "Python.h":
    # PyDict_GetItem on borrowed pointers: no reference counting in current()
    PyObject *dict_get_borrowed "PyDict_GetItem"(PyObject *mapping, PyObject *key)

cdef extern from "plan.h" nogil:
    ctypedef enum pynn_step_kind:
        PYNN_STEP_GEMM
        PYNN_STEP_MAP
        PYNN_STEP_SOFTMAX
    ctypedef struct pynn_plan_step:
        pynn_step_kind kind
        Py_ssize_t m, n, k
        const float *weight
        pynn_epilogue epilogue
        map_kernel map
        float parameter
    void pynn_plan_run(const pynn_context *ctx, const pynn_plan_step *steps, Py_ssize_t count,
                       const float *x, float **outputs)



cdef bint is_float32_buffer(object x, Py_ssize_t size):
    """x is an aligned, C-contiguous float32 array of ``size`` elements."""
    if not cnp.PyArray_Check(x):
        return False
    cdef cnp.ndarray array = <cnp.ndarray>x
    return (cnp.PyArray_TYPE(array) == cnp.NPY_FLOAT32 and cnp.PyArray_IS_C_CONTIGUOUS(array)
            and cnp.PyArray_ISALIGNED(array) and cnp.PyArray_SIZE(array) == size)


cdef const float *gemm_operand(object array, tuple shape) except? NULL:
    """The data of ``array`` if a GEMM step can read it in place, else NULL."""
    if not is_float32_buffer(array, math.prod(shape)) or array.shape != shape:
        return NULL
    return <const float *>cnp.PyArray_DATA(<cnp.ndarray>array)


cdef class InferencePlan:
    cdef pynn_plan_step *steps     # the kernel steps' descriptions (Python steps' unused)
    cdef float **outputs           # where each step writes; the last is the caller's out
    cdef Py_ssize_t count
    cdef list layers               # per step: the layer of a Python step, None for a kernel step
    cdef list input_shapes         # per Python step: the shape its layer reads, if its source differs
    cdef list targets              # per step but the last: its output buffer
    cdef list watched              # (dict, key, object found or None) triples
    cdef PyObject **watch_table    # the same triples' objects, flat, for current()
    cdef Py_ssize_t watch_count
    cdef int output_ndim
    cdef cnp.npy_intp output_dims[64]  # output_shape (numpy allows at most 64 axes)
    cdef Py_ssize_t input_size, output_size
    cdef readonly tuple input_shape, output_shape

    def __cinit__(self):
        self.steps = NULL
        self.outputs = NULL
        self.watch_table = NULL

    def __dealloc__(self):
        free(self.steps)
        free(self.outputs)
        free(self.watch_table)

    def __init__(self, layers, wired, tuple input_shape, tuple chain):
        """``layers`` are the model's steps, ``chain`` their output shapes for
        ``input_shape``, ``wired`` the layers whose ``activation`` the model sets."""
        self.input_shape, self.output_shape = input_shape, chain[len(chain) - 1]
        self.input_size, self.output_size = math.prod(input_shape), math.prod(self.output_shape)
        self.watched = []
        self.watch_count = 0
        for layer in wired:
            self.watch(vars(layer), "activation")
        self.layers, self.input_shapes, shapes, kernels = [], [], [], []
        shape = input_shape
        for layer, output_shape in zip(layers, chain):
            described = layer.kernel_step(shape)
            if described is not None and described[0] == "view":
                shape = output_shape
                continue
            self.layers.append(layer)
            self.input_shapes.append(shape)
            shapes.append(output_shape)
            kernels.append(described)
            shape = output_shape
        self.count = len(self.layers)
        free(self.steps)  # __init__ may run twice
        free(self.outputs)
        free(self.watch_table)
        self.watch_table = NULL
        self.steps = <pynn_plan_step *>calloc(max(self.count, 1), sizeof(pynn_plan_step))
        self.outputs = <float **>calloc(max(self.count, 1), sizeof(float *))
        if self.steps == NULL or self.outputs == NULL:
            raise MemoryError()
        self.targets = [aligned_empty(shape) for shape in shapes[:len(shapes) - 1]]
        for index in range(self.count):
            if self.describe(index, kernels[index]):
                self.layers[index] = None
            if index < self.count - 1:
                self.outputs[index] = <float *>cnp.PyArray_DATA(<cnp.ndarray>self.targets[index])
        for index in range(self.count):
            # a Python step reads an array of its layer's input shape
            source_shape = input_shape if index == 0 else shapes[index - 1]
            if self.layers[index] is None or source_shape == self.input_shapes[index]:
                self.input_shapes[index] = None
        self.output_ndim = len(self.output_shape)
        for axis, extent in enumerate(self.output_shape):
            self.output_dims[axis] = extent
        # current() reads the triples as borrowed pointers: self.watched holds them
        self.watch_table = <PyObject **>calloc(max(3 * len(self.watched), 1), sizeof(PyObject *))
        if self.watch_table == NULL:
            raise MemoryError()
        for index, entry in enumerate(self.watched):
            for part in range(3):
                self.watch_table[3 * index + part] = <PyObject *>entry[part]
        self.watch_count = len(self.watched)

    cdef watch(self, dict mapping, str key):
        self.watched.append((mapping, key, mapping.get(key)))

    cdef bint describe(self, Py_ssize_t index, described) except -1:
        """Fill steps[index] from the layer's kernel_step; False keeps it a
        Python step (no kernel step, or arrays the kernel cannot read in place)."""
        cdef pynn_plan_step *s = &self.steps[index]
        cdef const float *bias
        if described is None:
            return False
        kind, arguments, watched = described
        shape = self.input_shapes[index]
        if kind == "gemm":
            weight, bias_array, relu = arguments
            if not shape:
                return False
            s.k = shape[len(shape) - 1]
            s.m = math.prod(shape[:len(shape) - 1])
            s.n = weight.shape[0] if isinstance(weight, np.ndarray) and weight.ndim == 2 else 0
            s.weight = gemm_operand(weight, (s.n, s.k))
            bias = gemm_operand(bias_array, (s.n,)) if bias_array is not None else NULL
            if s.weight == NULL or (bias_array is not None and bias == NULL):
                return False
            s.epilogue.col_bias = bias
            s.epilogue.row_bias = NULL
            s.epilogue.activation = PYNN_ACTIVATION_RELU if relu else PYNN_ACTIVATION_NONE
            s.kind = PYNN_STEP_GEMM
        elif kind == "map":
            name, parameter = arguments
            s.map = map_kernel_named(name)
            s.n = math.prod(shape)
            s.parameter = parameter
            s.kind = PYNN_STEP_MAP
        elif kind == "softmax":
            s.m, s.n, s.k = arguments
            s.kind = PYNN_STEP_SOFTMAX
        else:
            raise ValueError(f"{type(self.layers[index]).__name__}.kernel_step: unknown kind {kind!r}")
        for mapping, key in watched:
            self.watch(mapping, key)
        return True

    @property
    def buffers(self):
        """The intermediate arrays this plan writes."""
        return list(self.targets)

    cpdef bint current(self):
        """Every object the plan read is still the one its layer holds."""
        cdef PyObject **entry
        cdef PyObject *found
        cdef Py_ssize_t index
        for index in range(self.watch_count):
            entry = self.watch_table + 3 * index
            found = dict_get_borrowed(entry[0], entry[1])
            if found != entry[2] and not (found == NULL and entry[2] == <PyObject *>None):
                return False
        return True

    cpdef run(self, x, out):
        """Write the model's output for ``x`` (of the planned shape) into ``out``."""
        if not is_float32_buffer(out, self.output_size):
            raise TypeError(f"InferencePlan.run: out must be a C-contiguous float32 array of "
                            f"{self.output_size} elements")
        if self.count == 0:
            np.copyto(out, np.reshape(x, out.shape))
            return out
        if self.layers[0] is None and not is_float32_buffer(x, self.input_size):
            raise TypeError(f"InferencePlan.run: x must be a C-contiguous float32 array of "
                            f"{self.input_size} elements")
        cdef pynn_context ctx = current_context()
        cdef Py_ssize_t index = 0, stop
        cdef const float *data
        self.outputs[self.count - 1] = <float *>cnp.PyArray_DATA(<cnp.ndarray>out)
        source = x
        while index < self.count:
            if self.layers[index] is not None:
                target = self.targets[index] if index < self.count - 1 else out
                if index == self.count - 1 and out.shape != self.output_shape:
                    target = out.reshape(self.output_shape)
                shape = self.input_shapes[index]
                result = self.layers[index].infer(source if shape is None else source.reshape(shape),
                                                  target)
                if result is not target:
                    np.copyto(target, result)
                source = target
                index += 1
                continue
            stop = index + 1
            while stop < self.count and self.layers[stop] is None:
                stop += 1
            data = <const float *>cnp.PyArray_DATA(<cnp.ndarray>source)
            with nogil:
                pynn_plan_run(&ctx, self.steps + index, stop - index, data, self.outputs + index)
            source = self.targets[stop - 1] if stop < self.count else out
            index = stop
        return out


def predict_cached(scratch, x):
    """A new array holding the model's output for ``x``, when ``x`` is an
    aligned, C-contiguous float32 array and this thread's ``scratch`` holds
    a current plan for its shape; None otherwise (the caller validates ``x``
    and builds the plan). This is batch-1 inference's whole Python cost."""
    if not (cnp.PyArray_Check(x) and is_float32_buffer(x, cnp.PyArray_SIZE(<cnp.ndarray>x))):
        return None
    plans = getattr(scratch, "plans", None)
    if plans is None:
        return None
    found = (<dict>plans).get(x.shape)
    if found is None:
        return None
    cdef InferencePlan plan = <InferencePlan>found
    if not plan.current():
        return None
    return plan.run(x, cnp.PyArray_EMPTY(plan.output_ndim, plan.output_dims, cnp.NPY_FLOAT32, 0))
