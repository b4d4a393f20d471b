"""Symbolic tensors: what ``pynn.Input`` returns and calling a layer on one
gives back, the edges from which ``pynn.Model`` builds its graph.

A symbolic tensor records its per-sample shape (no batch axis), its dtype and
the call that made it: the callable (a layer, a ``Sequential`` or a
``Model``), the tensors it was called on and which of its outputs this is. A
call can only name tensors that already exist, so a graph built this way has
no cycles. Shapes are checked at the call, with two batch sizes, so that a
callable that mixes the batch axis into the others is refused there.

A per-sample axis may be variable (``None``: a sequence length); the call
then also tries two lengths, and an output axis that follows the length is
variable too."""
import numpy as np

DTYPES = ("float32", "int64", "bool")
# The lengths a variable axis takes while a call is checked.
_PROBE_LENGTHS = (3, 5)


class SymbolicTensor:
    __slots__ = ("shape", "dtype", "call", "index", "name")

    def __init__(self, shape, dtype, call=None, index=0, name=None):
        self.shape, self.dtype = shape, dtype
        self.call, self.index, self.name = call, index, name

    @property
    def is_input(self):
        return self.call is None

    def __repr__(self):
        made = f"Input {self.name!r}" if self.is_input else label(self.call.callee)
        return f"<symbolic {self.dtype} tensor of per-sample shape {self.shape} from {made}>"


class Call:
    """One use of a callable: ``outputs = callee(inputs)``."""
    __slots__ = ("callee", "inputs", "takes_list", "outputs")

    def __init__(self, callee, inputs, takes_list):
        self.callee, self.inputs, self.takes_list = callee, inputs, takes_list
        self.outputs = []


def label(callee):
    name = getattr(callee, "name", None)
    kind = type(callee).__name__
    return f"layer {name!r} ({kind})" if name else kind


def Input(shape, dtype="float32", name=None):
    """A model input: one sample's ``shape`` (no batch axis; ``()`` for one
    scalar per sample; None for a variable axis such as a sequence length),
    ``dtype`` "float32", "int64" (Embedding indices, token ids) or "bool"
    (attention masks)."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, (bool, np.bool_)):
        shape = (shape,)
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
        raise TypeError(f"Input: shape must be a tuple of sizes without the batch axis, "
                        f"got {type(shape).__name__} {shape!r:.60}")
    shape = tuple(shape)
    for axis, extent in enumerate(shape):
        if extent is None:
            continue
        if isinstance(extent, (bool, np.bool_)) or not isinstance(extent, (int, np.integer)) or extent < 0:
            raise ValueError(f"Input: shape[{axis}] must be a non-negative integer or None, "
                             f"got {extent!r:.40}")
    shape = tuple(None if extent is None else int(extent) for extent in shape)
    if dtype not in DTYPES:
        raise ValueError(f"Input: dtype must be one of {DTYPES}, got {dtype!r:.40}")
    if name is not None and (not isinstance(name, str) or not name):
        raise TypeError(f"Input: name must be a non-empty string or None, got {name!r:.40}")
    return SymbolicTensor(shape, dtype, name=name)


def fits(per_sample, shape):
    """``shape`` (batch axis first) fits the per-sample shape ``per_sample``,
    whose None axes take any length."""
    return len(shape) == len(per_sample) + 1 and all(
        want is None or want == got for want, got in zip(per_sample, shape[1:]))


def dtypes_accepted(wanted):
    """The dtypes one input position accepts: a name or a tuple of names."""
    return wanted if isinstance(wanted, tuple) else (wanted,)


def is_symbolic(x):
    """``x`` is a symbolic tensor, or a list or tuple holding one."""
    if isinstance(x, SymbolicTensor):
        return True
    return isinstance(x, (list, tuple)) and any(isinstance(item, SymbolicTensor) for item in x)


def call(callee, x):
    """The symbolic outputs of ``callee(x)``, after checking what it accepts:
    a list for a callable that ``takes_list``, one tensor otherwise (several
    for a ``Model`` with several inputs), and the dtype and shapes."""
    where = label(callee)
    accepts = getattr(callee, "takes_list", False)  # None: one tensor or a list
    if isinstance(x, (list, tuple)):
        if accepts is False:
            raise TypeError(f"{where}: takes one tensor, got a list of {len(x)}")
        inputs = list(x)
        for position, item in enumerate(inputs):
            if not isinstance(item, SymbolicTensor):
                raise TypeError(f"{where}: input {position} must be a symbolic tensor, "
                                f"got {type(item).__name__}")
        takes_list = True
    else:
        if accepts is True:
            raise TypeError(f"{where}: takes a list of tensors, got one {type(x).__name__}")
        inputs, takes_list = [x], False
    wanted = getattr(callee, "input_dtypes", None)
    wanted = wanted(len(inputs)) if callable(wanted) else ["float32"] * len(inputs)
    for position, (item, dtype) in enumerate(zip(inputs, wanted)):
        if item.dtype not in dtypes_accepted(dtype):
            raise TypeError(f"{where}: input {position} must have dtype "
                            f"{' or '.join(dtypes_accepted(dtype))}, got {item.dtype}")
    # (batch, length of variable axes): the first two must give the same
    # per-sample shapes, the third tells which output axes are variable
    probes = [(1, _PROBE_LENGTHS[0]), (2, _PROBE_LENGTHS[0]), (1, _PROBE_LENGTHS[1])]
    if not any(extent is None for item in inputs for extent in item.shape):
        probes = probes[:2]
    shapes = []
    for batch, length in probes:
        given = [(batch,) + tuple(length if extent is None else extent for extent in item.shape)
                 for item in inputs]
        try:
            out = callee.output_shape(given if takes_list else given[0])
        except (ValueError, TypeError) as error:
            raise ValueError(f"{where}: cannot take input shape "
                             f"{[item.shape for item in inputs] if takes_list else inputs[0].shape} "
                             f"(per sample): {error}") from None
        out = [tuple(shape) for shape in out] if getattr(callee, "output_count", 1) > 1 else [tuple(out)]
        for shape in out:
            if not shape or shape[0] != batch:
                raise ValueError(f"{where}: the output must keep the batch axis first, got shape "
                                 f"{shape} for a batch of {batch}")
        shapes.append([shape[1:] for shape in out])
    if shapes[0] != shapes[1]:
        raise ValueError(f"{where}: the per-sample output shape depends on the batch size "
                         f"({shapes[0]} against {shapes[1]})")
    if len(shapes) == 3:
        if [len(shape) for shape in shapes[0]] != [len(shape) for shape in shapes[2]]:
            raise ValueError(f"{where}: the output's rank depends on the sequence length")
        shapes[0] = [tuple(a if a == b else None for a, b in zip(first, other))
                     for first, other in zip(shapes[0], shapes[2])]
    node = Call(callee, inputs, takes_list)
    node.outputs = [SymbolicTensor(shape, "float32", node, index) for index, shape in enumerate(shapes[0])]
    return node.outputs if len(node.outputs) > 1 else node.outputs[0]
