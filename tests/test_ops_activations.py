"""pynn.ops activations and their backward passes against float64 references,
finite differences and (where installed) PyTorch."""
import math

import numpy as np
import pytest

from pynn import ops
from pynn._kernels import core as kernels
from tests.helpers import EPS32, check_gradient

SHAPES = [(1,), (7,), (16,), (3, 5), (0, 4), (2, 3, 17), (65,), (1031,)]
_erf = np.vectorize(math.erf, otypes=[np.float64])


def _phi(x):
    return 0.5 * (1.0 + _erf(x / math.sqrt(2.0)))


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _gelu_tanh_parts(x):
    u = math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)
    return np.tanh(u), math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * x ** 2)


# name -> (op, kwargs, forward reference, derivative reference dy/dx as a function of x)
ELEMENTWISE = {
    "relu": (ops.relu, ops.relu_backward, {}, lambda x: np.maximum(x, 0), lambda x: (x > 0) * 1.0),
    "leaky_relu": (ops.leaky_relu, ops.leaky_relu_backward, {"negative_slope": 0.2},
                   lambda x: np.where(x > 0, x, 0.2 * x), lambda x: np.where(x > 0, 1.0, 0.2)),
    "sigmoid": (ops.sigmoid, ops.sigmoid_backward, {}, lambda x: 1 / (1 + np.exp(-x)),
                lambda x: np.exp(-x) / (1 + np.exp(-x)) ** 2),
    "tanh": (ops.tanh, ops.tanh_backward, {}, np.tanh, lambda x: 1 - np.tanh(x) ** 2),
    "gelu": (ops.gelu, ops.gelu_backward, {}, lambda x: x * _phi(x),
             lambda x: _phi(x) + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi)),
    "gelu_tanh": (ops.gelu, ops.gelu_backward, {"approximate": "tanh"},
                  lambda x: 0.5 * x * (1 + _gelu_tanh_parts(x)[0]),
                  lambda x: (0.5 * (1 + _gelu_tanh_parts(x)[0])
                             + 0.5 * x * (1 - _gelu_tanh_parts(x)[0] ** 2) * _gelu_tanh_parts(x)[1])),
    "silu": (ops.silu, ops.silu_backward, {}, lambda x: x / (1 + np.exp(-x)),
             lambda x: _sigmoid(x) * (1 + x * (1 - _sigmoid(x)))),
    "hardswish": (ops.hardswish, ops.hardswish_backward, {}, lambda x: x * np.clip(x + 3, 0, 6) / 6,
                  lambda x: np.where(x <= -3, 0.0, np.where(x < 3, x / 3 + 0.5, 1.0))),
    "hardsigmoid": (ops.hardsigmoid, ops.hardsigmoid_backward, {}, lambda x: np.clip(x + 3, 0, 6) / 6,
                    lambda x: np.where((x > -3) & (x < 3), 1 / 6, 0.0)),
    "relu6": (ops.relu6, ops.relu6_backward, {}, lambda x: np.clip(x, 0, 6),
              lambda x: np.where((x > 0) & (x < 6), 1.0, 0.0)),
}
NEW = ("silu", "hardswish", "hardsigmoid", "relu6")
# where the piecewise ones change formula: finite differences stay clear of them
KINKS = {"relu": [0.0], "leaky_relu": [0.0], "hardswish": [-3.0, 3.0],
         "hardsigmoid": [-3.0, 3.0], "relu6": [0.0, 6.0]}
# backward takes the forward output for these, the input for the rest
TAKES_OUTPUT = {"sigmoid", "tanh"}


