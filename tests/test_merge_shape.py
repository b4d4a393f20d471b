"""Merge layers (Add, Multiply, Concatenate, Dot), shape layers (Reshape,
Permute, Identity) and the tensor kernels under them: float64 references,
finite differences, PyTorch parity, the same bits on any thread count."""
import itertools
import json
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pynn
from pynn import layers
from pynn._kernels import core as kernels
from pynn.layers.base import LAYER_TYPES
from tests.helpers import EPS32, check_gradient

fuzz = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
rng = np.random.default_rng(0)


def normal(*shape):
    return rng.standard_normal(shape).astype(np.float32)


@st.composite
def broadcast_pair(draw, max_rank=5, max_side=6):
    """An output shape and two operand shapes of its rank, each extent the
    output's or 1."""
    rank = draw(st.integers(1, max_rank))
    out = tuple(draw(st.integers(1, max_side)) for _ in range(rank))
    operands = []
    for _ in range(2):
        mask = draw(st.lists(st.booleans(), min_size=rank, max_size=rank))
        operands.append(tuple(1 if broadcast else extent for broadcast, extent in zip(mask, out)))
    return out, operands[0], operands[1]


def assert_sum_close(actual, expected, magnitude):
    """A float32 rounding of a float64 sum: within an ulp of it, whatever the terms."""
    bound = EPS32 * np.abs(expected) + 1e-12 * magnitude + 1e-38
    assert actual.dtype == np.float32 and actual.shape == expected.shape
    assert np.all(np.abs(actual.astype(np.float64) - expected) <= bound)


def padded(x, rank):
    """x right-aligned to ``rank`` axes after its batch axis, as the merge layers see it."""
    return x.reshape(x.shape[:1] + (1,) * (rank - x.ndim) + x.shape[1:])


def reduced_axes(target_shape, out_shape):
    return tuple(axis for axis, (t, o) in enumerate(zip(target_shape, out_shape)) if t == 1 and o != 1)


# -- kernels ----------------------------------------------------------------

@fuzz
@given(broadcast_pair(), st.sampled_from(["add", "multiply"]), st.integers(0, 2**32 - 1))
def test_broadcast_binary_is_numpy_float32_exactly(isa, shapes, op, seed):
    _, a_shape, b_shape = shapes
    out_shape = np.broadcast_shapes(a_shape, b_shape)
    generator = np.random.default_rng(seed)
    a = generator.standard_normal(a_shape).astype(np.float32)
    b = generator.standard_normal(b_shape).astype(np.float32)
    out = np.full(out_shape, np.nan, np.float32)
    kernels.broadcast_binary(op, a, b, out)
    np.testing.assert_array_equal(out, np.add(a, b) if op == "add" else np.multiply(a, b))


@fuzz
@given(broadcast_pair(), st.booleans(), st.integers(0, 2**32 - 1))
def test_broadcast_reduce_matches_a_float64_sum(isa, shapes, with_other, seed):
    out_shape, target_shape, other_shape = shapes
    generator = np.random.default_rng(seed)
    dy = generator.standard_normal(out_shape).astype(np.float32)
    other = generator.standard_normal(other_shape).astype(np.float32) if with_other else None
    target = np.full(target_shape, np.nan, np.float32)
    kernels.broadcast_reduce(dy, other, target)
    terms = dy.astype(np.float64) * (1.0 if other is None else other.astype(np.float64))
    expected = terms.sum(axis=reduced_axes(target_shape, out_shape), keepdims=True)
    assert_sum_close(target, expected.reshape(target_shape), np.abs(terms).sum())


@pytest.mark.parametrize("out_shape,target_shape", [
    ((3, 5000), (1, 5000)), ((5000, 3), (5000, 1)), ((2, 7, 300, 3), (1, 7, 1, 3)),
    ((4, 3, 2), (1, 1, 1)), ((6, 1, 9), (6, 1, 9)), ((20000, 7), (1, 7)), ((3, 3000, 30), (1, 1, 30)),
])
def test_broadcast_reduce_over_long_and_mixed_axes(isa, out_shape, target_shape):
    dy, other = normal(*out_shape), normal(*out_shape)
    target = np.empty(target_shape, np.float32)
    for factor in (None, other):
        kernels.broadcast_reduce(dy, factor, target)
        terms = dy.astype(np.float64) * (1.0 if factor is None else other)
        expected = terms.sum(axis=reduced_axes(target_shape, out_shape), keepdims=True)
        assert_sum_close(target, expected, np.abs(terms).sum())


