"""``pynn.onnx.export``: a ``Sequential`` or ``Model`` written as an ONNX
graph that ONNX Runtime runs as ``predict`` does (docs/onnx.md).

Names, so that an importer can map the graph back to pynn:
- graph inputs: each ``Input``'s name, else ``input`` (one input) or
  ``input_<i>``; a ``Sequential`` takes ``input``. Their first axis is the
  symbolic dimension ``batch``, a variable per-sample axis a symbolic
  length: ``length`` for every axis whose length the model ties to the
  first variable axis's (token ids and their mask), ``length_1``, ... for
  lengths free of it (a cross-attention's query and memory); ONNX Runtime
  plans its buffers on the promise that equal names are equal lengths. The
  other axes are fixed.
- initializers: the model's state-dict keys (``"0.weight"``,
  ``"stem.conv.weight"``), each once, however many calls use it. Buffers that
  inference does not read (``num_batches_tracked``) are left out.
- nodes: the node whose output is a layer's output, and that output, are
  named after the layer (nested models' layers under the model's name,
  ``"encoder.0"``); a layer's other nodes are ``"<layer>/<op type>"`` and its
  constants ``"<layer>/<purpose>"``. A name taken already (a shared layer's
  further calls) gets ``":1"``, ``":2"``, ... appended.
- graph outputs: the outputs of the layers that give them, all float32; an
  output that is a graph input or repeats another output goes through an
  ``Identity`` node named ``output_<i>`` (a ``Cast`` to float for an int64
  or bool input, as ``predict`` gives it).
"""
import itertools

import numpy as np

from pynn._version import __version__
from pynn.architecture import ModelFormatError
from pynn.io import write_atomic
from pynn.layers.base import Layer
from pynn.model import Model
from pynn.onnx.export_layers import TRANSLATIONS as LAYER_TRANSLATIONS
from pynn.onnx.export_transformer import TRANSLATIONS as TRANSFORMER_TRANSLATIONS
from pynn.onnx.requirement import import_onnx
from pynn.sequential import Sequential

# layer class -> translation; a class missing here is refused by name
TRANSLATIONS = {**LAYER_TRANSLATIONS, **TRANSFORMER_TRANSLATIONS}
OPSETS = range(13, 22)
# Shapes are worked out for these batch sizes and lengths of the variable
# axes: extents equal for all are fixed, those that follow the batch size are
# the ``batch`` dimension and those that follow the length ``length``.
_PROBE_BATCHES = (2, 3)
_PROBE_LENGTHS = (3, 5)
# protobuf refuses to serialise a message of 2 GiB or more
_LARGEST_MESSAGE = 2 ** 31 - 1


class Value:
    """A tensor of the graph: its name, its shape for a batch of
    ``_PROBE_BATCHES[0]`` and variable axes of ``_PROBE_LENGTHS[0]``, its
    dtype name, and ``variable``: per axis, whether its extent follows the
    variable axes' length (worked out with ``_PROBE_LENGTHS[1]``)."""
    __slots__ = ("name", "shape", "dtype", "variable")

    def __init__(self, name, shape, dtype, variable=None):
        self.name, self.shape, self.dtype = name, tuple(shape), dtype
        self.variable = tuple(variable) if variable is not None else (False,) * len(self.shape)


class _Graph:
    """The nodes and initializers written so far, and the names they took."""

    def __init__(self, onnx, opset, reserved):
        self.onnx, self.opset = onnx, opset
        self.nodes, self.initializers = [], []
        self._taken = set(reserved)
        self._initialized = set()

    def fresh(self, name):
        """``name``, or ``name:<k>`` with the first k that is free."""
        candidate, count = name, 0
        while candidate in self._taken:
            count += 1
            candidate = f"{name}:{count}"
        self._taken.add(candidate)
        return candidate

    def node(self, op_type, inputs, name, attributes):
        """A node named ``name`` (made unique) with one output of that name."""
        output = self.fresh(name)
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), [output], name=output,
                                                     **attributes))
        return output

    def initializer(self, key, array):
        if key not in self._initialized:
            self._initialized.add(key)
            self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array),
                                                                       key))
        return key

    def constant(self, name, array):
        tensor = self.onnx.numpy_helper.from_array(np.ascontiguousarray(array))
        return self.node("Constant", [], name, {"value": tensor})


