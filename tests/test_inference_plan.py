"""Sequential's inference plans (pynn/_kernels/plan.pxi): kernel steps and
Python steps mixed in one chain, and a plan rebuilt whenever a layer's arrays,
settings or wiring change after it was made."""
import numpy as np
import pytest

import pynn
from pynn import Sequential
from pynn.layers import (AdaptiveAvgPool2d, Add, AvgPool1d, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv1d,
                         Conv2d, Dropout, Embedding, Flatten, GlobalAvgPool2d, LeakyReLU, Linear, MaxPool1d,
                         MaxPool2d, Multiply, ReLU, Reshape, Sigmoid, Softmax, Tanh)


def layer_by_layer(model, x):
    """The model's output through each layer's own checked forward."""
    for layer in model.layers:
        x = layer.forward(x, training=False)
    return x


def random_input(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def float64_linear(x, layer):
    return x.astype(np.float64) @ layer.params["weight"].T.astype(np.float64) + layer.params["bias"]


@pytest.mark.parametrize("build, shape", [
    (lambda: Sequential(Flatten(), Linear(12, 9), ReLU(), BatchNorm1d(9), Tanh(), Linear(9, 4),
                        Softmax()), (5, 3, 4)),
    (lambda: Sequential(Conv2d(2, 3, 3, padding=1), ReLU(), MaxPool2d(2), Flatten(), Linear(12, 5),
                        LeakyReLU(0.2), Dropout(0.3)), (3, 2, 4, 4)),
    (lambda: Sequential(Linear(6, 4), Flatten(start_dim=0)), (1, 6)),
    (lambda: Sequential(Linear(6, 5), Softmax(axis=0), Linear(5, 2)), (7, 6)),
    (lambda: Sequential(Flatten()), (4, 2, 3)),
    (lambda: Sequential(Dropout(0.5), Linear(6, 3)), (0, 6)),
])
def test_plans_mixing_kernel_and_python_steps_match_the_layers(build, shape):
    model = build()
    x = random_input(shape)
    expected = layer_by_layer(model, x)
    for _ in range(2):  # building the plan, then reusing it
        np.testing.assert_allclose(model.predict(x), expected, rtol=1e-6, atol=1e-6)


def test_embedding_models_take_integer_input_through_the_plan():
    model = Sequential(Embedding(10, 4), Flatten(), Linear(12, 2))
    indices = np.array([[1, 9, 3], [0, 0, 7]])
    expected = layer_by_layer(model, indices)
    for _ in range(2):
        np.testing.assert_allclose(model.predict(indices), expected, rtol=1e-6, atol=1e-6)


def test_dense_layers_run_as_kernel_steps_without_calling_infer():
    model = Sequential(Linear(5, 8), ReLU(), Linear(8, 3), Tanh())
    x = random_input((2, 5))
    expected = layer_by_layer(model, x)

    def python_step(*args):
        raise AssertionError("a dense layer ran as a Python step")

    for layer in model.layers:
        layer.infer = python_step
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-6, atol=1e-6)


def refuse_python_steps(layers):
    def python_step(*args):
        raise AssertionError("a layer with a plan step ran as a Python step")
    for layer in layers:
        layer.infer = python_step


@pytest.mark.parametrize("build, shape", [
    (lambda: Sequential(Conv2d(2, 4, 3), MaxPool2d(2, padding=1), AvgPool2d(3, 1, 1, count_include_pad=False),
                        AvgPool2d(2), AdaptiveAvgPool2d((2, 3))), (3, 2, 9, 11)),
    (lambda: Sequential(Conv1d(3, 4, 3), MaxPool1d(3, 2, dilation=2), AvgPool1d(2, padding=1)), (2, 3, 17)),
])
def test_pooling_layers_run_as_kernel_steps_with_the_layers_bits(build, shape):
    model = build()
    x = random_input(shape)
    expected = layer_by_layer(model, x)
    refuse_python_steps(model.layers[1:])
    for _ in range(2):
        np.testing.assert_array_equal(model.predict(x), expected)


def test_broadcasting_merges_run_as_kernel_steps_with_the_layers_bits():
    """A squeeze-excite gate: [N, C, 1, 1] times [N, C, H, W], then a broadcast sum."""
    image, bias = pynn.Input((4, 5, 6)), pynn.Input((6,))
    gate = Sigmoid()(Reshape((4, 1, 1))(Linear(4, 4)(GlobalAvgPool2d()(image))))
    merges = [Multiply(), Add(), Multiply()]
    scaled = merges[0]([gate, image])
    out = merges[2]([merges[1]([scaled, bias]), scaled])
    model = pynn.Model([image, bias], out)
    x, b = random_input((3, 4, 5, 6)), random_input((3, 6), seed=1)
    expected = model.forward([x, b], training=False)
    refuse_python_steps(merges)
    for _ in range(2):
        np.testing.assert_array_equal(model.predict([x, b]), expected)


