"""Op sequences exporters emit for one pynn layer, found before conversion:
the exact GELU ``x · 0.5 · (1 + erf(x / √2))``, SiLU ``x · sigmoid(x)`` and
the decomposed LayerNorm
``(x - mean) / √(mean((x - mean)²) + eps) · weight + bias`` (the square as
``Pow`` or ``Mul``), and pynn's
translations of PaddingMask and MeanPooling. Each match
names its last node, which becomes the layer, and the nodes it absorbs;
every intermediate result must be read by the pattern alone."""
import math

import numpy as np


class Match:
    __slots__ = ("kind", "source", "absorbed", "last", "details")

    def __init__(self, kind, source, absorbed, last, details=None):
        self.kind, self.source, self.absorbed = kind, source, absorbed
        self.last, self.details = last, details


class Graph:
    """Producers and readers of each tensor name, and the constants known before conversion."""

    def __init__(self, nodes, constants, outputs, reduce_axes):
        self.nodes, self.constants, self.outputs = nodes, constants, outputs
        self.reduce_axes = reduce_axes
        self.producer, self.readers = {}, {}
        for index, node in enumerate(nodes):
            for name in node.output:
                self.producer.setdefault(name, index)
            for name in node.input:
                self.readers.setdefault(name, []).append(index)

    def sole_reader(self, name, op):
        """The one node reading ``name`` if it is an ``op``, else None."""
        readers = self.readers.get(name, [])
        if len(readers) != 1 or name in self.outputs:
            return None
        node = self.nodes[readers[0]]
        return readers[0] if node.op_type == op else None

    def made_by(self, name, op):
        index = self.producer.get(name)
        if index is None or self.nodes[index].op_type != op:
            return None
        return index

    def split(self, index):
        """(the non-constant input, the constant's scalar value) of a binary node."""
        node = self.nodes[index]
        if len(node.input) != 2 or len(node.output) != 1:
            return None, None
        first, second = node.input
        for tensor, other in ((first, second), (second, first)):
            value = self.constants.get(other)
            if value is not None and tensor not in self.constants:
                if value.size == 1 and value.dtype.kind == "f":
                    return tensor, float(value.reshape(()))
                return tensor, value
        return None, None

    def output(self, index):
        return self.nodes[index].output[0] if len(self.nodes[index].output) == 1 else None


def _near(value, expected):
    return isinstance(value, float) and math.isclose(value, expected, rel_tol=1e-5)


def _gelu(graph, erf):
    """The GELU whose Erf node is ``erf``, or None."""
    divide = graph.made_by(graph.nodes[erf].input[0], "Div") if graph.nodes[erf].input else None
    multiply = graph.made_by(graph.nodes[erf].input[0], "Mul") if graph.nodes[erf].input else None
    scaled = divide if divide is not None else multiply
    if scaled is None or graph.sole_reader(graph.output(scaled), "Erf") != erf:
        return None
    x, factor = graph.split(scaled)
    if x is None or not _near(factor, math.sqrt(2.0) if divide is not None else math.sqrt(0.5)):
        return None
    plus_one = graph.sole_reader(graph.output(erf), "Add")
    if plus_one is None or graph.split(plus_one)[0] != graph.output(erf) or not _near(
            graph.split(plus_one)[1], 1.0):
        return None
    product = graph.sole_reader(graph.output(plus_one), "Mul")
    if product is None or len(graph.nodes[product].input) != 2:
        return None
    other = [name for name in graph.nodes[product].input if name != graph.output(plus_one)]
    if len(other) != 1:
        return None
    absorbed = [scaled, erf, plus_one]
    halved = graph.made_by(other[0], "Mul")
    if other[0] == x:        # (x · (1 + erf)) · 0.5
        last = graph.sole_reader(graph.output(product), "Mul")
        if last is None or graph.split(last)[0] != graph.output(product) or not _near(
                graph.split(last)[1], 0.5):
            return None
        return Match("GELU", x, absorbed + [product], last)
    if halved is not None and graph.split(halved)[0] == x and _near(graph.split(halved)[1], 0.5) \
            and graph.sole_reader(other[0], "Mul") == product:   # (x · 0.5) · (1 + erf)
        return Match("GELU", x, absorbed + [halved], product)
    return None


