"""Affine (x · scale + shift with constant buffers) and LogSoftmax: forward
against float64 numpy, backward against finite differences."""
import numpy as np
import pytest

import pynn
from pynn import layers
from tests.helpers import check_gradient

RNG = np.random.default_rng(7)


@pytest.mark.parametrize("x_shape, shape, scale, shift", [
    ((3, 4, 5, 2), (4, 1, 1), True, True),      # per channel of an image
    ((3, 4, 5, 2), (), True, False),            # one scalar
    ((3, 5), (5,), False, True),                # a bias over features
    ((2, 4, 1), (1, 3), True, True),            # broadcasts x up to [N, 4, 3]
    ((2, 3), (4, 3), True, False),              # adds an axis after the batch
    ((1, 7), (7,), True, True),
    ((0, 7), (7,), True, True),                 # an empty batch
])
def test_affine_forward_and_backward(x_shape, shape, scale, shift):
    layer = layers.Affine(shape, scale=scale, shift=shift)
    if scale:
        layer.buffers["scale"][...] = RNG.standard_normal(shape)
    if shift:
        layer.buffers["shift"][...] = RNG.standard_normal(shape)
    x = RNG.standard_normal(x_shape).astype(np.float32)
    s = layer.buffers["scale"].astype(np.float64) if scale else 1.0
    b = layer.buffers["shift"].astype(np.float64) if shift else 0.0
    expected = x.astype(np.float64).reshape(x_shape[:1] + (1,) * max(0, len(shape) + 1 - len(x_shape))
                                            + x_shape[1:]) * s + b
    y = layer.forward(x, training=True)
    assert y.shape == expected.shape == layer.output_shape(x_shape)
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(layer.forward(x), expected, rtol=1e-6, atol=1e-6)
    weights = RNG.standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(weights)
    assert dx.shape == x_shape
    check = layers.Affine(shape, scale=scale, shift=shift)
    check.buffers.update({key: value.copy() for key, value in layer.buffers.items()})
    check_gradient(lambda v: float((check.forward(v) * weights).sum()), x, dx)
    before = {key: value.copy() for key, value in layer.buffers.items()}
    assert not layer.params and not layer.grads  # constants: nothing to train
    layer.forward(x, training=True)
    assert all(np.array_equal(before[key], layer.buffers[key]) for key in before)


def test_affine_refusals_name_the_layer():
    with pytest.raises(ValueError, match="Affine: scale, shift or both"):
        layers.Affine((3,), scale=False, shift=False)
    with pytest.raises(ValueError, match=r"Affine: shape \(3,\) does not broadcast"):
        layers.Affine((3,)).forward(np.ones((2, 4), np.float32))
    with pytest.raises(TypeError, match="Affine: scale must be a bool"):
        layers.Affine((3,), scale=1)


def test_affine_saves_and_loads_with_its_constants(tmp_path):
    x = pynn.Input((4, 3, 3))
    affine = layers.Affine((4, 1, 1), name="normalise")
    affine.buffers["scale"][...] = RNG.standard_normal((4, 1, 1))
    affine.buffers["shift"][...] = RNG.standard_normal((4, 1, 1))
    model = pynn.Model(x, layers.ReLU()(affine(x)))
    model.save(tmp_path / "m.safetensors")
    data = RNG.standard_normal((2, 4, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(pynn.load(tmp_path / "m.safetensors").predict(data),
                                  model.predict(data))


@pytest.mark.parametrize("shape, axis", [((4, 7), -1), ((3, 5, 2), 1), ((1, 1), -1)])
def test_log_softmax_layer(shape, axis):
    layer = layers.LogSoftmax(axis)
    x = 3 * RNG.standard_normal(shape).astype(np.float32)
    x64 = x.astype(np.float64)
    shifted = x64 - x64.max(axis=axis, keepdims=True)
    expected = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
    np.testing.assert_allclose(layer.forward(x, training=True), expected, rtol=1e-5, atol=1e-5)
    weights = RNG.standard_normal(shape).astype(np.float32)
    dx = layer.backward(weights)
    check = layers.LogSoftmax(axis)
    check_gradient(lambda v: float((check.forward(v) * weights).sum()), x, dx)