def test_a_replaced_weight_array_is_used_by_the_next_predict():
    model = Sequential(Linear(5, 4), ReLU(), Linear(4, 3))
    x = random_input((2, 5))
    model.predict(x)
    last = model[2]
    last.params["weight"] = random_input((3, 4), seed=1)
    last.params["bias"] = random_input(3, seed=2)
    hidden = np.maximum(float64_linear(x, model[0]), 0.0)
    np.testing.assert_allclose(model.predict(x), float64_linear(hidden, last), rtol=1e-5, atol=1e-5)
    del last.params["bias"]
    expected = hidden @ last.params["weight"].T.astype(np.float64)
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-5, atol=1e-5)


def test_a_weight_replaced_by_one_the_kernel_cannot_read_raises():
    model = Sequential(Linear(5, 4))
    x = random_input((2, 5))
    model.predict(x)
    model[0].params["weight"] = np.ones((4, 5))  # float64
    with pytest.raises(ValueError, match="Linear"):
        model.predict(x)


def test_changed_activation_settings_are_used_by_the_next_predict():
    leaky, softmax = LeakyReLU(0.1), Softmax(axis=1)
    model = Sequential(leaky, softmax)
    x = random_input((3, 4))
    model.predict(x)
    leaky.negative_slope = 0.5
    h = np.exp(np.where(x > 0, x, 0.5 * x).astype(np.float64))
    np.testing.assert_allclose(model.predict(x), h / h.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    softmax.axis = 0
    np.testing.assert_allclose(model.predict(x), h / h.sum(axis=0), rtol=1e-5, atol=1e-6)


def test_a_layer_shared_by_two_models_follows_each_models_wiring():
    conv = Conv2d(2, 3, 3)  # a Python step, reading the wiring from the layer
    with_relu, without = Sequential(conv, ReLU(), Flatten()), Sequential(conv, Flatten())
    x = random_input((2, 2, 3, 3))
    plain = conv.forward(x).reshape(2, 3)
    for _ in range(3):
        np.testing.assert_allclose(with_relu.predict(x), np.maximum(plain, 0), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(without.predict(x), plain, rtol=1e-6, atol=1e-6)


def test_strided_and_float64_inputs_after_a_plan_is_built():
    model = Sequential(Linear(3, 2))
    wide = random_input((4, 6))
    model.predict(np.ascontiguousarray(wide[:, ::2]))
    for x in (wide[:, ::2], wide[:, ::2].astype(np.float64)):
        np.testing.assert_allclose(model.predict(x), float64_linear(wide[:, ::2], model[0]),
                                   rtol=1e-5, atol=1e-5)


def test_a_plan_refuses_buffers_of_the_wrong_size():
    model = Sequential(Linear(3, 2))
    plan = model._thread_plan((4, 3))
    with pytest.raises(TypeError, match=r"xs\[0\] must be"):
        plan.run([np.ones((2, 3), np.float32)], [np.empty((4, 2), np.float32)])
    with pytest.raises(TypeError, match=r"outs\[0\] must be"):
        plan.run([np.ones((4, 3), np.float32)], [np.empty((4, 2), np.float64)])


@pytest.mark.parametrize("batch", [1, 3, 16, 17])
def test_small_batches_shared_among_threads_equal_one_thread_bit_for_bit(batch, set_threads):
    # at batch <= 16 with two threads the plan's steps are split by output
    # columns (and the map by elements) inside one team; the cuts must not
    # change any output's sum
    model = Sequential(Linear(517, 300), ReLU(), Linear(300, 8200), Tanh(), Linear(8200, 37),
                       Softmax())
    x = random_input((batch, 517))
    set_threads(1)
    alone = model.predict(x)
    set_threads(2)
    shared = model.predict(x)
    np.testing.assert_array_equal(shared, alone)
    np.testing.assert_allclose(alone, layer_by_layer(model, x), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("outputs", [9, 17, 20, 24, 40, 70])
@pytest.mark.parametrize("batch", [2, 8, 12, 16])
def test_narrow_heads_shared_among_threads_equal_one_thread_bit_for_bit(isa, outputs, batch,
                                                                         set_threads):
    # a head cut into 16-column shares must not leave a share so narrow that
    # its GEMM takes another kernel than the whole head's
    model = Sequential(Linear(512, 256), ReLU(), Linear(256, outputs))
    x = random_input((batch, 512))
    set_threads(1)
    alone = model.predict(x)
    set_threads(2)
    np.testing.assert_array_equal(model.predict(x), alone)


def test_a_batchnorm_after_a_convolutions_relu_normalises_the_relu_output():
    model = Sequential(Conv2d(1, 2, 3, padding=1), ReLU(), BatchNorm2d(2))
    norm = model.layers[2]
    norm.buffers["running_mean"][:] = [0.5, -0.3]
    norm.params["bias"][:] = [-1.0, 2.0]
    x = random_input((2, 1, 4, 4))
    np.testing.assert_allclose(model.predict(x), layer_by_layer(model, x), rtol=1e-6, atol=1e-6)
