"""The depthwise convolution (csrc/conv_depthwise.c: groups == in_channels ==
out_channels, dilation 1) against the float64 reference of test_ops_conv on
every kernel path: strides 1 and 2 (and 3), paddings 0 to 2 and past the
kernel, odd and tiny images, the 3x3 and 5x5 kernels compiled with their
shapes known and others through loops; gradients against the reference and
finite differences, PyTorch's results, and the same bits on any thread count."""
import numpy as np
import pytest

from pynn import Sequential, ops
from pynn._kernels import core as kernels
from pynn.layers import BatchNorm2d, Conv2d, ReLU
from tests.helpers import check_gradient
from tests.test_ops_conv import (assert_advertised_workspace_gives_same_bits, assert_close_sum,
                                 assert_conv_close, reference_conv, reference_conv_backward)


def make(n, c, h, w, kernel, stride, padding, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    weight = rng.standard_normal((c, 1) + kernel).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    return x, weight, bias, dict(stride=stride, padding=padding, dilation=(1, 1), groups=c)


# (N, C, H, W, kernel, stride, padding)
CASES = [
    (2, 3, 7, 9, (3, 3), (1, 1), (1, 1)),       # odd sizes, MobileNet's stride 1
    (2, 4, 8, 8, (3, 3), (2, 2), (1, 1)),       # MobileNet's stride 2
    (1, 5, 1, 1, (3, 3), (1, 1), (1, 1)),       # a 1x1 image, batch 1
    (1, 3, 2, 3, (3, 3), (2, 2), (2, 2)),       # a 2x3 image, padding 2
    (3, 2, 10, 11, (3, 3), (1, 1), (0, 0)),     # no padding
    (2, 3, 11, 10, (3, 3), (2, 2), (0, 0)),     # no padding, the last column unread
    (2, 6, 17, 19, (5, 5), (2, 2), (2, 2)),     # 5x5 at stride 2
    (1, 4, 21, 35, (5, 5), (1, 1), (2, 2)),     # 5x5 at stride 1, rows past a vector
    (2, 2, 9, 9, (4, 4), (3, 3), (2, 2)),       # even kernel, stride 3: three phases
    (1, 3, 5, 6, (2, 3), (1, 2), (0, 2)),       # unequal kernel, strides and pads
    (1, 2, 3, 3, (3, 3), (1, 1), (4, 3)),       # padding past the kernel's reach
    (2, 16, 33, 37, (3, 3), (1, 1), (1, 1)),    # rows of two vectors and a tail
    (1, 3, 9, 71, (3, 3), (2, 2), (1, 1)),      # stride 2 rows of whole vectors on every path
    (2, 2, 7, 68, (5, 5), (2, 2), (0, 0)),      # the same for 5x5, without padding
]


@pytest.mark.parametrize("case", CASES)
def test_forward_matches_float64_reference(isa, case):
    x, weight, bias, geometry = make(*case)
    assert_conv_close(ops.conv2d(x, weight, bias, **geometry), x, weight, bias, geometry)


@pytest.mark.parametrize("case", CASES)
def test_fused_relu_matches_the_reference_and_keeps_nan(isa, case):
    x, weight, bias, geometry = make(*case, seed=5)
    x[0, 0, 0, 0] = np.nan
    expected = np.maximum(reference_conv(x, weight, bias, **geometry), 0.0)
    magnitude = reference_conv(np.abs(x), np.abs(weight), np.abs(bias), **geometry)
    out = np.full(expected.shape, -7.0, np.float32)
    kernels.conv2d_forward(x, weight, bias, out, geometry["stride"], geometry["padding"],
                           (1, 1), x.shape[1], True)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
    finite = ~np.isnan(expected)
    assert np.all(out[finite] >= 0.0)
    assert_close_sum(out[finite], expected[finite], magnitude[finite], weight[0].size + 1)


@pytest.mark.parametrize("case", CASES)
def test_backward_matches_float64_reference(isa, case):
    x, weight, _, geometry = make(*case)
    y = ops.conv2d(x, weight, None, **geometry)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    dx, dweight, dbias = ops.conv2d_backward(dy, x, weight, **geometry)
    rx, rw, rb = reference_conv_backward(dy, x, weight, **geometry)
    mx, mw, mb = reference_conv_backward(np.abs(dy), np.abs(x), np.abs(weight), **geometry)
    assert_close_sum(dx, rx, mx, weight.shape[2] * weight.shape[3])
    assert_close_sum(dweight, rw, mw, y.shape[0] * y.shape[2] * y.shape[3])
    assert_close_sum(dbias, rb, mb, y.shape[0] * y.shape[2] * y.shape[3])


@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[8]])
def test_gradients_match_finite_differences(isa, case):
    x, weight, bias, geometry = make(*case, seed=3)
    probe = np.random.default_rng(4).standard_normal(
        ops.conv2d(x, weight, bias, **geometry).shape)
    dx, dweight, dbias = ops.conv2d_backward(probe.astype(np.float32), x, weight, **geometry)
    check_gradient(lambda v: np.sum(ops.conv2d(v, weight, bias, **geometry) * probe), x, dx)
    check_gradient(lambda v: np.sum(ops.conv2d(x, v, bias, **geometry) * probe), weight, dweight)
    check_gradient(lambda v: np.sum(ops.conv2d(x, weight, v, **geometry) * probe), bias, dbias)


