"""The vectorised exp/tanh/erf (csrc/vmath.h) on every ISA path, against
float64 over a dense sweep of the whole float32 range."""
import math

import numpy as np
import pytest

from pynn._kernels import core as kernels

TINY = np.finfo(np.float32).tiny
HUGE = float(np.finfo(np.float32).max)
REFERENCES = {
    "exp": np.exp,
    "tanh_math": np.tanh,
    "erf": np.frompyfunc(math.erf, 1, 1),
}


def float32_sweep(step=4093):
    """Every step-th float32 bit pattern (both signs, subnormals included),
    plus the boundaries where results overflow, underflow or saturate."""
    patterns = np.arange(0, 2 ** 32, step, dtype=np.uint64).astype(np.uint32)
    values = patterns.view(np.float32)
    edges = np.array([88.72283, 88.72284, 88.7229, -87.33654, -87.33655, -103.27893,
                      -103.972, -104.0, 3.92, 3.9205, 9.01, 1e-5, 0.0, -0.0, TINY,
                      np.float32(1.4e-45), 1.0, -1.0], dtype=np.float32)
    values = np.concatenate([values[np.isfinite(values)], edges, -edges])
    return values


def run(name, x):
    out = np.empty_like(x)
    return kernels.elementwise(name, x, None, out)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_relative_error_over_float32_range(isa, name):
    x = float32_sweep()
    with np.errstate(over="ignore", under="ignore"):
        expected = REFERENCES[name](x.astype(np.float64)).astype(np.float64)
    actual = run(name, x).astype(np.float64)
    magnitude = np.abs(expected)
    normal = (magnitude >= TINY) & (magnitude <= HUGE)
    relative = np.abs(actual[normal] - expected[normal]) / magnitude[normal]
    worst = int(np.argmax(relative))
    assert relative[worst] <= 2e-7, f"{name}({x[normal][worst]!r}) off by {relative[worst]:.3g}"
    # subnormal results: within one subnormal step (their precision is absolute)
    tiny = magnitude < TINY
    assert np.all(np.abs(actual[tiny] - expected[tiny]) <= 2.0 ** -149)
    # results beyond float32: infinity of the right sign, as numpy's float32 exp
    beyond = magnitude > HUGE
    assert np.all(np.isinf(actual[beyond]))
    assert np.all(np.sign(actual[beyond]) == np.sign(expected[beyond]))


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_special_values_match_numpy(isa, name):
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1000.0, -1000.0], dtype=np.float32)
    with np.errstate(over="ignore"):
        expected = np.array(REFERENCES[name](x.astype(np.float64)), dtype=np.float64).astype(np.float32)
    actual = run(name, x)
    np.testing.assert_array_equal(actual, expected)
    np.testing.assert_array_equal(np.signbit(actual[3:5]), np.signbit(expected[3:5]))


def test_float32_exp_matches_numpy_float32(isa):
    """numpy's own float32 exp, the function users compare with, agrees within
    two ulps (numpy's is itself 2 ulps off near the subnormal boundary, e.g.
    at -86.97646, where this one is correctly rounded)."""
    x = np.linspace(-110.0, 90.0, 100003, dtype=np.float32)
    with np.errstate(over="ignore"):
        expected = np.exp(x)
    np.testing.assert_array_max_ulp(run("exp", x), expected, maxulp=2)


@pytest.mark.parametrize("size", [0, 1, 7, 15, 16, 17, 63, 1000, 70001])
def test_every_length_and_in_place(isa, size):
    rng = np.random.default_rng(size)
    x = rng.standard_normal(size, dtype=np.float32) * 4
    expected = np.tanh(x.astype(np.float64))
    copy = x.copy()
    kernels.elementwise("tanh_math", copy, None, copy)
    np.testing.assert_allclose(copy, expected, rtol=2e-7, atol=0)


def test_same_result_on_any_thread_count(set_threads):
    x = np.random.default_rng(1).standard_normal(300_001, dtype=np.float32) * 10
    results = []
    for threads in (1, 2):
        set_threads(threads)
        results.append(run("erf", x))
    np.testing.assert_array_equal(results[0], results[1])
