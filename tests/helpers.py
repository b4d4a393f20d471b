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
