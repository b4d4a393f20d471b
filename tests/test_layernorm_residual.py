"""kernels.layer_norm with other (a residual sum normalised row by row) against
add_into then layer_norm, bit for bit, on every path and thread count; and the
post-norm TransformerEncoderLayer inference that uses it against the layer's
step-by-step computation."""
import numpy as np
import pytest

from pynn._kernels import core as kernels
from pynn.layers import TransformerEncoderLayer


def _two_steps(x, other, weight, bias, eps, rows, length):
    summed = np.empty_like(x)
    kernels.add_into(x, other, summed)
    return kernels.layer_norm(summed, weight, bias, eps, np.empty_like(x), rows, length)


@pytest.mark.parametrize("rows,length", [(128, 384), (3, 17), (1, 1), (9, 64), (0, 5)])
@pytest.mark.parametrize("affine", ["both", "weight", "bias", "none"])
def test_equals_add_then_layer_norm(isa, set_threads, rows, length, affine):
    rng = np.random.default_rng(rows * 31 + length)
    x = (rng.standard_normal((rows, length)) * 3 + 5).astype(np.float32)
    other = rng.standard_normal((rows, length)).astype(np.float32)
    weight = rng.standard_normal(length).astype(np.float32) if affine in ("both", "weight") else None
    bias = rng.standard_normal(length).astype(np.float32) if affine in ("both", "bias") else None
    expected = _two_steps(x, other, weight, bias, 1e-12, rows, length)
    for threads in (1, 2):
        set_threads(threads)
        y = kernels.layer_norm(x, weight, bias, 1e-12, np.empty_like(x), rows, length, None, other)
        np.testing.assert_array_equal(y, expected)
    if rows:
        summed = x.astype(np.float64) + other
        centred = summed - summed.mean(axis=1, keepdims=True)
        reference = centred / np.sqrt((centred ** 2).mean(axis=1, keepdims=True) + 1e-12)
        reference = reference * (1.0 if weight is None else weight) + (0.0 if bias is None else bias)
        np.testing.assert_allclose(y, reference, rtol=1e-5, atol=1e-5)


def test_refuses_an_output_over_an_input_and_kept_statistics():
    memory = np.ones(40, np.float32)
    x, shifted = memory[:32].reshape(4, 8), memory[8:].reshape(4, 8)
    other = np.zeros((4, 8), np.float32)
    for y in (x, other, shifted):
        with pytest.raises(ValueError, match="overlap"):
            kernels.layer_norm(x, None, None, 1e-5, y, 4, 8, None, other)
    with pytest.raises(ValueError, match="stats"):
        kernels.layer_norm(x, None, None, 1e-5, np.empty_like(x), 4, 8, np.empty((4, 2)), other)


@pytest.mark.parametrize("activation", ["gelu", "relu"])
@pytest.mark.parametrize("masked", [False, True])
def test_post_norm_inference_equals_the_steps(isa, activation, masked):
    rng = np.random.default_rng(3)
    layer = TransformerEncoderLayer(32, 4, 48, dropout=0.0, activation=activation)
    for key, value in layer.params.items():
        value[...] = rng.standard_normal(value.shape).astype(np.float32) * 0.3
    x = rng.standard_normal((2, 7, 32)).astype(np.float32)
    inputs = [x, np.arange(7)[None, :] >= np.array([[7], [4]])] if masked else x
    expected = layer._run(layer.check_input(inputs), False)
    out = layer.infer(layer.check_input(inputs), np.empty_like(x))
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(layer.forward(inputs), expected)
