"""conv1d, max_pool1d, avg_pool1d, adaptive_avg_pool2d and their layers:
float64 references written here (forward and backward), finite differences,
PyTorch's functional outputs and gradients, the fused ReLU, model files, and
bad arguments refused by name."""
import json
import threading

import numpy as np
import pytest

import pynn
from pynn import Sequential, init, ops
from pynn.layers import (AdaptiveAvgPool2d, AvgPool1d, Conv1d, Flatten, GlobalAvgPool2d, Linear,
                         MaxPool1d, ReLU)
from pynn.layers.base import LAYER_TYPES
from tests.helpers import EPS32, check_gradient


# -- float64 references --------------------------------------------------------------------
def output_length(length, kernel, stride, padding, dilation, ceil_mode=False):
    span = length + 2 * padding - dilation * (kernel - 1) - 1
    count = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (count - 1) * stride >= length + padding:
        count -= 1  # the last window must start inside the input or its left padding
    return count


def reference_conv1d(x, w, b, stride, padding, dilation, groups):
    """y[n, o, t] = Σ_{c, k} w[o, c, k] x_pad[n, g(o) c, t stride + k dilation] + b[o]."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    n, c, length = x.shape
    oc, cg, kernel = w.shape
    ol = output_length(length, kernel, stride, padding, dilation)
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding)))
    y = np.zeros((n, oc, ol))
    per_group = oc // groups
    for o in range(oc):
        channels = slice(o // per_group * cg, (o // per_group + 1) * cg)
        for k in range(kernel):
            tap = padded[:, channels, k * dilation:k * dilation + stride * (ol - 1) + 1:stride]
            y[:, o] += np.einsum("nct,c->nt", tap, w[o, :, k])
        if b is not None:
            y[:, o] += b[o]
    return y


def reference_conv1d_backward(dy, x, w, stride, padding, dilation, groups):
    dy, x, w = dy.astype(np.float64), x.astype(np.float64), w.astype(np.float64)
    n, c, length = x.shape
    oc, cg, kernel = w.shape
    ol = dy.shape[2]
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding)))
    dpadded, dw = np.zeros_like(padded), np.zeros_like(w)
    per_group = oc // groups
    for o in range(oc):
        channels = slice(o // per_group * cg, (o // per_group + 1) * cg)
        for k in range(kernel):
            taps = slice(k * dilation, k * dilation + stride * (ol - 1) + 1, stride)
            dw[o, :, k] = np.einsum("nt,nct->c", dy[:, o], padded[:, channels, taps])
            dpadded[:, channels, taps] += dy[:, o][:, None, :] * w[o, :, k][None, :, None]
    return dpadded[:, :, padding:padding + length], dw, dy.sum(axis=(0, 2))


def reference_max_pool1d(x, kernel, stride, padding, dilation, ceil_mode):
    """(y, the input position each output takes): the first maximum of the
    window wins, and any NaN replaces it (so the last NaN wins), as PyTorch."""
    n, c, length = x.shape
    ol = output_length(length, kernel, stride, padding, dilation, ceil_mode)
    y, argmax = np.empty((n, c, ol)), np.empty((n, c, ol), dtype=np.int64)
    for t in range(ol):
        taps = [t * stride - padding + k * dilation for k in range(kernel)]
        taps = [p for p in taps if 0 <= p < length]
        for a in range(n):
            for b in range(c):
                best = taps[0]
                for p in taps[1:]:
                    if x[a, b, p] > x[a, b, best] or np.isnan(x[a, b, p]):
                        best = p
                y[a, b, t], argmax[a, b, t] = x[a, b, best], best
    return y, argmax


def reference_max_pool1d_backward(dy, x, argmax):
    dx = np.zeros(x.shape)
    for (a, b, t), position in np.ndenumerate(argmax):
        dx[a, b, position] += dy[a, b, t]
    return dx


def reference_avg_pool1d(x, kernel, stride, padding, ceil_mode, count_include_pad):
    """(y, each output's clipped window and divisor): the divisor counts the
    padding, not the ceil-mode overhang, with count_include_pad."""
    length = x.shape[2]
    ol = output_length(length, kernel, stride, padding, 1, ceil_mode)
    y, windows = np.empty(x.shape[:2] + (ol,)), []
    for t in range(ol):
        start = t * stride - padding
        stop = min(start + kernel, length + padding)
        padded = stop - start
        start, stop = max(start, 0), min(stop, length)
        divisor = padded if count_include_pad else stop - start
        windows.append((start, stop, divisor))
        y[:, :, t] = x[:, :, start:stop].astype(np.float64).sum(axis=2) / divisor
    return y, windows


def reference_avg_pool1d_backward(dy, x, windows):
    dx = np.zeros(x.shape)
    for t, (start, stop, divisor) in enumerate(windows):
        dx[:, :, start:stop] += dy[:, :, t][:, :, None] / divisor
    return dx


def adaptive_windows(size, out):
    """[floor(i size / out), ceil((i + 1) size / out)) for each output i."""
    return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]


def reference_adaptive_avg_pool2d(x, out_h, out_w):
    x = x.astype(np.float64)
    rows, cols = adaptive_windows(x.shape[2], out_h), adaptive_windows(x.shape[3], out_w)
    y = np.empty(x.shape[:2] + (out_h, out_w))
    for i, (h0, h1) in enumerate(rows):
        for j, (w0, w1) in enumerate(cols):
            y[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
    return y


def reference_adaptive_avg_pool2d_backward(dy, x, out_h, out_w):
    rows, cols = adaptive_windows(x.shape[2], out_h), adaptive_windows(x.shape[3], out_w)
    dx = np.zeros(x.shape)
    for i, (h0, h1) in enumerate(rows):
        for j, (w0, w1) in enumerate(cols):
            dx[:, :, h0:h1, w0:w1] += dy[:, :, i, j][:, :, None, None] / ((h1 - h0) * (w1 - w0))
    return dx


def assert_conv_close(actual, expected, magnitude, taps):
    """Float32 sums of ``taps`` products: error within taps eps |x||w| per element."""
    bound = 4 * max(taps, 1) * EPS32 * magnitude + 1e-6
    np.testing.assert_array_less(np.abs(actual.astype(np.float64) - expected), bound)


# -- conv1d ------------------------------------------------------------------------------
CONV_CASES = [  # (N, C, L, OC, kernel, stride, padding, dilation, groups)
    (1, 1, 1, 1, 1, 1, 0, 1, 1),
    (2, 3, 17, 5, 3, 1, 1, 1, 1),
    (3, 4, 13, 6, 1, 1, 0, 1, 2),
    (2, 5, 31, 7, 7, 2, 3, 1, 1),
    (2, 4, 12, 4, 3, 1, 2, 2, 4),     # depthwise, dilation 2
    (1, 6, 29, 12, 5, 3, 4, 2, 3),    # padding wider than half the kernel
    (4, 2, 9, 3, 9, 1, 0, 1, 1),      # the kernel spans the whole signal
    (2, 3, 5, 2, 4, 5, 2, 1, 1),      # stride beyond the kernel
    (0, 3, 11, 4, 3, 1, 1, 1, 1),     # empty batch
    (3, 1, 101, 8, 5, 1, 2, 1, 1),    # one input channel at stride 1
    (2, 8, 211, 6, 3, 2, 1, 3, 2),
]


@pytest.mark.parametrize("n, c, length, oc, kernel, stride, padding, dilation, groups", CONV_CASES)
def test_conv1d_matches_reference(isa, n, c, length, oc, kernel, stride, padding, dilation,
                                  groups):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, length)).astype(np.float32)
    w = rng.standard_normal((oc, c // groups, kernel)).astype(np.float32)
    b = rng.standard_normal(oc).astype(np.float32)
    geometry = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    taps = c // groups * kernel
    y = ops.conv1d(x, w, b, **geometry)
    expected = reference_conv1d(x, w, b, stride, padding, dilation, groups)
    assert y.shape == expected.shape and y.dtype == np.float32
    assert_conv_close(y, expected, reference_conv1d(np.abs(x), np.abs(w), np.abs(b), stride,
                                                    padding, dilation, groups), taps)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dw, db = ops.conv1d_backward(dy, x, w, **geometry)
    ex, ew, eb = reference_conv1d_backward(dy, x, w, stride, padding, dilation, groups)
    mx, mw, _ = reference_conv1d_backward(np.abs(dy), np.abs(x), np.abs(w), stride, padding,
                                          dilation, groups)
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == (oc,)
    assert_conv_close(dx, ex, mx, oc // groups * kernel)
    assert_conv_close(dw, ew, mw, n * y.shape[2])
    assert_conv_close(db, eb, np.abs(dy).astype(np.float64).sum(axis=(0, 2)), n * y.shape[2])


def test_conv1d_is_conv2d_on_one_row_images():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 6, 23)).astype(np.float32)
    w = rng.standard_normal((4, 3, 5)).astype(np.float32)
    geometry = dict(stride=2, padding=3, dilation=2, groups=2)
    planar = dict(stride=(1, 2), padding=(0, 3), dilation=(1, 2), groups=2)
    y = ops.conv1d(x, w, **geometry)
    np.testing.assert_array_equal(y, ops.conv2d(x[:, :, None], w[:, :, None], **planar)[:, :, 0])
    dy = rng.standard_normal(y.shape).astype(np.float32)
    for ours, theirs in zip(ops.conv1d_backward(dy, x, w, **geometry),
                            ops.conv2d_backward(dy[:, :, None], x[:, :, None], w[:, :, None],
                                                **planar)):
        np.testing.assert_array_equal(ours, theirs.reshape(ours.shape))


def test_conv1d_writes_into_out_and_takes_one_element_tuples():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 10)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3)).astype(np.float32)
    out = np.full((2, 4, 5), np.nan, np.float32)
    assert ops.conv1d(x, w, stride=(2,), padding=[1], out=out) is out
    np.testing.assert_array_equal(out, ops.conv1d(x, w, stride=2, padding=1))


def test_conv1d_gradients_match_finite_differences():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 11)).astype(np.float32)
    w = rng.standard_normal((6, 2, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    geometry = dict(stride=2, padding=2, dilation=2, groups=2)
    probe = rng.standard_normal(ops.conv1d(x, w, b, **geometry).shape)
    dx, dw, db = ops.conv1d_backward(probe.astype(np.float32), x, w, **geometry)
    check_gradient(lambda v: np.sum(ops.conv1d(v, w, b, **geometry) * probe), x, dx, eps=1e-3)
    check_gradient(lambda v: np.sum(ops.conv1d(x, v, b, **geometry) * probe), w, dw, eps=1e-3)
    check_gradient(lambda v: np.sum(ops.conv1d(x, w, v, **geometry) * probe), b, db, eps=1e-3)


@pytest.mark.parametrize("geometry", [
    dict(), dict(stride=2, padding=1), dict(stride=3, padding=4, dilation=2),
    dict(padding=1, groups=3), dict(stride=2, dilation=3, groups=6),
])
def test_conv1d_torch_parity(geometry):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 6, 19)).astype(np.float32)
    w = rng.standard_normal((12, 6 // geometry.get("groups", 1), 3)).astype(np.float32)
    b = rng.standard_normal(12).astype(np.float32)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    yt = torch.nn.functional.conv1d(xt, wt, bt, **geometry)
    dy = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(ops.conv1d(x, w, b, **geometry), yt.detach().numpy(), rtol=1e-5,
                               atol=1e-5)
    for ours, theirs in zip(ops.conv1d_backward(dy, x, w, **geometry), (xt, wt, bt)):
        np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=1e-5, atol=1e-4)


# -- max_pool1d and avg_pool1d ------------------------------------------------------------
MAX_CASES = [  # (shape, kernel, stride, padding, dilation, ceil_mode)
    ((1, 1, 1), 1, None, 0, 1, False),
    ((2, 3, 16), 2, None, 0, 1, False),
    ((2, 3, 17), 2, None, 0, 1, True),
    ((2, 3, 19), 3, 2, 1, 1, False),
    ((2, 3, 19), 3, 2, 1, 1, True),
    ((1, 2, 23), 4, 3, 2, 2, True),
    ((3, 2, 5), 5, 1, 2, 1, False),
    ((0, 3, 8), 2, None, 0, 1, False),
    ((1, 2, 150), 3, 1, 0, 1, True),   # rows of outputs in chunks of 64
    ((2, 1, 31), 3, 4, 1, 3, True),
    # padded: the interior windows through the row kernel in chunks of 64, the edges alone
    ((2, 2, 300), 3, 2, 1, 1, False),
    ((1, 3, 200), 5, 1, 2, 2, True),
    ((1, 1, 4), 3, 1, 1, 2, False),    # no window wholly inside the signal
]


@pytest.mark.parametrize("shape, kernel, stride, padding, dilation, ceil_mode", MAX_CASES)
def test_max_pool1d_matches_reference(isa, shape, kernel, stride, padding, dilation, ceil_mode):
    rng = np.random.default_rng(5)
    x = rng.integers(-3, 4, shape).astype(np.float32)  # many ties
    x[rng.random(shape) < 0.03] = np.nan  # and a few NaNs, which win their windows
    keywords = dict(stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)
    step = kernel if stride is None else stride
    y, argmax = reference_max_pool1d(x, kernel, step, padding, dilation, ceil_mode)
    np.testing.assert_array_equal(ops.max_pool1d(x, kernel, **keywords), y)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    np.testing.assert_allclose(ops.max_pool1d_backward(dy, x, kernel, **keywords),
                               reference_max_pool1d_backward(dy, x, argmax), rtol=1e-6, atol=1e-6)
    layer = MaxPool1d(kernel, **keywords)  # the arg-max kept by the forward routes the same way
    np.testing.assert_array_equal(layer.forward(x, training=True), y)
    np.testing.assert_allclose(layer.backward(dy), reference_max_pool1d_backward(dy, x, argmax),
                               rtol=1e-6, atol=1e-6)


AVG_CASES = [  # (shape, kernel, stride, padding, ceil_mode, count_include_pad)
    ((1, 1, 1), 1, None, 0, False, True),
    ((2, 3, 16), 2, None, 0, False, True),
    ((2, 3, 19), 3, 2, 1, False, True),
    ((2, 3, 19), 3, 2, 1, True, True),
    ((2, 3, 19), 3, 2, 1, True, False),
    ((1, 2, 23), 4, 3, 2, True, True),
    ((3, 1, 6), 5, 1, 2, False, False),
    ((2, 2, 7), 7, 3, 3, True, False),
]


@pytest.mark.parametrize("shape, kernel, stride, padding, ceil_mode, include", AVG_CASES)
def test_avg_pool1d_matches_reference(shape, kernel, stride, padding, ceil_mode, include):
    rng = np.random.default_rng(6)
    x = rng.standard_normal(shape).astype(np.float32)
    keywords = dict(stride=stride, padding=padding, ceil_mode=ceil_mode, count_include_pad=include)
    step = kernel if stride is None else stride
    y, windows = reference_avg_pool1d(x, kernel, step, padding, ceil_mode, include)
    np.testing.assert_allclose(ops.avg_pool1d(x, kernel, **keywords), y, rtol=1e-5, atol=1e-6)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    expected = reference_avg_pool1d_backward(dy, x, windows)
    np.testing.assert_allclose(ops.avg_pool1d_backward(dy, x, kernel, **keywords), expected,
                               rtol=1e-5, atol=1e-6)
    layer = AvgPool1d(kernel, **keywords)
    np.testing.assert_allclose(layer.forward(x, training=True), y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.backward(dy), expected, rtol=1e-5, atol=1e-6)


def test_pool1d_gradients_match_finite_differences():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 17)).astype(np.float32)  # distinct values: max is smooth
    for forward, backward, keywords in (
            (ops.max_pool1d, ops.max_pool1d_backward, dict(stride=2, padding=1, dilation=2,
                                                           ceil_mode=True)),
            (ops.avg_pool1d, ops.avg_pool1d_backward, dict(stride=2, padding=1, ceil_mode=True,
                                                           count_include_pad=False)),
            (ops.avg_pool1d, ops.avg_pool1d_backward, dict(stride=1, padding=1))):
        probe = rng.standard_normal(forward(x, 3, **keywords).shape)
        analytic = backward(probe.astype(np.float32), x, 3, **keywords)
        check_gradient(lambda v: np.sum(forward(v, 3, **keywords) * probe), x, analytic, eps=1e-3)


@pytest.mark.parametrize("keywords", [
    dict(), dict(stride=2, padding=1), dict(stride=2, padding=1, ceil_mode=True),
    dict(stride=1, padding=1, dilation=2), dict(stride=3, dilation=3, ceil_mode=True),
])
def test_max_pool1d_torch_parity(keywords):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(8).integers(-2, 3, (2, 3, 20)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.max_pool1d(xt, 3, **keywords)
    dy = np.random.default_rng(9).standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.tensor(dy))
    np.testing.assert_array_equal(ops.max_pool1d(x, 3, **keywords), yt.detach().numpy())
    np.testing.assert_allclose(ops.max_pool1d_backward(dy, x, 3, **keywords), xt.grad.numpy(),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("keywords", [
    dict(), dict(stride=2, padding=1), dict(stride=2, padding=1, ceil_mode=True),
    dict(stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    dict(stride=4, padding=1, count_include_pad=False),
])
def test_avg_pool1d_torch_parity(keywords):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(10).standard_normal((2, 3, 21)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.avg_pool1d(xt, 3, **keywords)
    dy = np.random.default_rng(11).standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(ops.avg_pool1d(x, 3, **keywords), yt.detach().numpy(), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(ops.avg_pool1d_backward(dy, x, 3, **keywords), xt.grad.numpy(),
                               rtol=1e-5, atol=1e-6)


# -- adaptive_avg_pool2d -------------------------------------------------------------------
ADAPTIVE_CASES = [  # (shape, output_size, the output's (OH, OW))
    ((1, 1, 1, 1), 1, (1, 1)),
    ((2, 3, 8, 8), 4, (4, 4)),          # windows that tile the input
    ((2, 3, 7, 5), 3, (3, 3)),          # sizes that do not divide: windows overlap
    ((2, 3, 7, 5), (2, 4), (2, 4)),
    ((1, 2, 5, 11), (None, 3), (5, 3)),  # None keeps that size
    ((1, 2, 5, 11), [4, None], (4, 11)),
    ((2, 2, 3, 2), (5, 7), (5, 7)),     # larger than the input: windows repeat
    ((0, 3, 6, 6), 2, (2, 2)),
    ((2, 3, 6, 6), (0, 3), (0, 3)),     # an empty output, as PyTorch
    ((3, 4, 13, 1), (6, 1), (6, 1)),
]


@pytest.mark.parametrize("shape, output_size, out_hw", ADAPTIVE_CASES)
def test_adaptive_avg_pool2d_matches_reference(shape, output_size, out_hw):
    rng = np.random.default_rng(12)
    x = rng.standard_normal(shape).astype(np.float32)
    y = ops.adaptive_avg_pool2d(x, output_size)
    assert y.shape == shape[:2] + out_hw and y.dtype == np.float32
    np.testing.assert_allclose(y, reference_adaptive_avg_pool2d(x, *out_hw), rtol=1e-5, atol=1e-6)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    expected = reference_adaptive_avg_pool2d_backward(dy, x, *out_hw)
    np.testing.assert_allclose(ops.adaptive_avg_pool2d_backward(dy, x, output_size), expected,
                               rtol=1e-5, atol=1e-6)
    layer = AdaptiveAvgPool2d(output_size)
    np.testing.assert_array_equal(layer.forward(x, training=True), y)
    np.testing.assert_allclose(layer.backward(dy), expected, rtol=1e-5, atol=1e-6)


def test_adaptive_windows_follow_pytorch_rule_by_hand():
    """H = 5 to 3 rows: rows [0, 2), [1, 4), [3, 5)."""
    x = np.arange(5, dtype=np.float32).reshape(1, 1, 5, 1)
    np.testing.assert_allclose(ops.adaptive_avg_pool2d(x, (3, 1))[0, 0, :, 0], [0.5, 2.0, 3.5])
    dx = ops.adaptive_avg_pool2d_backward(np.ones((1, 1, 3, 1), np.float32), x, (3, 1))
    np.testing.assert_allclose(dx[0, 0, :, 0], [0.5, 0.5 + 1 / 3, 1 / 3, 1 / 3 + 0.5, 0.5])


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 7, 5), (3, 17, 4, 4), (4, 8, 64, 64),
                                   (1, 2, 1, 300)])
@pytest.mark.parametrize("threads", [1, 2])
def test_adaptive_one_by_one_is_global_average_pooling(shape, threads, set_threads):
    set_threads(threads)
    rng = np.random.default_rng(13)
    x = rng.standard_normal(shape).astype(np.float32) * 10
    y = ops.adaptive_avg_pool2d(x, 1)
    np.testing.assert_array_equal(y.reshape(shape[:2]), ops.global_avg_pool2d(x))
    dy = rng.standard_normal(shape[:2] + (1, 1)).astype(np.float32)
    np.testing.assert_array_equal(ops.adaptive_avg_pool2d_backward(dy, x, (1, 1)),
                                  ops.global_avg_pool2d_backward(dy.reshape(shape[:2]), x))


def test_adaptive_results_do_not_depend_on_the_thread_count(set_threads):
    rng = np.random.default_rng(14)
    x = rng.standard_normal((4, 8, 61, 67)).astype(np.float32)  # enough planes for two threads
    dy = rng.standard_normal((4, 8, 7, 9)).astype(np.float32)
    set_threads(1)
    one = ops.adaptive_avg_pool2d(x, (7, 9)), ops.adaptive_avg_pool2d_backward(dy, x, (7, 9))
    set_threads(2)
    two = ops.adaptive_avg_pool2d(x, (7, 9)), ops.adaptive_avg_pool2d_backward(dy, x, (7, 9))
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


def test_adaptive_gradients_match_finite_differences():
    rng = np.random.default_rng(15)
    x = rng.standard_normal((2, 2, 7, 6)).astype(np.float32)
    for size in ((3, 4), (5, None), 9):
        probe = rng.standard_normal(ops.adaptive_avg_pool2d(x, size).shape)
        analytic = ops.adaptive_avg_pool2d_backward(probe.astype(np.float32), x, size)
        check_gradient(lambda v: np.sum(ops.adaptive_avg_pool2d(v, size) * probe), x, analytic,
                       eps=1e-3)


@pytest.mark.parametrize("shape, output_size", [
    ((2, 3, 10, 9), 4), ((2, 3, 10, 9), (3, 7)), ((2, 3, 10, 9), (None, 2)),
    ((1, 2, 4, 3), (7, 5)), ((2, 3, 13, 11), (13, 1)), ((2, 3, 6, 6), (6, 6)),
])
def test_adaptive_avg_pool2d_torch_parity(shape, output_size):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(16).standard_normal(shape).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.adaptive_avg_pool2d(xt, output_size)
    dy = np.random.default_rng(17).standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.tensor(dy))
    y = ops.adaptive_avg_pool2d(x, output_size)
    assert y.shape == tuple(yt.shape)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ops.adaptive_avg_pool2d_backward(dy, x, output_size),
                               xt.grad.numpy(), rtol=1e-5, atol=1e-6)


# -- layers ---------------------------------------------------------------------------------
def test_conv1d_parameters_and_initialisation_follow_pytorch():
    init.manual_seed(0)
    layer = Conv1d(6, 8, 5, groups=2)
    weight, bias = layer.params["weight"], layer.params["bias"]
    assert list(layer.params) == ["weight", "bias"] and weight.shape == (8, 3, 5)
    assert layer.kernel_size == (5,) and layer.stride == (1,) and layer.padding == (0,)
    bound = 1.0 / np.sqrt(3 * 5)  # kaiming_uniform(a=√5) ⇒ U(±1/√fan_in)
    assert np.abs(weight).max() <= bound and np.abs(weight).max() > 0.8 * bound
    assert np.abs(bias).max() <= bound and bias.dtype == np.float32
    assert all(not g.any() and g.shape == layer.params[k].shape for k, g in layer.grads.items())
    assert "bias" not in Conv1d(1, 2, 3, bias=False).params
    init.manual_seed(0)
    np.testing.assert_array_equal(Conv1d(6, 8, 5, groups=2).params["weight"], weight)


def test_conv1d_initialisation_has_pytorch_spread():
    """U(±1/√fan_in): over many weights the variance is bound² / 3, as torch's."""
    torch = pytest.importorskip("torch")
    init.manual_seed(1)
    ours = Conv1d(16, 64, 7).params["weight"].astype(np.float64)
    theirs = torch.nn.Conv1d(16, 64, 7).weight.detach().numpy().astype(np.float64)
    bound = 1.0 / np.sqrt(16 * 7)
    assert np.abs(theirs).max() <= bound
    assert ours.var() == pytest.approx(bound**2 / 3, rel=0.05)
    assert theirs.var() == pytest.approx(bound**2 / 3, rel=0.05)


def test_conv1d_layer_matches_the_ops():
    rng = np.random.default_rng(18)
    layer = Conv1d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2)
    x = rng.standard_normal((3, 4, 21)).astype(np.float32)
    geometry = dict(stride=2, padding=1, dilation=2, groups=2)
    y = layer.forward(x, training=True)
    np.testing.assert_array_equal(y, ops.conv1d(x, layer.params["weight"], layer.params["bias"],
                                                **geometry))
    np.testing.assert_array_equal(layer.forward(x), y)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(dy)
    expected = ops.conv1d_backward(dy, x, layer.params["weight"], **geometry)
    for ours, theirs in zip((dx, layer.grads["weight"], layer.grads["bias"]), expected):
        np.testing.assert_array_equal(ours, theirs)
    assert layer.backward(dy, input_grad=False) is None
    layer.trainable = False
    layer.grads["weight"][...] = 7.0
    assert layer.backward(dy).shape == x.shape and (layer.grads["weight"] == 7.0).all()


