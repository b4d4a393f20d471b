"""Multi-head self-attention as exporters write it (torch.onnx.export of
``nn.MultiheadAttention`` and of the attention in ``nn.TransformerEncoderLayer``,
pynn's own export), found around its Softmax and read as one pynn
``MultiheadAttention``.

The structure is found first: the scores MatMul before the Softmax, the
in-projections q, k and v come from (a MatMul by a constant with the
constant bias it adds, or a Gemm), the tensor x they project (reached
through layout ops), the MatMul by v, the output projection, and the layout
ops after it. The subgraph is every node between x and that output, with
the nodes that turn a key-padding mask into score biases; it must read
nothing from the model but x and the mask, and no node outside it may read
its intermediate results. Then it is evaluated in float64 at a few batch
sizes and lengths on random inputs beside pynn's attention with the
projections' weights: the heads count is the one whose results agree
(within the rounding of the file's float32 constants), and a subgraph that
agrees with none is refused, as is anything else that does not fit, by
the node."""
import math

import numpy as np

from pynn import layers
from pynn.architecture import ModelFormatError
from pynn.onnx.converters import assign
from pynn.onnx.folding import FOLDERS, MAX_FOLDED_ELEMENTS, axes_of, axis_of, evaluate
from pynn.onnx.tensors import to_array

_LAYOUT = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity")
# ops that may turn the key-padding mask into score biases outside the part
# that reads x
_MASK_OPS = ("Where", "Not", "Cast", "IsInf", "Equal", "ReduceMax", "Unsqueeze", "Reshape", "Expand",
             "Shape", "ConstantOfShape", "Concat", "Gather", "Slice", "Squeeze", "Transpose", "Mul",
             "Add", "Sub", "Neg", "Identity")
_PROBES = ((2, 3), (3, 5), (1, 4))  # (batch size, length) of the check
_TOLERANCE = 1e-6  # the graph's float32 constants (a scale of 1/√d) round
_STEPS = 24  # the longest walk through layout ops looked at
_ERRORS = (ValueError, TypeError, IndexError, KeyError, ArithmeticError, MemoryError)


class Region:
    """One attention subgraph: its Softmax, its source x, its projections,
    the candidates for its output (the output projection and the layout ops
    after it) and its nodes with the last candidate as output."""
    __slots__ = ("softmax", "source", "projections", "chain", "nodes")

    def __init__(self, softmax, source, projections, chain, nodes):
        self.softmax, self.source, self.projections = softmax, source, projections
        self.chain, self.nodes = chain, nodes

    def start(self, graph, static):
        """The index of the node before which the region is converted: the
        first after those that make what it reads."""
        made = [graph.producer.get(name) for name in entries(graph, static, self.nodes)]
        return max((index + 1 for index in made if index is not None), default=0)


def find(graph, describe):
    """The attention regions of ``graph`` (a ``patterns.Graph``) in node order;
    ``describe(node)`` starts the ModelFormatError of a malformed one."""
    static = _static_names(graph)
    regions = []
    for index, node in enumerate(graph.nodes):
        if node.op_type == "Softmax" and len(node.input) == 1 and len(node.output) == 1:
            region = _region(graph, static, index, describe)
            if region is not None:
                if any(region.nodes & other.nodes for other in regions):
                    raise ModelFormatError(f"{describe(node)}: this attention shares nodes with "
                                           f"another")
                regions.append(region)
    return static, regions


def _static_names(graph):
    """The tensors computed from the file's constants alone."""
    static = set(graph.constants)
    for node in graph.nodes:
        if all(name in static for name in node.input if name):
            static.update(name for name in node.output if name)
    return static


def _projection(node, static):
    """Whether ``node`` multiplies a tensor by a constant matrix (a Linear)."""
    if node.op_type == "MatMul":
        return len(node.input) == 2 and node.input[0] not in static and node.input[1] in static
    return (node.op_type == "Gemm" and 2 <= len(node.input) <= 3 and node.input[0] not in static
            and all(name in static for name in node.input[1:] if name))


