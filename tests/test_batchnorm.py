"""BatchNorm1d/2d against a float64 reference written here, finite differences
and torch (train and eval mode, running statistics after several steps)."""
import numpy as np
import pytest

from pynn.layers import BatchNorm1d, BatchNorm2d
from tests.helpers import check_gradient


def axes(x):
    return (0,) + tuple(range(2, x.ndim))


def channel(v, ndim):
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def reference_train(x, weight, bias, eps):
    x = x.astype(np.float64)
    mean = x.mean(axis=axes(x))
    var = x.var(axis=axes(x))
    xhat = (x - channel(mean, x.ndim)) / np.sqrt(channel(var, x.ndim) + eps)
    return xhat * channel(weight, x.ndim) + channel(bias, x.ndim), mean, var


def reference_backward(dy, x, weight, eps):
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    count = x.size // x.shape[1]
    mean = channel(x.mean(axis=axes(x)), x.ndim)
    invstd = 1.0 / np.sqrt(channel(x.var(axis=axes(x)), x.ndim) + eps)
    xhat = (x - mean) * invstd
    dbias = dy.sum(axis=axes(x))
    dweight = (dy * xhat).sum(axis=axes(x))
    dx = channel(weight, x.ndim) * invstd * (dy - channel(dbias, x.ndim) / count
                                             - xhat * channel(dweight, x.ndim) / count)
    return dx, dweight, dbias


SHAPES = [(BatchNorm1d, (2, 1)), (BatchNorm1d, (7, 3)), (BatchNorm1d, (5, 4, 9)),
          (BatchNorm2d, (1, 3, 2, 2)), (BatchNorm2d, (4, 5, 7, 3)),
          (BatchNorm2d, (3, 4, 6, 7))]  # 42 values a row: whole vectors of partial sums and a tail


def layer_with_parameters(cls, shape, rng):
    layer = cls(shape[1])
    layer.params["weight"][...] = rng.uniform(0.5, 1.5, shape[1])
    layer.params["bias"][...] = rng.standard_normal(shape[1])
    return layer