def test_conv1d_with_fused_relu_gradients():
    rng = np.random.default_rng(19)
    layer = Conv1d(2, 3, 3, padding=1)
    layer.activation = "relu"
    x = rng.standard_normal((2, 2, 9)).astype(np.float32)
    probe = rng.standard_normal((2, 3, 9))
    y = layer.forward(x, training=True)
    plain = ops.conv1d(x, layer.params["weight"], layer.params["bias"], padding=1)
    np.testing.assert_array_equal(y, np.maximum(plain, 0))
    assert (y == 0).any() and (y > 0).any()
    dx = layer.backward(probe.astype(np.float32))
    check_gradient(lambda v: np.sum(layer.forward(v) * probe), x, dx, eps=1e-3)


def test_sequential_fuses_a_relu_after_conv1d():
    init.manual_seed(2)
    model = Sequential(Conv1d(2, 4, 3), ReLU(), Conv1d(4, 3, 3), Flatten())
    assert model.layers[0].activation == "relu" and model.layers[2].activation is None
    assert model.layers[1] not in model._steps
    x = np.random.default_rng(20).standard_normal((3, 2, 10)).astype(np.float32)
    conv = lambda v, layer: ops.conv1d(v, layer.params["weight"], layer.params["bias"])  # noqa: E731
    expected = conv(ops.relu(conv(x, model.layers[0])), model.layers[2])
    np.testing.assert_array_equal(model.predict(x), expected.reshape(3, -1))
    np.testing.assert_array_equal(model.forward(x), expected.reshape(3, -1))


