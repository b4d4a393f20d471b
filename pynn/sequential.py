"""``Sequential``: layers applied in order, with PyTorch's state-dict keys.

Inference (``predict``) validates the input once, then runs an inference
plan private to the calling thread and input shape (pynn/_kernels/plan.pxi):
the layers' kernels back to back into buffers the plan owns, so several
threads may predict with one model at once, and a repeated call goes from
``predict`` to the kernels without any Python in between. Training goes through ``forward(training=True)``
and ``backward``, whose buffers the layers own and reuse."""
import collections
import threading

import numpy as np

from pynn import _hooks, schedule
from pynn._checks import as_count
from pynn._kernels import core as kernels
from pynn.layers import BatchNorm1d, BatchNorm2d, Conv1d, Conv2d, Linear, ReLU
from pynn.layers import symbolic
from pynn.layers.base import Layer, checked_name

# Input shapes whose shape chains and inference plans are kept; beyond this
# (a caller cycling through many batch sizes) they are dropped and rebuilt.
_SHAPES_REMEMBERED = 8

LoadResult = collections.namedtuple("LoadResult", ["missing_keys", "unexpected_keys"])


def load_state_dict(model, state_dict, strict, where):
    """``model.load_state_dict`` for any model with a ``state_dict()`` of live arrays."""
    if not isinstance(state_dict, collections.abc.Mapping):
        raise TypeError(f"{where}: state_dict must be a mapping of names to arrays, "
                        f"got {type(state_dict).__name__}")
    live = model.state_dict()
    missing = [key for key in live if key not in state_dict]
    unexpected = [key for key in state_dict if key not in live]
    values, misshaped = {}, []
    for key, target in live.items():
        if key not in state_dict:
            continue
        value = np.asarray(state_dict[key])
        if value.shape != target.shape:
            misshaped.append(f"{key} (expected {target.shape}, got {value.shape})")
            continue
        if target.dtype.kind == "f" and value.dtype.kind != "f":
            raise TypeError(f"{where}: {key} must hold floating-point values, got dtype {value.dtype}")
        if target.dtype.kind in "iu" and value.dtype.kind not in "iu":
            raise TypeError(f"{where}: {key} must hold integers, got dtype {value.dtype}")
        values[key] = value
    if misshaped or (strict and (missing or unexpected)):
        problems = []
        for label, keys in (("missing", missing), ("unexpected", unexpected),
                            ("mis-shaped", misshaped)):
            if keys and (strict or label == "mis-shaped"):
                problems.append(f"{label} keys: {', '.join(keys)}")
        raise ValueError(f"{where}: the state does not match the model; " + "; ".join(problems))
    for key, value in values.items():
        np.copyto(live[key], value, casting="unsafe")
    return LoadResult(missing, unexpected)


# layers that can apply a following ReLU: in their GEMM epilogue, or in
# batch norm's own passes (forward and backward)
RELU_FUSING_LAYERS = (Linear, Conv1d, Conv2d, BatchNorm1d, BatchNorm2d)


def _fusion_plan(layers):
    """The layers to run, and the activation each Linear, convolution or batch
    norm must carry.

    A ReLU right after a Linear, Conv1d, Conv2d or batch norm runs inside that
    layer (one pass over the output instead of two): it stays in
    ``layers`` (indices and state-dict keys are PyTorch's) but is not run.
    ``activation`` is the model's wiring, so a layer shared with another
    model is rewired before each use (``_wire``)."""
    steps, wiring = [], []
    for index, layer in enumerate(layers):
        if type(layer) in RELU_FUSING_LAYERS:
            fused = index + 1 < len(layers) and type(layers[index + 1]) is ReLU
            wiring.append((layer, "relu" if fused else None))
        if type(layer) is ReLU and index and type(layers[index - 1]) in RELU_FUSING_LAYERS:
            continue
        steps.append(layer)
    return tuple(steps), tuple(wiring)


