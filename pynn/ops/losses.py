"""Losses fused with their gradients (csrc/loss.c): each returns
``(loss, dinput)``, the loss a Python float, the gradient float32 with the
input's shape (written into ``out`` when given; ``out`` stays the third
argument). Options are PyTorch's, by keyword: ``reduction="mean"`` (an empty
batch gives NaN) or ``"sum"`` (0); the class-index losses take ``weight``
(one per class) and ``ignore_index`` (those rows count for nothing and get a
zero gradient; the mean divides by the summed weights of the other rows'
targets, so NaN when every row is ignored)."""
import operator

import numpy as np

from pynn._checks import as_float32, as_indices, as_real, check_out
from pynn._kernels import core as kernels

REDUCTIONS = ("mean", "sum")


def _gradient(out, shape, where, inputs):
    if out is None:
        return np.empty(shape, dtype=np.float32)
    return check_out(out, shape, where, inputs=inputs)


def check_reduction(reduction, where):
    """True for a mean, False for a sum; ``"none"`` is refused, since the loss is one float."""
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"{where}: reduction must be 'mean' or 'sum' (the loss is one number), "
                         f"got {reduction!r:.40}")
    return reduction == "mean"


def check_ignore_index(ignore_index, where):
    if isinstance(ignore_index, (bool, np.bool_)):
        raise TypeError(f"{where}: ignore_index must be an integer, got bool")
    try:
        value = operator.index(ignore_index)
    except TypeError:
        raise TypeError(f"{where}: ignore_index must be an integer, got "
                        f"{type(ignore_index).__name__} {ignore_index!r:.40}") from None
    if not -2 ** 63 <= value < 2 ** 63:
        raise ValueError(f"{where}: ignore_index must fit in int64, got {value}")
    return value


def check_label_smoothing(label_smoothing, where):
    value = as_real(label_smoothing, where, "label_smoothing")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{where}: label_smoothing must be in [0, 1], got {value}")
    return value


def check_delta(delta, where):
    value = as_real(delta, where, "delta")
    if not value > 0.0:
        raise ValueError(f"{where}: delta must be > 0, got {value}")
    return value


def check_class_weight(weight, classes, where, name="weight"):
    """None, or float32 [classes] (``classes`` None: any 1-D length)."""
    if weight is None:
        return None
    weight = as_float32(weight, where, name, ndim=1)
    if classes is not None and weight.shape[0] != classes:
        raise ValueError(f"{where}: {name} must hold one value per class ({classes}), "
                         f"got shape {weight.shape}")
    return weight


def _class_inputs(scores, target, where, scores_name):
    scores = as_float32(scores, where, scores_name, ndim=2)
    target = as_indices(target, where, "target", ndim=1)
    if target.shape[0] != scores.shape[0]:
        raise ValueError(f"{where}: target must have one class index per row of {scores_name} "
                         f"{scores.shape}, got shape {target.shape}")
    return scores, target


def cross_entropy(logits, target, out=None, *, weight=None, ignore_index=-100, label_smoothing=0.0,
                  reduction="mean"):
    """-log softmax(logits)[i, target[i]] for logits [N, C] and integer class
    indices [N], as ``torch.nn.functional.cross_entropy``: with weights w and
    label smoothing ε a row's loss is (1-ε) w_t (-log p_t) + ε/C Σ_c w_c (-log p_c),
    reduced as the module docstring says. Stable for any finite logits (±1e4
    included). A class outside [0, C) other than ignore_index, negative ones
    included, raises IndexError naming it."""
    where = "cross_entropy"
    logits, target = _class_inputs(logits, target, where, "logits")
    weight = check_class_weight(weight, logits.shape[1], where)
    ignore_index = check_ignore_index(ignore_index, where)
    label_smoothing = check_label_smoothing(label_smoothing, where)
    mean = check_reduction(reduction, where)
    grad = _gradient(out, logits.shape, where, (logits,))
    return kernels.cross_entropy(logits, target, grad, weight, ignore_index, label_smoothing, mean,
                                 where), grad


