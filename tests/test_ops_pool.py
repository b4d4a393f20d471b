"""Pooling ops against float64 references written here, finite differences,
PyTorch's tie and padding rules, and torch.nn.functional where torch imports."""
import numpy as np
import pytest

from pynn import ops
from tests.helpers import check_gradient


def output_size(size, kernel, stride, padding, dilation, ceil_mode):
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    count = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (count - 1) * stride >= size + padding:
        count -= 1
    return count


def window_positions(size, kernel, stride, padding, dilation, index):
    start = index * stride - padding
    return [start + k * dilation for k in range(kernel)
            if 0 <= start + k * dilation < size]


def reference_max_pool(x, kernel, stride, padding, dilation, ceil_mode):
    """(y, dx-routing) by plain loops: the first maximum in row-major window
    order wins, and any NaN replaces it (so the last NaN wins), as PyTorch."""
    n, c, h, w = x.shape
    oh = output_size(h, kernel[0], stride[0], padding[0], dilation[0], ceil_mode)
    ow = output_size(w, kernel[1], stride[1], padding[1], dilation[1], ceil_mode)
    y = np.empty((n, c, oh, ow))
    argmax = np.empty((n, c, oh, ow, 2), dtype=np.int64)
    for i in range(oh):
        rows = window_positions(h, kernel[0], stride[0], padding[0], dilation[0], i)
        for j in range(ow):
            cols = window_positions(w, kernel[1], stride[1], padding[1], dilation[1], j)
            for a in range(n):
                for b in range(c):
                    best = None
                    for r in rows:
                        for q in cols:
                            value = x[a, b, r, q]
                            if best is None or value > x[a, b, best[0], best[1]] or np.isnan(value):
                                best = (r, q)
                    y[a, b, i, j] = x[a, b, best[0], best[1]]
                    argmax[a, b, i, j] = best
    return y, argmax


def reference_max_pool_backward(dy, x, argmax):
    dx = np.zeros(x.shape)
    n, c, oh, ow = dy.shape
    for a in range(n):
        for b in range(c):
            for i in range(oh):
                for j in range(ow):
                    r, q = argmax[a, b, i, j]
                    dx[a, b, r, q] += dy[a, b, i, j]
    return dx


def reference_avg_pool(x, kernel, stride, padding, ceil_mode, count_include_pad):
    """(y, the divisor and clipped window of every output) by plain loops."""
    n, c, h, w = x.shape
    oh = output_size(h, kernel[0], stride[0], padding[0], 1, ceil_mode)
    ow = output_size(w, kernel[1], stride[1], padding[1], 1, ceil_mode)
    y = np.empty((n, c, oh, ow))
    windows = {}
    for i in range(oh):
        for j in range(ow):
            h0, w0 = i * stride[0] - padding[0], j * stride[1] - padding[1]
            h1, w1 = min(h0 + kernel[0], h + padding[0]), min(w0 + kernel[1], w + padding[1])
            padded = (h1 - h0) * (w1 - w0)
            h0, w0, h1, w1 = max(h0, 0), max(w0, 0), min(h1, h), min(w1, w)
            divisor = padded if count_include_pad else (h1 - h0) * (w1 - w0)
            windows[i, j] = (h0, h1, w0, w1, divisor)
            y[:, :, i, j] = x[:, :, h0:h1, w0:w1].astype(np.float64).sum(axis=(2, 3)) / divisor
    return y, windows


def reference_avg_pool_backward(dy, x, windows):
    dx = np.zeros(x.shape)
    for (i, j), (h0, h1, w0, w1, divisor) in windows.items():
        dx[:, :, h0:h1, w0:w1] += dy[:, :, i, j][:, :, None, None] / divisor
    return dx


def pairs(kernel, stride, padding, dilation=1):
    two = lambda v: v if isinstance(v, tuple) else (v, v)  # noqa: E731
    return two(kernel), two(kernel if stride is None else stride), two(padding), two(dilation)


