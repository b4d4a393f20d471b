"""The direct convolution (csrc/conv_direct.c: groups of 1, dilation 1, 2 to
49 taps, output channels filling 3/4 of their blocks of 8, planes in L2)
against the float64 reference of test_ops_conv, on every kernel path, at sizes
that end its vector runs, channel blocks and gradient chunks early; the input
gradient is direct where the input channels also fill their blocks."""
import numpy as np
import pytest

from pynn import ops
from tests.test_ops_conv import (assert_advertised_workspace_gives_same_bits, assert_close_sum,
                                 assert_conv_close, fused_relu_forward, make,
                                 reference_conv_backward)

# (N, C, H, W, OC, kernel, stride, padding, dilation, groups)
CASES = [
    (2, 3, 32, 32, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1),   # ResNet stem
    (3, 16, 8, 8, 13, (3, 3), (1, 1), (1, 1), (1, 1), 1),    # 72 outputs a channel: 3 + 2 runs
    (2, 5, 9, 7, 14, (3, 3), (2, 2), (1, 1), (1, 1), 1),     # strided: four phase planes
    (2, 7, 11, 13, 6, (1, 2), (2, 2), (0, 0), (1, 1), 1),    # two taps, odd sizes
    (1, 4, 5, 21, 23, (5, 3), (1, 2), (2, 0), (1, 1), 1),    # unequal strides and pads
    (2, 7, 10, 9, 6, (3, 3), (3, 3), (2, 1), (1, 1), 1),     # stride 3: nine phases
    (1, 6, 1, 37, 7, (1, 3), (1, 1), (0, 1), (1, 1), 1),     # one row (a conv1d)
    (4, 6, 6, 6, 8, (2, 2), (1, 1), (0, 0), (1, 1), 1),      # even kernel, no padding
    (9, 16, 32, 32, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1),  # two gradient chunks, the last short
    (1, 33, 3, 3, 8, (3, 3), (1, 1), (2, 2), (1, 1), 1),     # padding past the kernel's reach
]


@pytest.mark.parametrize("case", CASES)
def test_forward_matches_float64_reference(isa, case):
    x, weight, bias, geometry = make(case)
    assert_conv_close(ops.conv2d(x, weight, bias, **geometry), x, weight, bias, geometry)


@pytest.mark.parametrize("case", CASES)
def test_fused_relu_matches_the_reference(isa, case):
    x, weight, bias, geometry = make(case, seed=5)
    assert_conv_close(fused_relu_forward(x, weight, bias, geometry), x, weight, bias, geometry,
                      relu=True)


@pytest.mark.parametrize("case", CASES)
def test_backward_matches_float64_reference(isa, case):
    x, weight, _, geometry = make(case)
    y = ops.conv2d(x, weight, None, **geometry)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    dx, dweight, _ = ops.conv2d_backward(dy, x, weight, **geometry)
    rx, rw, _ = reference_conv_backward(dy, x, weight, **geometry)
    mx, mw, _ = reference_conv_backward(np.abs(dy), np.abs(x), np.abs(weight), **geometry)
    assert_close_sum(dx, rx, mx, weight.shape[0] * weight.shape[2] * weight.shape[3])
    assert_close_sum(dweight, rw, mw, y.shape[0] * y.shape[2] * y.shape[3])


# images to threads; one image's channel blocks to threads; two gradient chunks
@pytest.mark.parametrize("case", [(4, 16, 32, 32, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1),
                                  (1, 16, 32, 32, 20, (3, 3), (1, 1), (1, 1), (1, 1), 1),
                                  CASES[8]])
def test_thread_count_does_not_change_the_bits(isa, case, set_threads):
    x, weight, bias, geometry = make(case)
    dy = np.random.default_rng(2).standard_normal(
        ops.conv2d(x, weight, bias, **geometry).shape).astype(np.float32)
    results = []
    for threads in (1, 2, 3):
        set_threads(threads)
        results.append((ops.conv2d(x, weight, bias, **geometry),)
                       + ops.conv2d_backward(dy, x, weight, **geometry))
    for first, other in zip(results[0], results[1]):
        np.testing.assert_array_equal(first, other)
    for first, other in zip(results[0], results[2]):
        np.testing.assert_array_equal(first, other)


@pytest.mark.parametrize("case", [CASES[1], CASES[2]])
def test_a_workspace_of_the_advertised_size_gives_the_same_bits(case):
    assert_advertised_workspace_gives_same_bits(*make(case))


