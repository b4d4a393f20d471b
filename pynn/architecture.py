"""A model's architecture as the model file stores it: JSON naming layer
types and their constructor arguments, and for a ``Model`` its graph.

A ``Sequential`` is a list of layer entries ``{"type", "config"[, "name"]}``.
A ``Model`` is ``{"name", "inputs", "layers", "calls", "outputs"}``: its
Inputs (shape, dtype, name), its layers (entries as above; a nested
``Sequential`` as ``{"type": "Sequential", "name", "layers"}``, a nested
``Model`` as ``{"type": "Model", "graph"}``), the calls in topological order
(``{"layer": index, "inputs": [reference, ...]}``) and the outputs. A
reference is ``["input", i]`` or ``["call", j, k]`` (output k of call j), and
a call may only refer to earlier calls, so a file cannot describe a cycle.

Rebuilding an architecture read from a file treats it as hostile: types are
looked up in ``LAYER_TYPES`` (never imported), the sizes it claims are
bounded by the tensors the file holds, and rebuilding the graph repeats every
shape check of a call made by hand."""
import math

from pynn.layers.base import LAYER_TYPES, Layer
from pynn.layers.symbolic import Input
from pynn.model import Model
from pynn.sequential import Sequential

SEQUENTIAL_FORMAT = "pynn.Sequential"
MODEL_FORMAT = "pynn.Model"
# Constructor arguments that never enlarge a layer's tensors; every other
# positive integer (features, channels, kernel extents, embeddings) may.
_NON_SIZING_ARGUMENTS = {"stride", "padding", "dilation", "groups", "seed", "padding_idx", "axis",
                         "dims", "shape", "start_dim", "end_dim"}
# Before building an architecture, the tensors it claims are bounded by this
# many times the values the file holds (plus a floor for small models), so a
# 1 KiB file cannot make the loader allocate terabytes.
_CLAIM_FACTOR = 64
_CLAIM_FLOOR = 1 << 24
# Nesting deeper than this is refused before it is followed.
_MAX_DEPTH = 32


class ModelFormatError(ValueError):
    """A model or checkpoint file that is truncated, corrupted, hostile, or
    disagrees with the model it is loaded into."""


# -- writing ------------------------------------------------------------------
def _layer_entry(layer):
    entry = {"type": type(layer).__name__, "config": layer.config()}
    if layer.name is not None:
        entry["name"] = layer.name
    return entry


def _callee_entry(callee):
    if isinstance(callee, Layer):
        return _layer_entry(callee)
    if isinstance(callee, Sequential):
        return {"type": "Sequential", "name": callee.name, "layers": sequential_layers(callee)}
    return {"type": "Model", "graph": graph_of(callee)}


def sequential_layers(model):
    return [_layer_entry(layer) for layer in model.layers]


def graph_of(model):
    """A ``Model``'s graph as JSON-able data."""
    inputs = {id(tensor): index for index, tensor in enumerate(model.inputs)}
    layers = {id(callee): index for index, callee in enumerate(model.layers)}
    calls = {}
    for index, node in enumerate(model._calls):
        calls[id(node)] = index

    def reference(tensor):
        if tensor.is_input:
            return ["input", inputs[id(tensor)]]
        return ["call", calls[id(tensor.call)], tensor.index]

    return {"name": model.name,
            "inputs": [{"shape": list(tensor.shape), "dtype": tensor.dtype, "name": tensor.name}
                       for tensor in model.inputs],
            "layers": [_callee_entry(callee) for callee in model.layers],
            "calls": [{"layer": layers[id(node.callee)], "inputs": [reference(t) for t in node.inputs]}
                      for node in model._calls],
            "outputs": [reference(tensor) for tensor in model.outputs],
            "many_inputs": model.takes_list, "many_outputs": model.output_count > 1}