def test_add_into_may_write_over_its_first_operand():
    a, b = normal(3, 70), normal(3, 70)
    expected = a + b
    assert kernels.add_into(a, b, a) is a
    np.testing.assert_array_equal(a, expected)
    with pytest.raises(ValueError, match=re.escape("add_into: a (3, 70), b (3, 7)")):
        kernels.add_into(a, normal(3, 7), a)


@pytest.mark.parametrize("rank", [1, 2, 3, 4])
def test_permute_every_order(isa, rank):
    x = normal(*(2, 3, 4, 5)[:rank])
    for dims in itertools.permutations(range(rank)):
        out = np.full(x.transpose(dims).shape, np.nan, np.float32)
        np.testing.assert_array_equal(kernels.permute(x, dims, out), x.transpose(dims))


@pytest.mark.parametrize("shape,dims", [
    ((37, 70), (1, 0)), ((3, 65, 33), (0, 2, 1)), ((2, 33, 1, 40, 3), (0, 4, 2, 3, 1)),
    ((1, 1, 1), (2, 0, 1)), ((5, 8, 6, 7, 2, 3, 2, 2), (7, 6, 5, 4, 3, 2, 1, 0)),
    ((2, 3, 70), (0, 2, 1)), ((2, 70, 3), (0, 2, 1)),
])
def test_permute_tiles_with_remainders_and_unit_axes(isa, shape, dims):
    x = normal(*shape)
    out = np.empty(x.transpose(dims).shape, np.float32)
    np.testing.assert_array_equal(kernels.permute(x, dims, out), x.transpose(dims))


def test_kernels_refuse_what_would_read_out_of_bounds():
    with pytest.raises(ValueError, match="broadcast_binary: a of shape"):
        kernels.broadcast_binary("add", normal(2, 3), normal(2, 1), np.empty((2, 4), np.float32))
    with pytest.raises(ValueError, match="broadcast_binary: op must be one of"):
        kernels.broadcast_binary("subtract", normal(2), normal(2), empty(2))
    with pytest.raises(ValueError, match="rank must be 1 to 8"):
        kernels.broadcast_binary("add", normal(*[1] * 9), normal(*[1] * 9), np.empty([1] * 9, np.float32))
    with pytest.raises(ValueError, match="copy_into_slice"):
        kernels.copy_into_slice(normal(2, 3), np.empty((2, 4), np.float32), 1, 2)
    with pytest.raises(ValueError, match="permute: dims"):
        kernels.permute(normal(2, 3), (0, 0), np.empty((2, 2), np.float32))
    with pytest.raises(TypeError, match="must be an aligned, C-contiguous"):
        kernels.row_dot(normal(3, 4).T.copy().T, normal(4, 3).T, np.empty(4, np.float32))


def empty(*shape):
    return np.empty(shape, np.float32)


# inputs above every kernel's threshold for a second thread
A, B = normal(1031, 517), normal(1031, 517)
IMAGES, GATE = normal(8, 64, 33, 31), normal(8, 64, 1, 1)
TALL, BIASED = normal(3, 40000, 5), normal(4099, 64)
LARGE = [
    ("add, equal shapes", lambda: kernels.broadcast_binary("add", A, B, empty(*A.shape))),
    ("multiply, [N, C, 1, 1] x [N, C, H, W]",
     lambda: kernels.broadcast_binary("multiply", GATE, IMAGES, empty(*IMAGES.shape))),
    ("add, [N, C] + [1, C]", lambda: kernels.broadcast_binary("add", A, A[:1], empty(*A.shape))),
    ("reduce to columns", lambda: kernels.broadcast_reduce(A, B, empty(1, A.shape[1]))),
    ("reduce to a bias", lambda: kernels.broadcast_reduce(BIASED, BIASED, empty(1, BIASED.shape[1]))),
    ("reduce to rows", lambda: kernels.broadcast_reduce(A, None, empty(A.shape[0], 1))),
    ("reduce to the gate", lambda: kernels.broadcast_reduce(IMAGES, IMAGES, empty(*GATE.shape))),
    ("concatenate", lambda: kernels.copy_into_slice(IMAGES, np.zeros((8, 96, 33, 31), np.float32), 1, 32)),
    ("slice", lambda: kernels.copy_from_slice(IMAGES, empty(8, 20, 33, 31), 1, 5)),
    ("permute, last axis kept", lambda: kernels.permute(IMAGES, (1, 0, 2, 3), empty(64, 8, 33, 31))),
    ("permute, transposed", lambda: kernels.permute(IMAGES, (0, 2, 3, 1), empty(8, 33, 31, 64))),
    ("permute, one tall tile row", lambda: kernels.permute(TALL, (0, 2, 1), empty(3, 5, 40000))),
    ("row dot", lambda: kernels.row_dot(A, B, empty(A.shape[0]))),
    ("row dot backward", lambda: kernels.row_dot_backward(A[:, 0].copy(), A, B, empty(*A.shape),
                                                          empty(*A.shape))),
]