def _inputs(shape, seed=0, scale=3.0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * scale


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_backward_against_float64(isa, name, shape):
    forward, backward, kwargs, reference, derivative = ELEMENTWISE[name]
    x = _inputs(shape)
    x64 = x.astype(np.float64)
    y = forward(x, **kwargs)
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, reference(x64), rtol=4 * EPS32, atol=4 * EPS32)
    dy = _inputs(shape, seed=1, scale=1.0)
    a = y if name in TAKES_OUTPUT else x
    dx = backward(dy, a, **kwargs)
    np.testing.assert_allclose(dx, dy * derivative(x64), rtol=16 * EPS32, atol=16 * EPS32)


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_backward_matches_finite_differences(name):
    forward, backward, kwargs, _, _ = ELEMENTWISE[name]
    x = _inputs((4, 6), seed=3, scale=2.0)
    for kink in KINKS.get(name, []):
        x[np.abs(x - kink) < 0.05] = kink + 0.5
    weights = _inputs((4, 6), seed=4, scale=1.0)
    y = forward(x, **kwargs)
    a = y if name in TAKES_OUTPUT else x
    analytic = backward(weights, a, **kwargs)
    check_gradient(lambda v: float(np.sum(forward(v, **kwargs).astype(np.float64) * weights)),
                   x, analytic, eps=1e-2)


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("n", [0, 1, 15, 17, 1000003])
def test_new_activations_at_awkward_sizes(isa, name, n):
    """Vector bodies, masked or scalar tails and the threaded, streaming sizes
    against float64, backward in place over dy as well."""
    forward, backward, kwargs, reference, derivative = ELEMENTWISE[name]
    x = _inputs(n, seed=n)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(forward(x), reference(x64), rtol=4 * EPS32, atol=4 * EPS32)
    dy = _inputs(n, seed=n + 1, scale=1.0)
    expected = dy * derivative(x64)
    np.testing.assert_allclose(backward(dy, x), expected, rtol=16 * EPS32, atol=16 * EPS32)
    np.testing.assert_allclose(backward(dy, x, out=dy), expected, rtol=16 * EPS32, atol=16 * EPS32)


# PyTorch's values at the kinks, at NaN and at the infinities (its CPU kernels'
# comparisons decide which side a kink takes, and what NaN gives backward)
KINK_INPUTS = [-3.0, 3.0, 0.0, 6.0, np.nan, np.inf, -np.inf]
KINK_VALUES = {
    "silu": ([-3 / (1 + math.exp(3)), 3 / (1 + math.exp(-3)), 0.0, 6 / (1 + math.exp(-6)),
              np.nan, np.inf, np.nan],
             [None, None, 0.5, None, np.nan, np.nan, np.nan]),
    "hardswish": ([0.0, 3.0, 0.0, 6.0, np.nan, np.inf, np.nan],
                  [0.0, 1.0, 0.5, 1.0, 1.0, 1.0, 0.0]),
    "hardsigmoid": ([0.0, 1.0, 0.5, 1.0, np.nan, 1.0, 0.0],
                    [0.0, 0.0, 1 / 6, 0.0, 0.0, 0.0, 0.0]),
    "relu6": ([0.0, 3.0, 0.0, 6.0, np.nan, 6.0, 0.0],
              [0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0]),
}


@pytest.mark.parametrize("name", NEW)
def test_new_activations_at_kinks_nan_and_infinities(isa, name):
    forward, backward, _, _, derivative = ELEMENTWISE[name]
    values, slopes = KINK_VALUES[name]
    # 17 copies: vector bodies and tails alike
    x = np.tile(np.array(KINK_INPUTS, np.float32), 17)
    with np.errstate(all="ignore"):
        slopes = [derivative(np.float64(v)) if s is None else s for v, s in zip(KINK_INPUTS, slopes)]
    np.testing.assert_allclose(forward(x), np.tile(values, 17), rtol=4 * EPS32, atol=0)
    np.testing.assert_allclose(backward(np.ones_like(x), x), np.tile(slopes, 17),
                               rtol=16 * EPS32, atol=0)


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_out_and_in_place(name):
    forward, backward, kwargs, _, _ = ELEMENTWISE[name]
    x = _inputs((5, 9))
    expected = forward(x, **kwargs)
    out = np.full_like(x, np.nan)
    assert forward(x, out=out, **kwargs) is out
    np.testing.assert_array_equal(out, expected)
    forward(x, out=x, **kwargs)
    np.testing.assert_array_equal(x, expected)



def _beyond_the_cache_share():
    """An element count whose one array per thread, on up to 2 threads,
    outgrows a thread's share of the caches (its L2 plus its part of the L3),
    so every map streams its output on AVX-512."""
    caches = kernels.cache_sizes()
    share = caches["l2"] / caches["l2_sharing"] + caches["l3"] / caches["l3_sharing"]
    return int(share * 2 / 4) + 37


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("size, offset", [("past the L2", 0), ("past the L2", 1), ("past the L2", 15),
                                          ("past the cache share", 0), ("past the cache share", 15)])