def _upward(graph, static, name, stop):
    """The nearest nodes above ``name`` for which ``stop`` holds, walking up
    through tensors that are not constants and never through a Shape."""
    found, seen, todo = [], set(), [name]
    while todo:
        index = graph.producer.get(todo.pop())
        if index is None or index in seen:
            continue
        seen.add(index)
        node = graph.nodes[index]
        if stop(node):
            found.append(index)
        elif node.op_type != "Shape":
            todo.extend(item for item in node.input if item and item not in static)
    return found


def _data_readers(graph, name):
    return [index for index in graph.readers.get(name, []) if graph.nodes[index].op_type != "Shape"]


def _with_bias(graph, static, index):
    """The projection's output, after the constant bias Add that is its only reader."""
    name = graph.nodes[index].output[0]
    readers = graph.readers.get(name, [])
    if graph.nodes[index].op_type == "MatMul" and len(readers) == 1 and name not in graph.outputs:
        add = graph.nodes[readers[0]]
        if add.op_type == "Add" and len(add.input) == 2 and any(item in static for item in add.input):
            return name, readers[0], add.output[0]
    return name, None, name


def _region(graph, static, softmax, describe):
    """The Region around the Softmax node ``softmax``; None where no MatMul
    of two tensors makes its scores (not an attention)."""
    nodes = graph.nodes
    matmul = lambda node: node.op_type == "MatMul" and len(node.input) == 2 and all(
        item not in static for item in node.input)
    is_stop = lambda node: matmul(node) or _projection(node, static)
    scores = _upward(graph, static, nodes[softmax].input[0], is_stop)
    if len(scores) != 1 or not matmul(nodes[scores[0]]):
        return None

    def refuse(reason):
        raise ModelFormatError(f"{describe(nodes[softmax])}: an attention whose {reason}; pynn "
                               f"reads multi-head self-attention as exporters write it")

    readers = _data_readers(graph, nodes[softmax].output[0])
    if len(readers) != 1 or not matmul(nodes[readers[0]]) or \
            nodes[readers[0]].input[0] != nodes[softmax].output[0] or \
            nodes[softmax].output[0] in graph.outputs:
        names = [nodes[index].name for index in readers]
        refuse(f"probabilities are read by {names!r:.160}, not by one MatMul by v alone")
    by_v = readers[0]
    parts = [_upward(graph, static, name, is_stop) for name in
             (nodes[scores[0]].input[0], nodes[scores[0]].input[1], nodes[by_v].input[1])]
    if any(len(part) != 1 or not _projection(nodes[part[0]], static) for part in parts):
        refuse("q, k and v do not each come from one projection by a constant")
    projections = [part[0] for part in parts]
    sources = {_source(graph, static, nodes[index].input[0]) for index in projections}
    if len(sources) != 1:
        refuse(f"q, k and v project different tensors {sorted(sources)!r:.160} (cross-attention)")
    source = sources.pop()
    out = _output_projection(graph, static, nodes[by_v].output[0])
    if out is None:
        refuse("heads' output does not reach one output projection through layout ops")
    projections.append(out)
    chain = [_with_bias(graph, static, out)[2]]
    while len(chain) < 4:
        readers = _data_readers(graph, chain[-1])
        if len(readers) != 1 or nodes[readers[0]].op_type not in _LAYOUT or \
                nodes[readers[0]].input[0] != chain[-1] or chain[-1] in graph.outputs:
            break
        chain.append(nodes[readers[0]].output[0])
    members = _between(graph, static, source, chain[-1])
    _absorb_mask(graph, static, members, source)
    region = Region(softmax, source, projections, chain, members)
    check_closed(graph, region, chain[-1], describe)
    return region


