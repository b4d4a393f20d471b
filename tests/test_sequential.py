"""Sequential: forward/backward against float64 references, predict (threads,
slices, allocation), state dicts with PyTorch's keys, freezing."""
import threading
import tracemalloc

import numpy as np
import pytest

from tests.helpers import check_gradient
import pynn
from pynn import Sequential, optim
from pynn.layers import Linear, ReLU, Tanh


def mlp(sizes=(5, 13, 7, 3), seed=0):
    rng = np.random.default_rng(seed)
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        linear = Linear(fan_in, fan_out)
        linear.params["weight"][...] = rng.uniform(-1, 1, (fan_out, fan_in))
        linear.params["bias"][...] = rng.uniform(-1, 1, fan_out)
        layers += [linear, ReLU()]
    return Sequential(*layers[:-1])


def reference_forward(model, x):
    """float64: relu(x W₁ᵀ + b₁) ... with no ReLU after the last Linear."""
    x = x.astype(np.float64)
    for layer in model:
        if isinstance(layer, Linear):
            x = x @ layer.params["weight"].astype(np.float64).T + layer.params["bias"]
        else:
            x = np.maximum(x, 0.0)
    return x


@pytest.mark.parametrize("batch", [1, 2, 7, 64, 131])
def test_forward_and_predict_match_float64_reference(batch):
    model = mlp()
    x = np.random.default_rng(batch).standard_normal((batch, 5)).astype(np.float32)
    expected = reference_forward(model, x)
    np.testing.assert_allclose(model.forward(x), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.forward(x, training=True), expected, rtol=1e-5, atol=1e-5)


def test_container_protocol():
    model = mlp()
    assert len(model) == 5
    assert isinstance(model[1], ReLU)
    tail = model[2:]
    assert isinstance(tail, Sequential) and len(tail) == 3 and tail[0] is model[2]
    assert [type(layer) for layer in model] == [Linear, ReLU, Linear, ReLU, Linear]
    with pytest.raises(TypeError, match="Sequential: argument 1 must be a pynn layer, got str"):
        Sequential(Linear(2, 2), "relu")


def test_predict_in_slices_and_of_an_empty_batch():
    model = mlp()
    x = np.random.default_rng(1).standard_normal((37, 5)).astype(np.float32)
    whole = model.predict(x)
    np.testing.assert_allclose(model.predict(x, batch_size=8), whole, rtol=1e-6, atol=1e-6)
    assert model.predict(x[:0]).shape == (0, 3)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        model.predict(x, batch_size=0)


def test_predict_validates_its_input():
    model = mlp()
    with pytest.raises(ValueError, match="Linear"):
        model.predict(np.zeros((4, 6), np.float32))
    with pytest.raises(TypeError, match="Linear"):
        model.predict(np.zeros((4, 5), np.int32))
    np.testing.assert_allclose(model.predict(np.ones((2, 5))), model.predict(np.ones((2, 5), np.float32)))


def test_predict_from_many_threads_matches_serial():
    model = mlp(sizes=(32, 64, 64, 10))
    rng = np.random.default_rng(2)
    inputs = [rng.standard_normal((batch, 32)).astype(np.float32) for batch in (1, 3, 16, 50)]
    expected = [model.predict(x) for x in inputs]
    failures = []

    def worker(offset):
        for round_ in range(50):
            index = (offset + round_) % len(inputs)
            if not np.array_equal(model.predict(inputs[index]), expected[index]):
                failures.append(index)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


def test_predict_allocates_only_its_result_once_warm():
    model = mlp(sizes=(64, 256, 256, 10))
    x = np.random.default_rng(3).standard_normal((16, 64)).astype(np.float32)
    model.predict(x)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(20):
            model.predict(x)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    # the result (16 x 10 floats) and small Python objects, never the 16 x 256 hidden layers
    assert peak < 16 * 256 * 4


def layer_by_layer(model, x, dy):
    """Output and input gradient with the model's layers driven by hand, one
    at a time: what Sequential computes when it fuses nothing."""
    h = x
    for layer in model.layers:
        h = layer.forward(h, training=True)
    grad = dy
    for layer in reversed(model.layers):
        grad = layer.backward(grad)
    return h, grad


def named_gradients(model):
    return {f"{i}.{key}": grad.copy() for i, layer in enumerate(model) for key, grad in layer.grads.items()}


def loss_of(model, x, target):
    """0.5 Σ (model(x) - target)², whose gradient w.r.t. the output is the residual."""
    out = model.forward(x, training=True).astype(np.float64)
    return 0.5 * np.sum((out - target) ** 2)


def test_backward_gradients_match_finite_differences():
    model = Sequential(Linear(4, 6), Tanh(), Linear(6, 3))
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    target = rng.standard_normal((5, 3))
    out = model.forward(x, training=True)
    dx = model.backward((out - target).astype(np.float32), input_grad=True)
    grads = named_gradients(model)
    check_gradient(lambda x_: loss_of(model, x_, target), x, dx)
    for name, param in model.named_parameters():
        def as_function(value, param=param):
            saved = param.copy()
            param[...] = value
            try:
                return loss_of(model, x, target)
            finally:
                param[...] = saved
        check_gradient(as_function, param.copy(), grads[name])


