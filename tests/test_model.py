"""Graph models: building (shape checks, names, cycles impossible), forward
and backward through fan-out, shared layers, nested models and several
outputs against float64 finite differences, and persistence."""
import pickle

import numpy as np
import pytest

import pynn
from pynn import layers
from pynn.losses import CrossEntropyLoss, MSELoss
from pynn.optim import SGD
from tests.helpers import peak_bytes_of

rng = np.random.default_rng(0)


def residual_mlp():
    """Fan-out (x read by two calls), a shared layer called twice, a nested
    Sequential and two outputs."""
    pynn.init.manual_seed(3)
    x = pynn.Input((6,), name="x")
    h = layers.Linear(6, 8, name="stem")(x)
    h = layers.Tanh()(h)
    shared = layers.Linear(8, 8, name="block.shared")
    a = shared(h)
    b = shared(layers.Sigmoid()(a))
    merged = layers.Tanh()(b)
    head = pynn.Sequential(layers.Linear(8, 5), layers.ReLU(), layers.Linear(5, 3), name="head")
    side = layers.Linear(8, 2, name="side")(h)
    return pynn.Model(x, [head(merged), side])


def total_loss(model, x, weights):
    outputs = model.forward(x)
    outputs = outputs if isinstance(outputs, list) else [outputs]
    return sum(float((out.astype(np.float64) * w).sum()) for out, w in zip(outputs, weights))


def assert_finite_differences(model, x, weights, array, grad, indices, label):
    """``grad`` at ``indices`` of ``array`` (a parameter or the input, changed
    in place) against central differences of ``total_loss``."""
    flat, flat_grad = array.reshape(-1), grad.reshape(-1)
    for index in indices:
        saved = flat[index]
        flat[index] = saved + 1e-2
        up = total_loss(model, x, weights)
        flat[index] = saved - 1e-2
        down = total_loss(model, x, weights)
        flat[index] = saved
        assert flat_grad[index] == pytest.approx((up - down) / 2e-2, rel=2e-2, abs=2e-3), label


def assert_gradients_match_finite_differences(model, x, weights):
    model.forward(x, training=True)
    dx = model.backward(weights if len(weights) > 1 else weights[0])
    for name, param in model.named_parameters():
        layer, key = name.rsplit(".", 1)
        grad = model.get_layer(layer).grads[key]
        indices = rng.choice(param.size, size=min(5, param.size), replace=False)
        assert_finite_differences(model, x, weights, param, grad, indices, name)
    assert_finite_differences(model, x, weights, x, dx, range(0, x.size, 5), "x")


def test_gradients_of_a_graph_match_finite_differences():
    model = residual_mlp()
    x = rng.standard_normal((4, 6)).astype(np.float32)
    weights = [rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal((4, 2)).astype(np.float32)]
    assert_gradients_match_finite_differences(model, x, weights)


def test_state_dict_keys_follow_layer_names_and_nesting():
    model = residual_mlp()
    assert list(model.state_dict()) == [
        "stem.weight", "stem.bias", "block.shared.weight", "block.shared.bias",
        "head.0.weight", "head.0.bias", "head.2.weight", "head.2.bias", "side.weight", "side.bias"]
    assert [layer.name for layer in model.layers][:3] == ["stem", "tanh_1", "block.shared"]


def test_save_load_and_pickle_round_trip_bit_for_bit(tmp_path):
    model = residual_mlp()
    x = rng.standard_normal((5, 6)).astype(np.float32)
    expected = model.predict(x)
    model.save(tmp_path / "graph.safetensors")
    for loaded in (pynn.load(tmp_path / "graph.safetensors"), pickle.loads(pickle.dumps(model))):
        assert type(loaded) is pynn.Model
        for got, want in zip(loaded.predict(x), expected):
            np.testing.assert_array_equal(got, want)
        assert list(loaded.state_dict()) == list(model.state_dict())