def _source(graph, static, name):
    """The tensor above ``name`` through layout ops (the attention's x)."""
    for _ in range(_STEPS):
        index = graph.producer.get(name)
        if index is None or graph.nodes[index].op_type not in _LAYOUT or \
                not graph.nodes[index].input or graph.nodes[index].input[0] in static:
            return name
        name = graph.nodes[index].input[0]
    return name


def _output_projection(graph, static, name):
    """The projection reached from the attention's heads output ``name``
    through layout ops and a Mul by a tensor (the rows-without-keys mask)."""
    for _ in range(_STEPS):
        readers = _data_readers(graph, name)
        if len(readers) != 1:
            return None
        node = graph.nodes[readers[0]]
        if _projection(node, static) and node.input[0] == name:
            return readers[0]
        if node.op_type not in _LAYOUT + ("Mul",) or len(node.output) != 1:
            return None
        name = node.output[0]
    return None


def _between(graph, static, source, output):
    """The nodes computed from ``source`` that ``output`` depends on."""
    below, todo = set(), [source]
    while todo:
        for index in graph.readers.get(todo.pop(), []):
            if index not in below:
                below.add(index)
                todo.extend(graph.nodes[index].output)
    above, todo = set(), [output]
    while todo:
        index = graph.producer.get(todo.pop())
        if index is not None and index not in above and index in below:
            above.add(index)
            todo.extend(item for item in graph.nodes[index].input if item and item not in static)
    return above


def _absorb_mask(graph, static, members, source):
    """Adds to ``members`` the nodes that only they read and that prepare a
    mask or a constant (not the source's)."""
    changed = True
    while changed:
        changed = False
        for index in list(members):
            for name in graph.nodes[index].input:
                producer = graph.producer.get(name)
                if not name or name == source or producer is None or producer in members:
                    continue
                node = graph.nodes[producer]
                if node.op_type != "Constant" and (node.op_type in _MASK_OPS or name in static) and all(
                        output not in graph.outputs and set(graph.readers.get(output, [])) <= members
                        for output in node.output if output):
                    members.add(producer)
                    changed = True


def entries(graph, static, members):
    """The tensors the nodes ``members`` read from the rest of the model."""
    made = {output for index in members for output in graph.nodes[index].output}
    return {name for index in members for name in graph.nodes[index].input
            if name and name not in static and name not in made}


def check_closed(graph, region, output, describe):
    """Refuses a region whose intermediate results other nodes (or the graph's
    outputs) read."""
    for index in sorted(region.nodes):
        node = graph.nodes[index]
        for name in node.output:
            if not name or name == output:
                continue
            outside = sorted(set(graph.readers.get(name, [])) - region.nodes)
            if outside or name in graph.outputs:
                reader = (f"node {graph.nodes[outside[0]].name!r:.80}" if outside
                          else "the graph's outputs")
                raise ModelFormatError(
                    f"{describe(node)}: its output {name!r:.60} is read by {reader} outside the "
                    f"attention around Softmax {graph.nodes[region.softmax].name!r:.80}")


# -- the float64 evaluation ----------------------------------------------------------


