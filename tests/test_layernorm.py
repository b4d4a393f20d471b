"""pynn.ops.layer_norm, its backward and the LayerNorm layer against a float64
reference written here, finite differences and torch; the same bits on any
thread count."""
import json

import numpy as np
import pytest

from pynn import ops
from pynn.layers import LayerNorm
from tests.helpers import check_gradient


def _axes(x, normalized_shape):
    return tuple(range(x.ndim - len(normalized_shape), x.ndim))


def reference(x, normalized_shape, weight, bias, eps):
    x = x.astype(np.float64)
    if x.size == 0:
        return x, x
    axes = _axes(x, normalized_shape)
    centred = x - x.mean(axis=axes, keepdims=True)
    xhat = centred / np.sqrt((centred ** 2).mean(axis=axes, keepdims=True) + eps)
    y = xhat * (1.0 if weight is None else weight) + (0.0 if bias is None else bias)
    return y, xhat


def reference_backward(dy, x, normalized_shape, weight, eps):
    dy = dy.astype(np.float64)
    if x.size == 0:
        return dy, np.zeros(normalized_shape), np.zeros(normalized_shape)
    axes = _axes(x, normalized_shape)
    _, xhat = reference(x, normalized_shape, None, None, eps)
    x64 = x.astype(np.float64)
    invstd = 1.0 / np.sqrt(x64.var(axis=axes, keepdims=True) + eps)
    g = dy * (1.0 if weight is None else weight)
    dx = invstd * (g - g.mean(axis=axes, keepdims=True)
                   - xhat * (g * xhat).mean(axis=axes, keepdims=True))
    leading = tuple(range(x.ndim - len(normalized_shape)))
    return dx, (dy * xhat).sum(axis=leading), dy.sum(axis=leading)


def _random(shape, seed, scale=1.0, offset=0.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * scale + offset).astype(np.float32)


# (x shape, normalized_shape)
CASES = [((4, 10), (10,)), ((2, 3, 17), (17,)), ((2, 3, 4, 5), (4, 5)), ((1,), (1,)),
         ((0, 8), (8,)), ((3, 1031), (1031,)), ((5, 16), 16), ((2, 3, 0), (0,)),
         ((7, 33, 8), (33, 8)), ((40, 15), (15,)), ((3, 2, 6), (3, 2, 6)), ((600, 3), (3,))]
AFFINE = ["both", "weight", "bias", "none"]


def _parameters(normalized_shape, affine, seed):
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
    weight = _random(shape, seed, 0.5, 1.0) if affine in ("both", "weight") else None
    bias = _random(shape, seed + 1) if affine in ("both", "bias") else None
    return shape, weight, bias


@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("shape, normalized_shape", CASES)
def test_forward_and_backward_against_float64(isa, shape, normalized_shape, affine):
    ns, weight, bias = _parameters(normalized_shape, affine, 1)
    x = _random(shape, 0, scale=3.0, offset=2.0)
    y = ops.layer_norm(x, normalized_shape, weight, bias, eps=1e-5)
    expected, _ = reference(x, ns, weight, bias, 1e-5)
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    dy = _random(shape, 2)
    dx, dweight, dbias = ops.layer_norm_backward(dy, x, normalized_shape, weight, eps=1e-5,
                                                 bias=bias)
    want_dx, want_dweight, want_dbias = reference_backward(dy, x, ns, weight, 1e-5)
    scale = np.abs(dy).max(initial=1.0) * (1.0 if weight is None else np.abs(weight).max(initial=1))
    np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-5 * scale)
    assert (dweight is None) == (weight is None) and (dbias is None) == (bias is None)
    rows = x.size // max(int(np.prod(ns)), 1)
    if weight is not None:
        assert dweight.shape == ns
        np.testing.assert_allclose(dweight, want_dweight, rtol=1e-5, atol=1e-5 * max(rows, 1) ** 0.5)
    if bias is not None:
        np.testing.assert_allclose(dbias, want_dbias, rtol=1e-5, atol=1e-6 * max(rows, 1) ** 0.5)


def test_rows_far_from_zero_keep_their_variance(isa):
    """Two passes over each row: a mean of 1e4 with a spread of 1 loses nothing."""
    x = _random((6, 300), 3, scale=1.0, offset=1e4)
    np.testing.assert_allclose(ops.layer_norm(x, 300), reference(x, (300,), None, None, 1e-5)[0],
                               rtol=1e-5, atol=2e-5)
    dy = _random((6, 300), 4)
    np.testing.assert_allclose(ops.layer_norm_backward(dy, x, 300)[0],
                               reference_backward(dy, x, (300,), None, 1e-5)[0], rtol=1e-4, atol=1e-4)


