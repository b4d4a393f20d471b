"""pynn.losses objects: values, gradients (finite differences), torch parity, errors."""
import numpy as np
import pytest

from pynn.losses import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from tests.helpers import check_gradient


def _random(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 2


def _cases():
    logits = _random((6, 4), 0)
    return [
        (CrossEntropyLoss, logits, np.array([0, 3, 1, 1, 2, 3])),
        (MSELoss, logits, _random((6, 4), 1)),
        (BCEWithLogitsLoss, logits, np.random.default_rng(2).random((6, 4)).astype(np.float32)),
    ]


@pytest.mark.parametrize("cls,pred,target", _cases())
def test_value_and_backward(cls, pred, target):
    loss = cls()
    value = loss(pred, target)
    assert isinstance(value, float)
    grad = loss.backward()
    assert grad.shape == pred.shape and grad.dtype == np.float32
    check_gradient(lambda v: cls()(v, target), pred, grad.copy())
    loss(pred, target)
    assert loss.backward() is grad  # the buffer is reused while the shape is unchanged


@pytest.mark.parametrize("cls,pred,target", _cases())
def test_torch_parity(cls, pred, target):
    torch = pytest.importorskip("torch")
    reference = {CrossEntropyLoss: torch.nn.CrossEntropyLoss, MSELoss: torch.nn.MSELoss,
                 BCEWithLogitsLoss: torch.nn.BCEWithLogitsLoss}[cls]()
    t = torch.tensor(pred, requires_grad=True)
    expected = reference(t, torch.from_numpy(target))
    expected.backward()
    loss = cls()
    assert loss(pred, target) == pytest.approx(expected.item(), rel=1e-6)
    np.testing.assert_allclose(loss.backward(), t.grad.numpy(), rtol=1e-5, atol=1e-8)


def test_errors():
    with pytest.raises(RuntimeError, match="CrossEntropyLoss.backward"):
        CrossEntropyLoss().backward()
    with pytest.raises(IndexError, match="class 4"):
        CrossEntropyLoss()(_random((2, 4), 0), np.array([0, 4]))
    with pytest.raises(ValueError, match="NaN"):
        MSELoss()(_random((2,), 0), np.array([0.0, np.nan], np.float32))
    with pytest.raises(TypeError, match="binary_cross_entropy_with_logits"):
        BCEWithLogitsLoss()(_random((2,), 0), np.array([0, 1]))
    loss = MSELoss()
    loss(_random((2,), 0), _random((2,), 1))
    with pytest.raises(ValueError):
        loss(_random((2,), 0), _random((3,), 1))
    with pytest.raises(RuntimeError):
        loss.backward()  # a failed call leaves no stale gradient behind