class _Evaluator:
    """The region's tensors in float64 for given source and mask values, the
    file's constants folded on demand."""

    def __init__(self, builder, graph, static):
        self.builder, self.graph, self.static = builder, graph, static
        self.constants = {}

    def constant(self, name):
        value = self.builder.values.get(name)
        if isinstance(value, np.ndarray):
            return value
        if name not in self.constants:
            index = self.graph.producer.get(name)
            if name not in self.static or index is None:
                raise ValueError(f"{name!r:.60} is not a constant of the file")
            node = self.graph.nodes[index]
            inputs = [self.constant(item) if item else None for item in node.input]
            if node.op_type in FOLDERS:
                outputs = evaluate(node.op_type, inputs, self.builder.attributes(node))
            else:
                outputs = self._op(node, [None if item is None else _as_float64(item)
                                          for item in inputs])
            self.constants.update(zip(node.output, outputs))
        return self.constants[name]

    def run(self, members, given, wanted):
        values = dict(given)
        for index in sorted(members):
            node = self.graph.nodes[index]
            try:
                inputs = [None if not name else values[name] if name in values else
                          _as_float64(self.constant(name)) for name in node.input]
                values.update(zip(node.output, self._op(node, inputs)))
            except _ERRORS + (ModelFormatError,) as error:
                raise ModelFormatError(f"{self.builder.describe(node)}: in the attention: "
                                       f"{error}") from None
        return [values[name] for name in wanted]

    def _op(self, node, inputs):
        op, attributes = node.op_type, self.builder.attributes(node)
        if op in FOLDERS:
            return [_as_float64(value) for value in evaluate(op, inputs, attributes)]
        if op == "Dropout":
            return [inputs[0]]
        if op == "MatMul":
            return [np.matmul(inputs[0], inputs[1])]
        if op == "Gemm":
            a, b = inputs[0], inputs[1]
            a = a.T if attributes.int("transA", 0) else a
            b = b.T if attributes.int("transB", 0) else b
            result = attributes.float("alpha", 1.0) * (a @ b)
            if len(inputs) > 2 and inputs[2] is not None:
                result = result + attributes.float("beta", 1.0) * inputs[2]
            return [result]
        if op == "Softmax":
            return [_softmax(inputs[0], axis_of(attributes.int("axis", -1), inputs[0].ndim))]
        if op == "Where":
            return [np.where(inputs[0].astype(bool), inputs[1], inputs[2])]
        if op == "ConstantOfShape":
            return [np.full(_bounded(inputs[0].reshape(-1)), _fill_value(node))]
        if op == "Not":
            return [np.logical_not(inputs[0])]
        if op == "IsInf":
            x = inputs[0]
            return [(np.isposinf(x) & bool(attributes.int("detect_positive", 1)))
                    | (np.isneginf(x) & bool(attributes.int("detect_negative", 1)))]
        if op == "Equal":
            return [np.equal(inputs[0], inputs[1])]
        if op == "Expand":
            shape = np.broadcast_shapes(inputs[0].shape, _bounded(inputs[1].reshape(-1)))
            return [np.broadcast_to(inputs[0], _bounded(shape)).copy()]
        if op in ("ReduceMax", "ReduceSum"):
            x = inputs[0]
            if op == "ReduceSum" or self.builder.opset >= 18:
                axes = None if len(inputs) < 2 or inputs[1] is None else inputs[1].reshape(-1)
            else:
                axes = attributes.ints("axes", None)
            axes = tuple(range(x.ndim)) if axes is None or len(axes) == 0 else tuple(
                axes_of(axes, x.ndim))
            reduce = np.max if op == "ReduceMax" else np.sum
            return [reduce(x, axis=axes, keepdims=bool(attributes.int("keepdims", 1)))]
        raise ValueError(f"{op:.40} is not an op pynn reads inside an attention")


def _fill_value(node):
    """ConstantOfShape's value (float 0 by default), a float as float64."""
    for attribute in node.attribute:
        if attribute.name == "value":
            value = to_array(attribute.t, None, "ConstantOfShape value")
            if value.size != 1:
                raise ValueError("ConstantOfShape's value must hold one element")
            return _as_float64(value).reshape(-1)[0]
    return np.float64(0.0)


def _bounded(shape):
    """``shape`` as a tuple of sizes, refused beyond what folding may produce."""
    shape = tuple(int(extent) for extent in shape)
    if any(extent < 0 for extent in shape) or math.prod(shape) > MAX_FOLDED_ELEMENTS:
        raise ValueError(f"a tensor of shape {shape!r:.80} inside the attention is too large")
    return shape