def test_many_images_share_the_capped_count_of_weight_gradient_chunks():
    # an image's planes and gradients fill a chunk alone: 65 images in 36 chunks, not 65
    x, weight, _, geometry = make((65, 2, 64, 64, 60, (3, 3), (1, 1), (1, 1), (1, 1), 1))
    dy = np.random.default_rng(6).standard_normal((65, 60, 64, 64)).astype(np.float32)
    _, dweight, _ = ops.conv2d_backward(dy, x, weight, **geometry)
    _, expected, _ = reference_conv_backward(dy, x, weight, **geometry)
    _, magnitude, _ = reference_conv_backward(np.abs(dy), np.abs(x), np.abs(weight), **geometry)
    assert_close_sum(dweight, expected, magnitude, 65 * 64 * 64)


# Blocks of at most 6 output channels (a group of 6; on the AVX-512 path the
# AVX2 tile), tap rows skipped where they read only padding rows, the direct
# input gradient of LeNet's second convolution (6 channels, padded by 4).
SMALL_BLOCK_CASES = [
    (5, 6, 14, 14, 16, (5, 5), (1, 1), (0, 0), (1, 1), 1),   # LeNet conv2: dx through 6-channel blocks
    (3, 16, 10, 10, 6, (5, 5), (1, 1), (4, 4), (1, 1), 1),   # its input gradient's shape, forward
    (2, 6, 11, 9, 6, (3, 3), (2, 1), (1, 1), (1, 1), 1),     # vertical stride 2: no row skipped
    (2, 8, 3, 30, 14, (3, 3), (1, 1), (2, 1), (1, 1), 1),    # runs across more rows than the image
    (1, 7, 2, 40, 6, (5, 3), (1, 1), (4, 1), (1, 1), 1),     # every run skips rows
]

# One input channel at stride 1 (conv.c's direct single-channel kernel):
# rows of 9, 16, 17, 24 and 28 outputs end its two-vector steps differently.
SINGLE_CHANNEL_CASES = [
    (2, 1, 7, 9, 6, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    (2, 1, 6, 16, 7, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    (1, 1, 5, 17, 6, (2, 3), (1, 1), (0, 1), (1, 1), 1),
    (2, 1, 4, 26, 13, (3, 3), (1, 1), (0, 0), (1, 1), 1),
    (5, 1, 28, 28, 6, (5, 5), (1, 1), (2, 2), (1, 1), 1),    # LeNet conv1
]


@pytest.mark.parametrize("case", SMALL_BLOCK_CASES + SINGLE_CHANNEL_CASES)
def test_small_blocks_and_single_channels_match_float64(isa, case):
    x, weight, bias, geometry = make(case, seed=7)
    out = fused_relu_forward(x, weight, bias, geometry)
    assert_conv_close(out, x, weight, bias, geometry, relu=True)
    dy = np.random.default_rng(8).standard_normal(out.shape).astype(np.float32)
    dx, dweight, dbias = ops.conv2d_backward(dy, x, weight, **geometry)
    rx, rw, rb = reference_conv_backward(dy, x, weight, **geometry)
    mx, mw, mb = reference_conv_backward(np.abs(dy), np.abs(x), np.abs(weight), **geometry)
    assert_close_sum(dx, rx, mx, weight.shape[0] * weight.shape[2] * weight.shape[3])
    assert_close_sum(dweight, rw, mw, dy.shape[0] * dy.shape[2] * dy.shape[3])
    assert_close_sum(dbias, rb, mb, dy.shape[0] * dy.shape[2] * dy.shape[3])


@pytest.mark.parametrize("plane", [(3, 5), (4, 4), (10, 10), (7, 13), (28, 28)])
def test_bias_gradient_matches_float64_across_its_vector_chains(plane):
    # planes shorter than, equal to and past the chains' 16 floats, with tails
    case = (9, 6, plane[0] + 2, plane[1] + 2, 6, (3, 3), (1, 1), (0, 0), (1, 1), 1)
    x, weight, _, geometry = make(case, seed=9)
    dy = np.random.default_rng(10).standard_normal((9, 6) + plane).astype(np.float32)
    _, _, dbias = ops.conv2d_backward(dy, x, weight, **geometry)
    expected = dy.astype(np.float64).sum(axis=(0, 2, 3))
    assert_close_sum(dbias, expected, np.abs(dy.astype(np.float64)).sum(axis=(0, 2, 3)),
                     dy.size // 6)


@pytest.mark.parametrize("case", [SMALL_BLOCK_CASES[0], SMALL_BLOCK_CASES[1], SINGLE_CHANNEL_CASES[4]])
def test_small_blocks_give_the_same_bits_on_any_thread_count(isa, case, set_threads):
    x, weight, bias, geometry = make(case, seed=11)
    dy = np.random.default_rng(12).standard_normal(
        ops.conv2d(x, weight, bias, **geometry).shape).astype(np.float32)
    results = []
    for threads in (1, 2, 3):
        set_threads(threads)
        results.append((ops.conv2d(x, weight, bias, **geometry),)
                       + ops.conv2d_backward(dy, x, weight, **geometry))
    for other in results[1:]:
        for first, second in zip(results[0], other):
            np.testing.assert_array_equal(first, second)
