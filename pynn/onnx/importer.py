"""``pynn.onnx.load(path) -> Model``: an ONNX graph as a pynn graph model.

The file is untrusted input: it is parsed by the ``onnx`` package's protobuf
classes only (never its checker, shape inference or external-data loader),
with a size limit, and every field pynn uses is checked here. Each node
becomes pynn layers called on symbolic tensors (pynn/onnx/converters.py),
or is folded at load when its inputs are constants or shapes
(pynn/onnx/folding.py); anything else raises ``ModelFormatError`` naming the
node, its op type and the opset."""
import os

import numpy as np

from pynn import layers
from pynn.architecture import ModelFormatError
from pynn.layers.symbolic import Input, SymbolicTensor
from pynn.model import Model
from pynn.onnx import arithmetic, attention, converters, patterns, shapes
from pynn.onnx.arithmetic import matmul_bias_fits, per_channel
from pynn.onnx.converters import assign, check_normalized_size
from pynn.onnx.folding import FOLDERS, PROBES, axes_of, collapsed, concrete, evaluate
from pynn.onnx.tensors import MAX_RANK, checked_dims, to_array

CONVERTERS = {**converters.CONVERTERS, **shapes.CONVERTERS, **arithmetic.CONVERTERS}
MAX_FILE_BYTES = 2 ** 31 - 1   # protobuf's own limit for one message
OPSETS = range(13, 22)
FIRST_OPSET = {"LayerNormalization": 17, "Gelu": 20}
# op -> (required inputs, most inputs); the required ones must be named
_UNARY = ("Relu", "Sigmoid", "Tanh", "HardSwish", "LeakyRelu", "Gelu", "HardSigmoid", "Softmax",
          "LogSoftmax", "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten", "Transpose",
          "Identity", "Cast", "Shape", "Size", "Sqrt", "Neg", "Floor", "Ceil", "Abs", "Erf")
INPUT_COUNTS = dict.fromkeys(_UNARY, (1, 1))
INPUT_COUNTS.update(dict.fromkeys(("Add", "Sub", "Mul", "Div", "Mod", "Pow", "MatMul", "Gather",
                                   "Reshape", "Unsqueeze"), (2, 2)))
INPUT_COUNTS.update({"Conv": (2, 3), "Gemm": (2, 3), "BatchNormalization": (5, 5),
                     "LayerNormalization": (2, 3), "Clip": (1, 3), "ReduceMean": (1, 2),
                     "Squeeze": (1, 2), "Slice": (3, 5), "Dropout": (1, 3), "Concat": (1, 2 ** 16),
                     "Constant": (0, 0), "Where": (3, 3)})
_ATTRIBUTE_TYPES = {"float": 1, "int": 2, "string": 3, "tensor": 4, "floats": 6, "ints": 7}
_INPUT_TYPES = {1: "float32", 7: "int64", 9: "bool"}
_ERRORS = (ValueError, TypeError, IndexError, KeyError, ArithmeticError, MemoryError,
           UnicodeError, RecursionError)


def _onnx():
    try:
        import onnx
    except ImportError as error:
        raise ImportError("pynn.onnx needs the onnx package: install the extra "
                          "`pip install pynn-runtime[onnx]`") from error
    return onnx


def load(path):
    """The ONNX model at ``path`` as a ``pynn.Model`` (see API.md, "ONNX")."""
    onnx = _onnx()
    path = os.fspath(path)
    where = f"pynn.onnx.load({os.path.basename(path)!r})"
    size = os.path.getsize(path)
    if size > MAX_FILE_BYTES:
        raise ModelFormatError(f"{where}: the file holds {size} bytes, more than the "
                               f"{MAX_FILE_BYTES} an ONNX model may")
    with open(path, "rb") as stream:
        data = stream.read(MAX_FILE_BYTES + 1)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as error:  # the protobuf runtime's DecodeError and its kin
        raise ModelFormatError(f"{where}: not an ONNX model: {error}") from None
    try:
        with np.errstate(all="ignore"):  # the file's constants may hold inf and NaN
            return _Builder(model, os.path.dirname(os.path.abspath(path)), where).build()
    except ModelFormatError:
        raise
    except _ERRORS as error:
        raise ModelFormatError(f"{where}: {type(error).__name__}: {error}") from None