def test_outputs_past_the_cache_at_any_alignment(isa, threads, size, offset, set_threads):
    """Outputs past the L2 run the AVX-512 path's 256-bit loops, and past a
    thread's share of the caches its streaming stores, which write the
    elements before the first 64-byte boundary separately; every element
    must still come out as on a small array, in place too."""
    set_threads(threads)
    n = (1 << 21) + 37 if size == "past the L2" else _beyond_the_cache_share()
    storage = np.empty(n + 16, dtype=np.float32)
    x = _inputs(n, seed=5)
    dy = _inputs(n, seed=6, scale=1.0)
    out = storage[offset:offset + n]
    for name in ("relu", "leaky_relu", "tanh"):
        forward, backward, kwargs, _, _ = ELEMENTWISE[name]
        expected = np.concatenate([forward(x[i:i + 4096], **kwargs) for i in range(0, n, 4096)])
        np.testing.assert_array_equal(forward(x, out=out, **kwargs), expected)
        expected_dx = np.concatenate([backward(dy[i:i + 4096], x[i:i + 4096], **kwargs)
                                      for i in range(0, n, 4096)])
        # (a vectorised loop's scalar remainder may contract a * b + c into
        # one FMA differently from its vector body: 1 - y^2 in tanh's)
        np.testing.assert_allclose(backward(dy, x, out=out, **kwargs), expected_dx,
                                   rtol=4 * EPS32, atol=4 * EPS32)
        in_place = x.copy()
        np.testing.assert_array_equal(forward(in_place, out=in_place, **kwargs), expected)

@pytest.mark.parametrize("n", [1, 7, 16, 17, 1031, 1 << 18])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9])
def test_dropout_kernel_against_float64(isa, n, p):
    """The Dropout layer's kernel: y = x / (1 - p) where the uniform draw is
    at least p, else 0; in place too (the layer's backward passes dy)."""
    rng = np.random.default_rng(n)
    x = _inputs(n, seed=n)
    draws = rng.random(n, dtype=np.float32)
    p32 = np.float64(np.float32(p))  # the kernel's p, a float
    kept = draws >= p32
    expected = np.where(kept, x.astype(np.float64) / (1.0 - p32), 0.0)
    out = np.full_like(x, np.nan)
    assert kernels.elementwise("dropout", x, draws, out, p) is out
    # three float32 roundings (1 - p, its reciprocal, the product) at most
    np.testing.assert_allclose(out, expected, rtol=2 * EPS32, atol=0)
    assert np.array_equal(out != 0, kept & (x != 0))
    in_place = x.copy()
    kernels.elementwise("dropout", in_place, draws, in_place, p)
    np.testing.assert_array_equal(in_place, out)


def test_special_values():
    x = np.array([np.nan, np.inf, -np.inf, 0.0, 1e4, -1e4], dtype=np.float32)
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(ops.relu(x), [np.nan, np.inf, 0, 0, 1e4, 0])
        np.testing.assert_array_equal(ops.sigmoid(x), [np.nan, 1, 0, 0.5, 1, 0])
        np.testing.assert_array_equal(ops.tanh(x), [np.nan, 1, -1, 0, 1, -1])
        np.testing.assert_array_equal(ops.gelu(x[[0, 3, 4, 5]]), [np.nan, 0, 1e4, 0])
        np.testing.assert_array_equal(ops.gelu(x[[0, 3, 4, 5]], approximate="tanh"), [np.nan, 0, 1e4, 0])


def _softmax64(x, axis):
    shifted = x - x.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True), shifted - np.log(e.sum(axis=axis, keepdims=True))


@pytest.mark.parametrize("shape,axis", [((1, 1), -1), ((3, 7), -1), ((3, 7), 0), ((2, 3, 5), 1),
                                        ((2, 3, 5), 0), ((4,), 0), ((0, 5), -1), ((1, 1031), 1),
                                        ((5, 2, 3, 4), -2), ((3, 5, 131), 1), ((7, 200), 0),
                                        ((4, 16), -1), ((3, 17), -1), ((2, 33, 3), 1)])
def test_softmax_and_log_softmax_any_axis(isa, shape, axis):
    x = _inputs(shape, scale=5.0)
    probabilities, log_probabilities = _softmax64(x.astype(np.float64), axis)
    np.testing.assert_allclose(ops.softmax(x, axis=axis), probabilities, rtol=8 * EPS32, atol=1e-7)
    y = ops.log_softmax(x, axis=axis)
    np.testing.assert_allclose(y, log_probabilities, rtol=8 * EPS32, atol=8 * EPS32 * 10)
    dy = _inputs(shape, seed=2, scale=1.0)
    p = probabilities
    expected = p * (dy - (dy * p).sum(axis=axis, keepdims=True))
    np.testing.assert_allclose(ops.softmax_backward(dy, ops.softmax(x, axis=axis), axis=axis),
                               expected, rtol=1e-5, atol=1e-6)
    expected_log = dy - p * dy.sum(axis=axis, keepdims=True)
    np.testing.assert_allclose(ops.log_softmax_backward(dy, y, axis=axis), expected_log,
                               rtol=1e-5, atol=1e-5)