def nll_loss(log_probs, target, out=None, *, weight=None, ignore_index=-100, reduction="mean"):
    """-log_probs[i, target[i]] (times weight[target[i]]) for log-probabilities
    [N, C] (a log_softmax's output), as ``torch.nn.functional.nll_loss``; the
    gradient is -w_t / D at each counted target and zero elsewhere."""
    where = "nll_loss"
    log_probs, target = _class_inputs(log_probs, target, where, "log_probs")
    weight = check_class_weight(weight, log_probs.shape[1], where)
    ignore_index = check_ignore_index(ignore_index, where)
    mean = check_reduction(reduction, where)
    grad = _gradient(out, log_probs.shape, where, (log_probs,))
    return kernels.nll_loss(log_probs, target, grad, weight, ignore_index, mean, where), grad


def _pair(pred, target, where, pred_name):
    pred = as_float32(pred, where, pred_name)
    target = as_float32(target, where, "target")
    if pred.shape != target.shape:
        raise ValueError(f"{where}: target must have the shape of {pred_name} {pred.shape}, "
                         f"got {target.shape}")
    return pred, target


def mse(pred, target, out=None, *, reduction="mean"):
    """(pred - target)² over every element; dpred = 2 (pred - target) / size
    for the mean. NaN targets are refused."""
    where = "mse"
    pred, target = _pair(pred, target, where, "pred")
    mean = check_reduction(reduction, where)
    grad = _gradient(out, pred.shape, where, (pred, target))
    return kernels.mse(pred, target, grad, mean, where), grad


def l1_loss(pred, target, out=None, *, reduction="mean"):
    """|pred - target| over every element; dpred = sign(pred - target) (0 where
    equal) / size for the mean. NaN targets are refused."""
    where = "l1_loss"
    pred, target = _pair(pred, target, where, "pred")
    mean = check_reduction(reduction, where)
    grad = _gradient(out, pred.shape, where, (pred, target))
    return kernels.l1_loss(pred, target, grad, mean, where), grad


def huber_loss(pred, target, out=None, *, delta=1.0, reduction="mean"):
    """d²/2 where |d| < delta, delta (|d| - delta/2) elsewhere, d = pred - target;
    dpred = clamp(d, -delta, delta) / size for the mean. NaN targets are refused."""
    where = "huber_loss"
    pred, target = _pair(pred, target, where, "pred")
    delta = check_delta(delta, where)
    mean = check_reduction(reduction, where)
    grad = _gradient(out, pred.shape, where, (pred, target))
    return kernels.huber_loss(pred, target, grad, delta, mean, where), grad


def binary_cross_entropy_with_logits(logits, target, out=None, *, pos_weight=None, reduction="mean"):
    """(1 - t) x + (1 + (pw - 1) t) log(1 + e^-x) in a stable form (PyTorch's),
    over every element; without pos_weight dlogits = (σ(x) - t) / size for the
    mean. Targets are probabilities (floats), NaN refused; ``pos_weight`` holds
    one weight per position of the last axis (or one for all), as PyTorch's
    broadcasting of a per-class pos_weight."""
    where = "binary_cross_entropy_with_logits"
    logits, target = _pair(logits, target, where, "logits")
    if pos_weight is not None:
        pos_weight = check_class_weight(pos_weight, None, where, "pos_weight")
        last = logits.shape[-1] if logits.ndim else 1
        if pos_weight.shape[0] not in (1, last):
            raise ValueError(f"{where}: pos_weight must hold 1 value or one per position of the "
                             f"last axis ({last}), got shape {pos_weight.shape}")
    mean = check_reduction(reduction, where)
    grad = _gradient(out, logits.shape, where, (logits, target))
    return kernels.bce_with_logits(logits, target, grad, pos_weight, mean, where), grad