@pytest.mark.parametrize("name,call", LARGE, ids=[name for name, _ in LARGE])
def test_two_threads_give_the_bits_of_one(set_threads, name, call):
    def bits(result):
        return [item.tobytes() for item in (result if isinstance(result, tuple) else (result,))]
    set_threads(1)
    first = bits(call())
    set_threads(2)
    assert bits(call()) == first


# -- layers: forward and backward against float64 references -----------------

@st.composite
def broadcastable_samples(draw, count):
    """``count`` per-sample shapes of up to 4 axes that broadcast together."""
    rank = draw(st.integers(0, 4))
    full = tuple(draw(st.integers(1, 5)) for _ in range(rank))
    shapes = []
    for _ in range(count):
        keep = draw(st.integers(0, rank))  # right-aligned: drop leading axes
        mask = draw(st.lists(st.booleans(), min_size=keep, max_size=keep))
        tail = full[rank - keep:]
        shapes.append(tuple(1 if ones else extent for ones, extent in zip(mask, tail)))
    return shapes


@fuzz
@given(st.integers(2, 4).flatmap(broadcastable_samples), st.integers(0, 3), st.integers(0, 2**32 - 1))
def test_add_matches_float64_forward_and_backward(samples, batch, seed):
    generator = np.random.default_rng(seed)
    x = [generator.standard_normal((batch,) + shape).astype(np.float32) for shape in samples]
    layer = layers.Add()
    y = layer.forward(x, training=True)
    rank = 1 + max(len(shape) for shape in samples)
    wide = [padded(item, rank).astype(np.float64) for item in x]
    expected = wide[0]
    for item in wide[1:]:
        expected = expected + item
    assert y.shape == expected.shape == layer.output_shape([item.shape for item in x])
    np.testing.assert_allclose(y, expected, rtol=4 * EPS32, atol=4 * EPS32 * np.abs(expected).max(initial=0))
    dy = generator.standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(dy)
    for item, gradient in zip(x, dx):
        sums = dy.astype(np.float64).sum(axis=reduced_axes(padded(item, y.ndim).shape, y.shape),
                                         keepdims=True)
        assert gradient.shape == item.shape
        assert_sum_close(gradient, sums.reshape(item.shape), np.abs(dy).sum())
    assert layer.backward(dy, input_grad=False) is None


@fuzz
@given(broadcastable_samples(2), st.integers(0, 3), st.integers(0, 2**32 - 1))
def test_multiply_matches_float64_forward_and_backward(samples, batch, seed):
    generator = np.random.default_rng(seed)
    a, b = (generator.standard_normal((batch,) + shape).astype(np.float32) for shape in samples)
    layer = layers.Multiply()
    y = layer.forward([a, b], training=True)
    rank = 1 + max(len(shape) for shape in samples)
    np.testing.assert_array_equal(y, padded(a, rank) * padded(b, rank))
    dy = generator.standard_normal(y.shape).astype(np.float32)
    da, db = layer.backward(dy)
    for item, other, gradient in ((a, b, da), (b, a, db)):
        terms = dy.astype(np.float64) * padded(other, rank)
        sums = terms.sum(axis=reduced_axes(padded(item, rank).shape, y.shape), keepdims=True)
        assert_sum_close(gradient, sums.reshape(item.shape), np.abs(terms).sum())