def _opset_of(model, where):
    versions = [entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")]
    if len(versions) != 1:
        raise ModelFormatError(f"{where}: the model must import the default ONNX opset once, "
                               f"got {len(versions)} imports")
    if versions[0] not in OPSETS:
        raise ModelFormatError(f"{where}: opset {versions[0]} is not supported (pynn reads "
                               f"opsets {OPSETS.start} to {OPSETS.stop - 1})")
    return int(versions[0])


def sanitised(text):
    """``text`` as a pynn layer name: '/' and ':' separate parts, whitespace
    and unprintable characters become '_', empty parts go."""
    text = text.replace("/", ".").replace(":", ".").replace("\\", ".")
    text = "".join("_" if character.isspace() or not character.isprintable() else character
                   for character in text)
    return ".".join(part for part in text.split(".") if part)[:200]


class _Attributes:
    """A node's attributes, each read with the type pynn expects."""

    def __init__(self, node):
        self.by_name = {}
        for attribute in node.attribute:
            if attribute.name in self.by_name:
                raise ValueError(f"attribute {attribute.name!r:.40} is given twice")
            self.by_name[attribute.name] = attribute

    def _get(self, name, kind):
        attribute = self.by_name.get(name)
        if attribute is not None and attribute.type != _ATTRIBUTE_TYPES[kind]:
            raise ValueError(f"attribute {name} must be of type {kind}, got type {attribute.type}")
        return attribute

    def int(self, name, default):
        attribute = self._get(name, "int")
        return default if attribute is None else int(attribute.i)

    def ints(self, name, default):
        attribute = self._get(name, "ints")
        if attribute is None:
            return default
        if len(attribute.ints) > 64:
            raise ValueError(f"attribute {name} holds {len(attribute.ints)} integers")
        return [int(value) for value in attribute.ints]

    def float(self, name, default):
        attribute = self._get(name, "float")
        return default if attribute is None else float(attribute.f)

    def string(self, name, default):
        attribute = self._get(name, "string")
        return default if attribute is None else attribute.s.decode("utf-8")


class _Builder:
    """One load: the values of the graph's tensors and the layers made so far."""

    def __init__(self, model, folder, where):
        self.model, self.folder, self.where = model, folder, where
        self.opset = _opset_of(model, where)
        self.graph = model.graph
        self.values = {}
        self.taken, self.prefixes = set(), set()
        self.length_names = set()
        self.foldable = {}  # id(symbolic tensor) -> (the Linear or convolution that made it, it)
        self.outputs = {output.name for output in self.graph.output}
        self.readers, self.first_reader, self.producers = {}, {}, {}
        for node in self.graph.node:
            for name in node.output:
                self.producers.setdefault(name, node)
            for name in node.input:
                if name:
                    self.readers[name] = self.readers.get(name, 0) + 1
                    self.first_reader.setdefault(name, node)

    # -- the whole graph ---------------------------------------------------------
    def build(self):
        graph = self.graph
        if graph.sparse_initializer:
            raise ModelFormatError(f"{self.where}: sparse initializers are not supported")
        for tensor in graph.initializer:
            self._define(tensor.name, to_array(tensor, self.folder, f"{self.where}: initializer"),
                         "initializer")
        inputs = [self._input(value) for value in graph.input if value.name not in self.values]
        if not inputs:
            raise ModelFormatError(f"{self.where}: the graph has no input")
        nodes = list(graph.node)
        for index, node in enumerate(nodes):
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                self._run(index, node, self._constant)
        constants = {name: value for name, value in self.values.items()
                     if isinstance(value, np.ndarray)}
        graph = patterns.Graph(nodes, constants, self.outputs, self._pattern_axes)
        matches, absorbed = patterns.find(graph)
        static, regions = attention.find(graph, self.describe)
        starts = {}
        for region in regions:
            absorbed |= region.nodes
            starts.setdefault(region.start(graph, static), []).append(region)
        for index, node in enumerate(nodes):
            for region in starts.get(index, ()):
                self._attention(graph, static, region, index, absorbed)
            if index in absorbed or node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                continue
            match = matches.get(index)
            if match is None:
                self._run(index, node, self._node)
            else:
                self._run(index, node, lambda node, match=match: self._pattern(node, match), True)
        return self._model(inputs)

    def _attention(self, graph, static, region, index, absorbed):
        """Converts an attention region; the nodes after its output that it
        was thought to cover are converted as usual."""
        released = region.nodes - attention.convert(self, graph, static, region)
        early = sorted(position for position in released if position < index)
        if early:
            raise ModelFormatError(f"{self.describe(graph.nodes[early[0]])}: comes before the "
                                   f"inputs of the attention it follows")
        absorbed -= released

    def _model(self, inputs):
        outputs = []
        for output in self.graph.output:
            value = self.values.get(output.name)
            if not isinstance(value, SymbolicTensor):
                raise ModelFormatError(f"{self.where}: graph output {output.name!r:.60} is "
                                       f"{'never computed' if value is None else 'a constant'}; "
                                       f"pynn models compute every output from the inputs")
            declared = self._declared_shape(output)
            if declared is not None and any(want is not None and want != have for want, have in
                                            zip(declared[1:], value.shape)) or (
                    declared is not None and len(declared) != len(value.shape) + 1):
                raise ModelFormatError(f"{self.where}: graph output {output.name!r:.60} is "
                                       f"declared {declared}, computed (N,) + {value.shape}")
            outputs.append(value)
        if not outputs:
            raise ModelFormatError(f"{self.where}: the graph has no output")
        try:
            return Model(inputs if len(inputs) > 1 else inputs[0],
                         outputs if len(outputs) > 1 else outputs[0])
        except _ERRORS as error:
            raise ModelFormatError(f"{self.where}: {error}") from None

    def _declared_shape(self, value_info):
        """The declared shape (None for a symbolic extent), or None if undeclared."""
        if not value_info.type.HasField("tensor_type"):
            return None
        tensor_type = value_info.type.tensor_type
        if not tensor_type.HasField("shape"):
            return None
        return tuple(int(dim.dim_value) if dim.HasField("dim_value") else None
                     for dim in tensor_type.shape.dim)

    def _length_names(self, value_info):
        """Per axis after the batch axis: the symbolic name of a variable extent, else None."""
        dims = value_info.type.tensor_type.shape.dim
        return [dim.dim_param or None if not dim.HasField("dim_value") else None
                for dim in list(dims)[1:]]

    def _input(self, value_info):
        where = f"{self.where}: graph input {value_info.name!r:.60}"
        element = value_info.type.tensor_type.elem_type if value_info.type.HasField(
            "tensor_type") else None
        if element not in _INPUT_TYPES:
            raise ModelFormatError(f"{where}: pynn takes float32, int64 or bool tensor inputs, got "
                                   f"element type {element}")
        shape = self._declared_shape(value_info)
        lengths = self._length_names(value_info)
        if shape is None or not 1 <= len(shape) <= MAX_RANK or any(
                extent is None and name is None for extent, name in zip(shape[1:], lengths)):
            raise ModelFormatError(f"{where}: needs a static shape apart from the batch axis "
                                   f"first and named sequence lengths, got {shape}")
        self.length_names.update(name for name in lengths if name is not None)
        if len(self.length_names) > 1:
            raise ModelFormatError(f"{where}: the inputs name the variable lengths "
                                   f"{sorted(self.length_names)!r:.120}; pynn reads one")
        checked_dims([extent for extent in shape[1:] if extent is not None], where)
        tensor = Input(shape[1:], dtype=_INPUT_TYPES[element],
                       name=self._unique(sanitised(value_info.name) or "input"))
        self._define(value_info.name, tensor, where)
        return tensor

    def _define(self, name, value, where):
        if not name:
            raise ModelFormatError(f"{self.where}: {where} has an empty name")
        if name in self.values:
            raise ModelFormatError(f"{self.where}: {where} defines {name!r:.60}, defined before")
        self.values[name] = value

    # -- one node ----------------------------------------------------------------
    def describe(self, node):
        name = f"node {node.name!r:.80}" if node.name else "an unnamed node"
        return f"{self.where}: {name} ({node.op_type:.40}, opset {self.opset})"

    def _run(self, index, node, convert, pattern=False):
        self.index = index
        try:
            if node.domain not in ("", "ai.onnx"):
                raise ValueError(f"domain {node.domain!r:.40} is not supported")
            if self.opset < FIRST_OPSET.get(node.op_type, 0):
                raise ValueError(f"{node.op_type} needs opset {FIRST_OPSET[node.op_type]}")
            if node.op_type not in INPUT_COUNTS:
                raise ValueError("this op is not supported")
            required, most = INPUT_COUNTS[node.op_type]
            if not required <= len(node.input) <= most or not all(node.input[:required]):
                raise ValueError(f"takes {required} to {most} inputs, the first {required} "
                                 f"named; got {list(node.input)!r:.120}")
            for name in () if pattern else node.input:  # a pattern reads its source alone
                if name and name not in self.values:
                    raise ValueError(f"input {name!r:.60} is not defined before this node")
            outputs = convert(node)
            for position, name in enumerate(node.output):
                if not name:
                    continue
                if position >= len(outputs):
                    if self.readers.get(name) or name in self.outputs:
                        raise ValueError(f"output {position} is not supported")
                    continue
                self._define(name, outputs[position], f"output {position}")
        except ModelFormatError as error:
            if str(error).startswith(self.describe(node)):
                raise
            raise ModelFormatError(f"{self.describe(node)}: {error}") from None
        except _ERRORS as error:
            raise ModelFormatError(f"{self.describe(node)}: {error}") from None

    def _constant(self, node):
        if node.input:
            raise ValueError("a Constant takes no inputs")
        attributes = _Attributes(node).by_name
        if len(attributes) != 1:
            raise ValueError(f"a Constant needs exactly one value attribute, got {sorted(attributes)}")
        (name, attribute), = attributes.items()
        kinds = {"value": ("tensor", None), "value_float": ("float", np.float32),
                 "value_floats": ("floats", np.float32), "value_int": ("int", np.int64),
                 "value_ints": ("ints", np.int64)}
        if name not in kinds or attribute.type != _ATTRIBUTE_TYPES[kinds[name][0]]:
            raise ValueError(f"attribute {name!r:.40} of type {attribute.type} is not a value "
                             f"pynn reads")
        if name == "value":
            return [to_array(attribute.t, self.folder, self.describe(node))]
        field = {"float": "f", "floats": "floats", "int": "i", "ints": "ints"}[kinds[name][0]]
        return [np.array(getattr(attribute, field), dtype=kinds[name][1])]

    def _node(self, node):
        op = node.op_type
        values = [self.input(node, position) for position in range(len(node.input))]
        if any(isinstance(value, SymbolicTensor) for value in values):
            if op == "Shape":
                return [self._shape_of(node, values[0])]
            if op not in CONVERTERS:
                raise ValueError("this op is not supported" if op not in FOLDERS else
                                 "this op is supported on constants and shapes only")
            return CONVERTERS[op](self, node)
        if op not in FOLDERS:
            raise ValueError("this op is not supported" if op not in CONVERTERS else
                             "this op needs an input computed from the model's inputs")
        return evaluate(op, values, _Attributes(node))

    def _shape_of(self, node, tensor):
        attributes = _Attributes(node)
        rank = len(tensor.shape) + 1
        window = slice(attributes.int("start", 0), attributes.int("end", rank))
        return collapsed([np.array(concrete(tensor.shape, probe)[window], dtype=np.int64)
                          for probe in PROBES])

    def _pattern(self, node, match):
        x = self.values.get(match.source)
        if match.kind == "PaddingMask":
            if not isinstance(x, SymbolicTensor) or x.dtype != "int64":
                raise ValueError("the PaddingMask pattern needs an int64 tensor input")
            return [self.call(self.layer(node, layers.PaddingMask), x)]
        if not isinstance(x, SymbolicTensor) or x.dtype != "float32":
            raise ValueError(f"the {match.kind} pattern needs a float32 tensor input")
        if match.kind in ("GELU", "SiLU"):
            kind = layers.GELU if match.kind == "GELU" else layers.SiLU
            return [self.call(self.layer(node, kind, pattern=match.kind), x)]
        if match.kind == "MeanPooling":
            mask = self.values.get(match.details["mask"])
            if not isinstance(mask, SymbolicTensor) or mask.dtype != "int64":
                raise ValueError("the MeanPooling pattern needs an int64 mask computed from the "
                                 "model's inputs")
            return [self.call(self.layer(node, layers.MeanPooling), [x, mask])]
        details = match.details
        rank = len(x.shape) + 1
        axes = sorted(axes_of(details["axes"], rank))
        if not axes or axes != list(range(rank - len(axes), rank)) or 0 in axes:
            raise ValueError(f"the LayerNorm pattern reduces axes {details['axes']}, not the "
                             f"trailing axes after the batch")
        shape = x.shape[axes[0] - 1:]
        weight = details["weight"]
        check_normalized_size(shape, weight)
        layer = self.layer(node, layers.LayerNorm, list(shape), eps=float(details["eps"]),
                           bias=details["bias"] is not None, pattern="LayerNorm")
        assign(layer, "weight", np.broadcast_to(
            np.ones((), np.float32) if weight is None else weight, shape))
        if details["bias"] is not None:
            assign(layer, "bias", np.broadcast_to(details["bias"], shape))
        return [self.call(layer, x)]

    # -- what converters use -----------------------------------------------------
    def input(self, node, position):
        """The value of input ``position``, None when absent."""
        if position >= len(node.input) or not node.input[position]:
            return None
        return self.values[node.input[position]]

    def is_symbolic(self, value):
        return isinstance(value, SymbolicTensor)

    def sym(self, node, position):
        value = self.input(node, position)
        if not isinstance(value, SymbolicTensor):
            raise ValueError(f"input {position} must be computed from the model's inputs")
        return value

    def const(self, node, position, what):
        value = self.input(node, position)
        if not isinstance(value, np.ndarray):
            raise ValueError(f"{what} (input {position}) must be a constant of the file")
        return value

    def attributes(self, node):
        return _Attributes(node)

    def refuse_extra_outputs(self, node, count):
        for name in node.output[count:]:
            if name and (self.readers.get(name) or name in self.outputs):
                raise ValueError(f"only the first {count} output(s) are supported")

    def reduce_axes(self, node, rank):
        axes = self._pattern_axes(node)
        if axes is None:
            raise ValueError("the axes must be given (as a constant)")
        return axes_of(axes, rank)

    def _pattern_axes(self, node):
        """A reduction's axes (ReduceMean's an attribute before opset 18, an
        input since; ReduceSum's an input), or None when they are absent or
        not a constant."""
        if self.opset < 18 and node.op_type != "ReduceSum":
            return _Attributes(node).ints("axes", None)
        if len(node.input) < 2 or not isinstance(self.values.get(node.input[1]), np.ndarray):
            return None
        axes = self.values[node.input[1]]
        return [int(axis) for axis in axes.reshape(-1)] if axes.dtype.kind in "iu" else None

    def layer(self, node, kind, *arguments, suffix=None, pattern=None, **keywords):
        """A ``kind`` layer named after ``node`` (plus ``suffix``); a
        ``pattern``'s layer takes the pattern's name in place of the node's op."""
        base = sanitised(node.name) or f"{node.op_type.lower()}_{self.index}"
        if pattern is not None:
            base = ".".join(base.split(".")[:-1] + [pattern])
        return kind(*arguments, **keywords, name=self._unique(f"{base}_{suffix}" if suffix else base))

    def _unique(self, base):
        """``base`` or a variant no other layer's name equals, lies under or covers."""
        if any(prefix in self.taken for prefix in _prefixes(base)):
            base = base.replace(".", "_")  # under another layer's name: one flat name instead
        candidate, count = base, 1
        while candidate in self.taken or candidate in self.prefixes:
            count += 1
            candidate = f"{base}_{count}"
        self.taken.add(candidate)
        self.prefixes.update(_prefixes(candidate))
        return candidate

    def call(self, layer, inputs, foldable=False):
        result = layer(inputs)
        if foldable:
            self.foldable[id(result)] = (layer, result)
        return result

    def _sole_reader_of_input(self, node, tensor):
        """Whether ``tensor`` reaches ``node`` through a name no other node reads."""
        names = [name for name in node.input if self.values.get(name) is tensor]
        return (len(names) == 1 and self.readers.get(names[0]) == 1
                and names[0] not in self.outputs)

    def foldable_bias(self, node, features, rank):
        """Whether the only reader of this MatMul's output adds a constant bias
        of ``features`` values, which the Linear then takes."""
        name = node.output[0] if node.output else ""
        if self.readers.get(name) != 1 or name in self.outputs:
            return None
        reader = self.first_reader[name]
        if reader.op_type != "Add" or len(reader.input) != 2 or reader.domain not in ("", "ai.onnx"):
            return None
        other = reader.input[1] if reader.input[0] == name else reader.input[0]
        value = self.values.get(other)
        if not isinstance(value, np.ndarray) or not matmul_bias_fits(value, features, rank):
            return None
        return value

    def fold_affine(self, node, x, scale, shift):
        """``x · scale + shift`` folded into the Linear or convolution that
        made ``x`` when this node is its only reader and the constants are
        per output channel; the folded tensor, or None."""
        made = self.foldable.get(id(x))
        if made is None or made[1] is not x or not self._sole_reader_of_input(node, x):
            return None
        layer = made[0]
        channels = per_channel(layer, x.shape, scale, shift)
        if channels is None or (shift is not None and "bias" not in layer.params):
            return None
        scale, shift = channels
        weight = layer.params["weight"]
        if scale is not None:
            weight *= scale.reshape((-1,) + (1,) * (weight.ndim - 1))
            if "bias" in layer.params:
                layer.params["bias"] *= scale
        if shift is not None:
            layer.params["bias"] += shift
        return x


def _prefixes(name):
    parts = name.split(".")
    return {".".join(parts[:end]) for end in range(1, len(parts))}
