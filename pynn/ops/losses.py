"""Losses fused with their gradients (csrc/loss.c): each returns
``(mean_loss, dinput)``, the loss a Python float, the gradient float32 with
the input's shape (written into ``out`` when given). An empty batch gives a
NaN loss and an empty gradient, as PyTorch's mean reduction."""
import numpy as np

from pynn._checks import as_float32, as_indices, check_out
from pynn._kernels import core as kernels


def _gradient(out, shape, where, inputs):
    if out is None:
        return np.empty(shape, dtype=np.float32)
    return check_out(out, shape, where, inputs=inputs)


def cross_entropy(logits, target, out=None):
    """Mean over the batch of -log softmax(logits)[i, target[i]] for logits
    [N, C] and integer class indices [N]; dlogits = (softmax - onehot) / N.
    Stable for any finite logits (±1e4 included). A class outside [0, C),
    negative ones included, raises IndexError naming it."""
    where = "cross_entropy"
    logits = as_float32(logits, where, "logits", ndim=2)
    target = as_indices(target, where, "target", ndim=1)
    if target.shape[0] != logits.shape[0]:
        raise ValueError(f"{where}: target must have one class index per row of logits "
                         f"{logits.shape}, got shape {target.shape}")
    grad = _gradient(out, logits.shape, where, (logits,))
    return kernels.cross_entropy(logits, target, grad, where), grad


def _same_shape(pred, target, where, pred_name):
    if pred.shape != target.shape:
        raise ValueError(f"{where}: target must have the shape of {pred_name} {pred.shape}, "
                         f"got {target.shape}")


def mse(pred, target, out=None):
    """Mean of (pred - target)²; dpred = 2 (pred - target) / size. NaN targets are refused."""
    where = "mse"
    pred = as_float32(pred, where, "pred")
    target = as_float32(target, where, "target")
    _same_shape(pred, target, where, "pred")
    grad = _gradient(out, pred.shape, where, (pred, target))
    return kernels.mse(pred, target, grad, where), grad


def binary_cross_entropy_with_logits(logits, target, out=None):
    """Mean of max(x, 0) - x t + log(1 + exp(-|x|)) (the stable form of
    -t log σ(x) - (1 - t) log(1 - σ(x))); dlogits = (σ(x) - t) / size.
    Targets are probabilities (floats); NaN targets are refused."""
    where = "binary_cross_entropy_with_logits"
    logits = as_float32(logits, where, "logits")
    target = as_float32(target, where, "target")
    _same_shape(logits, target, where, "logits")
    grad = _gradient(out, logits.shape, where, (logits, target))
    return kernels.bce_with_logits(logits, target, grad, where), grad