def small_signal_model():
    init.manual_seed(3)
    return Sequential(Conv1d(3, 8, 5, padding=2), ReLU(), MaxPool1d(3, stride=2, padding=1),
                      Conv1d(8, 6, 3, stride=2, groups=2), ReLU(), AvgPool1d(2, ceil_mode=True),
                      Flatten(), Linear(6 * 3, 4))


def test_signal_model_matches_torch_outputs_and_every_gradient():
    torch = pytest.importorskip("torch")
    model = small_signal_model()
    nn = torch.nn
    twin = nn.Sequential(nn.Conv1d(3, 8, 5, padding=2), nn.ReLU(), nn.MaxPool1d(3, 2, 1),
                         nn.Conv1d(8, 6, 3, stride=2, groups=2), nn.ReLU(),
                         nn.AvgPool1d(2, ceil_mode=True), nn.Flatten(), nn.Linear(18, 4))
    assert list(model.state_dict()) == list(twin.state_dict())
    twin.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in model.state_dict().items()})
    rng = np.random.default_rng(21)
    x = rng.standard_normal((5, 3, 23)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt = twin(xt)
    np.testing.assert_allclose(model.predict(x), yt.detach().numpy(), rtol=1e-4, atol=1e-5)
    y = model.forward(x, training=True)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-4, atol=1e-5)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(model.backward(dy), xt.grad.numpy(), rtol=1e-4, atol=1e-5)
    grads = {f"{i}.{k}": g for i, layer in enumerate(model.layers) for k, g in layer.grads.items()}
    for name, param in twin.named_parameters():
        np.testing.assert_allclose(grads[name], param.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_adaptive_pool_model_matches_torch():
    torch = pytest.importorskip("torch")
    init.manual_seed(4)
    model = Sequential(pynn.layers.Conv2d(2, 4, 3, padding=1), ReLU(), AdaptiveAvgPool2d((3, 2)),
                       Flatten(), Linear(24, 3))
    nn = torch.nn
    twin = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d((3, 2)),
                         nn.Flatten(), nn.Linear(24, 3))
    twin.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in model.state_dict().items()})
    x = np.random.default_rng(22).standard_normal((3, 2, 11, 7)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt = twin(xt)
    y = model.forward(x, training=True)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-4, atol=1e-5)
    dy = np.ones(y.shape, np.float32)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(model.backward(dy), xt.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_signal_model_gradients_match_finite_differences():
    model = small_signal_model()
    rng = np.random.default_rng(23)
    x = rng.standard_normal((2, 3, 23)).astype(np.float32)
    probe = rng.standard_normal((2, 4))
    model.forward(x, training=True)
    dx = model.backward(probe.astype(np.float32))
    check_gradient(lambda v: np.sum(model.forward(v) * probe), x, dx, eps=1e-3)


@pytest.mark.parametrize("layer", [
    Conv1d(4, 6, 3, stride=2, padding=(1,), dilation=2, groups=2, bias=False),
    MaxPool1d(3, stride=2, padding=1, dilation=2, ceil_mode=True),
    AvgPool1d(4, padding=2, ceil_mode=True, count_include_pad=False),
    AdaptiveAvgPool2d(5), AdaptiveAvgPool2d((None, 3)), AdaptiveAvgPool2d([2, 4]),
])
def test_config_round_trips_through_json(layer):
    config = json.loads(json.dumps(layer.config()))
    again = LAYER_TYPES[type(layer).__name__](**config)
    assert again.config() == layer.config() and repr(again) == repr(layer)
    for key, value in layer.params.items():
        assert again.params[key].shape == value.shape


def test_model_file_round_trip(tmp_path):
    model = small_signal_model()
    x = np.random.default_rng(24).standard_normal((2, 3, 23)).astype(np.float32)
    path = tmp_path / "signals.safetensors"
    model.save(path)
    loaded = pynn.load(path)
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]
    assert loaded.layers[0].activation == "relu"  # the rebuilt model fuses again
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    images = Sequential(AdaptiveAvgPool2d((2, None)), GlobalAvgPool2d())
    images.save(tmp_path / "images.safetensors")
    rebuilt = pynn.load(tmp_path / "images.safetensors")
    assert rebuilt.layers[0].output_size == (2, None)
    x = np.random.default_rng(25).standard_normal((2, 3, 5, 4)).astype(np.float32)
    np.testing.assert_array_equal(rebuilt.predict(x), images.predict(x))