MAX_CASES = [  # (shape, kernel, stride, padding, dilation, ceil_mode)
    ((1, 1, 1, 1), 1, None, 0, 1, False),
    ((2, 3, 8, 8), 2, None, 0, 1, False),
    ((1, 2, 7, 35), 2, None, 0, 1, False),      # 2 x 2 planes, 17 outputs a row (16 + 1)
    ((2, 3, 9, 7), 3, 2, 1, 1, False),
    ((2, 3, 9, 7), 3, 2, 1, 1, True),
    ((1, 2, 11, 13), (3, 2), (2, 3), (1, 1), (2, 1), True),
    ((3, 2, 5, 5), 5, 1, 2, 1, False),
    ((0, 3, 6, 6), 2, None, 0, 1, False),
    ((2, 2, 9, 10), (3, 2), (2, 3), 0, (2, 1), False),
    ((1, 2, 7, 150), 3, 1, 0, 1, True),
    # windows inside the image, rows of outputs in chunks of 64: 1, 17 and 131 outputs
    ((2, 1, 5, 3), 3, 2, 0, 1, False),
    ((1, 3, 7, 35), 3, 2, 0, 1, False),
    ((1, 1, 4, 133), (2, 3), 1, 0, 1, False),
    ((1, 2, 9, 31), (3, 3), (1, 1), 0, (2, 3), False),
    # padded: interior windows through the row kernel, 64 at a time, the edges alone
    ((1, 2, 9, 150), 3, 2, 1, 1, False),
    ((2, 1, 7, 140), (3, 5), (2, 1), (1, 2), (1, 2), True),
]


@pytest.mark.parametrize("shape, kernel, stride, padding, dilation, ceil_mode", MAX_CASES)
def test_max_pool_matches_reference(isa, shape, kernel, stride, padding, dilation, ceil_mode):
    rng = np.random.default_rng(0)
    x = rng.integers(-3, 4, shape).astype(np.float32)  # many ties
    x[rng.random(shape) < 0.03] = np.nan  # and a few NaNs, which win their windows
    keywords = dict(stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)
    y, argmax = reference_max_pool(x, *pairs(kernel, stride, padding, dilation), ceil_mode)
    np.testing.assert_array_equal(ops.max_pool2d(x, kernel, **keywords), y)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = ops.max_pool2d_backward(dy, x, kernel, **keywords)
    np.testing.assert_allclose(dx, reference_max_pool_backward(dy, x, argmax), rtol=1e-6,
                               atol=1e-6)


def test_max_pool_tie_goes_to_the_first_maximum():
    x = np.ones((1, 1, 2, 2), np.float32)
    dx = ops.max_pool2d_backward(np.ones((1, 1, 1, 1), np.float32), x, 2)
    np.testing.assert_array_equal(dx, [[[[1, 0], [0, 0]]]])


AVG_CASES = [  # (shape, kernel, stride, padding, ceil_mode, count_include_pad)
    ((1, 1, 1, 1), 1, None, 0, False, True),
    ((2, 3, 8, 8), 2, None, 0, False, True),
    ((2, 3, 9, 7), 3, 2, 1, False, True),
    ((2, 3, 9, 7), 3, 2, 1, True, True),
    ((2, 3, 9, 7), 3, 2, 1, True, False),
    ((1, 2, 11, 13), (3, 4), (2, 3), (1, 2), True, True),
    ((3, 1, 5, 6), 5, 1, 2, False, False),
]


@pytest.mark.parametrize("shape, kernel, stride, padding, ceil_mode, include", AVG_CASES)
def test_avg_pool_matches_reference(shape, kernel, stride, padding, ceil_mode, include):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    keywords = dict(stride=stride, padding=padding, ceil_mode=ceil_mode, count_include_pad=include)
    k, s, p, _ = pairs(kernel, stride, padding)
    y, windows = reference_avg_pool(x, k, s, p, ceil_mode, include)
    np.testing.assert_allclose(ops.avg_pool2d(x, kernel, **keywords), y, rtol=1e-5, atol=1e-6)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    np.testing.assert_allclose(ops.avg_pool2d_backward(dy, x, kernel, **keywords),
                               reference_avg_pool_backward(dy, x, windows), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 7, 5), (3, 17, 4, 4), (0, 2, 3, 3)])
def test_global_avg_pool_matches_reference(shape):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape).astype(np.float32)
    np.testing.assert_allclose(ops.global_avg_pool2d(x), x.astype(np.float64).mean(axis=(2, 3)),
                               rtol=1e-5, atol=1e-6)
    dy = rng.standard_normal(shape[:2]).astype(np.float32)
    expected = np.broadcast_to(dy[:, :, None, None] / (shape[2] * shape[3]), shape)
    np.testing.assert_allclose(ops.global_avg_pool2d_backward(dy, x), expected, rtol=1e-6)


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 2, 7, 6)).astype(np.float32)  # distinct values: max is smooth
    for forward, backward, keywords in (
            (ops.max_pool2d, ops.max_pool2d_backward, dict(stride=2, padding=1, ceil_mode=True)),
            (ops.avg_pool2d, ops.avg_pool2d_backward, dict(stride=2, padding=1, ceil_mode=True,
                                                           count_include_pad=False))):
        probe = rng.standard_normal(forward(x, 3, **keywords).shape)
        analytic = backward(probe.astype(np.float32), x, 3, **keywords)
        check_gradient(lambda v: np.sum(forward(v, 3, **keywords) * probe), x, analytic,
                       eps=1e-3)
    probe = rng.standard_normal((2, 2))
    check_gradient(lambda v: np.sum(ops.global_avg_pool2d(v) * probe), x,
                   ops.global_avg_pool2d_backward(probe.astype(np.float32), x))


