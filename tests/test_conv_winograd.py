"""The Winograd F(2x2, 3x3) convolution (csrc/conv_winograd.c: 3x3 kernels at
stride 1, 16 channels or more, 256 outputs a channel or more, tiles filling
3/4 of the path's vectors), forward with bias and fused ReLU, the input
gradient and (32 channels or more each side) the weight gradient, against
the float64 reference of test_ops_conv on every kernel path, at sizes that
end tiles, segments of tiles and GEMM panels early; results the same on any
thread count."""
import numpy as np
import pytest

from pynn import ops
from pynn._kernels import core as kernels
from tests.test_ops_conv import (assert_close_sum, assert_conv_close, fused_relu_forward, make,
                                 reference_conv_backward)

# (N, C, H, W, OC, padding): odd sizes (half tiles at the bottom and right
# edges), paddings 0 to 2, channel counts off the GEMM's 12, 6 and 4 row
# panels, batch 1, a 64-channel image of several blocks, and small images
# whose rows of tiles share a vector.
CASES = [
    (2, 16, 33, 31, 16, (1, 1)),
    (1, 17, 24, 29, 23, (0, 0)),
    (3, 20, 21, 26, 19, (2, 2)),
    (1, 16, 31, 50, 40, (1, 0)),
    (2, 24, 9, 61, 16, (0, 2)),
    (1, 64, 56, 56, 64, (1, 1)),
    (2, 32, 16, 16, 24, (1, 1)),   # rows of tiles grouped two or more to a vector
    (4, 16, 8, 8, 20, (1, 1)),
    (2, 20, 14, 14, 16, (1, 1)),   # the last group one row short
    (6, 16, 7, 7, 18, (1, 1)),     # half tiles in a group
]


# The weight gradient's: batches across its 4 slices unevenly (5), slices of
# several chunks (12 images of 64 tiles), odd sizes with paddings 0 and 2.
GRAD_CASES = [
    (5, 32, 8, 8, 40, (1, 1)),
    (12, 32, 16, 16, 32, (1, 1)),
    (2, 33, 11, 13, 32, (0, 2)),
    (1, 64, 56, 56, 64, (1, 1)),
]


def geometry_of(case):
    n, c, h, w, oc, padding = case
    return (n, c, h, w, oc, (3, 3), (1, 1), padding, (1, 1), 1)


@pytest.mark.parametrize("case", CASES)
def test_forward_matches_float64_reference(isa, case):
    x, weight, bias, geometry = make(geometry_of(case))
    assert_conv_close(ops.conv2d(x, weight, bias, **geometry), x, weight, bias, geometry)


@pytest.mark.parametrize("case", CASES)
def test_fused_relu_matches_the_reference(isa, case):
    x, weight, bias, geometry = make(geometry_of(case), seed=5)
    out = fused_relu_forward(x, weight, bias, geometry)
    assert_conv_close(out, x, weight, bias, geometry, relu=True)
    assert np.all(out >= 0.0)


@pytest.mark.parametrize("case", CASES)
def test_input_gradient_matches_float64_reference(isa, case):
    x, weight, _, geometry = make(geometry_of(case))
    y = ops.conv2d(x, weight, None, **geometry)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    dx, dweight, dbias = ops.conv2d_backward(dy, x, weight, **geometry)
    rx, rw, rb = reference_conv_backward(dy, x, weight, **geometry)
    mx, mw, _ = reference_conv_backward(np.abs(dy), np.abs(x), np.abs(weight), **geometry)
    assert_close_sum(dx, rx, mx, weight.shape[0] * 9)
    assert_close_sum(dweight, rw, mw, y.shape[0] * y.shape[2] * y.shape[3])


@pytest.mark.parametrize("case", GRAD_CASES)
def test_weight_gradient_matches_float64_reference(isa, case):
    x, weight, _, geometry = make(geometry_of(case), seed=7)
    y = ops.conv2d(x, weight, None, **geometry)
    dy = np.random.default_rng(2).standard_normal(y.shape).astype(np.float32)
    _, dweight, _ = ops.conv2d_backward(dy, x, weight, **geometry)
    _, rw, _ = reference_conv_backward(dy, x, weight, **geometry)
    _, mw, _ = reference_conv_backward(np.abs(dy), np.abs(x), np.abs(weight), **geometry)
    assert_close_sum(dweight, rw, mw, y.shape[0] * y.shape[2] * y.shape[3])


