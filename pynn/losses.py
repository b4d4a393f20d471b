"""Loss objects: ``value = loss(pred, target)`` is a Python float (mean over
the batch) and ``loss.backward()`` returns d(value)/d(pred), computed in the
same pass and kept in a buffer reused while the shape is unchanged."""
import numpy as np

from pynn.ops import losses as _ops


class _Loss:
    _op = None

    def __init__(self):
        self._grad = None
        self._ready = False

    def __call__(self, pred, target):
        pred_shape = np.shape(pred)
        if self._grad is None or self._grad.shape != pred_shape:
            self._grad = np.empty(pred_shape, dtype=np.float32)
        self._ready = False
        value, _ = type(self)._op(pred, target, out=self._grad)
        self._ready = True
        return value

    def backward(self):
        """d(value)/d(pred) of the last call (the loss's own buffer)."""
        if not self._ready:
            raise RuntimeError(f"{type(self).__name__}.backward: call the loss on a batch first")
        return self._grad

    def __repr__(self):
        return f"{type(self).__name__}()"


class CrossEntropyLoss(_Loss):
    """Logits [N, C] against class indices [N] (int32/int64): log-softmax and
    negative log-likelihood fused, mean over the batch."""
    _op = staticmethod(_ops.cross_entropy)


class MSELoss(_Loss):
    """Mean squared error over every element."""
    _op = staticmethod(_ops.mse)


class BCEWithLogitsLoss(_Loss):
    """Binary cross-entropy on logits against float targets in [0, 1], mean over every element."""
    _op = staticmethod(_ops.binary_cross_entropy_with_logits)