def test_constant_rows_and_special_values():
    x = np.full((2, 5), 7.0, np.float32)
    np.testing.assert_array_equal(ops.layer_norm(x, 5), np.zeros((2, 5)))
    np.testing.assert_array_equal(ops.layer_norm(x, 5, bias=np.arange(5, dtype=np.float32)),
                                  np.tile(np.arange(5), (2, 1)))
    x = _random((3, 4), 5)
    x[1, 2] = np.nan
    y = ops.layer_norm(x, 4)
    assert np.isnan(y[1]).all() and np.isfinite(y[[0, 2]]).all()


@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("shape, normalized_shape", [((3, 7), (7,)), ((2, 3, 4), (3, 4))])
def test_gradients_match_finite_differences(shape, normalized_shape, affine):
    ns, weight, bias = _parameters(normalized_shape, affine, 6)
    x = _random(shape, 7, scale=2.0)
    probe = _random(shape, 8)

    def loss(x=x, weight=weight, bias=bias):
        return float(np.sum(ops.layer_norm(x, ns, weight, bias).astype(np.float64) * probe))

    dx, dweight, dbias = ops.layer_norm_backward(probe, x, ns, weight, bias=bias)
    check_gradient(lambda v: loss(x=v), x, dx, eps=1e-2)
    if weight is not None:
        check_gradient(lambda v: loss(weight=v), weight, dweight, eps=1e-2)
    if bias is not None:
        check_gradient(lambda v: loss(bias=v), bias, dbias, eps=1e-2)


TORCH_CASES = [((4, 10), (10,), 1e-5, True, True), ((2, 3, 4, 5), (4, 5), 1e-5, True, True),
               ((3, 6, 9), (9,), 1e-3, True, False), ((5, 12), (12,), 0.1, False, True),
               ((2, 5, 3, 2), (5, 3, 2), 1e-5, True, True), ((64, 257), (257,), 1e-6, True, True),
               ((2, 7, 6), (7, 6), 1e-5, False, False)]


@pytest.mark.parametrize("shape, normalized_shape, eps, affine, with_bias", TORCH_CASES)
def test_torch_parity(shape, normalized_shape, eps, affine, with_bias):
    torch = pytest.importorskip("torch")
    module = torch.nn.LayerNorm(normalized_shape, eps=eps, elementwise_affine=affine,
                                bias=with_bias)
    layer = LayerNorm(normalized_shape, eps=eps, elementwise_affine=affine, bias=with_bias)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            parameter.copy_(torch.tensor(_random(parameter.shape, 9, 0.5, 1.0)))
    for name, value in module.state_dict().items():
        layer.params[name][...] = value.numpy()
    assert sorted(layer.params) == sorted(k for k, _ in module.named_parameters())
    x, dy = _random(shape, 10, 2.0, 1.0), _random(shape, 11)
    tx = torch.tensor(x, requires_grad=True)
    ty = module(tx)
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(layer.forward(x, training=True), ty.detach().numpy(),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.backward(dy), tx.grad.numpy(), rtol=1e-4, atol=1e-5)
    for name, parameter in module.named_parameters():
        np.testing.assert_allclose(layer.grads[name], parameter.grad.numpy(), rtol=1e-4, atol=1e-4)
    # the ops, as torch.nn.functional
    weight = module.weight.detach().numpy() if affine else None
    bias = module.bias.detach().numpy() if affine and with_bias else None
    np.testing.assert_allclose(ops.layer_norm(x, normalized_shape, weight, bias, eps),
                               ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    dx, dweight, dbias = ops.layer_norm_backward(dy, x, normalized_shape, weight, eps, bias=bias)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-4, atol=1e-5)
    if weight is not None:
        np.testing.assert_allclose(dweight, module.weight.grad.numpy(), rtol=1e-4, atol=1e-4)
    if bias is not None:
        np.testing.assert_allclose(dbias, module.bias.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape, normalized_shape", [((1000, 300), 300), ((4, 333, 64), (64,)),
                                                     ((3, 70000), 70000)])