class LayerNodes:
    """What one layer call writes into the graph, named after the layer;
    ``variable`` tells which axes of the layer's output follow the length."""

    def __init__(self, graph, name, variable=(), output_name=None):
        self._graph, self.name, self.opset, self.variable = graph, name, graph.opset, tuple(variable)
        self._output_name = output_name or name

    def part(self, key, final=False):
        """The nodes of the composite layer's part ``key``: its tensors and
        nodes under ``<layer>.<key>``; with ``final`` its output node gives the
        layer's output and takes the layer's name."""
        return LayerNodes(self._graph, f"{self.name}.{key}", self.variable,
                          self._output_name if final else None)

    def state(self, key, array):
        """The initializer holding the layer's ``params`` or ``buffers`` entry ``key``."""
        return self._graph.initializer(f"{self.name}.{key}", array)

    def constant(self, purpose, array):
        return self._graph.constant(f"{self.name}/{purpose}", array)

    def op(self, op_type, inputs, **attributes):
        """A node on the way to the layer's output."""
        return self._graph.node(op_type, inputs, f"{self.name}/{op_type}", attributes)

    def out(self, op_type, inputs, **attributes):
        """The node giving the layer's output."""
        return self._graph.node(op_type, inputs, self._output_name, attributes)


def _checked_opset(opset, where):
    if isinstance(opset, (bool, np.bool_)) or not isinstance(opset, (int, np.integer)):
        raise TypeError(f"{where}: opset must be an integer from {OPSETS[0]} to {OPSETS[-1]}, "
                        f"got {type(opset).__name__} {opset!r:.40}")
    if opset not in OPSETS:
        raise ValueError(f"{where}: opset must be from {OPSETS[0]} to {OPSETS[-1]}, got {opset}")
    return int(opset)


def _input_specs(model, where):
    """``(name, per-sample shape, dtype)`` of each model input."""
    if isinstance(model, Model):
        many = len(model.inputs) > 1
        return [(tensor.name or (f"input_{index}" if many else "input"), tensor.shape, tensor.dtype)
                for index, tensor in enumerate(model.inputs)]
    if not model.layers:
        raise ValueError(f"{where}: the Sequential has no layers")
    if model.input_shape is None:
        raise ValueError(f"{where}: the Sequential's input shape is unknown; set "
                         "model.input_shape to one sample's shape (without the batch axis) first")
    return [("input", tuple(model.input_shape), model.input_dtypes(1)[0])]


def _probe(shape, length):
    """The concrete shape with every variable (None) axis ``length`` long."""
    return tuple(length if extent is None else extent for extent in shape)


def _longer(value):
    """``value``'s shape with the variable axes ``_PROBE_LENGTHS[1]`` long."""
    return tuple(_PROBE_LENGTHS[1] if variable else extent
                 for extent, variable in zip(value.shape, value.variable))


def _emit_layer(graph, layer, name, arguments, many):
    """One call of ``layer``, on a list of values if ``many``."""
    translate = TRANSLATIONS.get(type(layer))
    if translate is None:
        raise ModelFormatError(f"pynn.onnx.export: layer {name!r} is a {type(layer).__name__}, "
                               "which has no ONNX translation")
    given = arguments if many else arguments[0]
    shape = tuple(layer.output_shape([value.shape for value in arguments] if many else given.shape))
    longer = tuple(layer.output_shape([_longer(value) for value in arguments] if many
                                      else _longer(given)))
    variable = [a != b for a, b in zip(shape, longer)]
    return Value(translate(LayerNodes(graph, name, variable), layer, given, shape), shape, "float32",
                 variable)


def _emit_model(graph, model, prefix, arguments):
    """The model's nodes for inputs ``arguments``; its layers are named
    ``prefix + <layer name>``. Returns the output values."""
    if isinstance(model, Sequential):
        value = arguments[0]
        for index, layer in enumerate(model.layers):
            value = _emit_layer(graph, layer, f"{prefix}{index}", [value], False)
        return [value]
    held = {id(tensor): value for tensor, value in zip(model.inputs, arguments)}
    for call in model._calls:
        values = [held[id(tensor)] for tensor in call.inputs]
        name = prefix + call.callee.name
        if isinstance(call.callee, Layer):
            results = [_emit_layer(graph, call.callee, name, values, call.takes_list)]
        else:
            results = _emit_model(graph, call.callee, name + ".", values)
        held.update((id(tensor), value) for tensor, value in zip(call.outputs, results))
    return [held[id(tensor)] for tensor in model.outputs]


def _probe_shapes(model, specs, batch, longer):
    """The model's output shapes (a list) for a batch of ``batch``, the
    variable axes in ``longer`` ``_PROBE_LENGTHS[1]`` long and the others
    ``_PROBE_LENGTHS[0]``; variable axes are ``(input index, axis)``."""
    shapes = [(batch,) + tuple(extent if extent is not None else _PROBE_LENGTHS[(index, axis) in longer]
                               for axis, extent in enumerate(shape))
              for index, (_, shape, _) in enumerate(specs)]
    out = model.output_shape(shapes if model.takes_list else shapes[0])
    return [tuple(shape) for shape in out] if model.output_count > 1 else [tuple(out)]