@pytest.mark.parametrize("shapes,axis", [
    ([(2, 3), (2, 5)], 1), ([(2, 3, 4), (2, 1, 4), (2, 6, 4)], 1), ([(2, 3, 4), (2, 3, 2)], -1),
    ([(3, 2, 5, 4), (3, 2, 1, 4)], 2), ([(0, 2, 3), (0, 2, 1)], 2), ([(4, 0), (4, 3)], 1),
    ([(2, 3)], 1),
])
def test_concatenate_matches_numpy_forward_and_slices_back(shapes, axis):
    x = [normal(*shape) for shape in shapes]
    layer = layers.Concatenate(axis=axis)
    y = layer.forward(x, training=True)
    np.testing.assert_array_equal(y, np.concatenate(x, axis=axis))
    dy = normal(*y.shape)
    splits = np.cumsum([item.shape[axis] for item in x])[:-1]
    for gradient, expected in zip(layer.backward(dy), np.split(dy, splits, axis=axis)):
        np.testing.assert_array_equal(gradient, expected)


def test_add_of_one_input_is_a_copy():
    x = normal(3, 4)
    layer = layers.Add()
    y = layer.forward([x], training=True)
    np.testing.assert_array_equal(y, x)
    assert not np.shares_memory(y, x)
    np.testing.assert_array_equal(layer.backward(x)[0], x)


def test_dot_matches_float64_rows(isa):
    u, v = normal(7, 33), normal(7, 33)
    layer = layers.Dot()
    y = layer.forward([u, v], training=True)
    expected = (u.astype(np.float64) * v).sum(axis=1, keepdims=True)
    assert_sum_close(y, expected, np.abs(u.astype(np.float64) * v).sum())
    dy = normal(7, 1)
    du, dv = layer.backward(dy)
    np.testing.assert_array_equal(du, dy * v)
    np.testing.assert_array_equal(dv, dy * u)


def test_dot_is_the_same_bits_on_every_path_and_thread_count(set_threads):
    """Each row is summed in one order (sixteen partial sums, then the tail)
    whatever the path: the float products are exact in double."""
    results, before = [], kernels.chosen_isa()
    try:
        for isa in kernels.supported_isas():
            kernels.choose_isa(isa)
            for threads in (1, 2):
                set_threads(threads)
                for length in (1, 15, 16, 17, 64, 100):
                    rng = np.random.default_rng(length)
                    rows = 4096 if length == 64 else 9  # 4096 x 64: the threaded split
                    u = rng.standard_normal((rows, length), dtype=np.float32)
                    v = rng.standard_normal((rows, length), dtype=np.float32)
                    results.append((length, (isa, threads), layers.Dot().forward([u, v])))
    finally:
        kernels.choose_isa(before)
    reference = {length: y for length, run, y in results if run == ("generic", 1)}
    for length, run, y in results:
        np.testing.assert_array_equal(y, reference[length], err_msg=f"path and threads {run}, "
                                                                    f"length {length}")


def test_add_of_inputs_of_one_shape_sums_them_in_order():
    x = [normal(5, 3) for _ in range(3)]
    layer = layers.Add()
    y = layer.forward(x, training=True)
    np.testing.assert_array_equal(y, (x[0] + x[1]) + x[2])
    for dx in layer.backward(x[0]):
        np.testing.assert_array_equal(dx, x[0])


def test_reshape_is_a_view_and_backward_reshapes_back():
    x = normal(4, 3, 2, 5)
    layer = layers.Reshape((-1, 5))
    y = layer.forward(x, training=True)
    assert y.shape == (4, 6, 5) and np.shares_memory(y, x)
    np.testing.assert_array_equal(y, x.reshape(4, 6, 5))
    assert layer.backward(y).shape == x.shape
    assert layers.Reshape(30).output_shape((4, 3, 2, 5)) == (4, 30)


def test_permute_writes_a_new_array_and_backward_inverts():
    x = normal(2, 3, 4, 5)
    layer = layers.Permute((0, 3, 1, 2))
    y = layer.forward(x, training=True)
    assert y.flags.c_contiguous and not np.shares_memory(y, x)
    np.testing.assert_array_equal(y, x.transpose(0, 3, 1, 2))
    dy = normal(*y.shape)
    np.testing.assert_array_equal(layer.backward(dy), dy.transpose(0, 2, 3, 1))
    assert layers.Permute((0, -1, 1)).dims == (0, 2, 1)


def test_identity_returns_its_input():
    x = normal(3, 4)
    layer = layers.Identity()
    assert layer.forward(x, training=True) is x
    dy = normal(3, 4)
    dx = layer.backward(dy)
    assert np.shares_memory(dx, dy) and dx.shape == dy.shape


# -- finite differences ----------------------------------------------------------