def _silu(graph, sigmoid):
    """The SiLU whose Sigmoid node is ``sigmoid``, or None."""
    node = graph.nodes[sigmoid]
    if len(node.input) != 1 or graph.output(sigmoid) is None:
        return None
    product = graph.sole_reader(graph.output(sigmoid), "Mul")
    if product is None or sorted(graph.nodes[product].input) != sorted(
            [node.input[0], graph.output(sigmoid)]):
        return None
    return Match("SiLU", node.input[0], [sigmoid], product)


def _squares(graph, index, name):
    """Whether node ``index`` is ``name`` ** 2 or ``name`` · ``name``."""
    node = graph.nodes[index]
    if node.op_type == "Mul":
        return list(node.input) == [name, name] and len(node.output) == 1
    tensor, exponent = graph.split(index)
    return tensor == name and exponent is not None and np.size(exponent) == 1 and float(
        np.reshape(exponent, ())) == 2


def _layer_norm(graph, mean):
    """The LayerNorm whose first ReduceMean node is ``mean``, or None."""
    node = graph.nodes[mean]
    if len(node.input) < 1 or len(node.output) != 1:
        return None
    x, axes = node.input[0], graph.reduce_axes(node)
    centred = graph.sole_reader(graph.output(mean), "Sub")
    if axes is None or centred is None or list(graph.nodes[centred].input) != [x, node.output[0]]:
        return None
    readers = set(graph.readers.get(graph.output(centred), []))
    if len(readers) != 2 or graph.output(centred) in graph.outputs:
        return None
    square = next((i for i in readers if graph.nodes[i].op_type in ("Pow", "Mul")), None)
    divide = next((i for i in readers if graph.nodes[i].op_type == "Div"), None)
    if square is None or divide is None or not _squares(graph, square, graph.output(centred)):
        return None
    variance = graph.sole_reader(graph.output(square), "ReduceMean")
    if variance is None or graph.reduce_axes(graph.nodes[variance]) != axes:
        return None
    plus_eps = graph.sole_reader(graph.output(variance), "Add")
    if plus_eps is None or not isinstance(graph.split(plus_eps)[1], float):
        return None
    root = graph.sole_reader(graph.output(plus_eps), "Sqrt")
    if root is None or list(graph.nodes[divide].input) != [graph.output(centred),
                                                            graph.output(root)]:
        return None
    absorbed = [mean, centred, square, variance, plus_eps, root]
    details = {"axes": axes, "eps": graph.split(plus_eps)[1], "weight": None, "bias": None}
    last = divide
    scale = graph.sole_reader(graph.output(last), "Mul")
    if scale is not None and graph.split(scale)[0] == graph.output(last):
        details["weight"] = np.asarray(graph.split(scale)[1])
        absorbed.append(last)
        last = scale
        shift = graph.sole_reader(graph.output(last), "Add")
        if shift is not None and graph.split(shift)[0] == graph.output(last):
            details["bias"] = np.asarray(graph.split(shift)[1])
            absorbed.append(last)
            last = shift
    return Match("LayerNorm", x, absorbed, last, details)


def _scalar_constant(graph, name, expected):
    value = graph.constants.get(name)
    return (value is not None and value.size == 1 and value.dtype.kind == "f"
            and float(value.reshape(())) == expected)