def test_inputs_no_output_reads_leave_the_weight_gradient_finite(isa):
    # stride 2 without padding over 12 columns: column 11 feeds no output
    x, weight, _, geometry = make(2, 3, 12, 12, (3, 3), (2, 2), (0, 0))
    x[:, :, :, 11] = np.inf
    x[:, :, 11, :] = np.inf
    y = ops.conv2d(x, weight, None, **geometry)
    assert np.all(np.isfinite(y))
    dy = np.random.default_rng(2).standard_normal(y.shape).astype(np.float32)
    _, dweight, _ = ops.conv2d_backward(dy, x, weight, **geometry)
    _, expected, _ = reference_conv_backward(dy, np.where(np.isinf(x), 0, x), weight, **geometry)
    _, magnitude, _ = reference_conv_backward(np.abs(dy), np.abs(np.where(np.isinf(x), 0, x)),
                                              np.abs(weight), **geometry)
    assert_close_sum(dweight, expected, magnitude, y.shape[0] * y.shape[2] * y.shape[3])


@pytest.mark.parametrize("case", [(4, 24, 28, 28, (3, 3), (1, 1), (1, 1)),
                                  (3, 32, 30, 30, (3, 3), (2, 2), (1, 1)),
                                  (1, 16, 20, 20, (5, 5), (1, 1), (2, 2))])
def test_thread_count_does_not_change_the_bits(isa, case, set_threads):
    x, weight, bias, geometry = make(*case)
    dy = np.random.default_rng(2).standard_normal(
        ops.conv2d(x, weight, bias, **geometry).shape).astype(np.float32)
    results = []
    for threads in (1, 2, 3):
        set_threads(threads)
        results.append((ops.conv2d(x, weight, bias, **geometry),)
                       + ops.conv2d_backward(dy, x, weight, **geometry))
    for other in results[1:]:
        for first, second in zip(results[0], other):
            np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("case", [CASES[1], CASES[6]])
def test_a_workspace_of_the_advertised_size_gives_the_same_bits(case):
    assert_advertised_workspace_gives_same_bits(*make(*case))


def test_a_channel_multiplier_takes_the_grouped_path(isa):
    x, _, _, geometry = make(2, 3, 9, 9, (3, 3), (1, 1), (1, 1))
    weight = np.random.default_rng(7).standard_normal((6, 1, 3, 3)).astype(np.float32)
    bias = np.linspace(-1, 1, 6, dtype=np.float32)
    assert_conv_close(ops.conv2d(x, weight, bias, **geometry), x, weight, bias, geometry, terms=10)