def weighted_sum(layer, weights):
    return lambda *x: float((layer.forward(list(x) if layer.takes_list else x[0]).astype(np.float64)
                             * weights).sum())


@pytest.mark.parametrize("make,shapes", [
    (layers.Add, [(2, 3, 1, 4), (2, 1, 5, 4), (2, 4)]),
    (layers.Multiply, [(2, 3, 1, 1), (2, 3, 4, 5)]),
    (layers.Multiply, [(3, 4), (3, 2, 4)]),
    (lambda: layers.Concatenate(axis=-2), [(2, 3, 4), (2, 1, 4)]),
    (layers.Dot, [(4, 6), (4, 6)]),
    (lambda: layers.Permute((0, 2, 3, 1)), [(2, 3, 4, 5)]),
    (lambda: layers.Reshape((5, -1)), [(2, 3, 4, 5)]),
])
def test_gradients_match_finite_differences(make, shapes):
    layer = make()
    x = [normal(*shape) for shape in shapes]
    y = layer.forward(x if layer.takes_list else x[0], training=True)
    weights = rng.standard_normal(y.shape)
    dx = layer.backward(weights.astype(np.float32))
    dx = dx if layer.takes_list else [dx]
    for position in range(len(x)):
        def loss(value, position=position):
            given = list(x)
            given[position] = value
            return weighted_sum(layer, weights)(*given)
        check_gradient(loss, x[position], dx[position])


# -- PyTorch parity ---------------------------------------------------------------

def torch_tensors(torch, arrays):
    return [torch.from_numpy(item.copy()).requires_grad_(True) for item in arrays]


@pytest.mark.parametrize("make,torch_call,shapes", [
    (layers.Add, lambda torch, a, b, c: torch.add(torch.add(a, b), c),
     [(2, 3, 1, 4), (2, 1, 5, 4), (2, 1, 1, 1)]),
    (layers.Multiply, lambda torch, a, b: torch.mul(a, b), [(2, 8, 1, 1), (2, 8, 6, 7)]),
    (layers.Multiply, lambda torch, a, b: torch.mul(a, b), [(5, 6), (5, 1)]),
    (lambda: layers.Concatenate(axis=1), lambda torch, a, b: torch.cat([a, b], dim=1),
     [(3, 2, 4), (3, 5, 4)]),
    (layers.Dot, lambda torch, u, v: (u * v).sum(1, keepdim=True), [(9, 16), (9, 16)]),
    (lambda: layers.Permute((0, 2, 3, 1)), lambda torch, x: torch.permute(x, (0, 2, 3, 1)), [(2, 3, 5, 7)]),
    (lambda: layers.Reshape((-1, 5)), lambda torch, x: torch.reshape(x, (2, -1, 5)), [(2, 3, 2, 5)]),
    (layers.Identity, lambda torch, x: x * 1, [(4, 3)]),
])
def test_torch_parity_forward_and_autograd(make, torch_call, shapes):
    torch = pytest.importorskip("torch")
    layer = make()
    x = [normal(*shape) for shape in shapes]
    y = layer.forward(x if layer.takes_list else x[0], training=True)
    twins = torch_tensors(torch, x)
    expected = torch_call(torch, *twins)
    np.testing.assert_allclose(y, expected.detach().numpy(), rtol=1e-6, atol=1e-6)
    dy = normal(*y.shape)
    expected.backward(torch.from_numpy(dy))
    dx = layer.backward(dy)
    for gradient, twin in zip(dx if layer.takes_list else [dx], twins):
        np.testing.assert_allclose(gradient, twin.grad.numpy(), rtol=1e-5, atol=1e-5)


# -- shapes, errors, configuration --------------------------------------------------

