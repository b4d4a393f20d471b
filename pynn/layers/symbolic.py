"""Symbolic tensors: what ``pynn.Input`` returns and calling a layer on one
gives back, the edges from which ``pynn.Model`` builds its graph.

A symbolic tensor records its per-sample shape (no batch axis), its dtype and
the call that made it: the callable (a layer, a ``Sequential`` or a
``Model``), the tensors it was called on and which of its outputs this is. A
call can only name tensors that already exist, so a graph built this way has
no cycles. Shapes are checked at the call, with two batch sizes, so that a
callable that mixes the batch axis into the others is refused there."""
import numpy as np

DTYPES = ("float32", "int64")


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
    scalar per sample), ``dtype`` "float32" or "int64" (Embedding indices)."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, (bool, np.bool_)):
        shape = (shape,)
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
        raise TypeError(f"Input: shape must be a tuple of sizes without the batch axis, "
                        f"got {type(shape).__name__} {shape!r:.60}")
    shape = tuple(shape)
    for axis, extent in enumerate(shape):
        if isinstance(extent, (bool, np.bool_)) or not isinstance(extent, (int, np.integer)) or extent < 0:
            raise ValueError(f"Input: shape[{axis}] must be a non-negative integer, got {extent!r:.40}")
    shape = tuple(int(extent) for extent in shape)
    if dtype not in DTYPES:
        raise ValueError(f"Input: dtype must be one of {DTYPES}, got {dtype!r:.40}")
    if name is not None and (not isinstance(name, str) or not name):
        raise TypeError(f"Input: name must be a non-empty string or None, got {name!r:.40}")
    return SymbolicTensor(shape, dtype, name=name)


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
    takes_list = getattr(callee, "takes_list", False)
    if isinstance(x, (list, tuple)):
        if not takes_list:
            raise TypeError(f"{where}: takes one tensor, got a list of {len(x)}")
        inputs = list(x)
        for position, item in enumerate(inputs):
            if not isinstance(item, SymbolicTensor):
                raise TypeError(f"{where}: input {position} must be a symbolic tensor, "
                                f"got {type(item).__name__}")
    else:
        if takes_list:
            raise TypeError(f"{where}: takes a list of tensors, got one {type(x).__name__}")
        inputs = [x]
    wanted = getattr(callee, "input_dtypes", None)
    wanted = wanted(len(inputs)) if callable(wanted) else ["float32"] * len(inputs)
    for position, (item, dtype) in enumerate(zip(inputs, wanted)):
        if item.dtype != dtype:
            raise TypeError(f"{where}: input {position} must have dtype {dtype}, got {item.dtype}")
    shapes = []
    for batch in (1, 2):
        given = [(batch,) + item.shape for item in inputs]
        try:
            out = callee.output_shape(given if takes_list else given[0])
        except (ValueError, TypeError) as error:
            raise ValueError(f"{where}: cannot take input shape "
                             f"{[shape[1:] for shape in given] if takes_list else given[0][1:]} "
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
    node = Call(callee, inputs, takes_list)
    node.outputs = [SymbolicTensor(shape, "float32", node, index) for index, shape in enumerate(shapes[0])]
    return node.outputs if len(node.outputs) > 1 else node.outputs[0]
