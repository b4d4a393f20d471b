"""Conv2d, MaxPool2d, AvgPool2d, GlobalAvgPool2d layers: defaults, state-dict
keys and initialisation as PyTorch, training buffers, frozen layers, inside
Sequential with Flatten and Linear, and errors naming the layer."""
import math
import threading

import numpy as np
import pytest

from pynn import Sequential, init, ops
from pynn.layers import (AvgPool2d, Conv2d, Flatten, GlobalAvgPool2d, Linear, MaxPool2d,
                         ReLU)
from tests.helpers import check_gradient


def test_conv2d_parameters_and_initialisation_follow_pytorch():
    init.manual_seed(0)
    layer = Conv2d(6, 8, (3, 5), groups=2)
    weight, bias = layer.params["weight"], layer.params["bias"]
    assert list(layer.params) == ["weight", "bias"] and weight.shape == (8, 3, 3, 5)
    bound = 1.0 / math.sqrt(3 * 3 * 5)  # kaiming_uniform(a=√5) ⇒ U(±1/√fan_in)
    assert np.abs(weight).max() <= bound and np.abs(weight).max() > 0.8 * bound
    assert np.abs(bias).max() <= bound and bias.dtype == np.float32
    assert all(not g.any() and g.shape == layer.params[k].shape for k, g in layer.grads.items())
    assert "bias" not in Conv2d(1, 2, 3, bias=False).params
    init.manual_seed(0)
    again = Conv2d(6, 8, (3, 5), groups=2)
    np.testing.assert_array_equal(again.params["weight"], weight)


def test_conv2d_forward_backward_match_the_ops():
    rng = np.random.default_rng(0)
    layer = Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2)
    x = rng.standard_normal((3, 4, 9, 8)).astype(np.float32)
    geometry = dict(stride=2, padding=1, groups=2)
    y = layer.forward(x, training=True)
    np.testing.assert_array_equal(y, ops.conv2d(x, layer.params["weight"], layer.params["bias"],
                                                **geometry))
    np.testing.assert_array_equal(layer.forward(x), y)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(dy)
    expected = ops.conv2d_backward(dy, x, layer.params["weight"], **geometry)
    for ours, theirs in zip((dx, layer.grads["weight"], layer.grads["bias"]), expected):
        np.testing.assert_array_equal(ours, theirs)
    assert layer.backward(dy, input_grad=False) is None


def test_conv2d_with_fused_relu_gradients():
    rng = np.random.default_rng(1)
    layer = Conv2d(2, 3, 3, padding=1)
    layer.activation = "relu"
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    probe = rng.standard_normal((2, 3, 5, 5))
    y = layer.forward(x, training=True)
    assert (y >= 0).all() and (y == 0).any()
    dx = layer.backward(probe.astype(np.float32))
    check_gradient(lambda v: np.sum(layer.forward(v) * probe), x, dx, eps=1e-3)


def test_frozen_conv2d_computes_no_weight_gradient():
    layer = Conv2d(2, 3, 3)
    layer.trainable = False
    layer.grads["weight"][...] = 7.0
    x = np.ones((1, 2, 4, 4), np.float32)
    layer.forward(x, training=True)
    assert layer.backward(np.ones((1, 3, 2, 2), np.float32)).shape == x.shape
    assert (layer.grads["weight"] == 7.0).all()


@pytest.mark.parametrize("make, op, backward, keywords", [
    (lambda: MaxPool2d(3, 2, 1, ceil_mode=True), ops.max_pool2d, ops.max_pool2d_backward,
     dict(stride=2, padding=1, ceil_mode=True)),
    (lambda: MaxPool2d(3, 2), ops.max_pool2d, ops.max_pool2d_backward, dict(stride=2)),
    (lambda: AvgPool2d(3, 2, 1, count_include_pad=False), ops.avg_pool2d,
     ops.avg_pool2d_backward, dict(stride=2, padding=1, count_include_pad=False)),
])
def test_pool_layers_match_the_ops(make, op, backward, keywords):
    rng = np.random.default_rng(2)
    layer = make()
    x = rng.integers(-2, 3, (2, 3, 9, 7)).astype(np.float32)  # ties: the saved arg-max must agree
    y = layer.forward(x, training=True)
    np.testing.assert_array_equal(y, op(x, 3, **keywords))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    np.testing.assert_array_equal(layer.backward(dy), backward(dy, x, 3, **keywords))
    assert layer.params == {} and layer.buffers == {}


def test_global_avg_pool_layer():
    x = np.random.default_rng(3).standard_normal((2, 5, 3, 4)).astype(np.float32)
    layer = GlobalAvgPool2d()
    y = layer.forward(x, training=True)
    np.testing.assert_allclose(y, x.mean(axis=(2, 3)), rtol=1e-6)
    dx = layer.backward(np.ones((2, 5), np.float32))
    np.testing.assert_allclose(dx, np.full(x.shape, 1 / 12), rtol=1e-6)