def test_predict_from_several_threads_matches_serial():
    model = small_signal_model()
    x = np.random.default_rng(25).standard_normal((16, 3, 23)).astype(np.float32)
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


# -- refusals ---------------------------------------------------------------------------------
SIGNAL = np.zeros((1, 3, 8), np.float32)
WEIGHT = np.zeros((4, 3, 3), np.float32)
IMAGE = np.zeros((1, 2, 5, 5), np.float32)


@pytest.mark.parametrize("call, error, words", [
    (lambda: ops.conv1d(IMAGE, WEIGHT), ValueError, ["conv1d", "3-D [N, C, L]", "(1, 2, 5, 5)"]),
    (lambda: ops.conv1d(SIGNAL, WEIGHT[:, :, :, None]), ValueError, ["conv1d", "weight", "3-D"]),
    (lambda: ops.conv1d(SIGNAL[:, :2], WEIGHT), ValueError, ["conv1d", "in_channels=3"]),
    (lambda: ops.conv1d(SIGNAL, np.zeros((4, 3, 9), np.float32)), ValueError,
     ["conv1d", "spans 9", "along L", "padded input's 8"]),
    (lambda: ops.conv1d(SIGNAL, WEIGHT, stride=0), ValueError, ["conv1d", "stride", "0"]),
    (lambda: ops.conv1d(SIGNAL, WEIGHT, padding=(1, 1)), ValueError,
     ["conv1d", "padding", "(1, 1)"]),
    (lambda: ops.conv1d(SIGNAL, WEIGHT, padding=1.5), TypeError, ["conv1d", "padding", "1.5"]),
    (lambda: ops.conv1d(SIGNAL, np.zeros((4, 1, 3), np.float32), groups=3), ValueError,
     ["conv1d", "groups=3", "out_channels=4"]),
    (lambda: ops.conv1d(SIGNAL, WEIGHT, np.zeros(5, np.float32)), ValueError,
     ["conv1d", "bias", "(4,)", "(5,)"]),
    (lambda: ops.conv1d(SIGNAL.astype(np.int32), WEIGHT), TypeError, ["conv1d", "int32"]),
    (lambda: ops.conv1d(np.zeros((1, 3, 0), np.float32), WEIGHT, padding=2), ValueError,
     ["conv1d", "non-empty L", "(1, 3, 0)"]),
    (lambda: ops.conv1d_backward(np.zeros((1, 4, 5), np.float32), SIGNAL, WEIGHT), ValueError,
     ["conv1d_backward", "(1, 4, 6)", "(1, 4, 5)"]),
    (lambda: ops.max_pool1d(IMAGE, 2), ValueError, ["max_pool1d", "3-D", "(1, 2, 5, 5)"]),
    (lambda: ops.max_pool1d(SIGNAL, 2, padding=2), ValueError,
     ["max_pool1d", "padding 2", "half the kernel size 2"]),
    (lambda: ops.max_pool1d(SIGNAL, (2, 2)), ValueError, ["max_pool1d", "kernel_size"]),
    (lambda: ops.avg_pool1d(SIGNAL, 9), ValueError, ["avg_pool1d", "does not fit", "(1, 3, 8)"]),
    (lambda: ops.avg_pool1d(SIGNAL, 2, ceil_mode=1), TypeError, ["avg_pool1d", "ceil_mode"]),
    (lambda: ops.avg_pool1d(SIGNAL, 2, count_include_pad="yes"), TypeError,
     ["avg_pool1d", "count_include_pad"]),
    (lambda: ops.max_pool1d_backward(np.zeros((1, 3, 3), np.float32), SIGNAL, 2), ValueError,
     ["max_pool1d_backward", "(1, 3, 4)", "(1, 3, 3)"]),
    (lambda: ops.avg_pool1d_backward(np.zeros((1, 3, 3), np.float32), SIGNAL, 2), ValueError,
     ["avg_pool1d_backward", "(1, 3, 4)", "(1, 3, 3)"]),
    (lambda: ops.adaptive_avg_pool2d(SIGNAL, 2), ValueError,
     ["adaptive_avg_pool2d", "4-D", "(1, 3, 8)"]),
    (lambda: ops.adaptive_avg_pool2d(IMAGE, -1), ValueError,
     ["adaptive_avg_pool2d", "output_size", "-1"]),
    (lambda: ops.adaptive_avg_pool2d(IMAGE, (1, 2, 3)), ValueError,
     ["adaptive_avg_pool2d", "output_size", "(h, w) pair"]),
    (lambda: ops.adaptive_avg_pool2d(IMAGE, None), TypeError,
     ["adaptive_avg_pool2d", "output_size", "None"]),
    (lambda: ops.adaptive_avg_pool2d(IMAGE, 2.0), TypeError,
     ["adaptive_avg_pool2d", "output_size", "2.0"]),
    (lambda: ops.adaptive_avg_pool2d(np.zeros((1, 2, 0, 5), np.float32), 1), ValueError,
     ["adaptive_avg_pool2d", "non-empty H and W"]),
    (lambda: ops.adaptive_avg_pool2d(IMAGE, 2**40), ValueError,
     ["adaptive_avg_pool2d", "address space", "output_size (1099511627776, 1099511627776)"]),
    (lambda: ops.adaptive_avg_pool2d(np.zeros((1, 1, 2**21, 1), np.float32), (2**41, 1)),
     ValueError, ["adaptive_avg_pool2d", "output_size (2199023255552, 1)", "too large"]),
    (lambda: ops.adaptive_avg_pool2d(IMAGE, 2, out=np.zeros((1, 2, 3, 3), np.float32)),
     ValueError, ["adaptive_avg_pool2d", "out", "(1, 2, 2, 2)"]),
    (lambda: ops.adaptive_avg_pool2d_backward(np.zeros((1, 2, 3, 3), np.float32), IMAGE, 2),
     ValueError, ["adaptive_avg_pool2d_backward", "(1, 2, 2, 2)", "(1, 2, 3, 3)"]),
])
def test_bad_arguments_are_refused_with_a_clear_message(call, error, words):
    with pytest.raises(error) as raised:
        call()
    for word in words:
        assert word in str(raised.value)


