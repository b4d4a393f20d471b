"""pynn.layers activations: forward/backward against the ops, finite
differences and torch.nn."""
import numpy as np
import pytest

from pynn import ops
from pynn.layers import GELU, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from tests.helpers import check_gradient

LAYERS = [
    (ReLU, {}, lambda x: ops.relu(x)),
    (LeakyReLU, {"negative_slope": 0.2}, lambda x: ops.leaky_relu(x, 0.2)),
    (Sigmoid, {}, lambda x: ops.sigmoid(x)),
    (Tanh, {}, lambda x: ops.tanh(x)),
    (GELU, {}, lambda x: ops.gelu(x)),
    (GELU, {"approximate": "tanh"}, lambda x: ops.gelu(x, approximate="tanh")),
    (Softmax, {"axis": 0}, lambda x: ops.softmax(x, axis=0)),
]


def _random(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 2


@pytest.mark.parametrize("cls,kwargs,reference", LAYERS)
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (0, 5), (2, 3, 4)])
def test_forward_matches_the_op_and_infer(cls, kwargs, reference, shape):
    layer = cls(**kwargs)
    x = _random(shape, 0)
    expected = reference(x.astype(np.float64))
    np.testing.assert_array_equal(layer.forward(x), expected)
    np.testing.assert_array_equal(layer.forward(x, training=True), expected)
    out = np.empty(shape, np.float32)
    np.testing.assert_array_equal(layer.infer(x, out), expected)
    assert layer.output_shape(shape) == shape
    assert type(layer)(**layer.config()).config() == layer.config()


@pytest.mark.parametrize("cls,kwargs,reference", LAYERS)
def test_backward_matches_finite_differences(cls, kwargs, reference):
    layer = cls(**kwargs)
    x, weights = _random((3, 5), 1), _random((3, 5), 2)
    x[np.abs(x) < 0.05] = 0.5
    layer.forward(x, training=True)
    dx = layer.backward(weights)
    assert layer.backward(weights, input_grad=False) is None
    check_gradient(lambda v: float(np.sum(reference(v).astype(np.float64) * weights)), x, dx)


@pytest.mark.parametrize("cls,kwargs,reference", LAYERS)
def test_torch_parity(cls, kwargs, reference):
    torch = pytest.importorskip("torch")
    torch_layers = {ReLU: lambda: torch.nn.ReLU(), Sigmoid: lambda: torch.nn.Sigmoid(),
                    Tanh: lambda: torch.nn.Tanh(),
                    LeakyReLU: lambda: torch.nn.LeakyReLU(kwargs.get("negative_slope", 0.01)),
                    GELU: lambda: torch.nn.GELU(approximate=kwargs.get("approximate", "none")),
                    Softmax: lambda: torch.nn.Softmax(dim=kwargs.get("axis", -1))}
    x, dy = _random((4, 6), 3), _random((4, 6), 4)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch_layers[cls]()(tx)
    ty.backward(torch.tensor(dy))
    layer = cls(**kwargs)
    np.testing.assert_allclose(layer.forward(x, training=True), ty.detach().numpy(), rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(layer.backward(dy), tx.grad.numpy(), rtol=2e-5, atol=1e-6)


def test_bad_inputs():
    with pytest.raises(TypeError, match="ReLU: x"):
        ReLU().forward(np.arange(3))
    with pytest.raises(RuntimeError, match="Tanh.backward"):
        Tanh().backward(np.ones(3, np.float32))
    layer = Sigmoid()
    layer.forward(np.ones((2, 3), np.float32), training=True)
    with pytest.raises(ValueError, match=r"Sigmoid.backward: dy must have the forward output's shape \(2, 3\)"):
        layer.backward(np.ones((3, 2), np.float32))
    with pytest.raises(ValueError, match="GELU"):
        GELU("fast")
    with pytest.raises(ValueError, match="Softmax: axis 2"):
        Softmax(axis=2).forward(np.ones((2, 3), np.float32))
