"""The layer contract every layer follows.

A layer has three paths:
- ``infer(x, out)``: inference on an already validated float32 array. It reads
  only parameters and buffers and writes only ``out`` (or returns a view of
  ``x``), so several threads may run it on one layer at once. It does no
  validation: ``Sequential.predict`` validates once, then runs the layers with
  per-thread buffers. ``kernel_step(input_shape)`` may describe the same work
  as one C kernel call, which the model's inference plan then makes without
  calling back into Python (pynn/_kernels/plan.pxi).
- ``forward(x, training=False)``: the checked entry point. In training mode it
  saves what ``backward`` needs and writes into buffers the layer owns and
  reuses while the batch shape is unchanged (steady state allocates nothing).
- ``backward(dy, input_grad=True)``: overwrites ``grads`` (unless frozen) and
  returns dL/dx; with ``input_grad=False`` (the first layer of a model) the
  input gradient is not computed and None is returned.
"""
import numpy as np

from pynn._checks import aligned_empty

# Layer type name -> class, filled as layer classes are defined; the model file
# rebuilds architectures from these names, so nothing in a file can name code.
LAYER_TYPES = {}


class Layer:
    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):  # private bases are not layers of a model
            LAYER_TYPES[cls.__name__] = cls

    def __init__(self):
        self.params = {}
        self.grads = {}
        self.buffers = {}
        self.trainable = True
        self._workspace = {}

    # -- the contract -------------------------------------------------------
    def output_shape(self, input_shape):
        """Shape of the output for an input of ``input_shape``; raises ValueError
        naming the layer when the input shape is not acceptable."""
        raise NotImplementedError

    def check_input(self, x):
        """Validate and convert a user-supplied input (one copy at most)."""
        raise NotImplementedError

    def infer(self, x, out):
        raise NotImplementedError

    def kernel_step(self, input_shape):
        """``infer`` as ``(kind, arguments, watched)`` for an inference plan, or
        None to have the plan call ``infer``. Kinds: ``("view", (), ())`` (the
        output is the input, reshaped), ``("gemm", (weight, bias, relu), ...)``,
        ``("map", (kernel name, parameter), ...)`` and ``("softmax", (outer,
        length, inner), ...)``. ``watched`` lists the ``(dict, key)`` entries
        read here: replacing one makes the plan rebuild."""
        return None

    def forward(self, x, training=False):
        raise NotImplementedError

    def backward(self, dy, input_grad=True):
        raise NotImplementedError

    def config(self):
        """Constructor arguments, JSON-serialisable, to rebuild this layer."""
        return {}

    # -- shared machinery ---------------------------------------------------
    def __call__(self, x, training=False):
        return self.forward(x, training=training)

    def workspace(self, name, shape, dtype=np.float32):
        """A layer-owned array reused while ``shape`` is unchanged (training path only)."""
        array = self._workspace.get(name)
        if array is None or array.shape != shape or array.dtype != dtype:
            array = aligned_empty(shape, dtype)
            self._workspace[name] = array
        return array

    def __repr__(self):
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.config().items())
        return f"{type(self).__name__}({arguments})"
