"""pynn.ops losses (cross_entropy, mse, binary_cross_entropy_with_logits):
values and gradients against float64 references, finite differences and PyTorch."""
import numpy as np
import pytest

from pynn import ops
from pynn._kernels import core as kernels
from tests.helpers import check_gradient


def _logits(shape, seed=0, scale=3.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _cross_entropy64(logits, target):
    x = logits.astype(np.float64)
    shifted = x - x.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = len(target)
    onehot = np.zeros_like(x)
    onehot[np.arange(n), target] = 1
    return -log_p[np.arange(n), target].mean(), (np.exp(log_p) - onehot) / n


# classes around the 8- and 16-float vector widths and primes; 600 x 129 takes
# several row blocks on a team
@pytest.mark.parametrize("n,classes", [(1, 1), (1, 10), (7, 3), (5, 8), (3, 16), (11, 17),
                                       (13, 97), (128, 10), (2, 1031), (600, 129)])
@pytest.mark.parametrize("dtype", [np.int64, np.int32])
def test_cross_entropy_against_float64(isa, n, classes, dtype):
    logits = _logits((n, classes), seed=n)
    target = np.random.default_rng(classes).integers(0, classes, n).astype(dtype)
    loss, grad = ops.cross_entropy(logits, target)
    expected_loss, expected_grad = _cross_entropy64(logits, target)
    assert isinstance(loss, float)
    assert grad.dtype == np.float32 and grad.shape == logits.shape
    assert abs(loss - expected_loss) <= 1e-6 * max(1.0, abs(expected_loss))
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-6, atol=1e-7 / n)
    # the loss alone (no gradient rows written) sums the same terms
    alone = kernels.cross_entropy(logits, target.astype(np.int64), None)
    assert abs(alone - expected_loss) <= 1e-6 * max(1.0, abs(expected_loss))


def test_cross_entropy_is_stable_at_huge_logits(isa):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [1e4, 1e4, 1e4]], dtype=np.float32)
    target = np.array([1, 2, 0])
    loss, grad = ops.cross_entropy(logits, target)
    expected_loss, expected_grad = _cross_entropy64(logits, target)
    assert np.isfinite(loss) and abs(loss - expected_loss) <= 1e-6 * expected_loss
    np.testing.assert_allclose(grad, expected_grad, atol=1e-7)


def test_cross_entropy_gradient_matches_finite_differences():
    logits = _logits((5, 4), seed=2)
    target = np.array([0, 3, 1, 1, 2])
    _, grad = ops.cross_entropy(logits, target)
    check_gradient(lambda v: ops.cross_entropy(v, target)[0], logits, grad, eps=1e-2)


def test_cross_entropy_out_and_empty_batch():
    logits = _logits((4, 5))
    target = np.array([0, 1, 2, 4])
    out = np.full((4, 5), np.nan, np.float32)
    loss, grad = ops.cross_entropy(logits, target, out=out)
    assert grad is out and np.all(np.isfinite(out))
    loss, grad = ops.cross_entropy(np.zeros((0, 5), np.float32), np.zeros(0, np.int64))
    assert np.isnan(loss) and grad.shape == (0, 5)


def test_cross_entropy_same_on_any_thread_count(set_threads):
    logits = _logits((2000, 40), seed=3)
    target = np.random.default_rng(4).integers(0, 40, 2000)
    results = []
    for threads in (1, 2):
        set_threads(threads)
        results.append(ops.cross_entropy(logits, target))
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(results[0][1], results[1][1])


@pytest.mark.parametrize("bad", [-1, 5, 2 ** 40])
def test_cross_entropy_target_out_of_range_names_the_value(bad):
    target = np.array([0, bad, 1])
    with pytest.raises(IndexError, match=f"class {bad}"):
        ops.cross_entropy(_logits((3, 5)), target)