def test_softmax_is_stable_at_extreme_logits():
    x = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [3e38, 0.0, -3e38]], dtype=np.float32)
    np.testing.assert_allclose(ops.softmax(x), [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3], [1, 0, 0]],
                               rtol=1e-6)
    np.testing.assert_allclose(ops.log_softmax(x)[0], [0, -2e4, -1e4], rtol=1e-6)
    assert np.all(np.isnan(ops.softmax(np.array([[1.0, np.nan]], np.float32))))


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_softmax_gradients_match_finite_differences(axis):
    x = _inputs((3, 4), seed=5)
    weights = _inputs((3, 4), seed=6, scale=1.0)
    for forward, backward in ((ops.softmax, ops.softmax_backward),
                              (ops.log_softmax, ops.log_softmax_backward)):
        analytic = backward(weights, forward(x, axis=axis), axis=axis)
        check_gradient(lambda v: float(np.sum(forward(v, axis=axis).astype(np.float64) * weights)),
                       x, analytic, eps=1e-2)


def test_same_result_on_any_thread_count(set_threads):
    x = _inputs((300, 1000), seed=7)
    results = []
    for threads in (1, 2):
        set_threads(threads)
        results.append((ops.gelu(x), ops.softmax(x), ops.log_softmax(x, axis=0), ops.relu(x)))
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


def test_torch_parity():
    torch = pytest.importorskip("torch")
    x = _inputs((6, 11), seed=8)
    x[0, :9] = [-3, 3, 0, 6, -2.9999998, 3.0000002, 5.9999995, 1e-8, -90]  # kinks, tails
    dy = _inputs((6, 11), seed=9, scale=1.0)
    cases = [
        (lambda t: torch.relu(t), ops.relu, ops.relu_backward, {}, False),
        (lambda t: torch.nn.functional.leaky_relu(t, 0.1), ops.leaky_relu, ops.leaky_relu_backward,
         {"negative_slope": 0.1}, False),
        (torch.sigmoid, ops.sigmoid, ops.sigmoid_backward, {}, True),
        (torch.tanh, ops.tanh, ops.tanh_backward, {}, True),
        (lambda t: torch.nn.functional.gelu(t), ops.gelu, ops.gelu_backward, {}, False),
        (lambda t: torch.nn.functional.gelu(t, approximate="tanh"), ops.gelu, ops.gelu_backward,
         {"approximate": "tanh"}, False),
        (torch.nn.functional.silu, ops.silu, ops.silu_backward, {}, False),
        (torch.nn.functional.hardswish, ops.hardswish, ops.hardswish_backward, {}, False),
        (torch.nn.functional.hardsigmoid, ops.hardsigmoid, ops.hardsigmoid_backward, {}, False),
        (torch.nn.functional.relu6, ops.relu6, ops.relu6_backward, {}, False),
        (lambda t: torch.softmax(t, 1), ops.softmax, ops.softmax_backward, {"axis": 1}, True),
        (lambda t: torch.log_softmax(t, 0), ops.log_softmax, ops.log_softmax_backward, {"axis": 0}, True),
    ]
    for torch_fn, forward, backward, kwargs, takes_output in cases:
        t = torch.tensor(x, requires_grad=True)
        ty = torch_fn(t)
        ty.backward(torch.tensor(dy))
        y = forward(x, **kwargs)
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=2e-6, atol=1e-6)
        dx = backward(dy, y if takes_output else x, **kwargs)
        np.testing.assert_allclose(dx, t.grad.numpy(), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("bad,error", [
    (np.arange(4), TypeError), (np.ones(3, np.complex64), TypeError),
    (np.array([object()]), TypeError), ("text", TypeError), (None, TypeError),
    (np.ones(3, bool), TypeError)])
def test_bad_inputs_are_refused(bad, error):
    for op in (ops.relu, ops.sigmoid, ops.tanh, ops.gelu, ops.softmax, ops.silu, ops.hardswish,
               ops.hardsigmoid, ops.relu6):
        with pytest.raises(error, match=op.__name__):
            op(bad)


def test_bad_arguments_are_refused():
    x = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="approximate"):
        ops.gelu(x, approximate="fast")
    with pytest.raises(ValueError, match="axis 2"):
        ops.softmax(x, axis=2)
    with pytest.raises(TypeError, match="axis"):
        ops.softmax(x, axis=1.0)
    with pytest.raises(ValueError, match="same shape"):
        ops.relu_backward(np.ones((2, 3), np.float32), np.ones((3, 2), np.float32))
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        ops.relu(x, out=np.empty((3, 2), np.float32))
    with pytest.raises(TypeError, match="float32"):
        ops.relu(x, out=np.empty((2, 3), np.float64))
    with pytest.raises(TypeError, match="negative_slope"):
        ops.leaky_relu(x, negative_slope="a")
    assert ops.relu(np.float64(-2.0)).shape == ()