class Sequential:
    takes_list = False
    output_count = 1

    def __init__(self, *layers, name=None):
        for index, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: argument {index} must be a pynn layer, "
                                f"got {type(layer).__name__}")
        self.name = checked_name(name, "Sequential")
        self.layers = tuple(layers)
        self._steps, self._wiring = _fusion_plan(self.layers)
        self._wire()
        self._scratch = threading.local()
        self._shape_chains = {}
        self._input_shape = None

    # -- container -------------------------------------------------------------
    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Sequential(*self.layers[index])
        return self.layers[index]

    def __repr__(self):
        inner = "".join(f"\n  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        named = f"name={self.name!r}" if self.name else ""
        return f"Sequential({inner}\n{named})" if inner else f"Sequential({named})"

    def _wire(self):
        for linear, activation in self._wiring:
            if linear.activation != activation:
                linear.activation = activation

    # -- training path ---------------------------------------------------------
    def forward(self, x, training=False):
        self._wire()
        for layer in self._steps:
            x = layer.forward(x, training=training)
        return x

    def __call__(self, x, training=False):
        """``forward``; on a symbolic tensor, the symbolic output of this call."""
        if symbolic.is_symbolic(x):
            if not self.layers:
                raise ValueError("Sequential: the model has no layers")
            return symbolic.call(self, x)
        return self.forward(x, training=training)

    def check_input(self, x):
        """``x`` validated and converted as the first layer takes it."""
        if not self.layers:
            raise ValueError("Sequential: the model has no layers")
        return self.layers[0].check_input(x)

    def input_dtypes(self, count):
        return self.layers[0].input_dtypes(count)

    def _first_step_needing_gradients(self):
        """Steps before it neither hold trainable parameters nor need dL/dx."""
        for index, layer in enumerate(self._steps):
            if layer.trainable and layer.params:
                return index
        return len(self._steps)

    def backward(self, dy, input_grad=True):
        """Back-propagate dL/dy of the last ``forward(x, training=True)``, writing
        every trainable layer's ``grads``, and return dL/dx. The training loop
        passes ``input_grad=False``: then None is returned, leading frozen or
        parameter-free layers are skipped and the first trainable one computes
        no input gradient."""
        stop = 0 if input_grad else self._first_step_needing_gradients()
        for index in range(len(self._steps) - 1, stop - 1, -1):
            dy = self._steps[index].backward(dy, input_grad=input_grad or index > stop)
        return dy if input_grad else None

    # -- inference path --------------------------------------------------------
    def _shape_chain(self, input_shape):
        """Every layer's output shape for ``input_shape`` (validates the whole chain)."""
        chain = self._shape_chains.get(input_shape)
        if chain is None:
            shapes, shape = [], input_shape
            for layer in self._steps:
                shape = tuple(layer.output_shape(shape))
                shapes.append(shape)
            if len(self._shape_chains) >= _SHAPES_REMEMBERED:
                self._shape_chains.clear()
            chain = self._shape_chains[input_shape] = tuple(shapes)
        return chain

    def output_shape(self, input_shape):
        """The output's shape for an input of ``input_shape``, as a layer's
        ``output_shape``: ValueError naming the first layer that refuses it."""
        if not self.layers:
            raise ValueError("Sequential.output_shape: the model has no layers")
        return self._shape_chain(tuple(input_shape))[-1]

    @property
    def input_shape(self):
        """The shape of one sample (no batch axis) this model takes: the one
        ``fit`` last trained on, or one assigned, and what a model file records.
        Without either it is ``(in_features,)`` for a model that starts with a
        ``Linear``, and None (unknown) otherwise."""
        if self._input_shape is None and self.layers and type(self.layers[0]) is Linear:
            return (self.layers[0].in_features,)
        return self._input_shape

    @input_shape.setter
    def input_shape(self, shape):
        if shape is None:
            self._input_shape = None
            return
        where = "Sequential.input_shape"
        if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
            raise TypeError(f"{where} must be a tuple of sizes (one sample's shape) or None, "
                            f"got {type(shape).__name__} {shape!r:.60}")
        shape = tuple(as_count(extent, where, f"extent {axis}", minimum=0)
                      for axis, extent in enumerate(shape))
        self.output_shape((1,) + shape)  # the layers must accept it
        self._input_shape = shape

    def _thread_plan(self, input_shape):
        """This thread's inference plan for ``input_shape``, rebuilt when a
        layer's arrays or wiring changed since it was made."""
        plans = getattr(self._scratch, "plans", None)
        if plans is None:
            plans = self._scratch.plans = {}
        plan = plans.get(input_shape)
        if plan is None or not plan.current():
            self._wire()
            if len(plans) >= _SHAPES_REMEMBERED:
                plans.clear()
            chain = self._shape_chain(input_shape)
            calls = [(layer, [index], [index + 1], False) for index, layer in enumerate(self._steps)]
            steps, _ = schedule.build(calls, [input_shape] + list(chain), [0], [len(chain)])
            plan = plans[input_shape] = kernels.InferencePlan(
                steps, [layer for layer, _ in self._wiring], [input_shape], [chain[-1]])
        return plan

    def _infer_into(self, x, out):
        self._thread_plan(x.shape).run([x], [out])
        return out

    def infer(self, x, out):
        """Inference on a validated ``x`` into ``out``, as a layer's ``infer``
        (a nested model's step in an inference plan)."""
        return self._infer_into(x, out)

    def predict(self, x, batch_size=None):
        """Inference-mode output for ``x``, freshly allocated; nothing else is
        allocated once this thread has seen the input shape. ``batch_size``
        runs the rows in slices of that many (bounded scratch memory)."""
        if batch_size is None:
            out = kernels.predict_cached(self._scratch, x)
            if out is not None:
                return out
        if not self.layers:
            raise ValueError("Sequential.predict: the model has no layers")
        if batch_size is not None:
            batch_size = as_count(batch_size, "Sequential.predict", "batch_size")
        x = self.layers[0].check_input(x)
        chain = self._shape_chain(x.shape)
        out = np.empty(chain[-1], dtype=np.float32)
        rows = x.shape[0] if x.ndim else 0
        if batch_size is None or rows <= batch_size:
            if rows or not x.ndim:
                self._infer_into(x, out)
            return out
        for start in range(0, rows, batch_size):
            stop = min(start + batch_size, rows)
            self._infer_into(x[start:stop], out[start:stop])
        return out

    # -- parameters and state ---------------------------------------------------
    def named_layers(self):
        """``("<index>", layer)`` for every layer."""
        for index, layer in enumerate(self.layers):
            yield str(index), layer

    def get_layer(self, name):
        """The layer whose state-dict prefix is ``name`` (its index, as a string)."""
        for key, layer in self.named_layers():
            if key == name:
                return layer
        raise ValueError(f"Sequential.get_layer: no layer named {name!r}; the names are the "
                         f"indices 0 to {len(self.layers) - 1}")

    def _twin(self):
        """A copy for a further call in a graph (pynn.model): the same
        parameters, its own gradients and kept state; and the layer pairs."""
        twins, pairs = [], []
        for layer in self.layers:
            twin, pair = layer._twin()
            twins.append(twin)
            pairs.extend(pair)
        twin = Sequential(*twins, name=self.name)
        twin.input_shape = self._input_shape
        return twin, pairs

    def named_parameters(self):
        for index, layer in enumerate(self.layers):
            for name, param in layer.params.items():
                yield f"{index}.{name}", param

    def parameter_owners(self):
        """``("<index>.", layer)`` for each layer with parameters: what optimizers update."""
        return [(f"{index}.", layer) for index, layer in enumerate(self.layers) if layer.params]

    def state_dict(self):
        """Parameters then buffers of each layer, in order, as live arrays (PyTorch's keys)."""
        state = {}
        for index, layer in enumerate(self.layers):
            for name, array in layer.params.items():
                state[f"{index}.{name}"] = array
            for name, array in layer.buffers.items():
                state[f"{index}.{name}"] = array
        return state

    def load_state_dict(self, state_dict, strict=True):
        """Copy ``state_dict`` into the live arrays. Checks everything first: a
        mis-shaped or wrongly typed entry, or with ``strict`` a missing or
        unexpected key, raises ValueError/TypeError and changes nothing."""
        return load_state_dict(self, state_dict, strict, "Sequential.load_state_dict")

    # -- persistence (pynn.io, through pynn._hooks) -----------------------------
    def save(self, path):
        """Write a safetensors model file (see ``pynn.io``); ``pynn.load`` rebuilds it."""
        _hooks.get("save_model", "Sequential.save")(self, path)

    def __reduce__(self):
        """Pickle as the bytes ``save`` writes (no code inside): unpickling is
        ``pynn.io.model_from_bytes``, which checks them as untrusted input."""
        return _hooks.get("reduce_model", "pickling a Sequential")(self)

    def load_weights(self, path, strict=True):
        """Load the tensors of any safetensors file whose keys and shapes match."""
        return _hooks.get("load_weights", "Sequential.load_weights")(self, path, strict=strict)

    def freeze(self, n):
        """Freeze the first ``n`` layers (no gradients computed, no updates); the rest train."""
        n = as_count(n, "Sequential.freeze", "n", minimum=0)
        if n > len(self.layers):
            raise ValueError(f"Sequential.freeze: n must be <= the {len(self.layers)} layers, got {n}")
        for index, layer in enumerate(self.layers):
            layer.trainable = index >= n

    def unfreeze(self):
        self.freeze(0)

    # -- the training loop (pynn.training, through pynn._hooks) ----------------
    def fit(self, x, y=None, *, loss, optimizer, epochs=1, batch_size=32, shuffle=True,
            validation_data=None, seed=None, callbacks=(), verbose=True, comm=None,
            scheduler=None, scheduler_interval="epoch", clip_grad_norm=None):
        """Train on ``(x, y)`` in shuffled mini-batches; returns a ``History``.
        The last, partial batch is trained on. Without ``y``, ``x`` is a
        re-iterable of ``(x_batch, y_batch)`` pairs, for data larger than
        memory. See ``pynn.training.fit``; with an mpi4py ``comm``,
        data-parallel over its ranks (``pynn.distributed``); ``scheduler``
        steps per ``scheduler_interval`` ("epoch" or "batch"), and
        ``clip_grad_norm`` clips the gradients' joint norm before each step."""
        return _hooks.get("fit", "Sequential.fit")(
            self, x, y, loss=loss, optimizer=optimizer, epochs=epochs, batch_size=batch_size,
            shuffle=shuffle, validation_data=validation_data, seed=seed, callbacks=callbacks,
            verbose=verbose, comm=comm, scheduler=scheduler, scheduler_interval=scheduler_interval,
            clip_grad_norm=clip_grad_norm)

    def evaluate(self, x, y, *, loss, batch_size=256):
        """``{"loss": mean loss, "accuracy": ...}`` in inference mode (accuracy for
        classification losses)."""
        return _hooks.get("evaluate", "Sequential.evaluate")(self, x, y, loss=loss,
                                                             batch_size=batch_size)