@pytest.mark.parametrize("case", [CASES[1], CASES[6], (8, 32, 28, 28, (3, 3), (1, 1), (1, 1))])
def test_matches_torch(isa, case):
    torch = pytest.importorskip("torch")
    x, weight, bias, geometry = make(*case)
    layer = torch.nn.Conv2d(x.shape[1], x.shape[1], weight.shape[2:], stride=geometry["stride"],
                            padding=geometry["padding"], groups=x.shape[1])
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight))
        layer.bias.copy_(torch.from_numpy(bias))
    x_t = torch.from_numpy(x).requires_grad_()
    out = layer(x_t)
    dy = np.random.default_rng(8).standard_normal(tuple(out.shape)).astype(np.float32)
    out.backward(torch.from_numpy(dy))
    y = ops.conv2d(x, weight, bias, **geometry)
    dx, dweight, dbias = ops.conv2d_backward(dy, x, weight, **geometry)
    np.testing.assert_allclose(y, out.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, x_t.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dweight, layer.weight.grad.numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(dbias, layer.bias.grad.numpy(), rtol=1e-4, atol=1e-3)


def test_conv2d_layer_trains_through_the_depthwise_path(isa):
    layer = Conv2d(4, 4, 3, stride=2, padding=1, groups=4)
    x = np.random.default_rng(9).standard_normal((2, 4, 9, 9)).astype(np.float32)
    geometry = dict(stride=(2, 2), padding=(1, 1), dilation=(1, 1), groups=4)
    weight, bias = layer.params["weight"], layer.params["bias"]
    y = layer.forward(x, training=True)
    assert_conv_close(y, x, weight, bias, geometry, terms=10)
    dy = np.ones_like(y)
    dx = layer.backward(dy)
    rx, rw, _ = reference_conv_backward(dy, x, weight, **geometry)
    mx, mw, _ = reference_conv_backward(dy, np.abs(x), np.abs(weight), **geometry)
    assert_close_sum(dx, rx, mx, 9)
    assert_close_sum(layer.grads["weight"], rw, mw, 2 * 25)


def test_inference_plan_folds_batchnorm_and_relu_into_the_depthwise_step(isa):
    conv = Conv2d(6, 6, 3, stride=2, padding=1, groups=6)
    norm = BatchNorm2d(6)
    rng = np.random.default_rng(10)
    norm.buffers["running_mean"][:] = rng.standard_normal(6)
    norm.buffers["running_var"][:] = rng.uniform(0.5, 2.0, 6)
    norm.params["weight"][:] = rng.uniform(0.5, 1.5, 6)
    norm.params["bias"][:] = rng.standard_normal(6)
    model = Sequential(conv, norm, ReLU())
    x = rng.standard_normal((3, 6, 19, 21)).astype(np.float32)
    geometry = dict(stride=(2, 2), padding=(1, 1), dilation=(1, 1), groups=6)
    y = reference_conv(x, conv.params["weight"], conv.params["bias"], **geometry)
    scale = norm.params["weight"] / np.sqrt(norm.buffers["running_var"].astype(np.float64) + 1e-5)
    shift = norm.params["bias"] - norm.buffers["running_mean"] * scale
    expected = np.maximum(y * scale[:, None, None] + shift[:, None, None], 0.0)
    for _ in range(2):  # building the plan, then reusing it
        np.testing.assert_allclose(model.predict(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("wanted", ["dx", "dweight", "dbias"])
def test_each_gradient_alone_matches_all_three_together(isa, wanted):
    x, weight, _, geometry = make(*CASES[6])
    dy = np.random.default_rng(11).standard_normal(
        ops.conv2d(x, weight, None, **geometry).shape).astype(np.float32)
    together = dict(zip(("dx", "dweight", "dbias"), ops.conv2d_backward(dy, x, weight, **geometry)))
    outputs = {"dx": None, "dweight": None, "dbias": None}
    outputs[wanted] = np.full_like(together[wanted], np.nan)
    kernels.conv2d_backward(dy, x, weight, outputs["dx"], outputs["dweight"], outputs["dbias"],
                            geometry["stride"], geometry["padding"], (1, 1), x.shape[1])
    np.testing.assert_array_equal(outputs[wanted], together[wanted])