def test_sigmoid_over_the_float32_range(isa):
    """Float arithmetic (16 lanes) within 2e-7 relative, subnormal results within a step."""
    patterns = np.arange(0, 2 ** 32, 4093, dtype=np.uint64).astype(np.uint32)
    x = patterns.view(np.float32)
    x = x[np.isfinite(x)]
    with np.errstate(over="ignore"):
        expected = 1 / (1 + np.exp(-x.astype(np.float64)))
    actual = ops.sigmoid(x).astype(np.float64)
    normal = expected >= np.finfo(np.float32).tiny
    relative = np.abs(actual[normal] - expected[normal]) / expected[normal]
    assert relative.max() <= 2e-7
    assert np.all(np.abs(actual[~normal] - expected[~normal]) <= 2.0 ** -149)


@pytest.mark.parametrize("n", [0, 1, 15, 17, 1000003])
def test_gelu_at_awkward_sizes(isa, n):
    """The exact GELU's vector bodies, masked tails and threaded, streaming
    sizes against float64 over [-10, 10], backward in place over dy too."""
    _, _, _, reference, derivative = ELEMENTWISE["gelu"]
    x = np.random.default_rng(n).uniform(-10, 10, n).astype(np.float32)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(ops.gelu(x), reference(x64), rtol=2 * EPS32, atol=1e-6)
    dy = _inputs(n, seed=n + 1, scale=1.0)
    expected = dy * derivative(x64)
    np.testing.assert_allclose(ops.gelu_backward(dy, x), expected, rtol=4 * EPS32, atol=1e-7)
    np.testing.assert_allclose(ops.gelu_backward(dy, x, out=dy), expected, rtol=4 * EPS32, atol=1e-7)


def test_gelu_same_bits_on_any_thread_count(set_threads):
    x = np.random.default_rng(10).uniform(-10, 10, (300, 1001)).astype(np.float32)
    dy = _inputs((300, 1001), seed=11, scale=1.0)
    results = []
    for threads in (1, 2):
        set_threads(threads)
        results.append((ops.gelu(x), ops.gelu_backward(dy, x)))
    for one, two in zip(*results):
        np.testing.assert_array_equal(one.view(np.int32), two.view(np.int32))


def test_gelu_torch_parity_over_minus_10_to_10(isa):
    """PyTorch's float GELU is accurate to about 1e-6 absolute (it rounds to 0
    below about -5.5, where this one keeps relative accuracy a little further)."""
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(12).uniform(-10, 10, 100_003).astype(np.float32)
    dy = _inputs(100_003, seed=13, scale=1.0)
    t = torch.tensor(x, requires_grad=True)
    y = torch.nn.functional.gelu(t)
    y.backward(torch.tensor(dy))
    np.testing.assert_allclose(ops.gelu(x), y.detach().numpy(), rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(ops.gelu_backward(dy, x), t.grad.numpy(), rtol=2e-5, atol=2e-6)
    # NaN, the infinities and zeros as PyTorch (gelu(inf) = inf as its scalar
    # path and the formula give; its vectorised path answers NaN)
    special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], np.float32)
    t = torch.tensor(special, requires_grad=True)
    y = torch.nn.functional.gelu(t)
    y.backward(torch.ones(5))
    np.testing.assert_array_equal(ops.gelu(special), [np.nan, np.inf, np.nan, 0.0, -0.0])
    np.testing.assert_array_equal(ops.gelu(special)[2:], y.detach().numpy()[2:])
    np.testing.assert_array_equal(ops.gelu_backward(np.ones(5, np.float32), special), t.grad.numpy())