@pytest.mark.parametrize("make, error, words", [
    (lambda: Conv1d(3, 4, (3, 3)), ValueError, ["Conv1d", "kernel_size", "(3, 3)"]),
    (lambda: Conv1d(3, 4, 3, groups=2), ValueError, ["Conv1d", "groups=2", "in_channels=3"]),
    (lambda: Conv1d(4, 6, 3, groups=4), ValueError, ["Conv1d", "groups=4", "out_channels=6"]),
    (lambda: Conv1d(1, 1, 3, stride=0), ValueError, ["Conv1d", "stride", "0"]),
    (lambda: Conv1d(1, 1, 3, bias=1), TypeError, ["Conv1d", "bias"]),
    (lambda: Conv1d(2**31, 2**31, 2**10), ValueError, ["Conv1d", "address space"]),
    (lambda: MaxPool1d(2, padding=2), ValueError, ["MaxPool1d", "padding 2", "half"]),
    (lambda: MaxPool1d(0), ValueError, ["MaxPool1d", "kernel_size", "0"]),
    (lambda: AvgPool1d(3, count_include_pad=None), TypeError, ["AvgPool1d", "count_include_pad"]),
    (lambda: AdaptiveAvgPool2d((2, -3)), ValueError, ["AdaptiveAvgPool2d", "output_size", "-3"]),
    (lambda: AdaptiveAvgPool2d("7"), TypeError, ["AdaptiveAvgPool2d", "output_size"]),
])
def test_bad_construction_is_refused_naming_the_layer(make, error, words):
    with pytest.raises(error) as raised:
        make()
    for word in words:
        assert word in str(raised.value)


