"""``Model``: a graph of layer calls built from symbolic tensors (Keras's
functional API, PyTorch's names and keys).

``Model(inputs, outputs)`` walks back from the outputs through the calls that
made them (pynn/layers/symbolic.py). A call can only name tensors that exist
before it, so the walk always ends and the graph has no cycles; its
post-order is a topological order, the order ``forward`` runs the calls in
and ``backward`` reverses.

A layer called more than once shares its parameters between the calls. Each
call after the first runs a twin of the layer: the same ``params`` and
``buffers`` dicts, its own ``grads`` and buffers, so both calls keep what
their backward needs; ``backward`` adds the twins' gradients into the layer's.
A tensor read by several calls receives the sum of their gradients, added in
buffers the model owns and reuses.
"""
import collections
import copy
import re
import threading

import numpy as np

from pynn import _hooks, schedule
from pynn._checks import aligned_empty, as_count, as_float32, as_indices, as_mask
from pynn._kernels import core as kernels
from pynn.layers import ReLU
from pynn.layers.base import Layer, checked_name
from pynn.layers import symbolic
from pynn.sequential import RELU_FUSING_LAYERS, Sequential, load_state_dict

# Input shapes whose inference plans are kept per thread; beyond this they are
# dropped and rebuilt.
_SHAPES_REMEMBERED = 8



def _as_tensor_list(value, where, what):
    """``(list of symbolic tensors, given as a list)``."""
    many = isinstance(value, (list, tuple))
    items = list(value) if many else [value]
    if not items:
        raise ValueError(f"{where}: {what} must name at least one tensor")
    for position, item in enumerate(items):
        if not isinstance(item, symbolic.SymbolicTensor):
            raise TypeError(f"{where}: {what}[{position}] must be a symbolic tensor "
                            f"(from pynn.Input or a layer call), got {type(item).__name__}")
    return items, many


def _calls_in_order(inputs, outputs, where):
    """Every call the outputs depend on, each after the calls it reads."""
    given = {id(tensor) for tensor in inputs}
    order, done = [], set()
    for output in outputs:
        stack = [(output, False)]
        while stack:
            tensor, expanded = stack.pop()
            if tensor.is_input:
                if id(tensor) not in given:
                    raise ValueError(f"{where}: the outputs depend on {tensor!r}, which is not "
                                     "among the model's inputs")
                continue
            node = tensor.call
            if id(node) in done:
                continue
            if expanded:
                done.add(id(node))
                order.append(node)
                continue
            stack.append((tensor, True))
            stack.extend((item, False) for item in reversed(node.inputs))
    return order


def _default_name(callee):
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z][a-z])", "_", type(callee).__name__).lower()


class _Step:
    """One call as ``forward`` runs it: the runner (the layer or its twin),
    the value slots it reads and the slots it writes."""
    __slots__ = ("runner", "sources", "targets", "takes_list", "skipped")

    def __init__(self, runner, sources, targets, takes_list):
        self.runner, self.sources, self.targets, self.takes_list = runner, sources, targets, takes_list
        self.skipped = False