def _padding_mask(graph, where):
    """PaddingMask ``Where(Equal(mask, 0), -inf, 0)`` ending at ``where``, or None."""
    node = graph.nodes[where]
    if len(node.input) != 3 or graph.output(where) is None:
        return None
    equal = graph.made_by(node.input[0], "Equal")
    if equal is None or graph.sole_reader(node.input[0], "Where") != where:
        return None
    mask, zero = graph.split(equal)
    if mask is None or np.size(zero) != 1 or np.asarray(zero).dtype.kind not in "iu" or \
            int(np.reshape(zero, ())) != 0:
        return None
    if not (_scalar_constant(graph, node.input[1], -math.inf)
            and _scalar_constant(graph, node.input[2], 0.0)):
        return None
    return Match("PaddingMask", mask, [equal], where)


def _mean_pooling(graph, divide):
    """MeanPooling ``ReduceSum(states · w, 1) / Max(ReduceSum(w, 1), 1e-9)``
    with ``w = Unsqueeze(Cast(mask, float), 2)``, ending at ``divide``, or None."""
    node = graph.nodes[divide]
    if len(node.input) != 2 or graph.output(divide) is None:
        return None
    total, floor = graph.made_by(node.input[0], "ReduceSum"), graph.made_by(node.input[1], "Max")
    if total is None or floor is None or graph.sole_reader(node.input[0], "Div") != divide or \
            graph.sole_reader(node.input[1], "Div") != divide:
        return None
    count, least = graph.split(floor)
    if count is None or not _near(least, 1e-9):
        return None
    count = graph.made_by(count, "ReduceSum")
    product = graph.made_by(graph.nodes[total].input[0], "Mul")
    if count is None or product is None or graph.sole_reader(graph.output(product), "ReduceSum") != total \
            or graph.sole_reader(graph.output(count), "Max") != floor:
        return None
    weights = graph.nodes[count].input[0]
    unsqueeze = graph.made_by(weights, "Unsqueeze")
    states = [name for name in graph.nodes[product].input if name != weights]
    if unsqueeze is None or len(states) != 1 or sorted(graph.readers.get(weights, [])) != sorted(
            [product, count]) or weights in graph.outputs:
        return None
    cast = graph.made_by(graph.nodes[unsqueeze].input[0], "Cast")
    if cast is None or graph.sole_reader(graph.output(cast), "Unsqueeze") != unsqueeze:
        return None
    for reduce in (total, count):
        if graph.reduce_axes(graph.nodes[reduce]) != [1] or _keepdims(graph.nodes[reduce]) != 0:
            return None
    axes = graph.constants.get(graph.nodes[unsqueeze].input[1]) if len(
        graph.nodes[unsqueeze].input) == 2 else None
    if axes is None or [int(axis) for axis in np.reshape(axes, -1)] not in ([2], [-1]) or \
            _attribute_int(graph.nodes[cast], "to") != 1:
        return None
    return Match("MeanPooling", states[0], [cast, unsqueeze, product, total, count, floor], divide,
                 {"mask": graph.nodes[cast].input[0]})


def _attribute_int(node, name, default=None):
    return next((int(attribute.i) for attribute in node.attribute if attribute.name == name), default)


def _keepdims(node):
    return _attribute_int(node, "keepdims", 1)


def find(graph):
    """{index of a pattern's last node: Match}, and the set of absorbed node
    indices, in a ``Graph``."""
    nodes = graph.nodes
    matches, absorbed = {}, set()
    for index, node in enumerate(nodes):
        if node.op_type == "Erf":
            match = _gelu(graph, index)
        elif node.op_type == "Sigmoid":
            match = _silu(graph, index)
        elif node.op_type == "ReduceMean":
            match = _layer_norm(graph, index)
        elif node.op_type == "Where":
            match = _padding_mask(graph, index)
        elif node.op_type == "Div":
            match = _mean_pooling(graph, index)
        else:
            continue
        if match is None:
            continue
        claimed = set(match.absorbed) | {match.last}
        if claimed & absorbed or claimed & set(matches):
            continue
        matches[match.last] = match
        absorbed.update(match.absorbed)
    return matches, absorbed