@pytest.mark.parametrize("case", GRAD_CASES[:3])
def test_weight_gradient_is_the_same_on_any_thread_count(isa, set_threads, case):
    x, weight, _, geometry = make(geometry_of(case), seed=8)
    dy = np.random.default_rng(6).standard_normal(
        ops.conv2d(x, weight, None, **geometry).shape).astype(np.float32)
    results = []
    for threads in (1, 2, 3):
        set_threads(threads)
        dweight = np.full(weight.shape, np.nan, np.float32)
        workspace = np.full(kernels.conv2d_workspace_size(x.shape, weight.shape, (1, 1), case[5],
                                                          (1, 1), 1), np.nan, np.float32)
        kernels.conv2d_backward(dy, x, weight, None, dweight, None, (1, 1), case[5], (1, 1), 1,
                                workspace)
        results.append(dweight)
    for dweight in results[1:]:
        np.testing.assert_array_equal(dweight, results[0])
    np.testing.assert_array_equal(results[0], ops.conv2d_backward(dy, x, weight, **geometry)[1])


def test_a_given_workspace_is_large_enough(isa):
    x, weight, bias, geometry = make(geometry_of(CASES[2]))
    workspace = np.full(kernels.conv2d_workspace_size(x.shape, weight.shape, (1, 1), (2, 2),
                                                      (1, 1), 1), np.nan, np.float32)
    y = np.empty((3, 19, 23, 28), np.float32)
    kernels.conv2d_forward(x, weight, bias, y, (1, 1), (2, 2), (1, 1), 1, False, workspace)
    np.testing.assert_array_equal(y, ops.conv2d(x, weight, bias, **geometry))
    dy = np.random.default_rng(3).standard_normal(y.shape).astype(np.float32)
    dx = np.empty_like(x)
    kernels.conv2d_backward(dy, x, weight, dx, None, None, (1, 1), (2, 2), (1, 1), 1, workspace)
    np.testing.assert_array_equal(dx, ops.conv2d_backward(dy, x, weight, **geometry)[0])


def test_nan_in_the_input_reaches_the_output_tiles_that_read_it(isa):
    """Its outputs are NaN, and with them the rest of their 2x2 tiles (the
    transforms mix a tile's patch); nothing else is."""
    x, weight, bias, geometry = make(geometry_of(CASES[0]))
    x[1, 3, 10, 20] = np.nan
    out = np.empty((2, 16, 33, 31), np.float32)
    kernels.conv2d_forward(x, weight, bias, out, (1, 1), (1, 1), (1, 1), 1, True)
    assert np.all(np.isnan(out[1, :, 9:12, 19:22]))
    tiles = np.zeros(out.shape, bool)
    tiles[1, :, 8:12, 18:22] = True
    assert not np.any(np.isnan(out[~tiles]))


@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[5], CASES[6]])
def test_results_are_the_same_on_any_thread_count(isa, set_threads, case):
    x, weight, bias, geometry = make(geometry_of(case), seed=2)
    dy = np.random.default_rng(4).standard_normal(
        (x.shape[0], weight.shape[0]) + ops.conv2d(x, weight, None, **geometry).shape[2:]
    ).astype(np.float32)
    results = []
    for threads in (1, 2, 3):
        set_threads(threads)
        out = np.empty((x.shape[0], weight.shape[0]) + dy.shape[2:], np.float32)
        kernels.conv2d_forward(x, weight, bias, out, (1, 1), case[5], (1, 1), 1, True)
        results.append((out, ops.conv2d_backward(dy, x, weight, **geometry)[0]))
    for out, dx in results[1:]:
        np.testing.assert_array_equal(out, results[0][0])
        np.testing.assert_array_equal(dx, results[0][1])