def test_backward_without_input_gradient_returns_none_and_same_grads():
    model = mlp()
    x = np.random.default_rng(5).standard_normal((9, 5)).astype(np.float32)
    dy = np.ones((9, 3), np.float32)
    model.forward(x, training=True)
    assert model.backward(dy).shape == x.shape  # the API's default: dL/dx returned
    full = named_gradients(model)
    model.forward(x, training=True)
    assert model.backward(dy, input_grad=False) is None
    for name, grad in named_gradients(model).items():
        np.testing.assert_array_equal(grad, full[name])


def test_freeze_skips_gradients_and_updates():
    model = mlp()
    model.freeze(2)
    assert [layer.trainable for layer in model] == [False, False, True, True, True]
    frozen_weight = model[0].params["weight"].copy()
    model[0].grads["weight"][...] = 123.0  # a frozen layer's gradient is never computed
    optimizer = optim.SGD(model, lr=0.1)
    x = np.random.default_rng(6).standard_normal((4, 5)).astype(np.float32)
    model.forward(x, training=True)
    model.backward(np.ones((4, 3), np.float32))
    optimizer.step()
    np.testing.assert_array_equal(model[0].params["weight"], frozen_weight)
    assert np.all(model[0].grads["weight"] == 123.0)
    assert np.any(model[2].grads["weight"] != 0.0)
    model.unfreeze()
    assert all(layer.trainable for layer in model)
    with pytest.raises(ValueError, match="freeze: n must be <= the 5 layers, got 6"):
        model.freeze(6)


def test_state_dict_keys_and_live_arrays():
    model = mlp()
    state = model.state_dict()
    assert list(state) == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    assert state["2.weight"] is model[2].params["weight"]
    assert [name for name, _ in model.named_parameters()] == list(state)


def test_load_state_dict_copies_into_live_arrays():
    source, target = mlp(seed=1), mlp(seed=2)
    live = target[0].params["weight"]
    target.load_state_dict({k: v.astype(np.float64) for k, v in source.state_dict().items()})
    assert target[0].params["weight"] is live
    x = np.ones((3, 5), np.float32)
    np.testing.assert_array_equal(target.predict(x), source.predict(x))


def test_strict_mismatch_lists_keys_and_changes_nothing():
    model = mlp()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    state = {k: v + 1 for k, v in model.state_dict().items()}
    del state["4.bias"]
    state["9.weight"] = np.zeros(2, np.float32)
    state["2.weight"] = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError) as error:
        model.load_state_dict(state)
    message = str(error.value)
    assert "missing keys: 4.bias" in message and "unexpected keys: 9.weight" in message
    assert "2.weight (expected (7, 13), got (2, 2))" in message
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_non_strict_load_reports_and_loads_the_rest():
    model = mlp()
    result = model.load_state_dict({"0.bias": np.zeros(13), "extra": np.zeros(1)}, strict=False)
    assert "0.weight" in result.missing_keys and result.unexpected_keys == ["extra"]
    assert np.all(model[0].params["bias"] == 0.0)
    with pytest.raises(TypeError, match="0.bias must hold floating-point values, got dtype int64"):
        model.load_state_dict({"0.bias": np.zeros(13, np.int64)}, strict=False)


def test_torch_state_dict_round_trip():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    twin = torch.nn.Sequential(torch.nn.Linear(5, 13), torch.nn.ReLU(), torch.nn.Linear(13, 7),
                               torch.nn.ReLU(), torch.nn.Linear(7, 3))
    model = mlp()
    assert list(model.state_dict()) == list(twin.state_dict())
    model.load_state_dict(twin.state_dict())
    x = np.random.default_rng(7).standard_normal((11, 5)).astype(np.float32)
    with torch.no_grad():
        expected = twin(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-5, atol=1e-6)