class Model:
    def __init__(self, inputs, outputs, name=None):
        where = "Model"
        self.name = checked_name(name, where)
        self.inputs, self._many_inputs = _as_tensor_list(inputs, where, "inputs")
        self.outputs, self._many_outputs = _as_tensor_list(outputs, where, "outputs")
        for position, tensor in enumerate(self.inputs):
            if not tensor.is_input:
                raise ValueError(f"{where}: inputs[{position}] must come from pynn.Input, got {tensor!r}")
        if len({id(tensor) for tensor in self.inputs}) != len(self.inputs):
            raise ValueError(f"{where}: an Input is listed twice among the inputs")
        calls = _calls_in_order(self.inputs, self.outputs, where)
        read = {id(tensor) for node in calls for tensor in node.inputs}
        read.update(id(tensor) for tensor in self.outputs)
        for position, tensor in enumerate(self.inputs):
            if id(tensor) not in read:
                raise ValueError(f"{where}: inputs[{position}] ({tensor!r}) is not used by any output")
        self.layers = list(dict.fromkeys(node.callee for node in calls))
        self._name_layers(where)
        self._build_steps(calls)
        self._scratch = threading.local()
        self._accumulators = {}
        self._backward_plans = {}
        self._known_shapes = {}

    # -- building ----------------------------------------------------------------
    def _name_layers(self, where):
        owners = {}
        for callee in self.layers:
            if callee.name is not None:
                other = owners.setdefault(callee.name, callee)
                if other is not callee:
                    raise ValueError(f"{where}: two layers are named {callee.name!r}: "
                                     f"{type(other).__name__} and {type(callee).__name__}")
        counters = collections.Counter()
        for callee in self.layers:
            if callee.name is None:
                stem = _default_name(callee)
                while True:
                    counters[stem] += 1
                    candidate = f"{stem}_{counters[stem]}"
                    if candidate not in owners:
                        break
                callee.name = candidate
                owners[candidate] = callee
        for name in owners:
            parent = name.rpartition(".")[0]
            while parent:
                if parent in owners:
                    raise ValueError(f"{where}: layer name {name!r} lies under layer {parent!r}; "
                                     "their state-dict keys would mix")
                parent = parent.rpartition(".")[0]

    def _build_steps(self, calls):
        """Value slots: one per model input, then one per call output; a ReLU
        fused into the layer before it writes no slot of its own."""
        slot = {id(tensor): index for index, tensor in enumerate(self.inputs)}
        readers = collections.Counter(id(tensor) for node in calls for tensor in node.inputs)
        outputs = {id(tensor) for tensor in self.outputs}
        used, self._twins, self._steps, self._wiring = set(), [], [], []
        count = len(self.inputs)
        fused_into = {}
        for node in calls:
            callee = node.callee
            if id(callee) in used:
                runner, pairs = callee._twin()
                self._twins.extend(pairs)
            else:
                runner = callee
                used.add(id(callee))
            source = node.inputs[0]
            if (type(callee) is ReLU and id(source) in fused_into and readers[id(source)] == 1
                    and id(source) not in outputs):
                fused_into.pop(id(source)).activation = "relu"
                slot[id(node.outputs[0])] = slot[id(source)]
                continue
            step = _Step(runner, [slot[id(tensor)] for tensor in node.inputs],
                         list(range(count, count + len(node.outputs))), node.takes_list)
            for tensor in node.outputs:
                slot[id(tensor)] = count
                count += 1
            if type(callee) in RELU_FUSING_LAYERS:
                fused_into[id(node.outputs[0])] = _Wire(runner)
                self._wiring.append(fused_into[id(node.outputs[0])])
            self._steps.append(step)
        self._slot_count = count
        self._output_slots = [slot[id(tensor)] for tensor in self.outputs]
        self._calls = calls
        self._leaves = [layer for step in self._steps for _, layer in _owners_of(step.runner)]

    def _wire(self):
        for wire in self._wiring:
            if wire.layer.activation != wire.activation:
                wire.layer.activation = wire.activation

    # -- what a callable offers a graph -----------------------------------------
    @property
    def takes_list(self):
        return self._many_inputs

    @property
    def output_count(self):
        return len(self.outputs) if self._many_outputs else 1

    def input_dtypes(self, count):
        return [tensor.dtype for tensor in self.inputs]

    def _slot_shapes(self, given):
        """Every slot's shape for the inputs' shapes ``given`` (batch axis
        included), remembered for the last few combinations."""
        key = tuple(tuple(shape) for shape in given)
        shapes = self._known_shapes.get(key)
        if shapes is None:
            shapes = self._shapes_through_steps(given)
            if len(self._known_shapes) >= _SHAPES_REMEMBERED:
                self._known_shapes.clear()
            self._known_shapes[key] = shapes
        return shapes

    def _shapes_through_steps(self, given):
        if len(given) != len(self.inputs):
            raise ValueError(f"{self._where}: expects {len(self.inputs)} inputs, got {len(given)}")
        shapes = [None] * self._slot_count
        for index, (tensor, shape) in enumerate(zip(self.inputs, given)):
            shape = tuple(shape)
            if not symbolic.fits(tensor.shape, shape):
                raise ValueError(f"{self._where}: input {index} must have per-sample shape "
                                 f"{tensor.shape}, got {shape[1:]} (shape {shape})")
            shapes[index] = shape
        for step in self._steps:
            args = [shapes[source] for source in step.sources]
            out = step.runner.output_shape(args if step.takes_list else args[0])
            out = list(out) if len(step.targets) > 1 else [out]
            for target, shape in zip(step.targets, out):
                shapes[target] = tuple(shape)
        return shapes

    def output_shape(self, input_shape):
        """Output shape(s) for input shape(s) with a batch axis; ValueError
        naming the first layer that refuses them."""
        shapes = self._slot_shapes(list(input_shape) if self._many_inputs else [input_shape])
        result = [shapes[slot] for slot in self._output_slots]
        return result if self._many_outputs else result[0]

    def __call__(self, x, training=False):
        if symbolic.is_symbolic(x):
            return symbolic.call(self, x)
        return self.forward(x, training=training)

    @property
    def _where(self):
        return f"Model {self.name!r}" if self.name else "Model"

    # -- inputs ------------------------------------------------------------------
    def _as_list(self, value, what):
        if self._many_inputs:
            if not isinstance(value, (list, tuple)) or len(value) != len(self.inputs):
                raise TypeError(f"{self._where}: {what} must be a list of {len(self.inputs)} arrays, "
                                f"one per input, got {type(value).__name__}"
                                + (f" of {len(value)}" if isinstance(value, (list, tuple)) else ""))
            return list(value)
        return [value]

    def check_input(self, x):
        """The inputs validated and converted (dtype, per-sample shape, equal
        sample counts): a list with several inputs, an array with one."""
        where = self._where
        checked = []
        for index, (tensor, value) in enumerate(zip(self.inputs, self._as_list(x, "x"))):
            label = f"x[{index}]" if self._many_inputs else "x"
            if tensor.name:
                label += f" (input {tensor.name!r})"
            if tensor.dtype == "int64":
                value = as_indices(value, where, label)
            elif tensor.dtype == "bool":
                value = as_mask(value, where, label)
            else:
                value = as_float32(value, where, label)
            if not symbolic.fits(tensor.shape, value.shape):
                raise ValueError(f"{where}: {label} must have shape (batch,) + {tensor.shape}, "
                                 f"got {value.shape}")
            checked.append(value)
        if len({value.shape[0] for value in checked}) > 1:
            raise ValueError(f"{where}: the inputs must have the same number of samples, got "
                             f"{[value.shape[0] for value in checked]}")
        return checked if self._many_inputs else checked[0]

    @property
    def input_shape(self):
        """One sample's shape per input (a list with several inputs)."""
        shapes = [tensor.shape for tensor in self.inputs]
        return shapes if self._many_inputs else shapes[0]

    @input_shape.setter
    def input_shape(self, shape):
        if shape is None:
            return
        given = list(shape) if self._many_inputs else [shape]
        if len(given) != len(self.inputs) or not all(
                symbolic.fits(tensor.shape, (0,) + tuple(item)) for tensor, item in zip(self.inputs, given)):
            raise ValueError(f"{self._where}: the input shape is fixed by its Inputs "
                             f"({self.input_shape}), got {shape}")

    # -- training path -------------------------------------------------------------
    def forward(self, x, training=False):
        """The outputs for ``x`` (a list with several inputs); with
        ``training`` each layer keeps what ``backward`` needs."""
        self._wire()
        for layer, twin in self._twins:
            twin.trainable = layer.trainable
        values = [None] * self._slot_count
        values[:len(self.inputs)] = self._as_list(x, "x")
        for step in self._steps:
            args = [values[source] for source in step.sources]
            out = step.runner.forward(args if step.takes_list else args[0], training=training)
            if len(step.targets) > 1:
                for target, value in zip(step.targets, out):
                    values[target] = value
            else:
                values[step.targets[0]] = out
        if training:
            self._value_shapes = [None if value is None else value.shape for value in values]
        outputs = [values[slot] for slot in self._output_slots]
        return outputs if self._many_outputs else outputs[0]

    def _backward_plan(self, input_grad):
        """``(wanted, steps)``: per slot whether dL/d(slot) is needed (a
        trainable parameter lies upstream, or it is a float model input and
        ``input_grad``), and the steps backward runs, last first, each with
        whether it must compute its input gradient. Kept until freezing or
        ``input_grad`` changes."""
        key = (input_grad, tuple(layer.trainable for layer in self._leaves))
        plan = self._backward_plans.get(key)
        if plan is not None:
            return plan
        wanted = [input_grad and tensor.dtype == "float32" for tensor in self.inputs]
        wanted += [False] * (self._slot_count - len(self.inputs))
        runs = []
        for step in self._steps:
            trainable = any(owner.trainable and owner.params for _, owner in _owners_of(step.runner))
            wants_dx = any(wanted[source] for source in step.sources)
            if trainable or wants_dx:
                runs.append((step, wants_dx))
            for target in step.targets:
                wanted[target] = trainable or wants_dx
        plan = self._backward_plans[key] = (wanted, runs[::-1])
        return plan

    def backward(self, dy, input_grad=True):
        """Back-propagate dL/d(outputs) of the last training forward (a list
        with several outputs), write every trainable layer's ``grads`` and
        return dL/dx (a list with several inputs; None for int64 inputs).
        With ``input_grad=False`` nothing is returned and work that only
        serves the input gradient is skipped."""
        given = list(dy) if self._many_outputs else [dy]
        if self._many_outputs and (not isinstance(dy, (list, tuple)) or len(dy) != len(self.outputs)):
            raise TypeError(f"{self._where}.backward: dy must be a list of {len(self.outputs)} arrays")
        wanted, runs = self._backward_plan(bool(input_grad))
        grads = [None] * self._slot_count
        for slot, value in zip(self._output_slots, given):
            self._accumulate(grads, slot, as_float32(value, f"{self._where}.backward", "dy"))
        for step, wants_dx in runs:
            if len(step.targets) == 1:
                dys = grads[step.targets[0]]
            else:  # an output of a nested model that nothing reads gets zeros
                dys = [self._zeros(target) if grads[target] is None else grads[target]
                       for target in step.targets]
            dx = step.runner.backward(dys, input_grad=wants_dx)
            if not wants_dx:
                continue
            for source, value in zip(step.sources, dx if step.takes_list else (dx,)):
                if value is not None and wanted[source]:
                    self._accumulate(grads, source, value)
        for layer, twin in self._twins:
            if layer.trainable:
                for key, grad in layer.grads.items():
                    kernels.add_into(grad, twin.grads[key], grad)
                layer.forget_touched_rows()  # the sum may reach rows its own call did not
        if not input_grad:
            return None
        result = [grads[index] if tensor.dtype == "float32" else None
                  for index, tensor in enumerate(self.inputs)]
        return result if self._many_inputs else result[0]

    def _accumulate(self, grads, slot, value):
        """Add ``value`` to the gradient of ``slot``; a second contribution
        moves the sum into a buffer the model owns."""
        held = grads[slot]
        if held is None:
            grads[slot] = value
            return
        if held.shape != value.shape:
            raise ValueError(f"{self._where}.backward: gradients of shapes {held.shape} and "
                             f"{value.shape} meet at one tensor")
        buffer = self._accumulators.get(slot)
        if buffer is None or buffer.shape != value.shape:
            buffer = self._accumulators[slot] = aligned_empty(value.shape)
        kernels.add_into(held, value, buffer)
        grads[slot] = buffer

    def _zeros(self, target):
        """Zeros of the shape the last training forward gave ``target``."""
        shape = self._value_shapes[target]
        buffer = self._accumulators.get(("zeros", target))
        if buffer is None or buffer.shape != shape:
            buffer = self._accumulators[("zeros", target)] = np.zeros(shape, dtype=np.float32)
        return buffer

    # -- inference path ------------------------------------------------------------
    def _thread_plan(self, input_shapes):
        """This thread's inference plan for ``input_shapes`` (a tuple of
        shapes), rebuilt when a layer's arrays or wiring changed."""
        plans = getattr(self._scratch, "plans", None)
        if plans is None:
            plans = self._scratch.plans = {}
        key = input_shapes if self._many_inputs else input_shapes[0]
        plan = plans.get(key)
        if plan is None or not plan.current():
            self._wire()
            if len(plans) >= _SHAPES_REMEMBERED:
                plans.clear()
            shapes = self._slot_shapes(input_shapes)
            calls = [(step.runner, step.sources, step.targets, step.takes_list) for step in self._steps]
            steps, _ = schedule.build(calls, shapes, list(range(len(self.inputs))), self._output_slots)
            plan = plans[key] = kernels.InferencePlan(
                steps, [wire.layer for wire in self._wiring], list(input_shapes),
                [shapes[slot] for slot in self._output_slots])
        return plan

    def infer(self, x, out):
        """Inference on validated inputs into ``out`` (lists where there are
        several), as a layer's ``infer``: a nested model's step in a plan."""
        xs = x if self._many_inputs else [x]
        outs = out if self._many_outputs else [out]
        self._thread_plan(tuple(value.shape for value in xs)).run(xs, outs)
        return out

    def predict(self, x, batch_size=None):
        """Inference-mode outputs for ``x``, freshly allocated; nothing else is
        allocated once this thread has seen the input shapes. ``batch_size``
        runs the rows in slices of that many (bounded scratch memory)."""
        if batch_size is None and not (self._many_inputs or self._many_outputs):
            out = kernels.predict_cached(self._scratch, x)
            if out is not None:
                return out
        if batch_size is not None:
            batch_size = as_count(batch_size, f"{self._where}.predict", "batch_size")
        x = self.check_input(x)
        xs = x if self._many_inputs else [x]
        rows = xs[0].shape[0]
        shapes = self._slot_shapes([value.shape for value in xs])
        outs = [np.empty(shapes[slot], dtype=np.float32) for slot in self._output_slots]
        if rows and (batch_size is None or rows <= batch_size):
            self._thread_plan(tuple(value.shape for value in xs)).run(xs, outs)
        elif rows:
            for start in range(0, rows, batch_size):
                part = [value[start:start + batch_size] for value in xs]
                self._thread_plan(tuple(value.shape for value in part)).run(
                    part, [out[start:start + batch_size] for out in outs])
        return outs if self._many_outputs else outs[0]

    # -- parameters and state --------------------------------------------------------
    def named_layers(self):
        """``(name, layer)`` for every layer, nested models' under their names."""
        for callee in self.layers:
            if isinstance(callee, Layer):
                yield callee.name, callee
            else:
                for inner, layer in callee.named_layers():
                    yield f"{callee.name}.{inner}", layer

    def parameter_owners(self):
        """``("<name>.", layer)`` for each layer with parameters: what optimizers update."""
        return [(f"{name}.", layer) for name, layer in self.named_layers() if layer.params]

    def named_parameters(self):
        for name, layer in self.named_layers():
            for key, param in layer.params.items():
                yield f"{name}.{key}", param

    def state_dict(self):
        """Parameters then buffers of each layer in topological order, as live
        arrays, keyed ``"<layer name>.<name>"``."""
        state = {}
        for name, layer in self.named_layers():
            for key, array in layer.params.items():
                state[f"{name}.{key}"] = array
            for key, array in layer.buffers.items():
                state[f"{name}.{key}"] = array
        return state

    def load_state_dict(self, state_dict, strict=True):
        """As ``Sequential.load_state_dict``: everything is checked first."""
        return load_state_dict(self, state_dict, strict, f"{self._where}.load_state_dict")

    def get_layer(self, name):
        """The layer (or nested model) called ``name``; dotted names reach into nested models."""
        for callee in self.layers:
            if callee.name == name:
                return callee
            if not isinstance(callee, Layer) and name.startswith(callee.name + "."):
                return callee.get_layer(name[len(callee.name) + 1:])
        raise ValueError(f"{self._where}.get_layer: no layer named {name!r}; the layers are "
                         f"{[callee.name for callee in self.layers]}")

    def freeze(self, *names):
        """Freeze the layers under each name (a layer's name or a prefix such as
        ``"encoder"``): no weight gradients computed, no updates."""
        layers = list(self.named_layers())
        for name in names:
            if not isinstance(name, str):
                raise TypeError(f"{self._where}.freeze: names must be strings, got {type(name).__name__}")
            under = [layer for full, layer in layers if full == name or full.startswith(name + ".")]
            if not under:
                raise ValueError(f"{self._where}.freeze: no layer is named {name!r} or lies under it")
            for layer in under:
                layer.trainable = False

    def unfreeze(self):
        for _, layer in self.named_layers():
            layer.trainable = True

    def summary(self, print_fn=print):
        """Each layer's name, type, output shape and parameter count, as a table."""
        shapes = {}
        for node in self._calls:
            shapes.setdefault(id(node.callee), []).extend(
                "(None, " + ", ".join(map(str, tensor.shape)) + (",)" if len(tensor.shape) == 0 else ")")
                for tensor in node.outputs)
        rows = [("Layer (name)", "Type", "Output shape", "Params")]
        total = 0
        for tensor in self.inputs:
            rows.append((tensor.name or "input", "Input", str((None,) + tensor.shape), "0"))
        for callee in self.layers:
            count = sum(param.size for _, layer in _owners_of(callee) for param in layer.params.values())
            total += count
            rows.append((callee.name, type(callee).__name__, " ".join(dict.fromkeys(shapes[id(callee)])),
                         f"{count:,}"))
        widths = [max(len(row[column]) for row in rows) for column in range(4)]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.append(f"Total parameters: {total:,}")
        print_fn("\n".join(lines))

    def __repr__(self):
        inner = "".join(f"\n  ({callee.name}): {callee!r}" for callee in self.layers)
        return f"Model({inner}\n)"

    def _twin(self):
        """A copy for a further call of this model inside another: each step
        runs a twin of its runner. The twin sums its own shared layers' twins
        into its first-use layers, as this model does; the pairs returned are
        this model's first-use layers and their twins, for the caller to sum."""
        twin = copy.copy(self)
        leaves, twin._steps = {}, []
        for step in self._steps:
            runner, _ = step.runner._twin()
            for (_, old), (_, new) in zip(_owners_of(step.runner), _owners_of(runner)):
                leaves[id(old)] = new
            twin._steps.append(_Step(runner, step.sources, step.targets, step.takes_list))
        twin._twins = [(leaves[id(layer)], leaves[id(inner)]) for layer, inner in self._twins]
        twin._wiring = [_Wire(leaves[id(wire.layer)], wire.activation) for wire in self._wiring]
        twin._scratch = threading.local()
        twin._accumulators = {}
        twin._backward_plans = {}
        twin._leaves = [layer for step in twin._steps for _, layer in _owners_of(step.runner)]
        shared = {id(inner) for _, inner in self._twins}
        pairs = [(old, leaves[id(old)]) for step in self._steps for _, old in _owners_of(step.runner)
                 if id(old) not in shared]
        return twin, pairs

    # -- persistence and training (pynn.io, pynn.training through pynn._hooks) -------
    def save(self, path):
        """Write a safetensors model file; ``pynn.load`` rebuilds it."""
        _hooks.get("save_model", "Model.save")(self, path)

    def __reduce__(self):
        return _hooks.get("reduce_model", "pickling a Model")(self)

    def load_weights(self, path, strict=True):
        return _hooks.get("load_weights", "Model.load_weights")(self, path, strict=strict)

    def fit(self, x, y=None, *, loss, optimizer, epochs=1, batch_size=32, shuffle=True,
            validation_data=None, seed=None, callbacks=(), verbose=True, comm=None,
            loss_weights=None, scheduler=None, scheduler_interval="epoch", clip_grad_norm=None):
        """As ``Sequential.fit``; with several outputs ``y`` and ``loss`` are
        lists (one per output) and ``loss_weights`` weighs the losses."""
        return _hooks.get("fit", "Model.fit")(
            self, x, y, loss=loss, optimizer=optimizer, epochs=epochs, batch_size=batch_size,
            shuffle=shuffle, validation_data=validation_data, seed=seed, callbacks=callbacks,
            verbose=verbose, comm=comm, loss_weights=loss_weights, scheduler=scheduler,
            scheduler_interval=scheduler_interval, clip_grad_norm=clip_grad_norm)

    def evaluate(self, x, y, *, loss, batch_size=256, loss_weights=None):
        return _hooks.get("evaluate", "Model.evaluate")(self, x, y, loss=loss, batch_size=batch_size,
                                                        loss_weights=loss_weights)


class _Wire:
    """The activation the model sets on a layer that can fuse a ReLU."""
    __slots__ = ("layer", "activation")

    def __init__(self, layer, activation=None):
        self.layer, self.activation = layer, activation


def _owners_of(callee):
    """``(name, layer)`` of the layers inside ``callee`` (itself for a layer)."""
    if isinstance(callee, Layer):
        return [(callee.name, callee)]
    return list(callee.named_layers())