def _softmax(x, axis):
    shifted = np.exp(x - x.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def _as_float64(value):
    value = np.asarray(value)
    return value.astype(np.float64) if value.dtype.kind == "f" else value


# -- the pynn layer --------------------------------------------------------------------


def convert(builder, graph, static, region):
    """The ``MultiheadAttention`` (after a ``PaddingMask`` for an int64 mask)
    the region computes, its output defined in ``builder``; returns the
    indices of the nodes it stands for."""
    softmax = graph.nodes[region.softmax]
    try:
        return _convert(builder, graph, static, region)
    except ModelFormatError:
        raise
    except _ERRORS as error:
        raise ModelFormatError(f"{builder.describe(softmax)}: {error}") from None


def _convert(builder, graph, static, region):
    x = builder.values.get(region.source)
    if not builder.is_symbolic(x) or x.dtype != "float32" or len(x.shape) != 2 or x.shape[1] is None:
        raise ValueError(f"the attention's input {region.source!r:.60} must be a float32 tensor "
                         f"[N, T, E] computed before the attention")
    embed = x.shape[1]
    extra = sorted(entries(graph, static, region.nodes) - {region.source})
    if len(extra) > 1:
        raise ValueError(f"the attention reads {extra!r:.160} besides its input; it may read one "
                         f"key-padding mask")
    mask = builder.values.get(extra[0]) if extra else None
    if extra and (not builder.is_symbolic(mask) or mask.shape != x.shape[:1]
                  or mask.dtype not in ("bool", "float32", "int64")):
        raise ValueError(f"the key-padding mask {extra[0]!r:.60} must be a bool, float32 or int64 "
                         f"tensor [N, T] computed before the attention")
    evaluator = _Evaluator(builder, graph, static)
    in_proj, out_proj = _weights(evaluator, graph, static, region.projections, embed)
    checks = _probe_values(evaluator, region, x, mask, extra, embed)
    output = next((position for position in range(len(region.chain))
                   if all(outputs[position].shape == given[0].shape for given, outputs in checks)),
                  None)
    if output is None:
        raise ValueError(f"no tensor after the output projection is [N, T, {embed}] as the input")
    heads = next((count for count in range(1, embed + 1) if embed % count == 0 and all(
        _agrees(outputs[output], _reference(*given, in_proj, out_proj, count))
        for given, outputs in checks)), None)
    if heads is None:
        raise ValueError("the subgraph does not compute multi-head attention with the weights of "
                         "its projections for any heads count")
    name = region.chain[output]
    members = _between(graph, static, region.source, name)
    _absorb_mask(graph, static, members, region.source)
    check_closed(graph, Region(region.softmax, region.source, region.projections,
                               region.chain[:output + 1], members), name, builder.describe)
    builder.index = graph.producer[name]
    last = graph.nodes[builder.index]
    has_bias = any(bias is not None for _, bias in (in_proj, out_proj))
    layer = builder.layer(last, layers.MultiheadAttention, embed, heads, bias=has_bias,
                          pattern="MultiheadAttention")
    assign(layer, "in_proj_weight", in_proj[0])
    assign(layer, "out_proj.weight", out_proj[0])
    if has_bias:
        for key, (weight, bias) in (("in_proj_bias", in_proj), ("out_proj.bias", out_proj)):
            assign(layer, key, np.zeros(weight.shape[0]) if bias is None else bias)
    if mask is not None and mask.dtype == "int64":
        mask = builder.call(builder.layer(last, layers.PaddingMask, pattern="PaddingMask"), mask)
    builder.values[name] = builder.call(layer, x if mask is None else [x, mask])
    return members


def _weights(evaluator, graph, static, projections, embed):
    """((in_proj_weight [3E, E], its bias or None), (out_proj.weight, its bias or None))."""
    q, k, v, out = (_linear(evaluator, graph, static, index) for index in projections)
    if projections[0] == projections[1] == projections[2]:
        in_proj = q
    elif len(set(projections[:3])) == 3:
        biases = [bias for _, bias in (q, k, v)]
        in_proj = (np.concatenate([q[0], k[0], v[0]]), None if all(b is None for b in biases) else
                   np.concatenate([np.zeros(embed) if b is None else b for b in biases]))
    else:
        raise ValueError("q, k and v come from two projections")
    if in_proj[0].shape != (3 * embed, embed) or out[0].shape != (embed, embed):
        raise ValueError(f"the projections' weights {in_proj[0].shape} and {out[0].shape} do not "
                         f"fit an attention over {embed} features")
    return in_proj, out


def _linear(evaluator, graph, static, index):
    """(weight [out, in], bias or None) of a projection node, float64."""
    node = graph.nodes[index]
    attributes = evaluator.builder.attributes(node)
    weight = _as_float64(evaluator.constant(node.input[1]))
    if weight.ndim != 2 or weight.dtype.kind != "f":
        raise ValueError(f"the projection {node.name!r:.60} has a weight of shape {weight.shape}")
    bias = None
    if node.op_type == "Gemm":
        if attributes.int("transA", 0):
            raise ValueError(f"the projection {node.name!r:.60} transposes its input")
        weight = (weight if attributes.int("transB", 0) else weight.T) * attributes.float("alpha", 1.0)
        if len(node.input) > 2 and node.input[2]:
            bias = _as_float64(evaluator.constant(node.input[2])) * attributes.float("beta", 1.0)
    else:
        weight = weight.T
        _, add, _ = _with_bias(graph, static, index)
        if add is not None:
            other = [name for name in graph.nodes[add].input if name != node.output[0]]
            bias = _as_float64(evaluator.constant(other[0]))
    if bias is not None:
        if bias.dtype.kind != "f" or bias.size not in (1, weight.shape[0]) or \
                any(extent != 1 for extent in bias.shape[:-1]):
            raise ValueError(f"the projection {node.name!r:.60} has a bias of shape {bias.shape}")
        bias = np.broadcast_to(bias.reshape(-1), weight.shape[:1]).copy()
    return weight, bias


def _probe_values(evaluator, region, x, mask, extra, embed):
    """[((x, mask values), chain values)] at each probe, on random inputs."""
    rng = np.random.default_rng(0)
    checks = []
    for batch, length in _PROBES:
        length = length if x.shape[0] is None else x.shape[0]
        source = rng.standard_normal((batch, length, embed))
        given = {region.source: source}
        padded = None
        if mask is not None:
            padded = rng.random((batch, length)) < 0.4
            padded[:, 0] = False  # a row without keys is NaN in ONNX, zero in pynn
            given[extra[0]] = {"bool": padded, "int64": np.where(padded, 0, 1),
                               "float32": np.where(padded, -np.inf, 0.0)}[mask.dtype]
        try:
            checks.append(((source, padded), evaluator.run(region.nodes, given, region.chain)))
        except ModelFormatError as error:
            raise ModelFormatError(f"{error} (a batch of {batch}, length {length})") from None
    return checks


def _reference(x, padded, in_proj, out_proj, heads):
    """pynn's attention in float64: softmax(q kᵀ / √d + mask) v, projected."""
    (weight, bias), (out_weight, out_bias) = in_proj, out_proj
    batch, length, embed = x.shape
    size = embed // heads
    packed = x @ weight.T + (0.0 if bias is None else bias)
    q, k, v = (packed[..., part * embed:(part + 1) * embed].reshape(batch, length, heads, size)
               .transpose(0, 2, 1, 3) for part in range(3))
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(size)
    if padded is not None:
        scores = scores + np.where(padded, -np.inf, 0.0)[:, None, None, :]
    attended = (_softmax(scores, -1) @ v).transpose(0, 2, 1, 3).reshape(batch, length, embed)
    return attended @ out_weight.T + (0.0 if out_bias is None else out_bias)


def _agrees(value, reference):
    return value.shape == reference.shape and bool(np.all(
        np.abs(value - reference) <= _TOLERANCE * (1.0 + np.abs(reference).max())))
