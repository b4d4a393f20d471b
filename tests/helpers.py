"""Shared test tools: float64 references, tolerances, finite differences."""
import numpy as np

EPS32 = np.finfo(np.float32).eps


def assert_matmul_close(actual, a64, b64, expected, k, scale=4.0):
    """Tolerance for a float32 product of inner size k: scale * k * eps * |A||B|."""
    bound = scale * max(k, 1) * EPS32 * (np.abs(a64) @ np.abs(b64)) + 1e-30
    error = np.abs(actual.astype(np.float64) - expected)
    worst = np.max(error / bound) if error.size else 0.0
    assert worst <= 1.0, f"error exceeds {scale}*k*eps*|A||B| by a factor {worst:.3g}"


def numeric_gradient(f, x, eps=1e-2, indices=None):
    """Central differences of the scalar f at x (float64 arithmetic around a
    float32 kernel). ``indices``: flat positions to probe (all by default)."""
    x = np.array(x, dtype=np.float64)
    flat = x.reshape(-1)
    positions = range(flat.size) if indices is None else indices
    grad = np.zeros_like(flat)
    for i in positions:
        saved = flat[i]
        flat[i] = saved + eps
        up = float(f(x.astype(np.float32)))
        flat[i] = saved - eps
        down = float(f(x.astype(np.float32)))
        flat[i] = saved
        grad[i] = (up - down) / (2 * eps)
    return grad.reshape(x.shape)


def check_gradient(f, x, analytic, eps=1e-2, rtol=2e-2, atol=2e-3, samples=40, seed=0):
    """Compare an analytic gradient with central differences on a sample of entries."""
    rng = np.random.default_rng(seed)
    size = np.asarray(x).size
    indices = rng.choice(size, size=min(samples, size), replace=False) if size else []
    numeric = numeric_gradient(f, x, eps=eps, indices=indices).reshape(-1)[indices]
    analytic = np.asarray(analytic, dtype=np.float64).reshape(-1)[indices]
    np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol)


def peak_bytes_of(run, times=5):
    """The most memory Python allocated at once, beyond what it held before,
    over ``times`` calls of ``run`` (tracemalloc)."""
    import tracemalloc

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(times):
            run()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def class_loss64(scores, target, weight, ignore_index, label_smoothing, reduction, log_probs):
    """(loss, gradient) of PyTorch's cross_entropy (log_probs False) or
    nll_loss (log_probs True, no smoothing) in float64."""
    x = scores.astype(np.float64)
    rows, classes = x.shape
    if log_probs:
        log_p = x
    else:
        shifted = x - x.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    w = np.ones(classes) if weight is None else weight.astype(np.float64)
    kept = target != ignore_index
    safe = np.where(kept, target, 0)
    target_weight = w[safe] * kept
    onehot = np.eye(classes)[safe]
    hard = (1 - label_smoothing) * target_weight
    spread = label_smoothing / classes * kept
    row_loss = -hard * log_p[np.arange(rows), safe] - spread * (log_p * w).sum(axis=1)
    if log_probs:
        grad = -hard[:, None] * onehot
    else:
        p = np.exp(log_p)
        grad = ((hard + spread * w.sum())[:, None] * p - hard[:, None] * onehot
                - spread[:, None] * w[None, :])
    if reduction == "sum":
        return row_loss.sum(), grad
    denominator = target_weight.sum()
    if denominator == 0:
        return np.nan, grad  # only ignored rows, whose gradient is zero
    return row_loss.sum() / denominator, grad / denominator


def elementwise_loss64(name, pred, target, reduction, delta=1.0, pos_weight=None):
    """(loss, gradient) in float64 of the element-wise losses: name is "mse",
    "l1", "huber" or "bce" (with logits, pos_weight along the last axis)."""
    p, t = pred.astype(np.float64), target.astype(np.float64)
    d = p - t
    if name == "mse":
        loss, grad = d ** 2, 2 * d
    elif name == "l1":
        loss, grad = np.abs(d), np.sign(d)
    elif name == "huber":
        loss = np.where(np.abs(d) < delta, 0.5 * d ** 2, delta * (np.abs(d) - 0.5 * delta))
        grad = np.clip(d, -delta, delta)
    else:
        weight = 1.0 if pos_weight is None else pos_weight.astype(np.float64)
        log_weight = 1 + (weight - 1) * t
        softplus = np.maximum(-p, 0) + np.log1p(np.exp(-np.abs(p)))  # log(1 + e^-x)
        loss = (1 - t) * p + log_weight * softplus
        grad = (1 - t) - log_weight / (1 + np.exp(p))
    if reduction == "mean":
        return (loss.mean() if d.size else np.nan), grad / max(d.size, 1)
    return loss.sum(), grad