def test_same_bits_on_one_and_two_threads(isa, set_threads, shape, normalized_shape):
    ns, weight, bias = _parameters(normalized_shape, "both", 12)
    x, dy = _random(shape, 13, 2.0, 1.0), _random(shape, 14)
    results = []
    for threads in (1, 2):
        set_threads(threads)
        results.append((ops.layer_norm(x, ns, weight, bias),)
                       + ops.layer_norm_backward(dy, x, ns, weight, bias=bias))
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("affine", ["both", "weight", "none"])
def test_the_layer_reuses_the_forward_statistics_bit_for_bit(isa, affine):
    """LayerNorm keeps each row's mean and 1/σ from its training forward; its
    backward gives the bits of the op, which recomputes them."""
    ns, weight, bias = _parameters((48,), affine, 21)
    x, dy = _random((5, 7, 48), 22, 3.0, 100.0), _random((5, 7, 48), 23)
    layer = LayerNorm(48, elementwise_affine=weight is not None, bias=bias is not None)
    for key, value in (("weight", weight), ("bias", bias)):
        if value is not None:
            layer.params[key][...] = value
    np.testing.assert_array_equal(layer.forward(x, training=True), ops.layer_norm(x, ns, weight, bias))
    dx = layer.backward(dy)
    expected = ops.layer_norm_backward(dy, x, ns, weight, bias=bias)
    np.testing.assert_array_equal(dx, expected[0])
    for key, value in zip(("weight", "bias"), expected[1:]):
        if value is not None:
            np.testing.assert_array_equal(layer.grads[key], value)


def test_layer_parameters_config_and_frozen_backward():
    layer = LayerNorm([3, 4], eps=1e-3)
    assert layer.params["weight"].shape == (3, 4) and np.all(layer.params["weight"] == 1)
    assert layer.params["bias"].shape == (3, 4) and np.all(layer.params["bias"] == 0)
    config = layer.config()
    assert config == {"normalized_shape": [3, 4], "eps": 1e-3, "elementwise_affine": True,
                      "bias": True}
    assert LayerNorm(**json.loads(json.dumps(config))).config() == config
    assert LayerNorm(5, bias=False).params.keys() == {"weight"}
    assert LayerNorm(5, elementwise_affine=False).params == {}
    assert LayerNorm(np.int64(5)).config()["normalized_shape"] == [5]
    x, dy = _random((2, 3, 4), 15), _random((2, 3, 4), 16)
    layer.forward(x, training=True)
    dx = layer.backward(dy).copy()
    grads = {k: v.copy() for k, v in layer.grads.items()}
    layer.grads["weight"][...] = 7.0
    layer.trainable = False
    np.testing.assert_array_equal(layer.backward(dy), dx)
    assert np.all(layer.grads["weight"] == 7.0)  # frozen: left alone
    layer.trainable = True
    assert layer.backward(dy, input_grad=False) is None
    np.testing.assert_array_equal(layer.grads["weight"], grads["weight"])
    np.testing.assert_array_equal(layer.infer(x, np.empty_like(x)), layer.forward(x))


def test_bad_arguments_are_refused():
    x = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"layer_norm: the trailing axes of x must be normalized_shape \(4,\)"):
        ops.layer_norm(x, 4)
    with pytest.raises(ValueError, match="at least one axis"):
        ops.layer_norm(x, ())
    with pytest.raises(TypeError, match="normalized_shape"):
        ops.layer_norm(x, 3.0)
    with pytest.raises(ValueError, match=r"weight must have normalized_shape \(3,\)"):
        ops.layer_norm(x, 3, weight=np.ones(4, np.float32))
    with pytest.raises(ValueError, match="eps"):
        ops.layer_norm(x, 3, eps=-1.0)
    with pytest.raises(TypeError, match="layer_norm: x"):
        ops.layer_norm(np.ones((2, 3), np.int64), 3)
    with pytest.raises(ValueError, match="must not overlap"):
        ops.layer_norm(x, 3, out=x)
    with pytest.raises(ValueError, match="layer_norm_backward: dy and x"):
        ops.layer_norm_backward(np.ones((3, 2), np.float32), x, 2)
    with pytest.raises(ValueError, match="LayerNorm: the trailing axes"):
        LayerNorm(4).forward(x)
    with pytest.raises(TypeError, match="LayerNorm: elementwise_affine"):
        LayerNorm(4, elementwise_affine="yes")
    with pytest.raises(ValueError, match="LayerNorm: normalized_shape must be >= 0"):
        LayerNorm(-1)