def test_fused_linear_relu_equals_the_layers_run_one_by_one():
    model = mlp(sizes=(9, 33, 17, 4))
    assert model[0].activation == "relu" and model[4].activation is None
    rng = np.random.default_rng(8)
    x = rng.standard_normal((23, 9)).astype(np.float32)
    dy = rng.standard_normal((23, 4)).astype(np.float32)
    out = model.forward(x, training=True).copy()
    dx = model.backward(dy, input_grad=True).copy()
    model[0].activation = model[2].activation = None
    h, grad = layer_by_layer(model, x, dy)
    np.testing.assert_array_equal(h, out)
    np.testing.assert_allclose(grad, dx, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(model.predict(x), out)  # predict rewires the fusion


def fused_then_one_by_one(model, fused, x, dy):
    """A training step with the ReLUs fused into ``fused``, then (those layers
    unfused) the layers run one by one: output, dx, the named gradients, and
    the one-by-one output and dx."""
    out = model.forward(x, training=True).copy()
    dx = model.backward(dy).copy()
    grads = named_gradients(model)
    for layer in fused:
        layer.activation = None
    h, grad = layer_by_layer(model, x, dy)
    return out, dx, grads, h, grad


def test_fused_conv_relu_equals_the_layers_run_one_by_one():
    from pynn.layers import Conv2d, Flatten, MaxPool2d

    model = Sequential(Conv2d(2, 4, 3, padding=1), ReLU(), MaxPool2d(2), Conv2d(4, 3, 3), ReLU(),
                       Flatten(), Linear(3, 2))
    assert model[0].activation == "relu" and model[3].activation == "relu"
    rng = np.random.default_rng(12)
    x = rng.standard_normal((5, 2, 6, 6)).astype(np.float32)
    dy = rng.standard_normal((5, 2)).astype(np.float32)
    out, dx, grads, h, grad = fused_then_one_by_one(model, [model[0], model[3]], x, dy)
    np.testing.assert_array_equal(h, out)
    np.testing.assert_allclose(grad, dx, rtol=1e-6, atol=1e-6)
    for name, value in named_gradients(model).items():
        np.testing.assert_allclose(value, grads[name], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(model.predict(x), out)


def test_fused_batch_norm_relu_gives_the_bits_of_the_layers_run_one_by_one():
    from pynn.layers import BatchNorm2d, Conv2d, Flatten

    model = Sequential(Conv2d(2, 4, 3, padding=1, bias=False), BatchNorm2d(4), ReLU(), Flatten(),
                       Linear(4 * 6 * 6, 3))
    assert model[1].activation == "relu" and model[0].activation is None
    rng = np.random.default_rng(13)
    x = rng.standard_normal((5, 2, 6, 6)).astype(np.float32)
    dy = rng.standard_normal((5, 3)).astype(np.float32)
    out, dx, grads, h, grad = fused_then_one_by_one(model, [model[1]], x, dy)
    np.testing.assert_array_equal(h, out)
    np.testing.assert_array_equal(grad, dx)
    for name, value in named_gradients(model).items():
        np.testing.assert_array_equal(value, grads[name], err_msg=name)


def test_a_linear_shared_with_another_model_keeps_both_correct():
    model = mlp()
    x = np.random.default_rng(9).standard_normal((6, 5)).astype(np.float32)
    body = Sequential(model[0])  # the Linear without its ReLU
    np.testing.assert_allclose(body.predict(x), reference_forward(body, x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.predict(x), reference_forward(model, x), rtol=1e-5, atol=1e-5)


def test_state_dict_with_buffers_matches_torch_keys_and_values():
    torch = pytest.importorskip("torch")
    layers = pytest.importorskip("pynn.layers")
    if not hasattr(layers, "BatchNorm1d"):
        pytest.skip("BatchNorm1d is not built yet")
    model = Sequential(Linear(4, 6), layers.BatchNorm1d(6), ReLU(), Linear(6, 2))
    twin = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(),
                               torch.nn.Linear(6, 2))
    assert list(model.state_dict()) == list(twin.state_dict())
    x = np.random.default_rng(10).standard_normal((16, 4)).astype(np.float32)
    twin.train()
    twin(torch.from_numpy(x))  # moves the running statistics
    model.load_state_dict(twin.state_dict())
    assert int(model[1].buffers["num_batches_tracked"]) == 1
    twin.eval()
    with torch.no_grad():
        expected = twin(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-5, atol=1e-5)


def test_predict_through_layers_that_return_views():
    from pynn.layers import Dropout, Flatten

    linear = Linear(12, 3)
    model = Sequential(Flatten(), linear, Dropout(0.5))  # Flatten and Dropout infer as views
    x = np.random.default_rng(11).standard_normal((5, 3, 4)).astype(np.float32)
    expected = x.reshape(5, 12).astype(np.float64) @ linear.params["weight"].T + linear.params["bias"]
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.predict(x, batch_size=2), expected, rtol=1e-5, atol=1e-6)


def test_output_shape_follows_the_chain_and_names_the_layer_that_refuses():
    model = pynn.Sequential(pynn.layers.Conv2d(1, 4, 3, padding=1), pynn.layers.ReLU(),
                            pynn.layers.MaxPool2d(2), pynn.layers.Flatten(),
                            pynn.layers.Linear(4 * 4 * 4, 3))
    assert model.output_shape((5, 1, 8, 8)) == (5, 3)
    assert model.output_shape([2, 1, 8, 8]) == (2, 3)
    with pytest.raises(ValueError, match="Linear: input must end in in_features=64"):
        model.output_shape((5, 1, 10, 10))
    with pytest.raises(ValueError, match="the model has no layers"):
        pynn.Sequential().output_shape((1, 2))