def test_build_errors_name_the_layer():
    x = pynn.Input((6,))
    with pytest.raises(ValueError, match=r"layer 'fc' \(Linear\).*\(6,\)"):
        layers.Linear(5, 3, name="fc")(x)
    a, b = layers.Linear(6, 3)(x), layers.Linear(6, 4)(x)
    with pytest.raises(ValueError, match=r"Add.*\(3,\).*\(4,\)"):
        layers.Add()([a, b])
    with pytest.raises(TypeError, match="Embedding.*int64"):
        layers.Embedding(10, 2)(x)
    other = pynn.Input((6,))
    with pytest.raises(ValueError, match="not among the model's inputs"):
        pynn.Model(x, layers.Linear(6, 2)(other))
    with pytest.raises(ValueError, match="two layers are named 'same'"):
        pynn.Model(x, [layers.Linear(6, 2, name="same")(x), layers.Linear(6, 2, name="same")(x)])
    model = pynn.Model(x, layers.Linear(6, 2, name="fc")(x))
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        model.get_layer("nope")
    with pytest.raises(ValueError, match="'nope'"):
        model.freeze("nope")


def test_a_sequential_as_a_model_gives_the_same_outputs_and_gradients():
    pynn.init.manual_seed(1)
    seq = pynn.Sequential(layers.Linear(6, 8), layers.ReLU(), layers.Linear(8, 3))
    x = pynn.Input((6,))
    h = seq[0](x)
    h = seq[1](h)
    model = pynn.Model(x, seq[2](h))
    data = rng.standard_normal((7, 6)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(data), seq.predict(data))
    dy = rng.standard_normal((7, 3)).astype(np.float32)
    seq.forward(data, training=True)
    want_dx = seq.backward(dy).copy()
    want = {(prefix, key): layer.grads[key].copy() for prefix, layer in seq.parameter_owners()
            for key in layer.grads}
    model.forward(data, training=True)
    np.testing.assert_array_equal(model.backward(dy), want_dx)
    for prefix, layer in seq.parameter_owners():
        for key in layer.grads:
            np.testing.assert_array_equal(layer.grads[key], want[(prefix, key)])


def test_fit_with_two_outputs_and_loss_weights_trains_both_heads():
    pynn.init.manual_seed(0)
    x = pynn.Input((4,))
    h = layers.ReLU()(layers.Linear(4, 16)(x))
    classes = layers.Linear(16, 3, name="classes")(h)
    value = layers.Linear(16, 1, name="value")(h)
    model = pynn.Model(x, [classes, value])
    data = rng.standard_normal((256, 4)).astype(np.float32)
    labels = (data[:, 0] > 0).astype(np.int64) + (data[:, 1] > 0)
    target = data[:, 2:3] * 2.0
    history = model.fit(data, [labels, target], loss=[CrossEntropyLoss(), MSELoss()],
                        loss_weights=[1.0, 0.5], optimizer=SGD(model, lr=0.1), epochs=30,
                        batch_size=32, seed=0, verbose=False)
    logs = history.history
    assert set(logs) >= {"loss", "classes_loss", "value_loss", "classes_accuracy"}
    assert logs["classes_accuracy"][-1] > 0.9
    assert logs["value_loss"][-1] < 0.2 * logs["value_loss"][0]
    np.testing.assert_allclose(logs["loss"][-1], logs["classes_loss"][-1] + 0.5 * logs["value_loss"][-1],
                               rtol=1e-6)


def test_freeze_by_prefix_skips_those_layers():
    model = residual_mlp()
    before = {key: value.copy() for key, value in model.state_dict().items()}
    model.freeze("block", "head")
    assert not model.get_layer("block.shared").trainable and not model.get_layer("head")[0].trainable
    data = rng.standard_normal((8, 6)).astype(np.float32)
    model.fit(data, [rng.standard_normal((8, 3)), rng.standard_normal((8, 2))], loss=MSELoss(),
              optimizer=SGD(model, lr=0.1), epochs=1, verbose=False)
    after = model.state_dict()
    for key in before:
        changed = not np.array_equal(before[key], after[key])
        assert changed == key.startswith(("stem", "side")), key


def test_summary_lists_names_types_shapes_and_parameters():
    lines = []
    residual_mlp().summary(print_fn=lines.append)
    text = lines[0]
    assert "block.shared" in text and "(None, 8)" in text and "Sequential" in text
    assert "Total parameters: " in text


def test_a_graph_training_step_allocates_under_64_kib_in_steady_state():
    model = residual_mlp()
    optimizer = pynn.optim.Adam(model)
    losses = [MSELoss(), MSELoss()]
    x = rng.standard_normal((64, 6)).astype(np.float32)
    targets = [rng.standard_normal((64, 3)).astype(np.float32), rng.standard_normal((64, 2)).astype(np.float32)]

    def step():
        outputs = model.forward(x, training=True)
        for loss, out, target in zip(losses, outputs, targets):
            loss(out, target)
        model.backward([loss.backward() for loss in losses], input_grad=False)
        optimizer.step()

    step()
    step()
    assert peak_bytes_of(step) < 64 * 1024