def test_cross_entropy_bad_inputs():
    logits = _logits((3, 5))
    with pytest.raises(TypeError, match="cross_entropy: target must be an integer"):
        ops.cross_entropy(logits, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(TypeError, match="cross_entropy: target"):
        ops.cross_entropy(logits, np.array([np.nan, 1.0, 2.0]))
    with pytest.raises(ValueError, match="one class index per row"):
        ops.cross_entropy(logits, np.array([0, 1]))
    with pytest.raises(ValueError, match="logits must be 2-D"):
        ops.cross_entropy(logits[0], np.array([0]))
    with pytest.raises(TypeError, match="logits must be a floating-point"):
        ops.cross_entropy(np.ones((3, 5), np.int64), np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="logits"):
        ops.cross_entropy(np.ones((3, 5), np.complex64), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="target must be 1-D"):
        ops.cross_entropy(logits, np.array([[0, 1, 2]]))


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 3, 17)])
def test_mse_against_float64(shape):
    pred, target = _logits(shape, 1), _logits(shape, 2)
    loss, grad = ops.mse(pred, target)
    diff = pred.astype(np.float64) - target
    assert abs(loss - np.mean(diff ** 2)) <= 1e-12 * max(1, np.mean(diff ** 2))
    np.testing.assert_allclose(grad, 2 * diff / diff.size, rtol=2e-7, atol=1e-9)
    check_gradient(lambda v: ops.mse(v, target)[0], pred, grad, eps=1e-2)


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 3, 17)])
def test_bce_with_logits_against_float64(shape):
    logits = _logits(shape, 1, scale=5.0)
    target = np.random.default_rng(2).random(shape).astype(np.float32)
    loss, grad = ops.binary_cross_entropy_with_logits(logits, target)
    x, t = logits.astype(np.float64), target.astype(np.float64)
    expected = np.mean(np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x))))
    assert abs(loss - expected) <= 1e-12 * max(1, expected)
    np.testing.assert_allclose(grad, (1 / (1 + np.exp(-x)) - t) / x.size, rtol=1e-6, atol=1e-9)
    check_gradient(lambda v: ops.binary_cross_entropy_with_logits(v, target)[0], logits, grad,
                   eps=1e-2)


def test_bce_is_stable_at_huge_logits():
    logits = np.array([1e4, -1e4, 1e4, -1e4], np.float32)
    loss, grad = ops.binary_cross_entropy_with_logits(logits, np.array([1, 0, 0, 1], np.float32))
    assert loss == pytest.approx(2e4 / 4)
    np.testing.assert_allclose(grad, [0, 0, 0.25, -0.25])


@pytest.mark.parametrize("op", [ops.mse, ops.binary_cross_entropy_with_logits])
def test_regression_losses_refuse_bad_targets(op):
    pred = _logits((3, 2))
    with pytest.raises(ValueError, match="NaN"):
        op(pred, np.array([[0, 1], [np.nan, 0], [1, 1]], np.float32))
    with pytest.raises(ValueError, match="shape"):
        op(pred, np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match=op.__name__):
        op(pred, np.zeros((3, 2), np.int64))
    with pytest.raises(TypeError, match=op.__name__):
        op(np.array([["a", "b"]]), np.zeros((1, 2), np.float32))


def test_torch_parity():
    torch = pytest.importorskip("torch")
    logits = _logits((9, 6), seed=5)
    target = np.random.default_rng(6).integers(0, 6, 9)
    probabilities = np.random.default_rng(7).random((9, 6)).astype(np.float32)
    for op, torch_fn, y in [
        (ops.cross_entropy, lambda t: torch.nn.functional.cross_entropy(t, torch.tensor(target)), target),
        (ops.mse, lambda t: torch.nn.functional.mse_loss(t, torch.tensor(probabilities)), probabilities),
        (ops.binary_cross_entropy_with_logits,
         lambda t: torch.nn.functional.binary_cross_entropy_with_logits(t, torch.tensor(probabilities)),
         probabilities),
    ]:
        t = torch.tensor(logits, requires_grad=True)
        expected = torch_fn(t)
        expected.backward()
        loss, grad = op(logits, y)
        assert loss == pytest.approx(expected.item(), rel=1e-6)
        np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("op,target", [
    (ops.nll_loss, np.array([0, 3, -100, 1])),
    (ops.l1_loss, _logits((4, 5), 9)),
    (ops.huber_loss, _logits((4, 5), 9)),
])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_new_losses_write_into_out(op, target, reduction):
    scores = _logits((4, 5), 8)
    out = np.full((4, 5), np.nan, np.float32)
    loss, grad = op(scores, target, reduction=reduction, out=out)
    fresh_loss, fresh_grad = op(scores, target, reduction=reduction)
    assert grad is out and loss == fresh_loss
    np.testing.assert_array_equal(out, fresh_grad)
    with pytest.raises(ValueError, match=f"{op.__name__}: out must have shape"):
        op(scores, target, out=np.empty((5, 4), np.float32))


def test_cross_entropy_options_same_on_any_thread_count(set_threads):
    logits = _logits((2000, 40), seed=3)
    target = np.random.default_rng(4).integers(0, 40, 2000)
    target[::7] = 5
    weight = np.random.default_rng(5).random(40).astype(np.float32)
    results = []
    for threads in (1, 2):
        set_threads(threads)
        results.append(ops.cross_entropy(logits, target, weight=weight, ignore_index=5,
                                         label_smoothing=0.2))
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(results[0][1], results[1][1])
    assert not results[0][1][target == 5].any()
