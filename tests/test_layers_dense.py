"""pynn.layers.dense: Linear, Flatten, Dropout, Embedding against float64
references, finite differences and torch.nn with the same weights."""
import math

import numpy as np
import pytest

import pynn
from pynn import init
from pynn.layers import Conv2d, Dropout, Embedding, Flatten, Linear, ReLU
from tests.helpers import check_gradient


def _random(shape, seed, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def test_linear_default_init_and_dicts():
    init.manual_seed(0)
    layer = Linear(300, 7)
    assert list(layer.params) == ["weight", "bias"] == list(layer.grads)
    weight, bias = layer.params["weight"], layer.params["bias"]
    assert weight.shape == (7, 300) and weight.dtype == np.float32 and bias.shape == (7,)
    bound = 1 / math.sqrt(300)
    assert np.abs(weight).max() <= bound and np.abs(bias).max() <= bound
    assert np.abs(weight).max() > 0.9 * bound  # uniform over the whole interval
    assert all(not g.any() for g in layer.grads.values())
    init.manual_seed(0)
    np.testing.assert_array_equal(Linear(300, 7).params["weight"], weight)
    assert list(Linear(3, 2, bias=False).params) == ["weight"]
    assert Linear(3, 2, bias=False).config() == {"in_features": 3, "out_features": 2, "bias": False}


@pytest.mark.parametrize("batch,fan_in,fan_out", [(1, 1, 1), (7, 13, 5), (0, 4, 3), (31, 29, 61)])
def test_linear_forward_backward_against_float64(batch, fan_in, fan_out):
    layer = Linear(fan_in, fan_out)
    x, dy = _random((batch, fan_in), 1), _random((batch, fan_out), 2)
    w64 = layer.params["weight"].astype(np.float64)
    b64 = layer.params["bias"].astype(np.float64)
    y = layer.forward(x, training=True)
    np.testing.assert_allclose(y, x @ w64.T + b64, rtol=1e-5, atol=1e-5)
    dx = layer.backward(dy)
    np.testing.assert_allclose(dx, dy @ w64, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.grads["weight"], dy.T.astype(np.float64) @ x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.grads["bias"], dy.astype(np.float64).sum(0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fused", [False, True])
def test_linear_gradients_match_finite_differences(fused):
    layer = Linear(4, 5)
    layer.activation = "relu" if fused else None
    x, weights = _random((3, 4), 3), _random((3, 5), 4)

    def loss(x_):
        return float(np.sum(layer.forward(x_).astype(np.float64) * weights))

    layer.forward(x, training=True)
    dx = layer.backward(weights).copy()
    check_gradient(loss, x, dx, eps=1e-3)
    for name in ("weight", "bias"):
        param = layer.params[name]
        analytic = layer.grads[name].copy()
        original = param.copy()

        def loss_of_param(value, name=name):
            param[...] = value
            return loss(x)

        check_gradient(loss_of_param, original, analytic, eps=1e-3)
        param[...] = original


def test_fused_relu_equals_linear_then_relu():
    plain, fused, relu = Linear(6, 8), Linear(6, 8), ReLU()
    fused.params["weight"][...] = plain.params["weight"]
    fused.params["bias"][...] = plain.params["bias"]
    fused.activation = "relu"
    x, dy = _random((5, 6), 5), _random((5, 8), 6)
    expected = relu.forward(plain.forward(x, training=True), training=True)
    np.testing.assert_array_equal(fused.forward(x, training=True), expected)
    dx_plain = plain.backward(relu.backward(dy))
    np.testing.assert_array_equal(fused.backward(dy), dx_plain)
    for name in ("weight", "bias"):
        np.testing.assert_array_equal(fused.grads[name], plain.grads[name])
    np.testing.assert_array_equal(fused.forward(x), expected)


def test_linear_frozen_and_first_layer_paths():
    layer = Linear(4, 3)
    x, dy = _random((2, 4), 7), _random((2, 3), 8)
    layer.forward(x, training=True)
    assert layer.backward(dy, input_grad=False) is None
    assert layer.grads["weight"].any()
    layer.trainable = False
    for grad in layer.grads.values():
        grad[...] = 0
    dx = layer.backward(dy)
    assert dx.shape == (2, 4) and not any(g.any() for g in layer.grads.values())


def test_linear_reuses_buffers_and_infers_without_state():
    layer = Linear(4, 3)
    x = _random((2, 4), 9)
    first = layer.forward(x, training=True)
    assert layer.forward(x, training=True) is first
    dx = layer.backward(_random((2, 3), 1))
    assert layer.backward(_random((2, 3), 2)) is dx
    out = np.empty((2, 3), np.float32)
    assert layer.infer(x, out) is out
    np.testing.assert_array_equal(out, first)
    assert layer.forward(x) is not first  # inference returns an array of its own


def test_linear_torch_parity():
    torch = pytest.importorskip("torch")
    layer = Linear(7, 4)
    reference = torch.nn.Linear(7, 4)
    with torch.no_grad():
        reference.weight.copy_(torch.from_numpy(layer.params["weight"]))
        reference.bias.copy_(torch.from_numpy(layer.params["bias"]))
    x, dy = _random((9, 7), 10), _random((9, 4), 11)
    tx = torch.tensor(x, requires_grad=True)
    ty = reference(tx)
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(layer.forward(x, training=True), ty.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.backward(dy), tx.grad.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.grads["weight"], reference.weight.grad.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.grads["bias"], reference.bias.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_linear_bad_inputs():
    layer = Linear(4, 3)
    with pytest.raises(ValueError, match=r"Linear: input must end in in_features=4, got shape \(2, 5\)"):
        layer.forward(np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match="Linear"):
        layer.forward(np.float32(1.0))
    for bad in (np.ones((2, 4), np.int64), np.ones((2, 4), np.complex64), np.array([[object()] * 4])):
        with pytest.raises(TypeError, match="Linear: x"):
            layer.forward(bad)
    with pytest.raises(RuntimeError, match="forward"):
        Linear(4, 3).backward(np.ones((2, 3), np.float32))
    layer.forward(np.ones((2, 4), np.float32), training=True)
    with pytest.raises(ValueError, match=r"Linear.backward: dy must have the forward output's shape \(2, 3\)"):
        layer.backward(np.ones((3, 3), np.float32))
    for arguments, error in [((0, 3), ValueError), ((2.5, 3), TypeError), ((True, 3), TypeError),
                             ((4, 3, "yes"), TypeError)]:
        with pytest.raises(error, match="Linear"):
            Linear(*arguments)


@pytest.mark.parametrize("shape,start,end,expected", [
    ((2, 3, 4, 5), 1, -1, (2, 60)), ((2, 3, 4), 0, -1, (24,)), ((2, 3, 4, 5), 1, 2, (2, 12, 5)),
    ((0, 3, 4), 1, -1, (0, 12)), ((5,), 0, 0, (5,))])
def test_flatten(shape, start, end, expected):
    layer = Flatten(start, end)
    x = _random(shape, 12)
    y = layer.forward(x, training=True)
    assert y.shape == expected == layer.output_shape(shape)
    np.testing.assert_array_equal(y, x.reshape(expected))
    assert layer.backward(y).shape == shape
    with pytest.raises(ValueError, match="Flatten"):
        Flatten(3).output_shape((2, 3))


def test_dropout_masks_scales_and_reuses_the_mask():
    layer = Dropout(0.25, seed=3)
    x = np.ones((400, 500), np.float32)
    y = layer.forward(x, training=True)
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-7)
    dy = _random((400, 500), 13)
    dx = layer.backward(dy)
    np.testing.assert_allclose(dx, np.where(kept, dy / 0.75, 0), rtol=1e-6)
    assert layer.forward(x) is x or np.array_equal(layer.forward(x), x)  # identity at inference
    again = Dropout(0.25, seed=3).forward(x, training=True)
    np.testing.assert_array_equal(again, y)
    generator_seeded = Dropout(0.25, seed=np.random.default_rng(3)).forward(x, training=True)
    np.testing.assert_array_equal(generator_seeded, y)
    layer.reseed(3)
    np.testing.assert_array_equal(layer.forward(x, training=True), y)
    np.testing.assert_array_equal(Dropout(0.0).forward(x, training=True), x)


def test_dropout_bad_arguments():
    for p in (-0.1, 1.0, 2):
        with pytest.raises(ValueError, match="Dropout: p"):
            Dropout(p)
    with pytest.raises(TypeError, match="Dropout: p"):
        Dropout("half")
    with pytest.raises(TypeError, match="Dropout: seed"):
        Dropout(0.5, seed="x")
    with pytest.raises(ValueError, match="Dropout: seed must be a non-negative int, got -1"):
        Dropout(0.5, seed=-1)


def test_embedding_gather_and_scatter_add_with_repeats():
    layer = Embedding(10, 4)
    table = layer.params["weight"].astype(np.float64)
    indices = np.array([[1, 3, 1], [9, 1, 0]], dtype=np.int32)
    y = layer.forward(indices, training=True)
    assert y.shape == (2, 3, 4)
    np.testing.assert_array_equal(y, table[indices])
    dy = _random((2, 3, 4), 14)
    assert layer.backward(dy) is None
    expected = np.zeros((10, 4))
    np.add.at(expected, indices, dy)
    np.testing.assert_allclose(layer.grads["weight"], expected, rtol=1e-6)


def test_embedding_torch_parity():
    torch = pytest.importorskip("torch")
    layer = Embedding(6, 3)
    reference = torch.nn.Embedding(6, 3)
    with torch.no_grad():
        reference.weight.copy_(torch.from_numpy(layer.params["weight"]))
    indices = np.array([5, 0, 5, 2, 5])
    dy = _random((5, 3), 15)
    out = reference(torch.from_numpy(indices))
    out.backward(torch.tensor(dy))
    np.testing.assert_array_equal(layer.forward(indices, training=True), out.detach().numpy())
    layer.backward(dy)
    np.testing.assert_allclose(layer.grads["weight"], reference.weight.grad.numpy(), rtol=1e-6)


@pytest.mark.parametrize("bad", [10, -1, 2 ** 40])
def test_embedding_out_of_range_names_the_index(bad):
    with pytest.raises(IndexError, match=f"index {bad} is out of range"):
        Embedding(10, 2).forward(np.array([0, bad]))


def test_embedding_refuses_float_indices():
    with pytest.raises(TypeError, match="Embedding: indices must be an integer"):
        Embedding(10, 2).forward(np.array([0.0, 1.0]))
    with pytest.raises(TypeError, match="Embedding"):
        Embedding(10, 2).forward(np.array([np.nan]))


def test_layers_in_a_model_predict_like_forward():
    init.manual_seed(1)
    model = pynn.Sequential(Flatten(), Linear(12, 8), ReLU(), Dropout(0.5), Linear(8, 3))
    x = _random((5, 3, 4), 16)
    np.testing.assert_allclose(model.predict(x), model.forward(x), rtol=1e-6)


def test_linear_with_a_replaced_parameter_of_another_dtype_raises_instead_of_skipping():
    layer = pynn.layers.Linear(4, 3)
    layer.params["weight"] = layer.params["weight"].astype(np.float64)
    with pytest.raises(ValueError, match="Linear"):
        layer.forward(np.ones((2, 4), np.float32))


def test_weights_and_buffers_start_on_a_cache_line():
    model = pynn.Sequential(Linear(13, 7), ReLU(), Linear(7, 3))
    weights = [layer.params["weight"] for layer in model.layers if layer.params]
    weights += [Conv2d(3, 5, 3).params["weight"], Embedding(11, 6).params["weight"]]
    x = np.ones((5, 13), np.float32)
    model.predict(x)
    model.forward(x, training=True)
    buffers = model._thread_plan(x.shape).buffers
    workspaces = list(model.layers[0]._workspace.values())
    assert workspaces and buffers
    for array in weights + buffers + workspaces:
        assert array.ctypes.data % 64 == 0 and array.flags.c_contiguous and array.flags.writeable
