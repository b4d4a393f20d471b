"""The layer contract every layer follows.

A layer has three paths:
- ``infer(x, out)``: inference on an already validated float32 array. It reads
  only parameters and buffers and writes only ``out`` (or returns a view of
  ``x``), so several threads may run it on one layer at once. It does no
  validation: ``Sequential.predict`` validates once, then runs the layers with
  per-thread buffers. ``kernel_step(input_shape)`` may describe the same work
  as one C kernel call, which the model's inference plan then makes without
  calling back into Python (pynn/_kernels/plan.pxi).
- ``forward(x, training=False)``: the checked entry point, written once here
  (the forward template): ``check_input`` validates ``x``; at inference
  ``infer`` writes a fresh array; in training ``_forward_training`` writes the
  layer's own ``"y"`` buffer, reused while the batch shape is unchanged (steady
  state allocates nothing), and keeps what ``backward`` needs (by default the
  input ``_x`` and the output ``_y``).
- ``backward(dy, input_grad=True)``: overwrites ``grads`` (unless frozen) and
  returns dL/dx; with ``input_grad=False`` (the first layer of a model) the
  input gradient is not computed and None is returned. It reads what forward
  kept through ``_kept`` and checks ``dy`` with ``_checked_dy``, so every layer
  refuses a backward before a training forward, and a mis-shaped ``dy``, with
  the same words.

Row-sparse gradients: ``touched_rows(key)`` may return the rows (int64) of
``grads[key]`` that the last ``backward`` wrote, every other row being zero;
optimizers then update only those rows. Code that writes into ``grads`` in
place (a gradient sum over ranks) calls ``forget_touched_rows()`` after.

Merge layers (``takes_list = True``) take a list of arrays: ``output_shape``
takes a list of shapes, ``forward``/``infer`` a list of arrays, and
``backward`` returns a list of input gradients.

Every layer takes ``name=`` (dotted names allowed, as PyTorch's attribute
paths); ``pynn.Model`` names the unnamed ones and keys its state dict by
name. Calling a layer on a symbolic tensor (``pynn.Input``) records the call
instead of computing (pynn/layers/symbolic.py).
"""
import copy

import numpy as np

from pynn._checks import aligned_empty, as_float32
from pynn.layers import symbolic

# Layer type name -> class, filled as layer classes are defined; the model file
# rebuilds architectures from these names, so nothing in a file can name code.
LAYER_TYPES = {}


def checked_name(name, where):
    """``name`` if it is None or a layer name: non-empty dot-separated parts
    without whitespace."""
    if name is None:
        return None
    if not isinstance(name, str):
        raise TypeError(f"{where}: name must be a string or None, got {type(name).__name__} {name!r:.40}")
    if not name or any(not part or any(c.isspace() for c in part) for part in name.split(".")):
        raise ValueError(f"{where}: name must be non-empty dot-separated parts without spaces, "
                         f"got {name!r:.60}")
    return name


class Layer:
    takes_list = False  # merge layers take a list of tensors

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):  # private bases are not layers of a model
            LAYER_TYPES[cls.__name__] = cls

    def __init__(self, name=None):
        self.name = checked_name(name, type(self).__name__)
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

    def input_dtypes(self, count):
        """The dtype of each of ``count`` inputs, as symbolic tensors name them."""
        return ["float32"] * count

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
        x = self.check_input(x)
        shape = self.output_shape([item.shape for item in x] if self.takes_list else x.shape)
        if not training:
            return self.infer(x, np.empty(shape, dtype=np.float32))
        return self._forward_training(x, self.workspace("y", shape))

    def _forward_training(self, x, out):
        """The training forward of a validated ``x`` into ``out`` (the layer's
        reused output buffer); keeps what ``backward`` needs. By default that is
        the input and the output, as ``_x`` and ``_y``."""
        self._x = x
        self._y = self.infer(x, out)
        return self._y

    def backward(self, dy, input_grad=True):
        raise NotImplementedError

    def touched_rows(self, key):
        """The only rows of ``grads[key]`` that may be non-zero, or None: all."""
        return None

    def forget_touched_rows(self):
        """``grads`` were written outside ``backward``: report every row as touched
        until the next ``backward`` has rewritten them all."""

    def config(self):
        """Constructor arguments, JSON-serialisable, to rebuild this layer."""
        return {}

    # -- shared machinery ---------------------------------------------------
    def __call__(self, x, training=False):
        """``forward``; on a symbolic tensor, the symbolic output of this call."""
        if symbolic.is_symbolic(x):
            return symbolic.call(self, x)
        return self.forward(x, training=training)

    def _kept(self, name):
        """What the last ``forward(x, training=True)`` kept in attribute ``name``."""
        value = getattr(self, name, None)
        if value is None:
            raise RuntimeError(f"{type(self).__name__}.backward: call forward(x, training=True) first")
        return value

    def _checked_dy(self, dy, shape):
        """``dy`` as float32, which must have the forward output's ``shape``."""
        where = f"{type(self).__name__}.backward"
        dy = as_float32(dy, where, "dy")
        if dy.shape != shape:
            raise ValueError(f"{where}: dy must have the forward output's shape {shape}, "
                             f"got {dy.shape}")
        return dy

    def _twin(self):
        """A copy for a further call of this layer in a graph (pynn/model.py):
        the same ``params`` and ``buffers`` dicts, its own ``grads`` and kept
        state. Returns ``(twin, [(self, twin)])``, as containers do."""
        twin = copy.copy(self)
        twin.grads = {key: np.zeros_like(value) for key, value in self.grads.items()}
        twin._workspace = {}
        return twin, [(self, twin)]

    def workspace(self, name, shape, dtype=np.float32):
        """A layer-owned array reused while ``shape`` is unchanged (training path only)."""
        array = self._workspace.get(name)
        if array is None or array.shape != shape or array.dtype != dtype:
            array = aligned_empty(shape, dtype)
            self._workspace[name] = array
        return array

    def __repr__(self):
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.config().items())
        if self.name is not None:
            arguments += f"{', ' if arguments else ''}name={self.name!r}"
        return f"{type(self).__name__}({arguments})"