@pytest.mark.parametrize("cls, shape", SHAPES)
def test_training_forward_backward_and_running_stats(cls, shape, isa):
    rng = np.random.default_rng(0)
    layer = layer_with_parameters(cls, shape, rng)
    running_mean, running_var = np.zeros(shape[1]), np.ones(shape[1])
    count = np.prod(shape) // shape[1]
    for _ in range(3):
        x = (rng.standard_normal(shape) * 3 + 2).astype(np.float32)
        y = layer.forward(x, training=True)
        expected, mean, var = reference_train(x, layer.params["weight"], layer.params["bias"], 1e-5)
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=2e-5)
        running_mean = 0.9 * running_mean + 0.1 * mean
        running_var = 0.9 * running_var + 0.1 * var * count / (count - 1)
    np.testing.assert_allclose(layer.buffers["running_mean"], running_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.buffers["running_var"], running_var, rtol=1e-5, atol=1e-6)
    assert layer.buffers["num_batches_tracked"].dtype == np.int64
    assert layer.buffers["num_batches_tracked"].shape == () and layer.buffers["num_batches_tracked"] == 3
    dy = rng.standard_normal(shape).astype(np.float32)
    dx = layer.backward(dy)
    rdx, rdw, rdb = reference_backward(dy, x, layer.params["weight"], 1e-5)
    np.testing.assert_allclose(dx, rdx, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.grads["weight"], rdw, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.grads["bias"], rdb, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls, shape", SHAPES[1:])
def test_eval_uses_running_statistics(cls, shape, isa):
    rng = np.random.default_rng(1)
    layer = layer_with_parameters(cls, shape, rng)
    layer.buffers["running_mean"][...] = rng.standard_normal(shape[1])
    layer.buffers["running_var"][...] = rng.uniform(0.5, 2.0, shape[1])
    x = rng.standard_normal(shape).astype(np.float32)
    expected = ((x - channel(layer.buffers["running_mean"], x.ndim))
                / np.sqrt(channel(layer.buffers["running_var"].astype(np.float64), x.ndim) + 1e-5)
                * channel(layer.params["weight"], x.ndim) + channel(layer.params["bias"], x.ndim))
    np.testing.assert_allclose(layer.forward(x), expected, rtol=1e-5, atol=1e-5)
    assert layer.buffers["num_batches_tracked"] == 0


@pytest.mark.parametrize("cls, shape", [SHAPES[1], SHAPES[2], SHAPES[4]])
def test_gradients_match_finite_differences(cls, shape):
    rng = np.random.default_rng(2)
    layer = layer_with_parameters(cls, shape, rng)
    x = rng.standard_normal(shape).astype(np.float32)
    probe = rng.standard_normal(shape)
    layer.forward(x, training=True)
    dx = layer.backward(probe.astype(np.float32))
    analytic_weight = layer.grads["weight"].copy()
    check_gradient(lambda v: np.sum(layer.forward(v, training=True) * probe), x, dx, eps=1e-2)
    weight = layer.params["weight"]

    def loss(value):
        saved = weight.copy()
        weight[...] = value
        try:
            return np.sum(layer.forward(x, training=True) * probe)
        finally:
            weight[...] = saved
    check_gradient(loss, weight, analytic_weight, eps=1e-2)


@pytest.mark.parametrize("cls, shape", SHAPES)
def test_a_fused_relu_gives_the_bits_of_batch_norm_then_relu(cls, shape, isa):
    """Forward max(y, 0); backward masks dy by the forward's y > 0 inside its
    own passes: dx, dweight and dbias equal the two layers' bit for bit."""
    from pynn._kernels import core as kernels

    rng = np.random.default_rng(6)
    plain, fused = layer_with_parameters(cls, shape, rng), cls(shape[1])
    for key in ("weight", "bias"):
        fused.params[key][...] = plain.params[key]
    fused.activation = "relu"
    x = (rng.standard_normal(shape) + 0.3).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    y = plain.forward(x, training=True)
    relu_y = np.maximum(y, 0.0)
    np.testing.assert_array_equal(fused.forward(x, training=True), relu_y)
    expected_dx = plain.backward(kernels.elementwise("relu_backward", dy, relu_y, np.empty_like(dy)))
    np.testing.assert_array_equal(fused.backward(dy), expected_dx)
    for key in ("weight", "bias"):
        np.testing.assert_array_equal(fused.grads[key], plain.grads[key])
    np.testing.assert_array_equal(fused.forward(x), np.maximum(plain.forward(x), 0.0))


def test_statistics_of_channels_far_from_zero_keep_their_precision(isa):
    """One pass about each channel's first value: a mean of 1000 over a
    spread of 0.01 loses no digits to cancellation."""
    rng = np.random.default_rng(7)
    x = (1000.0 + 0.01 * rng.standard_normal((16, 3, 8, 8))).astype(np.float32)
    x[0, 1, 0, 0] = 1000.05  # a first value five deviations out
    layer = BatchNorm2d(3, eps=1e-12)
    layer.forward(x, training=True)
    _, mean, var = reference_train(x, layer.params["weight"], layer.params["bias"], 1e-12)
    np.testing.assert_allclose(layer._mean, mean, rtol=1e-7)
    np.testing.assert_allclose(layer._invstd, 1.0 / np.sqrt(var), rtol=1e-6)


def test_fused_training_gives_the_same_bits_on_one_and_two_threads(set_threads):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((8, 16, 32, 32)).astype(np.float32)  # large enough to split channels
    dy = rng.standard_normal(x.shape).astype(np.float32)
    results = []
    for threads in (1, 2):
        set_threads(threads)
        layer = BatchNorm2d(16)
        layer.activation = "relu"
        y = layer.forward(x, training=True).copy()
        results.append((y, layer.backward(dy).copy(), layer.grads["weight"].copy(),
                        layer.grads["bias"].copy(), layer.buffers["running_var"].copy()))
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


def test_momentum_none_is_the_cumulative_average():
    rng = np.random.default_rng(3)
    layer = BatchNorm1d(2, momentum=None)
    batches = [rng.standard_normal((6, 2)).astype(np.float32) for _ in range(4)]
    for x in batches:
        layer.forward(x, training=True)
    np.testing.assert_allclose(layer.buffers["running_mean"],
                               np.mean([b.astype(np.float64).mean(axis=0) for b in batches], axis=0),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls, shape", [SHAPES[2], SHAPES[4]])
def test_torch_parity_over_several_steps(cls, shape):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    layer = layer_with_parameters(cls, shape, rng)
    twin = getattr(torch.nn, cls.__name__)(shape[1], momentum=0.3)
    layer.momentum = 0.3
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in
                          {**layer.params, **layer.buffers}.items()})
    assert list(twin.state_dict()) == list(layer.params) + list(layer.buffers)
    for _ in range(3):
        x = (rng.standard_normal(shape) * 2 - 1).astype(np.float32)
        xt = torch.tensor(x, requires_grad=True)
        yt = twin(xt)
        dy = rng.standard_normal(shape).astype(np.float32)
        yt.backward(torch.tensor(dy))
        np.testing.assert_allclose(layer.forward(x, training=True), yt.detach().numpy(),
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(layer.backward(dy), xt.grad.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(layer.grads["weight"], twin.weight.grad.numpy(), rtol=1e-4,
                                   atol=1e-5)
        twin.zero_grad()
    for name in ("running_mean", "running_var"):
        np.testing.assert_allclose(layer.buffers[name], getattr(twin, name).numpy(), rtol=1e-5,
                                   atol=1e-6)
    assert int(layer.buffers["num_batches_tracked"]) == int(twin.num_batches_tracked)
    twin.eval()
    x = rng.standard_normal(shape).astype(np.float32)
    np.testing.assert_allclose(layer.forward(x), twin(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layer, x, words", [
    (BatchNorm1d(3), np.zeros((4, 3, 2, 2), np.float32), ["BatchNorm1d", "2-D or 3-D", "(4, 3, 2, 2)"]),
    (BatchNorm2d(3), np.zeros((4, 3), np.float32), ["BatchNorm2d", "4-D", "(4, 3)"]),
    (BatchNorm2d(3), np.zeros((4, 2, 5, 5), np.float32), ["BatchNorm2d", "num_features=3"]),
])
def test_bad_input_is_refused(layer, x, words):
    with pytest.raises(ValueError) as raised:
        layer.forward(x)
    for word in words:
        assert word in str(raised.value)


def test_training_needs_more_than_one_value_per_channel():
    with pytest.raises(ValueError, match="BatchNorm1d: training needs more than 1 value"):
        BatchNorm1d(3).forward(np.zeros((1, 3), np.float32), training=True)


@pytest.mark.parametrize("arguments", [dict(num_features=0), dict(num_features=2, eps=0.0),
                                       dict(num_features=2, momentum=1.5)])
def test_bad_construction(arguments):
    with pytest.raises(ValueError, match="BatchNorm2d"):
        BatchNorm2d(**arguments)