def small_cnn():
    init.manual_seed(5)
    return Sequential(Conv2d(1, 4, 3, padding=1), ReLU(), MaxPool2d(2), Conv2d(4, 6, 3), ReLU(),
                      GlobalAvgPool2d(), Linear(6, 3))


def test_inside_sequential_gradients_and_keys():
    model = small_cnn()
    assert list(model.state_dict()) == ["0.weight", "0.bias", "3.weight", "3.bias", "6.weight",
                                        "6.bias"]
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    probe = rng.standard_normal((2, 3))
    model.forward(x, training=True)
    dx = model.backward(probe.astype(np.float32), input_grad=True)
    check_gradient(lambda v: np.sum(model.forward(v) * probe), x, dx, eps=1e-3)
    weight = model.layers[3].params["weight"]
    analytic = model.layers[3].grads["weight"].copy()

    def loss(value):
        saved = weight.copy()
        weight[...] = value
        try:
            return np.sum(model.forward(x) * probe)
        finally:
            weight[...] = saved
    check_gradient(loss, weight, analytic, eps=1e-3)


def test_sequential_with_flatten_matches_torch():
    torch = pytest.importorskip("torch")
    init.manual_seed(7)
    model = Sequential(Conv2d(3, 5, 3, stride=2, padding=1), ReLU(), AvgPool2d(2), Flatten(),
                       Linear(5 * 2 * 2, 4))
    twin = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3, stride=2, padding=1), torch.nn.ReLU(),
                               torch.nn.AvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(20, 4))
    twin.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in model.state_dict().items()})
    x = np.random.default_rng(8).standard_normal((3, 3, 9, 9)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x), twin(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-4, atol=1e-5)


def test_predict_from_several_threads_matches_serial():
    model = small_cnn()
    x = np.random.default_rng(9).standard_normal((16, 1, 12, 12)).astype(np.float32)
    expected = model.predict(x)
    results = [None] * 4

    def run(i):
        results[i] = model.predict(x)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        np.testing.assert_array_equal(result, expected)


@pytest.mark.parametrize("make, words", [
    (lambda: Conv2d(3, 4, 3, groups=2), ["Conv2d", "groups=2", "in_channels=3"]),
    (lambda: Conv2d(4, 6, 3, groups=4), ["Conv2d", "groups=4", "out_channels=6"]),
    (lambda: Conv2d(1, 1, 3, stride=0), ["Conv2d", "stride", "0"]),
    (lambda: Conv2d(1, 1, 3, dilation=-2), ["Conv2d", "dilation", "-2"]),
    (lambda: Conv2d(1, 1, 0), ["Conv2d", "kernel_size", "0"]),
    (lambda: MaxPool2d(2, padding=2), ["MaxPool2d", "padding", "half"]),
])
def test_bad_construction_is_refused(make, words):
    with pytest.raises(ValueError) as raised:
        make()
    for word in words:
        assert word in str(raised.value)


@pytest.mark.parametrize("layer, x, words", [
    (Conv2d(3, 4, 3), np.zeros((3, 8, 8), np.float32), ["Conv2d", "4-D", "(3, 8, 8)"]),
    (Conv2d(3, 4, 3), np.zeros((1, 2, 8, 8), np.float32), ["Conv2d", "in_channels=3", "(1, 2, 8, 8)"]),
    (Conv2d(3, 4, 5, padding=1), np.zeros((1, 3, 2, 2), np.float32), ["Conv2d", "spans 5", "4"]),
    (MaxPool2d(3), np.zeros((1, 1, 2, 2), np.float32), ["MaxPool2d", "(1, 1, 2, 2)"]),
    (GlobalAvgPool2d(), np.zeros((2, 3), np.float32), ["GlobalAvgPool2d", "(2, 3)"]),
])
def test_bad_input_is_refused_naming_the_layer(layer, x, words):
    with pytest.raises(ValueError) as raised:
        layer.forward(x)
    for word in words:
        assert word in str(raised.value)


def test_backward_before_forward_is_an_error():
    with pytest.raises(RuntimeError, match="Conv2d.backward"):
        Conv2d(1, 1, 1).backward(np.zeros((1, 1, 1, 1), np.float32))


def test_single_channel_conv_with_fused_relu_keeps_nan():
    """One input channel at stride 1 takes the direct kernel; its fused ReLU
    matches relu(conv) and, as PyTorch's, keeps NaN."""
    rng = np.random.default_rng(8)
    layer = Conv2d(1, 7, (3, 5), padding=(2, 1))
    layer.activation = "relu"
    x = rng.standard_normal((2, 1, 11, 19)).astype(np.float32)
    x[1, 0, 5, 9] = np.nan
    y = layer.forward(x)
    plain = ops.conv2d(x, layer.params["weight"], layer.params["bias"], padding=(2, 1))
    np.testing.assert_array_equal(y, np.where(np.isnan(plain), plain, np.maximum(plain, 0)))
    assert np.isnan(y[1]).any() and not np.isnan(y[0]).any()