def architecture_of(model):
    """``(format, architecture)`` of a ``Sequential`` or a ``Model``."""
    if isinstance(model, Model):
        return MODEL_FORMAT, graph_of(model)
    return SEQUENTIAL_FORMAT, sequential_layers(model)


# -- reading ------------------------------------------------------------------
def _is_size(value):
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _sizing_product(value):
    """Product of the positive integers in a config value, an (h, w) pair included."""
    if isinstance(value, list):
        return math.prod(item for item in value if _is_size(item))
    return value if _is_size(value) else 1


class _Reader:
    """Rebuilds an architecture from parsed JSON, counting the tensor sizes it
    claims before any layer is built."""

    def __init__(self, where):
        self.where = where
        self.claimed = 0

    def fail(self, message):
        raise ModelFormatError(f"{self.where}: {message}")

    def check_layer(self, entry, label):
        allowed = ({"type", "config"}, {"type", "config", "name"})
        if not (isinstance(entry, dict) and set(entry) in allowed and isinstance(entry["type"], str)
                and isinstance(entry["config"], dict)):
            self.fail(f"{label} must be {{\"type\": name, \"config\": {{...}}}}, got {entry!r:.200}")
        if entry["type"] not in LAYER_TYPES or entry["type"].startswith("_"):
            self.fail(f"{label} has unknown layer type {entry['type']!r:.60}")
        self.claimed += math.prod(_sizing_product(value) for key, value in entry["config"].items()
                                  if key not in _NON_SIZING_ARGUMENTS)

    def check_callee(self, entry, label, depth):
        if depth > _MAX_DEPTH:
            self.fail(f"{label}: models nested deeper than {_MAX_DEPTH} levels")
        kind = entry.get("type") if isinstance(entry, dict) else None
        if kind == "Sequential":
            if set(entry) != {"type", "name", "layers"}:
                self.fail(f"{label} must be {{\"type\": \"Sequential\", \"name\", \"layers\"}}")
            self.check_sequential(entry["layers"], label)
        elif kind == "Model":
            if set(entry) != {"type", "graph"}:
                self.fail(f"{label} must be {{\"type\": \"Model\", \"graph\"}}")
            self.check_graph(entry["graph"], label, depth + 1)
        else:
            self.check_layer(entry, label)

    def check_sequential(self, entries, label):
        if not isinstance(entries, list):
            self.fail(f"{label}: the layers must be a JSON list")
        for index, entry in enumerate(entries):
            self.check_layer(entry, f"{label} layer {index}")

    def check_graph(self, graph, label, depth):
        fields = {"name", "inputs", "layers", "calls", "outputs", "many_inputs", "many_outputs"}
        if not isinstance(graph, dict) or set(graph) != fields:
            self.fail(f"{label}: a graph must have exactly the fields {sorted(fields)}")
        for field in ("inputs", "layers", "calls", "outputs"):
            if not isinstance(graph[field], list):
                self.fail(f"{label}: the graph's {field} must be a JSON list")
        for index, entry in enumerate(graph["layers"]):
            self.check_callee(entry, f"{label} layer {index}", depth)

    # building, after the claimed sizes were bounded
    def build_layer(self, entry, label):
        config = entry["config"]
        try:
            return LAYER_TYPES[entry["type"]](**config, name=entry.get("name"))
        except Exception as error:  # trusted constructors, hostile arguments
            self.fail(f"{label} ({entry['type']}) cannot be built from {config!r:.200}: {error}")

    def build_callee(self, entry, label):
        if entry["type"] == "Sequential":
            return self.build_sequential(entry["layers"], entry["name"], label)
        if entry["type"] == "Model":
            return self.build_graph(entry["graph"], label)
        return self.build_layer(entry, label)

    def build_sequential(self, entries, name, label):
        layers = [self.build_layer(entry, f"{label} layer {index}") for index, entry in enumerate(entries)]
        try:
            return Sequential(*layers, name=name)
        except (TypeError, ValueError) as error:
            self.fail(f"{label}: {error}")

    def build_graph(self, graph, label):
        inputs = []
        for index, entry in enumerate(graph["inputs"]):
            if not (isinstance(entry, dict) and set(entry) == {"shape", "dtype", "name"}
                    and isinstance(entry["shape"], list)):
                self.fail(f"{label}: input {index} must be {{\"shape\", \"dtype\", \"name\"}}, "
                          f"got {entry!r:.100}")
            try:
                inputs.append(Input(tuple(entry["shape"]), entry["dtype"], entry["name"]))
            except (TypeError, ValueError) as error:
                self.fail(f"{label}: input {index} cannot be built: {error}")
        callees = [self.build_callee(entry, f"{label} layer {index}")
                   for index, entry in enumerate(graph["layers"])]
        made = []

        def resolve(reference):
            if (isinstance(reference, list) and len(reference) == 2 and reference[0] == "input"
                    and _is_index(reference[1], len(inputs))):
                return inputs[reference[1]]
            if (isinstance(reference, list) and len(reference) == 3 and reference[0] == "call"
                    and _is_index(reference[1], len(made))):
                outputs = made[reference[1]]
                if _is_index(reference[2], len(outputs)):
                    return outputs[reference[2]]
            self.fail(f"{label}: {reference!r:.80} is not an input or an output of an earlier call")

        for index, entry in enumerate(graph["calls"]):
            if not (isinstance(entry, dict) and set(entry) == {"layer", "inputs"}
                    and _is_index(entry["layer"], len(callees)) and isinstance(entry["inputs"], list)):
                self.fail(f"{label}: call {index} must be {{\"layer\": index, \"inputs\": [...]}}, "
                          f"got {entry!r:.200}")
            callee = callees[entry["layer"]]
            args = [resolve(reference) for reference in entry["inputs"]]
            try:
                many = callee.takes_list or (callee.takes_list is None and len(args) > 1)
                result = callee(args if many else _only(args, self, label, index))
            except (TypeError, ValueError) as error:
                if isinstance(error, ModelFormatError):
                    raise
                self.fail(f"{label}: call {index} is refused: {error}")
            made.append(result if isinstance(result, list) else [result])
        outputs = [resolve(reference) for reference in graph["outputs"]]
        for flag in ("many_inputs", "many_outputs"):
            if not isinstance(graph[flag], bool):
                self.fail(f"{label}: {flag} must be true or false")
        try:
            model = Model(inputs if graph["many_inputs"] else _only(inputs, self, label, "inputs"),
                          outputs if graph["many_outputs"] else _only(outputs, self, label, "outputs"),
                          name=graph["name"])
        except (TypeError, ValueError) as error:
            if isinstance(error, ModelFormatError):
                raise
            self.fail(f"{label}: the graph is refused: {error}")
        if len(model.layers) != len(callees):
            self.fail(f"{label}: the graph lists layers that no output depends on")
        return model


def _is_index(value, length):
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < length


def _only(items, reader, label, what):
    if len(items) != 1:
        reader.fail(f"{label}: {what} must be exactly one tensor here, got {len(items)}")
    return items[0]


def build_model(kind, architecture, held, where):
    """A fresh model of ``kind`` (a format name) from a parsed architecture,
    refused when it claims far more values than the ``held`` the file holds."""
    reader = _Reader(where)
    if kind == SEQUENTIAL_FORMAT:
        reader.check_sequential(architecture, "the architecture")
    else:
        reader.check_graph(architecture, "the architecture", 0)
    if reader.claimed > max(_CLAIM_FLOOR, _CLAIM_FACTOR * held):
        reader.fail(f"the architecture claims tensors of about {reader.claimed} values, "
                    f"the file holds {held}: refusing to build it")
    if kind == SEQUENTIAL_FORMAT:
        return reader.build_sequential(architecture, None, "the architecture")
    return reader.build_graph(architecture, "the architecture")