def normalised_block_layers(seed=4):
    """Conv, BatchNorm, ReLU (the ReLU the norm's only reader), then a second
    BatchNorm read by a ReLU and by the residual sum (not fused)."""
    pynn.init.manual_seed(seed)
    return (layers.Conv2d(3, 4, 3, padding=1, bias=False), layers.BatchNorm2d(4), layers.ReLU(),
            layers.BatchNorm2d(4), layers.ReLU(), layers.Add(), layers.GlobalAvgPool2d())


def normalised_block():
    conv, norm, relu, second, second_relu, add, pool = normalised_block_layers()
    x = pynn.Input((3, 6, 6))
    z = second(relu(norm(conv(x))))
    return pynn.Model(x, pool(add([second_relu(z), z])))


def test_a_batch_norm_carries_the_relu_that_alone_reads_it_with_the_bits_of_both_layers():
    model = normalised_block()
    conv, norm, relu, second, second_relu, add, pool = normalised_block_layers()
    x = rng.standard_normal((5, 3, 6, 6)).astype(np.float32)
    dy = rng.standard_normal((5, 4)).astype(np.float32)
    z = second.forward(relu.forward(norm.forward(conv.forward(x, True), True), True), True)
    expected = pool.forward(add.forward([second_relu.forward(z, True), z], True), True)
    np.testing.assert_array_equal(model.forward(x, training=True), expected)
    norms = [layer for _, layer in model.named_layers() if isinstance(layer, layers.BatchNorm2d)]
    assert [norm.activation for norm in norms] == ["relu", None]
    assert sum(type(step.runner) is layers.ReLU for step in model._steps) == 1
    through_relu, direct = add.backward(pool.backward(dy))
    dz = second_relu.backward(through_relu) + direct
    dx = conv.backward(norm.backward(relu.backward(second.backward(dz))))
    np.testing.assert_array_equal(model.backward(dy), dx)
    for name, layer in model.named_layers():
        eager = {"conv2d_1": conv, "batch_norm2d_1": norm, "batch_norm2d_2": second}.get(name)
        for key, grad in layer.grads.items():
            np.testing.assert_array_equal(grad, eager.grads[key], err_msg=f"{name}.{key}")
    z = second.forward(relu.forward(norm.forward(conv.forward(x))))
    expected = pool.forward(add.forward([second_relu.forward(z), z]))
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-5, atol=1e-6)


def test_a_training_step_through_fused_batch_norms_allocates_under_64_kib():
    model = normalised_block()
    optimizer = pynn.optim.SGD(model, lr=0.1, momentum=0.9)
    loss = MSELoss()
    x = rng.standard_normal((16, 3, 6, 6)).astype(np.float32)
    target = rng.standard_normal((16, 4)).astype(np.float32)

    def step():
        loss(model.forward(x, training=True), target)
        model.backward(loss.backward(), input_grad=False)
        optimizer.step()

    step()
    step()
    assert peak_bytes_of(step) < 64 * 1024


def test_a_resnet_plan_keeps_peak_activation_memory_near_the_largest_tensors():
    x = pynn.Input((16, 32, 32))
    h = x
    for index in range(4):
        branch = layers.BatchNorm2d(16)(layers.Conv2d(16, 16, 3, padding=1, bias=False)(h))
        h = layers.ReLU()(layers.Add()([layers.ReLU()(branch), h]))
    model = pynn.Model(x, layers.Linear(16, 10)(layers.GlobalAvgPool2d()(h)))
    plan = model._thread_plan(((2, 16, 32, 32),))
    largest = 2 * 16 * 32 * 32
    kinds = [step.kind for step in plan.schedule.steps]
    assert kinds == ["conv", "add"] * 4 + ["mean", "gemm"]  # BatchNorm folded, ReLUs fused
    assert plan.schedule.peak_floats == 2 * largest  # the block's input and the branch


def test_a_nested_model_with_a_shared_layer_called_twice_sums_every_gradient():
    pynn.init.manual_seed(5)
    inner_x = pynn.Input((4,))
    shared = layers.Linear(4, 4, name="shared")
    inner = pynn.Model(inner_x, layers.Tanh()(shared(layers.Tanh()(shared(inner_x)))), name="inner")
    x = pynn.Input((4,))
    model = pynn.Model(x, layers.Linear(4, 2, name="out")(inner(layers.Sigmoid()(inner(x)))))
    data = rng.standard_normal((3, 4)).astype(np.float32)
    assert_gradients_match_finite_differences(model, data, [rng.standard_normal((3, 2)).astype(np.float32)])