@pytest.mark.parametrize("keywords", [dict(stride=2, padding=1), dict(stride=2, padding=1,
                                      ceil_mode=True), dict(stride=1, padding=1, dilation=2)])
def test_max_pool_torch_parity(keywords):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(4).integers(-2, 3, (2, 3, 10, 9)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.max_pool2d(xt, 3, **keywords)
    dy = np.random.default_rng(5).standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.tensor(dy))
    np.testing.assert_array_equal(ops.max_pool2d(x, 3, **keywords), yt.detach().numpy())
    np.testing.assert_allclose(ops.max_pool2d_backward(dy, x, 3, **keywords), xt.grad.numpy(),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("keywords", [dict(stride=2, padding=1), dict(stride=2, padding=1,
                                      ceil_mode=True, count_include_pad=False)])
def test_avg_pool_torch_parity(keywords):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(6).standard_normal((2, 3, 10, 9)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.avg_pool2d(xt, 3, **keywords)
    dy = np.random.default_rng(7).standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(ops.avg_pool2d(x, 3, **keywords), yt.detach().numpy(), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(ops.avg_pool2d_backward(dy, x, 3, **keywords), xt.grad.numpy(),
                               rtol=1e-5, atol=1e-6)


def test_nan_propagates_through_max_pool():
    x = np.array([[[[1.0, np.nan], [3.0, 2.0]]]], np.float32)
    assert np.isnan(ops.max_pool2d(x, 2)[0, 0, 0, 0])


@pytest.mark.parametrize("call, error, words", [
    (lambda: ops.max_pool2d(np.zeros((2, 5, 5), np.float32), 2), ValueError, ["max_pool2d", "4-D"]),
    (lambda: ops.max_pool2d(np.zeros((1, 1, 5, 5), np.float32), 2, padding=2), ValueError,
     ["max_pool2d", "padding", "half"]),
    (lambda: ops.avg_pool2d(np.zeros((1, 1, 2, 2), np.float32), 3), ValueError,
     ["avg_pool2d", "does not fit"]),
    (lambda: ops.max_pool2d(np.zeros((1, 1, 5, 5), np.float32), 2, stride=0), ValueError,
     ["max_pool2d", "stride", "0"]),
    (lambda: ops.avg_pool2d(np.zeros((1, 1, 5, 5), np.int64), 2), TypeError,
     ["avg_pool2d", "int64"]),
    (lambda: ops.max_pool2d(np.zeros((1, 1, 5, 0), np.float32), 2, padding=1), ValueError,
     ["max_pool2d", "non-empty", "(1, 1, 5, 0)"]),
    (lambda: ops.global_avg_pool2d(np.zeros((1, 1, 0, 5), np.float32)), ValueError,
     ["global_avg_pool2d", "(1, 1, 0, 5)"]),
    (lambda: ops.max_pool2d_backward(np.zeros((1, 1, 3, 3), np.float32),
                                     np.zeros((1, 1, 5, 5), np.float32), 2), ValueError,
     ["max_pool2d_backward", "(1, 1, 2, 2)", "(1, 1, 3, 3)"]),
])
def test_bad_input_is_refused_with_a_clear_message(call, error, words):
    with pytest.raises(error) as raised:
        call()
    for word in words:
        assert word in str(raised.value)


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 2, 7, 9), (3, 1, 2, 2), (1, 2, 6, 70),
                                   (2, 1, 5, 33), (1, 1, 4, 64)])
def test_max_pool_layer_2x2_routes_ties_and_nans_as_the_reference(isa, shape):
    """MaxPool2d(2) keeps the arg-max of its forward for the backward: the
    2 x 2 stride-2 path (16 outputs a step on AVX-512, with a masked tail)
    must pick the same tap as the reference on every ISA."""
    from pynn.layers import MaxPool2d

    rng = np.random.default_rng(1)
    x = rng.integers(-2, 3, shape).astype(np.float32)  # ties in most windows
    x[rng.random(shape) < 0.05] = np.nan
    layer = MaxPool2d(2)
    y = layer.forward(x, training=True)
    expected, argmax = reference_max_pool(x, *pairs(2, 2, 0, 1), False)
    np.testing.assert_array_equal(y, expected)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    np.testing.assert_array_equal(layer.backward(dy), reference_max_pool_backward(dy, x, argmax))