@pytest.mark.parametrize("layer, x, words", [
    (Conv1d(3, 4, 3), IMAGE, ["Conv1d", "3-D [N, C, L]", "(1, 2, 5, 5)"]),
    (Conv1d(2, 4, 3), SIGNAL, ["Conv1d", "in_channels=2", "(1, 3, 8)"]),
    (Conv1d(3, 4, 5, padding=1), SIGNAL[:, :, :2], ["Conv1d", "spans 5", "4"]),
    (MaxPool1d(3), SIGNAL[:, :, :2], ["MaxPool1d", "(1, 3, 2)"]),
    (AvgPool1d(2), IMAGE, ["AvgPool1d", "3-D", "(1, 2, 5, 5)"]),
    (AdaptiveAvgPool2d(2), SIGNAL, ["AdaptiveAvgPool2d", "4-D", "(1, 3, 8)"]),
])
def test_bad_input_is_refused_naming_the_layer(layer, x, words):
    with pytest.raises(ValueError) as raised:
        layer.forward(x)
    for word in words:
        assert word in str(raised.value)


def test_layers_called_on_symbolic_tensors_check_shapes():
    from pynn.layers import symbolic

    signal = symbolic.Input((3, 10))
    h = Conv1d(3, 4, 3, padding=1, name="encoder.conv")(signal)
    h = AvgPool1d(2)(MaxPool1d(3, stride=1, padding=1)(h))
    assert h.shape == (4, 5)
    assert AdaptiveAvgPool2d((2, None))(symbolic.Input((3, 7, 5))).shape == (3, 2, 5)
    with pytest.raises(ValueError, match=r"AdaptiveAvgPool2d.*\(3, 10\)"):
        AdaptiveAvgPool2d(2)(signal)
    with pytest.raises(ValueError, match=r"Conv1d.*in_channels=4"):
        Conv1d(4, 4, 3)(signal)
