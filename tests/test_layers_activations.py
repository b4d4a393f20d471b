"""pynn.layers activations: forward/backward against the ops, finite
differences and torch.nn."""
import numpy as np
import pytest

from pynn import Sequential, ops
from pynn.layers import (GELU, Hardsigmoid, Hardswish, LeakyReLU, Linear, ReLU, ReLU6, Sigmoid,
                         SiLU, Softmax, Tanh)
from tests.helpers import check_gradient

LAYERS = [
    (ReLU, {}, lambda x: ops.relu(x)),
    (LeakyReLU, {"negative_slope": 0.2}, lambda x: ops.leaky_relu(x, 0.2)),
    (Sigmoid, {}, lambda x: ops.sigmoid(x)),
    (Tanh, {}, lambda x: ops.tanh(x)),
    (GELU, {}, lambda x: ops.gelu(x)),
    (GELU, {"approximate": "tanh"}, lambda x: ops.gelu(x, approximate="tanh")),
    (Softmax, {"axis": 0}, lambda x: ops.softmax(x, axis=0)),
    (SiLU, {}, lambda x: ops.silu(x)),
    (Hardswish, {}, lambda x: ops.hardswish(x)),
    (Hardsigmoid, {}, lambda x: ops.hardsigmoid(x)),
    (ReLU6, {}, lambda x: ops.relu6(x)),
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
    for kink in (0.0, -3.0, 3.0, 6.0):  # the piecewise activations' kinks
        x[np.abs(x - kink) < 0.05] = kink + 0.5
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
                    Softmax: lambda: torch.nn.Softmax(dim=kwargs.get("axis", -1)),
                    SiLU: lambda: torch.nn.SiLU(), Hardswish: lambda: torch.nn.Hardswish(),
                    Hardsigmoid: lambda: torch.nn.Hardsigmoid(), ReLU6: lambda: torch.nn.ReLU6()}
    x, dy = _random((4, 6), 3), _random((4, 6), 4)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch_layers[cls]()(tx)
    ty.backward(torch.tensor(dy))
    layer = cls(**kwargs)
    np.testing.assert_allclose(layer.forward(x, training=True), ty.detach().numpy(), rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(layer.backward(dy), tx.grad.numpy(), rtol=2e-5, atol=1e-6)


def test_new_activations_run_in_the_inference_plan_without_calling_infer():
    model = Sequential(Linear(5, 8), SiLU(), Hardswish(), Linear(8, 8), Hardsigmoid(), ReLU6())
    x = _random((4, 5), 5) * 3
    expected = x
    for layer in model.layers:
        expected = layer.forward(expected)

    def python_step(*args):
        raise AssertionError("an activation ran as a Python step")

    for layer in model.layers:
        layer.infer = python_step
    for _ in range(2):
        np.testing.assert_array_equal(model.predict(x), expected)


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
