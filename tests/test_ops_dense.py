"""pynn.ops.linear / linear_backward against float64 references, finite
differences and PyTorch; the bias-gradient kernels on their own."""
import numpy as np
import pytest

from pynn import ops
from pynn._kernels import core as kernels
from tests.helpers import EPS32, assert_matmul_close, check_gradient


def _random(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


SHAPES = [(1, 1, 1), (1, 784, 256), (7, 13, 5), (0, 6, 4), (37, 29, 61), (128, 97, 300)]


@pytest.mark.parametrize("batch,fan_in,fan_out", SHAPES)
@pytest.mark.parametrize("activation", [None, "relu"])
def test_linear_forward_against_float64(isa, batch, fan_in, fan_out, activation):
    x, w, b = _random((batch, fan_in), 1), _random((fan_out, fan_in), 2), _random(fan_out, 3)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    y = ops.linear(x, w, b, activation=activation)
    assert y.shape == (batch, fan_out) and y.dtype == np.float32
    expected = x64 @ w64.T + b
    if activation == "relu":
        expected = np.maximum(expected, 0)
        assert np.all(y >= 0)
    # ReLU is 1-Lipschitz, so the product's k·eps bound holds after it too
    bound = 8 * max(fan_in, 1) * EPS32 * (np.abs(x64) @ np.abs(w64.T) + np.abs(b)) + 1e-30
    assert np.all(np.abs(y - expected) <= bound)


@pytest.mark.parametrize("batch,fan_in,fan_out", SHAPES)
def test_linear_backward_against_float64(isa, batch, fan_in, fan_out):
    x, w, dy = _random((batch, fan_in), 4), _random((fan_out, fan_in), 5), _random((batch, fan_out), 6)
    dx, dw, db = ops.linear_backward(dy, x, w)
    dy64, x64, w64 = dy.astype(np.float64), x.astype(np.float64), w.astype(np.float64)
    assert_matmul_close(dx, dy64, w64, dy64 @ w64, fan_out, scale=8.0)
    assert_matmul_close(dw, dy64.T, x64, dy64.T @ x64, batch, scale=8.0)
    bound = 4 * max(batch, 1) * 1.2e-7 * np.abs(dy64).sum(axis=0) + 1e-30
    assert np.all(np.abs(db - dy64.sum(axis=0)) <= bound)


def test_linear_any_leading_axes_and_no_bias():
    x, w = _random((2, 3, 5), 7), _random((4, 5), 8)
    np.testing.assert_allclose(ops.linear(x, w), x @ w.T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ops.linear(x[0, 0], w), x[0, 0] @ w.T, rtol=1e-5, atol=1e-6)
    dy = _random((2, 3, 4), 9)
    dx, dw, db = ops.linear_backward(dy, x, w)
    np.testing.assert_allclose(dx, dy @ w, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, dy.reshape(-1, 4).T @ x.reshape(-1, 5), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(db, dy.reshape(-1, 4).sum(0), rtol=1e-5, atol=1e-5)


def test_linear_out_and_converted_inputs():
    x, w, b = _random((6, 5), 10), _random((3, 5), 11), _random(3, 12)
    out = np.full((6, 3), np.nan, np.float32)
    assert ops.linear(x, w, b, out=out) is out
    np.testing.assert_allclose(out, x @ w.T + b, rtol=1e-5, atol=1e-6)
    converted = ops.linear(x.astype(np.float64), np.asfortranarray(w), b.astype(np.float64))
    np.testing.assert_array_equal(converted, out)


def test_linear_backward_skips_what_is_not_wanted():
    x, w, dy = _random((4, 5), 13), _random((3, 5), 14), _random((4, 3), 15)
    dx, dw, db = ops.linear_backward(dy, x, w, input_grad=False)
    assert dx is None and dw is not None and db is not None
    dx, dw, db = ops.linear_backward(dy, x, w, weight_grad=False)
    assert dx is not None and dw is None and db is None
    buffers = (np.empty((4, 5), np.float32), np.empty((3, 5), np.float32), np.empty(3, np.float32))
    assert all(a is b for a, b in zip(ops.linear_backward(dy, x, w, out=buffers), buffers))


def test_linear_gradients_match_finite_differences():
    x, w, b = _random((3, 4), 16), _random((5, 4), 17), _random(5, 18)
    weights = _random((3, 5), 19)

    def loss(x_, w_, b_):
        return float(np.sum(ops.linear(x_, w_, b_).astype(np.float64) * weights))

    dx, dw, db = ops.linear_backward(weights, x, w)
    check_gradient(lambda v: loss(v, w, b), x, dx)
    check_gradient(lambda v: loss(x, v, b), w, dw)
    check_gradient(lambda v: loss(x, w, v), b, db)


def test_linear_torch_parity():
    torch = pytest.importorskip("torch")
    x, w, b, dy = _random((9, 7), 20), _random((4, 7), 21), _random(4, 22), _random((9, 4), 23)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.linear(tx, tw, tb)
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(ops.linear(x, w, b), ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(ops.linear_backward(dy, x, w), (tx.grad, tw.grad, tb.grad)):
        np.testing.assert_allclose(mine, theirs.numpy(), rtol=1e-5, atol=1e-5)


def test_linear_bad_inputs():
    x, w, b = _random((4, 5), 24), _random((3, 5), 25), _random(3, 26)
    with pytest.raises(ValueError, match="linear: x must end in in_features=5"):
        ops.linear(_random((4, 6), 1), w, b)
    with pytest.raises(ValueError, match=r"linear: bias must have shape \(3,\)"):
        ops.linear(x, w, _random(4, 1))
    with pytest.raises(ValueError, match="weight must be 2-D"):
        ops.linear(x, _random(5, 1))
    with pytest.raises(TypeError, match="linear: x must be a floating-point"):
        ops.linear(np.ones((4, 5), np.int32), w)
    with pytest.raises(TypeError, match="linear: x"):
        ops.linear(np.ones((4, 5), np.complex64), w)
    with pytest.raises(TypeError, match="linear: x"):
        ops.linear(np.array([[object()] * 5]), w)
    with pytest.raises(ValueError, match="activation"):
        ops.linear(x, w, b, activation="gelu")
    with pytest.raises(ValueError, match=r"out must have shape \(4, 3\)"):
        ops.linear(x, w, b, out=np.empty((3, 4), np.float32))
    with pytest.raises(ValueError, match=r"linear_backward: dy must have shape \(4, 3\)"):
        ops.linear_backward(_random((4, 2), 1), x, w)


def _column_sum_bound(values64, rows):
    """float32 summation of rows terms per column: rows·eps·Σ|terms| (and a floor for 0)."""
    return max(rows, 1) * EPS32 * np.abs(values64).sum(axis=0) + 1e-30


# columns around the 8- and 16-float vector widths and past a block, primes,
# one row, no rows; 400 x 600 is large enough for a team
@pytest.mark.parametrize("rows,cols", [(1, 1), (5, 3), (1, 17), (3, 8), (9, 16), (13, 31),
                                       (129, 300), (0, 7), (7, 1031), (400, 600)])
def test_column_sums_and_relu_mask(isa, rows, cols, set_threads):
    dy, y = _random((rows, cols), 27), np.maximum(_random((rows, cols), 28), 0)
    dy64 = dy.astype(np.float64)
    db = np.full(cols, np.nan, np.float32)
    kernels.column_sums(dy, db)
    assert np.all(np.abs(db - dy64.sum(axis=0)) <= _column_sum_bound(dy64, rows))
    dz = np.full_like(dy, np.nan)
    db = np.full(cols, np.nan, np.float32)
    kernels.relu_mask_column_sums(dy, y, dz, db)
    masked = np.where(y > 0, dy, 0)
    np.testing.assert_array_equal(dz, masked)
    assert np.all(np.abs(db - masked.astype(np.float64).sum(axis=0))
                  <= _column_sum_bound(masked.astype(np.float64), rows))
    # the mask alone, and in place over dy
    dz = np.full_like(dy, np.nan)
    np.testing.assert_array_equal(kernels.relu_mask_column_sums(dy, y, dz, None), masked)
    in_place = dy.copy()
    np.testing.assert_array_equal(kernels.relu_mask_column_sums(in_place, y, in_place, None), masked)
    sums = []
    for threads in (1, 2):
        set_threads(threads)
        sums.append(kernels.column_sums(dy, np.empty(cols, np.float32)).copy())
    np.testing.assert_array_equal(sums[0], sums[1])


def test_linear_backward_refuses_outputs_overlapping_inputs():
    x, w, dy = _random((4, 5), 29), _random((3, 5), 30), _random((4, 3), 31)
    for out in [(x, None, None), (None, w, None), (None, None, dy[0])]:
        with pytest.raises(ValueError, match="overlap"):
            ops.linear_backward(dy, x, w, out=out)
    with pytest.raises(TypeError, match=r"linear_backward \(dweight\): out must have dtype float32"):
        ops.linear_backward(dy, x, w, out=(None, np.empty((3, 5)), None))


@pytest.mark.parametrize("count", [0, 1, 7, 1000])
def test_scale_in_place_matches_float64(count):
    from pynn._kernels import core as kernels

    x = np.random.default_rng(count).standard_normal(count).astype(np.float32)
    expected = x.astype(np.float64) * np.float32(0.37)
    assert kernels.scale(x, 0.37) is x
    np.testing.assert_allclose(x, expected, rtol=1e-7, atol=0)
    with pytest.raises(TypeError, match="x must be"):
        kernels.scale(x.astype(np.float64), 2.0)