def test_a_shared_embedding_sums_both_uses_and_the_optimizer_moves_every_row_they_touched():
    pynn.init.manual_seed(2)
    user, item = pynn.Input((), "int64"), pynn.Input((), "int64")
    table = layers.Embedding(10, 3, name="table")
    model = pynn.Model([user, item], layers.Dot()([table(user), table(item)]))
    optimizer = SGD(model, lr=0.5)
    for step in range(3):
        users, items = rng.integers(0, 10, 4), rng.integers(0, 10, 4)
        weight = table.params["weight"].astype(np.float64)
        dy = rng.standard_normal((4, 1))
        expected = np.zeros_like(weight)
        np.add.at(expected, users, dy * weight[items])
        np.add.at(expected, items, dy * weight[users])
        model.forward([users, items], training=True)
        model.backward(dy.astype(np.float32), input_grad=False)
        np.testing.assert_allclose(table.grads["weight"], expected, rtol=1e-5, atol=1e-6)
        optimizer.step()
        np.testing.assert_allclose(table.params["weight"], weight - 0.5 * expected, rtol=1e-5, atol=1e-6)


def small_resnet():
    """A stem and two residual stages, the second downsampling through a 1x1 shortcut."""
    x = pynn.Input((3, 16, 16), name="image")
    h = layers.Conv2d(3, 8, 3, padding=1, bias=False, name="conv1")(x)
    h = layers.ReLU()(layers.BatchNorm2d(8, name="bn1")(h))
    channels = 8
    for name, width, stride in (("layer1", 8, 1), ("layer2", 16, 2)):
        y = layers.Conv2d(channels, width, 3, stride=stride, padding=1, bias=False, name=f"{name}.conv1")(h)
        y = layers.ReLU()(layers.BatchNorm2d(width, name=f"{name}.bn1")(y))
        y = layers.Conv2d(width, width, 3, padding=1, bias=False, name=f"{name}.conv2")(y)
        y = layers.BatchNorm2d(width, name=f"{name}.bn2")(y)
        shortcut = h
        if stride != 1:
            shortcut = layers.Conv2d(channels, width, 1, stride=stride, bias=False, name=f"{name}.down.0")(h)
            shortcut = layers.BatchNorm2d(width, name=f"{name}.down.1")(shortcut)
        h = layers.ReLU()(layers.Add()([y, shortcut]))
        channels = width
    return pynn.Model(x, layers.Linear(16, 10, name="fc")(layers.GlobalAvgPool2d()(h)))


def recommender():
    user, item = pynn.Input((), "int64", name="user"), pynn.Input((), "int64", name="item")
    score = layers.Dot()([layers.Embedding(50, 8, name="users")(user), layers.Embedding(30, 8, name="items")(item)])
    return pynn.Model([user, item], layers.Add()([score, layers.Embedding(50, 1, name="user_bias")(user),
                                                  layers.Embedding(30, 1, name="item_bias")(item)]))


@pytest.mark.parametrize("build", [small_resnet, recommender])
def test_a_resnet_and_a_recommender_round_trip_bit_for_bit_after_training(build, tmp_path):
    model = build()
    if build is small_resnet:
        x, y = rng.standard_normal((16, 3, 16, 16)).astype(np.float32), rng.integers(0, 10, 16)
        loss = CrossEntropyLoss()
    else:
        x, y = [rng.integers(0, 50, 64), rng.integers(0, 30, 64)], rng.uniform(1, 5, (64, 1)).astype(np.float32)
        loss = MSELoss()
    model.fit(x, y, loss=loss, optimizer=pynn.optim.Adam(model), epochs=2, batch_size=8, verbose=False)
    expected = model.predict(x)
    model.save(tmp_path / "model.safetensors")
    for loaded in (pynn.load(tmp_path / "model.safetensors"), pickle.loads(pickle.dumps(model))):
        assert type(loaded) is pynn.Model
        np.testing.assert_array_equal(loaded.predict(x), expected)
        for key, value in model.state_dict().items():
            assert loaded.state_dict()[key].tobytes() == value.tobytes(), key