@pytest.mark.parametrize("make,shapes,words", [
    (layers.Add, [(2, 3), (2, 4)], "the shapes after the batch axis do not broadcast"),
    (layers.Add, [(2, 3), (3, 3)], "the batch sizes differ"),
    (layers.Multiply, [(2, 3), (2, 3), (2, 3)], "takes 2 inputs, got 3"),
    (layers.Multiply, [(2, 3, 4), (2, 2, 1)], "do not broadcast"),
    (lambda: layers.Concatenate(axis=1), [(2, 3, 4), (2, 3, 5)], "the shapes differ outside axis 1"),
    (lambda: layers.Concatenate(axis=1), [(2, 3, 4), (2, 3)], "different numbers of axes"),
    (lambda: layers.Concatenate(axis=-3), [(2, 3), (2, 3)], "axis -3 is not an axis after the batch"),
    (lambda: layers.Concatenate(axis=-2), [(2, 3), (2, 3)], "axis -2 is not an axis after the batch"),
    (layers.Dot, [(2, 3, 4), (2, 3, 4)], "takes two [N, D] inputs"),
    (layers.Dot, [(2, 3), (2, 4)], "the vectors' lengths differ"),
    (layers.Add, [()], "every input needs the batch axis"),
])
def test_shape_errors_name_the_layer_and_every_input_shape(make, shapes, words):
    layer = make()
    given = ", ".join(str(shape) for shape in shapes)
    pattern = rf"^{type(layer).__name__}: .*{re.escape(words)}.*\(input shapes {re.escape(given)}\)$"
    with pytest.raises(ValueError, match=pattern):
        layer.output_shape(shapes)
    with pytest.raises(ValueError, match=pattern):
        layer.forward([np.zeros(shape, np.float32) for shape in shapes])


@pytest.mark.parametrize("call,error,words", [
    (lambda: layers.Concatenate(axis=0), ValueError, "Concatenate: axis 0 is the batch axis"),
    (lambda: layers.Concatenate(axis=1.0), TypeError, "Concatenate: axis must be an integer"),
    (lambda: layers.Reshape((2, -1, -1)), ValueError, "Reshape: shape entries"),
    (lambda: layers.Reshape("3"), TypeError, "Reshape: shape must be a sequence"),
    (lambda: layers.Reshape((7, -1)).output_shape((2, 3, 5)), ValueError,
     "Reshape: cannot reshape per-sample shape (3, 5) (15 elements) into (7, -1)"),
    (lambda: layers.Reshape((-1, 0)).output_shape((2, 0)), ValueError, "Reshape: cannot reshape"),
    (lambda: layers.Permute((1, 0)), ValueError, "Permute: dims[0] must be 0"),
    (lambda: layers.Permute((0, 1, 1)), ValueError, "Permute: dims must be a permutation"),
    (lambda: layers.Permute(tuple(range(9))), ValueError, "Permute: at most 8 axes"),
    (lambda: layers.Permute((0, 2, 1)).forward(normal(2, 3)), ValueError,
     "Permute: dims (0, 2, 1) need an input of 3 axes, got shape (2, 3)"),
    (lambda: layers.Add().forward(normal(2, 3)), TypeError, "Add: takes a list of arrays"),
    (lambda: layers.Add().forward([normal(2, 3), "x"]), TypeError, "Add: input 1"),
    (lambda: layers.Multiply().forward([normal(*[1] * 8), normal(*[1] * 9)]), ValueError,
     "Multiply: more than 8 axes"),
])
def test_bad_arguments_are_refused_by_name(call, error, words):
    with pytest.raises(error, match=re.escape(words)):
        call()


@pytest.mark.parametrize("layer", [
    layers.Add(), layers.Multiply(name="gate.mul"), layers.Concatenate(axis=-1), layers.Dot(),
    layers.Reshape((3, -1)), layers.Permute((0, 2, 1)), layers.Identity(name="skip"),
])
def test_config_round_trips_through_json(layer):
    config = json.loads(json.dumps(layer.config()))
    twin = LAYER_TYPES[type(layer).__name__](**config, name=layer.name)
    assert twin.config() == layer.config() and repr(twin) == repr(layer)


def test_symbolic_calls_check_shapes_with_two_batch_sizes():
    features, gate = pynn.layers.symbolic.Input((8, 5, 5)), pynn.layers.symbolic.Input((8, 1, 1))
    scaled = layers.Multiply()([features, gate])
    assert scaled.shape == (8, 5, 5)
    joined = layers.Concatenate(axis=1)([scaled, features])
    assert joined.shape == (16, 5, 5)
    assert layers.Permute((0, 2, 3, 1))(joined).shape == (5, 5, 16)
    assert layers.Reshape((-1,))(joined).shape == (400,)
    u, v = pynn.layers.symbolic.Input((4,)), pynn.layers.symbolic.Input((4,))
    assert layers.Dot()([u, v]).shape == (1,)
    with pytest.raises(ValueError, match=r"Add: cannot take input shape \[\(8, 5, 5\), \(4,\)\]"):
        layers.Add()([features, u])