def _length_names(model, specs):
    """The symbolic dimension of each variable input axis ``(input index,
    axis)``: axes that the model ties together (their lengths must agree,
    as a mask's and its sequence's) share a name, ``length`` for the group of
    the first, ``length_1``, ``length_2``, ... for the others. A group is the
    smallest set of the axes left, holding the first of them, that the model
    takes longer than the rest (the set of all is one)."""
    def takes(longer):
        try:
            _probe_shapes(model, specs, _PROBE_BATCHES[0], set(longer))
        except (ValueError, TypeError):
            return False
        return True

    left = [(index, axis) for index, (_, shape, _) in enumerate(specs)
            for axis, extent in enumerate(shape) if extent is None]
    names = {}
    while left:
        group = next(
            [left[0], *others] for size in range(len(left))
            for others in itertools.combinations(left[1:], size) if takes([left[0], *others]))
        name = f"length_{len(set(names.values()))}" if names else "length"
        names.update((axis, name) for axis in group)
        left = [axis for axis in left if axis not in group]
    return names


def _output_dims(model, specs, names):
    """Each output's dimensions: fixed extents, ``"batch"``, the name of the
    one length an extent follows (``names`` as ``_length_names`` gives), or
    None where an extent depends on the batch size or the lengths otherwise
    (a Flatten over the batch axis or a variable one)."""
    base = _probe_shapes(model, specs, _PROBE_BATCHES[0], set())
    other_batch = _probe_shapes(model, specs, _PROBE_BATCHES[1], set())
    groups = {name: {axis for axis, named in names.items() if named == name} for name in names.values()}
    by_length = {name: _probe_shapes(model, specs, _PROBE_BATCHES[0], group)
                 for name, group in groups.items()}
    dims = []
    for position, first in enumerate(base):
        output = []
        for axis, extent in enumerate(first):
            changed = {name: probes[position][axis] for name, probes in by_length.items()
                       if probes[position][axis] != extent}
            batch = other_batch[position][axis]
            if not changed and batch == extent:
                output.append(extent)
            elif not changed and (extent, batch) == _PROBE_BATCHES:
                output.append("batch")
            elif batch == extent and len(changed) == 1 and (extent, *changed.values()) == _PROBE_LENGTHS:
                output.append(next(iter(changed)))
            else:
                output.append(None)
        dims.append(output)
    return dims


def _model_proto(model, opset, where):
    """The ONNX ``ModelProto`` of a ``Sequential`` or ``Model``."""
    if not isinstance(model, (Sequential, Model)):
        raise TypeError(f"{where}: model must be a pynn Sequential or Model, got {type(model).__name__}")
    opset = _checked_opset(opset, where)
    specs = _input_specs(model, where)
    onnx = import_onnx(where)
    helper = onnx.helper
    graph = _Graph(onnx, opset, model.state_dict())
    elements = {"float32": onnx.TensorProto.FLOAT, "int64": onnx.TensorProto.INT64,
                "bool": onnx.TensorProto.BOOL}
    inputs, arguments, names = [], [], _length_names(model, specs)
    for index, (name, shape, dtype) in enumerate(specs):
        name = graph.fresh(name)
        dims = ["batch"] + [extent if extent is not None else names[index, axis]
                            for axis, extent in enumerate(shape)]
        inputs.append(helper.make_tensor_value_info(name, elements[dtype], dims))
        arguments.append(Value(name, (_PROBE_BATCHES[0],) + _probe(shape, _PROBE_LENGTHS[0]), dtype,
                               [False] + [extent is None for extent in shape]))
    results = _emit_model(graph, model, "", arguments)
    outputs, listed = [], {value.name for value in arguments}
    for index, (value, dims) in enumerate(zip(results, _output_dims(model, specs, names))):
        name = value.name
        if value.dtype != "float32":  # an input given back, as predict gives it
            name = graph.node("Cast", [name], f"output_{index}", {"to": elements["float32"]})
        elif name in listed:
            name = graph.node("Identity", [name], f"output_{index}", {})
        listed.add(name)
        outputs.append(helper.make_tensor_value_info(name, elements["float32"], dims))
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(
        helper.make_graph(graph.nodes, model.name or "pynn", inputs, outputs,
                          initializer=graph.initializers),
        opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets),
        producer_name="pynn", producer_version=__version__)


def export(model, path, opset=17):
    """Write ``model`` to ``path`` as an ONNX file for operator set ``opset``
    (13 to 21), with a dynamic batch dimension and a dynamic ``length`` for
    the inputs' variable axes. The write is atomic, as
    ``model.save``'s. A layer without an ONNX translation raises
    ``pynn.ModelFormatError`` naming it."""
    where = "pynn.onnx.export"
    proto = _model_proto(model, opset, where)
    size = proto.ByteSize()
    if size > _LARGEST_MESSAGE:
        raise ValueError(f"{where}: the model needs {size} bytes, more than the 2 GiB one ONNX "
                         "file without external data can hold")
    write_atomic(path, proto.SerializeToString())
