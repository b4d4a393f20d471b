"""Loss objects with PyTorch's options: ``value = loss(pred, target)`` is a
Python float and ``loss.backward()`` returns d(value)/d(pred), computed in
the same pass and kept in a buffer reused while the shape is unchanged.

``reduction`` is ``"mean"`` (the default) or ``"sum"``; PyTorch's ``"none"``
has no place here, since the value is one number. Options are keywords, as
PyTorch's positional order differs between its losses; only the class weight
of ``CrossEntropyLoss`` and ``NLLLoss`` may also come first, as in PyTorch.
The class-index losses take scores [N, C] (PyTorch's [N, C, d1, ...] form
becomes that with a ``Permute`` and a ``Reshape``), and class indices only, not
class probabilities; ``BCEWithLogitsLoss`` has ``pos_weight`` but not
PyTorch's per-element ``weight``."""
import numpy as np

from pynn._checks import as_float32
from pynn.ops import losses as _ops


class _Loss:
    _op = None

    def __init__(self, reduction="mean"):
        _ops.check_reduction(reduction, type(self).__name__)
        self.reduction = reduction
        self._grad = None
        self._ready = False

    def _options(self):
        """The op's keyword arguments besides ``reduction``."""
        return {}

    def __call__(self, pred, target):
        pred_shape = np.shape(pred)
        if self._grad is None or self._grad.shape != pred_shape:
            self._grad = np.empty(pred_shape, dtype=np.float32)
        self._ready = False
        value, _ = type(self)._op(pred, target, reduction=self.reduction, out=self._grad,
                                  **self._options())
        self._ready = True
        return value

    def backward(self):
        """d(value)/d(pred) of the last call (the loss's own buffer)."""
        if not self._ready:
            raise RuntimeError(f"{type(self).__name__}.backward: call the loss on a batch first")
        return self._grad

    def __repr__(self):
        shown = {**self._options(), "reduction": self.reduction}
        defaults = {"weight": None, "pos_weight": None, "ignore_index": -100,
                    "label_smoothing": 0.0, "delta": 1.0, "reduction": "mean"}
        text = ", ".join(f"{key}={value!r}" for key, value in shown.items()
                         if not (value is None or (defaults[key] is not None and value == defaults[key])))
        return f"{type(self).__name__}({text})"


def _weight(weight, where, name="weight"):
    """A private float32 copy of a per-class weight (the caller's array may change later)."""
    return None if weight is None else np.array(as_float32(weight, where, name, ndim=1))


class CrossEntropyLoss(_Loss):
    """Logits [N, C] against class indices [N] (int32/int64): log-softmax and
    negative log-likelihood fused, as ``torch.nn.CrossEntropyLoss``. ``weight``
    (one per class) scales each row by its target's weight; rows whose target
    is ``ignore_index`` count for nothing and get a zero gradient; the mean
    divides by the summed weights of the counted rows' targets (NaN when every
    row is ignored); ``label_smoothing`` ε mixes in ε/C of every class's
    (weighted) term, as PyTorch does."""
    _op = staticmethod(_ops.cross_entropy)

    def __init__(self, weight=None, *, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
        where = type(self).__name__
        super().__init__(reduction)
        self.weight = _weight(weight, where)
        self.ignore_index = _ops.check_ignore_index(ignore_index, where)
        self.label_smoothing = _ops.check_label_smoothing(label_smoothing, where)

    def _options(self):
        return {"weight": self.weight, "ignore_index": self.ignore_index,
                "label_smoothing": self.label_smoothing}


class NLLLoss(_Loss):
    """Log-probabilities [N, C] (a ``LogSoftmax``'s output) against class
    indices [N], as ``torch.nn.NLLLoss``: ``weight`` and ``ignore_index`` as in
    ``CrossEntropyLoss``."""
    _op = staticmethod(_ops.nll_loss)

    def __init__(self, weight=None, *, ignore_index=-100, reduction="mean"):
        where = type(self).__name__
        super().__init__(reduction)
        self.weight = _weight(weight, where)
        self.ignore_index = _ops.check_ignore_index(ignore_index, where)

    def _options(self):
        return {"weight": self.weight, "ignore_index": self.ignore_index}


class MSELoss(_Loss):
    """Squared error over every element."""
    _op = staticmethod(_ops.mse)

    def __init__(self, *, reduction="mean"):
        super().__init__(reduction)


class L1Loss(_Loss):
    """Absolute error over every element (gradient 0 where pred equals target, as PyTorch)."""
    _op = staticmethod(_ops.l1_loss)

    def __init__(self, *, reduction="mean"):
        super().__init__(reduction)


class HuberLoss(_Loss):
    """Squared error below ``delta``, linear above it, over every element, as
    ``torch.nn.HuberLoss``."""
    _op = staticmethod(_ops.huber_loss)

    def __init__(self, *, delta=1.0, reduction="mean"):
        super().__init__(reduction)
        self.delta = _ops.check_delta(delta, type(self).__name__)

    def _options(self):
        return {"delta": self.delta}


class BCEWithLogitsLoss(_Loss):
    """Binary cross-entropy on logits against float targets in [0, 1], over
    every element, in PyTorch's stable form; ``pos_weight`` weighs the positive
    term, one value per position of the last axis (per class) or one for all."""
    _op = staticmethod(_ops.binary_cross_entropy_with_logits)

    def __init__(self, *, pos_weight=None, reduction="mean"):
        super().__init__(reduction)
        self.pos_weight = _weight(pos_weight, type(self).__name__, "pos_weight")

    def _options(self):
        return {"pos_weight": self.pos_weight}


# Losses whose targets are class indices, and those fit reports an accuracy for.
CLASS_INDEX_LOSSES = (CrossEntropyLoss, NLLLoss)
CLASSIFICATION_LOSSES = CLASS_INDEX_LOSSES + (BCEWithLogitsLoss,)
