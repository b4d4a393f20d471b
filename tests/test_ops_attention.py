"""pynn.ops.scaled_dot_product_attention and its backward against float64
references, finite differences and (where installed) PyTorch; the strided
kernels (kernels.attention_forward / attention_backward) on views of a packed
projection."""
import numpy as np
import pytest

from pynn import ops
from pynn._kernels import core as kernels
from tests.helpers import check_gradient

# (N, heads, T, S, head_dim, value_dim)
SHAPES = [(1, 1, 1, 1, 1, 1), (2, 3, 5, 7, 4, 4), (1, 2, 9, 9, 3, 5), (2, 2, 17, 13, 64, 64),
          (1, 3, 70, 130, 33, 17), (3, 2, 66, 8, 16, 1), (0, 2, 4, 4, 8, 8), (2, 1, 0, 5, 8, 8)]
MASKS = ["none", "bool", "float", "key_padding", "causal", "row_bias"]


def _rng_arrays(shape, seed=0):
    n, h, t, s, d, dv = shape
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, h, t, d)).astype(np.float32)
    k = rng.standard_normal((n, h, s, d)).astype(np.float32)
    v = rng.standard_normal((n, h, s, dv)).astype(np.float32)
    dy = rng.standard_normal((n, h, t, dv)).astype(np.float32)
    return q, k, v, dy


def _mask(kind, shape, seed=1):
    """(attn_mask, is_causal) of each kind: some rows of the bool and float
    masks see no key at all."""
    n, h, t, s = shape[:4]
    rng = np.random.default_rng(seed)
    if kind == "bool":
        mask = rng.random((n, h, t, s)) < 0.7
        if t:
            mask[..., t // 2, :] = False
        return mask, False
    if kind == "float":  # [T, S], broadcast over batch and heads, -inf included
        mask = rng.standard_normal((t, s)).astype(np.float32)
        mask[rng.random((t, s)) < 0.2] = -np.inf
        if t > 1:
            mask[1] = -np.inf
        return mask, False
    if kind == "key_padding":  # [N, 1, 1, S]: the last keys of each row are padding
        lengths = rng.integers(1, s + 1, size=n) if s else np.zeros(n, dtype=int)
        return (np.arange(s)[None, :] < lengths[:, None])[:, None, None, :], False
    if kind == "causal":
        return None, True
    if kind == "row_bias":  # [T, 1] float: a per-query shift (softmax ignores it)
        return rng.standard_normal((t, 1)), False
    return None, False


def reference(q, k, v, mask=None, is_causal=False, scale=None):
    """(out, probabilities) in float64; a row that sees no key gives zeros."""
    q, k, v = (a.astype(np.float64) for a in (q, k, v))
    t, s = q.shape[2], k.shape[2]
    scale = 1.0 / np.sqrt(q.shape[3]) if scale is None else scale
    scores = q @ np.swapaxes(k, -1, -2) * scale
    allowed = np.ones(scores.shape, dtype=bool)
    if is_causal:
        allowed &= np.tril(np.ones((t, s), dtype=bool))
    if mask is not None and mask.dtype == bool:
        allowed &= mask
    elif mask is not None:
        scores = scores + mask.astype(np.float64)
    scores = np.where(allowed, scores, -np.inf)
    top = scores.max(axis=-1, keepdims=True, initial=-np.inf)
    seen = np.isfinite(top)
    e = np.where(seen, np.exp(scores - np.where(seen, top, 0.0)), 0.0)
    total = e.sum(axis=-1, keepdims=True)
    p = np.divide(e, total, out=np.zeros_like(e), where=total > 0)
    return p @ v, p


def reference_backward(dy, q, k, v, mask=None, is_causal=False, scale=None):
    scale = 1.0 / np.sqrt(q.shape[3]) if scale is None else scale
    _, p = reference(q, k, v, mask, is_causal, scale)
    q, k, v, dy = (a.astype(np.float64) for a in (q, k, v, dy))
    dv = np.swapaxes(p, -1, -2) @ dy
    dp = dy @ np.swapaxes(v, -1, -2)
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))
    return ds @ k * scale, np.swapaxes(ds, -1, -2) @ q * scale, dv


def _close(actual, expected, tol=1e-5):
    """Within tol of the reference's largest magnitude (the float32 sums
    over head_dim and keys round at that scale)."""
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_backward_against_float64(isa, shape, kind):
    q, k, v, dy = _rng_arrays(shape)
    mask, causal = _mask(kind, shape)
    y = ops.scaled_dot_product_attention(q, k, v, mask, causal)
    assert y.dtype == np.float32 and y.shape == shape[:3] + (shape[5],)
    _close(y, reference(q, k, v, mask, causal)[0])
    grads = ops.scaled_dot_product_attention_backward(dy, q, k, v, mask, causal)
    for got, expected, array in zip(grads, reference_backward(dy, q, k, v, mask, causal),
                                    (q, k, v)):
        assert got.dtype == np.float32 and got.shape == array.shape
        _close(got, expected, tol=3e-5)


@pytest.mark.parametrize("head_dim", [1, 2, 3, 7, 8, 15, 16, 31, 32, 33, 63, 64])
def test_every_head_dim(isa, head_dim):
    q, k, v, dy = _rng_arrays((2, 2, 19, 23, head_dim, head_dim), seed=head_dim)
    _close(ops.scaled_dot_product_attention(q, k, v, is_causal=True),
           reference(q, k, v, is_causal=True)[0])
    grads = ops.scaled_dot_product_attention_backward(dy, q, k, v, is_causal=True)
    for got, expected in zip(grads, reference_backward(dy, q, k, v, is_causal=True)):
        _close(got, expected, tol=3e-5)


def test_scale_and_out():
    q, k, v, _ = _rng_arrays((2, 3, 6, 9, 5, 4))
    out = np.full((2, 3, 6, 4), np.nan, dtype=np.float32)
    y = ops.scaled_dot_product_attention(q, k, v, scale=0.3, out=out)
    assert y is out
    _close(out, reference(q, k, v, scale=0.3)[0])


def test_rows_that_see_no_key_give_zeros():
    q, k, v, dy = _rng_arrays((1, 2, 4, 6, 8, 8))
    mask = np.ones((4, 6), dtype=bool)
    mask[2] = False
    y = ops.scaled_dot_product_attention(q, k, v, mask)
    assert np.all(y[:, :, 2] == 0) and np.all(np.isfinite(y))
    dq, dk, dv = ops.scaled_dot_product_attention_backward(dy, q, k, v, mask)
    assert np.all(dq[:, :, 2] == 0)
    _close(dk, reference_backward(dy, q, k, v, mask)[1])
    no_keys = ops.scaled_dot_product_attention(q, k[:, :, :0], v[:, :, :0])
    assert no_keys.shape == (1, 2, 4, 8) and np.all(no_keys == 0)


def test_nan_reaches_its_rows_only():
    q, k, v, _ = _rng_arrays((1, 1, 3, 5, 4, 4))
    q[0, 0, 1, 2] = np.nan
    y = ops.scaled_dot_product_attention(q, k, v)
    assert np.all(np.isnan(y[0, 0, 1])) and np.all(np.isfinite(y[0, 0, [0, 2]]))


@pytest.mark.parametrize("kind", ["none", "float", "causal"])
def test_backward_matches_finite_differences(kind):
    shape = (1, 2, 5, 6, 3, 4)
    q, k, v, _ = _rng_arrays(shape, seed=3)
    mask, causal = _mask(kind, shape)
    if kind == "float":
        mask = np.random.default_rng(4).standard_normal((5, 6)).astype(np.float32)
    weights = np.random.default_rng(5).standard_normal(shape[:3] + (shape[5],))
    dq, dk, dv = ops.scaled_dot_product_attention_backward(
        weights.astype(np.float32), q, k, v, mask, causal)
    check_gradient(lambda x: np.sum(ops.scaled_dot_product_attention(x, k, v, mask, causal)
                                    * weights), q, dq)
    check_gradient(lambda x: np.sum(ops.scaled_dot_product_attention(q, x, v, mask, causal)
                                    * weights), k, dk)
    check_gradient(lambda x: np.sum(ops.scaled_dot_product_attention(q, k, x, mask, causal)
                                    * weights), v, dv)


def _packed_views(n, t, heads, head_dim, seed=0):
    """q, k, v as views of one [N, T, 3E] projection, and an [N, T, E] output
    with its [N, heads, T, head_dim] view: no copies."""
    e = heads * head_dim
    qkv = np.random.default_rng(seed).standard_normal((n, t, 3 * e)).astype(np.float32)
    views = [qkv[:, :, i * e:(i + 1) * e].reshape(n, t, heads, head_dim).transpose(0, 2, 1, 3)
             for i in range(3)]
    out = np.empty((n, t, e), dtype=np.float32)
    return views, out, out.reshape(n, t, heads, head_dim).transpose(0, 2, 1, 3)


@pytest.mark.parametrize("causal", [False, True])
def test_kernels_on_views_of_a_packed_projection(isa, causal):
    n, t, heads, head_dim = 2, 11, 3, 5
    (q, k, v), out, out_view = _packed_views(n, t, heads, head_dim)
    assert not q.flags.c_contiguous and np.shares_memory(out, out_view)
    lengths = np.array([11, 7], dtype=np.int64)
    padding = np.arange(t)[None, :] < lengths[:, None]
    mask = np.broadcast_to(padding[:, None, None, :], (n, heads, t, t))
    log_sum_exp = np.empty((n, heads, t), dtype=np.float32)
    kernels.attention_forward(q, k, v, out_view, log_sum_exp, mask, causal)
    expected, _ = reference(q, k, v, mask, causal)
    _close(out_view, expected)
    _close(out, expected.transpose(0, 2, 1, 3).reshape(n, t, heads * head_dim))
    dy = np.random.default_rng(9).standard_normal((n, t, heads * head_dim)).astype(np.float32)
    dy_view = dy.reshape(n, t, heads, head_dim).transpose(0, 2, 1, 3)
    dqkv = np.full((n, t, 3 * heads * head_dim), np.nan, dtype=np.float32)
    dq, dk, dv = _packed_views_of(dqkv, heads, head_dim)
    kernels.attention_backward(dy_view, q, k, v, out_view, log_sum_exp, dq, dk, dv, mask, causal)
    for got, want in zip((dq, dk, dv), reference_backward(dy_view, q, k, v, mask, causal)):
        _close(got, want, tol=3e-5)
    # the key-padding mask as key counts gives the same
    counted = np.empty_like(out)
    counted_view = counted.reshape(n, t, heads, head_dim).transpose(0, 2, 1, 3)
    counted_lse = np.empty_like(log_sum_exp)
    kernels.attention_forward(q, k, v, counted_view, counted_lse, None, causal, lengths)
    _close(counted, out)
    _close(counted_lse, log_sum_exp)
    counted_grads = [np.empty(a.shape, dtype=np.float32) for a in (q, k, v)]
    kernels.attention_backward(dy_view, q, k, v, counted_view, counted_lse, *counted_grads,
                               None, causal, lengths)
    for got, want in zip(counted_grads, (dq, dk, dv)):
        _close(got, want, tol=3e-5)


def _packed_views_of(packed, heads, head_dim):
    n, t, width = packed.shape
    e = width // 3
    return [packed[:, :, i * e:(i + 1) * e].reshape(n, t, heads, head_dim).transpose(0, 2, 1, 3)
            for i in range(3)]


@pytest.mark.parametrize("kind", ["none", "bool", "float", "causal"])
def test_kept_probabilities_serve_the_backward(isa, kind):
    shape = (2, 3, 21, 18, 7, 5)
    q, k, v, dy = _rng_arrays(shape, seed=13)
    mask, causal = _mask(kind, shape)
    view = None if mask is None else np.broadcast_to(mask.astype(np.float32)
                                                     if mask.dtype != bool else mask, shape[:4])
    lengths = np.array([18, 11], dtype=np.int64)
    out, out_kept = (np.empty(shape[:3] + (5,), np.float32) for _ in range(2))
    log_sum_exp = np.empty(shape[:3], np.float32)
    probabilities = np.full(shape[:4], np.nan, np.float32)
    kernels.attention_forward(q, k, v, out, log_sum_exp, view, causal, lengths)
    kernels.attention_forward(q, k, v, out_kept, None, view, causal, lengths,
                              probabilities=probabilities)
    padding = np.broadcast_to((np.arange(18)[None, :] < lengths[:, None])[:, None, None, :],
                              shape[:4])
    combined = padding if mask is None else (
        padding & view if mask.dtype == bool else np.where(padding, view, -np.inf))
    expected, expected_p = reference(q, k, v, combined, causal)
    _close(out_kept, expected)
    _close(out, expected)
    _close(probabilities, expected_p)
    from_log_sum_exp = [np.empty(a.shape, np.float32) for a in (q, k, v)]
    from_probabilities = [np.empty(a.shape, np.float32) for a in (q, k, v)]
    kernels.attention_backward(dy, q, k, v, out, log_sum_exp, *from_log_sum_exp, view, causal,
                               lengths)
    kernels.attention_backward(dy, q, k, v, out_kept, None, *from_probabilities, view, causal,
                               lengths, probabilities=probabilities)
    for one, other, want in zip(from_log_sum_exp, from_probabilities,
                                reference_backward(dy, q, k, v, combined, causal)):
        _close(one, want, tol=3e-5)
        _close(other, want, tol=3e-5)


def test_log_sum_exp_is_kept_per_row():
    q, k, v, _ = _rng_arrays((2, 2, 5, 7, 4, 4))
    mask, _ = _mask("bool", (2, 2, 5, 7))
    out = np.empty((2, 2, 5, 4), dtype=np.float32)
    log_sum_exp = np.empty((2, 2, 5), dtype=np.float32)
    kernels.attention_forward(q, k, v, out, log_sum_exp, mask)
    scores = q.astype(np.float64) @ np.swapaxes(k, -1, -2).astype(np.float64) / 2.0
    with np.errstate(divide="ignore"):
        expected = np.log(np.sum(np.where(mask, np.exp(scores), 0.0), axis=-1))
    np.testing.assert_allclose(log_sum_exp, expected, rtol=1e-6, atol=1e-6)
    assert np.all(log_sum_exp[:, :, 2] == -np.inf)


@pytest.mark.parametrize("kind", ["none", "key_padding", "causal"])
@pytest.mark.parametrize("batch", [2, 1])  # one batch: a head's two query blocks on two threads
def test_same_bits_on_one_and_two_threads(set_threads, kind, batch):
    shape = (batch, 3, 70, 90, 24, 16)
    q, k, v, dy = _rng_arrays(shape, seed=7)
    mask, causal = _mask(kind, shape)
    results = []
    for threads in (1, 2):
        set_threads(threads)
        out = np.empty(shape[:3] + (16,), np.float32)
        probabilities = np.empty(shape[:4], np.float32)
        kernels.attention_forward(q, k, v, out, None, None, causal, probabilities=probabilities)
        grads = [np.empty(a.shape, np.float32) for a in (q, k, v)]
        kernels.attention_backward(dy, q, k, v, out, None, *grads, None, causal,
                                   probabilities=probabilities)
        results.append((ops.scaled_dot_product_attention(q, k, v, mask, causal),
                        *ops.scaled_dot_product_attention_backward(dy, q, k, v, mask, causal),
                        out, probabilities, *grads))
    for one, two in zip(*results):
        assert np.array_equal(one, two)


def test_non_contiguous_and_float64_inputs_are_converted():
    q, k, v, dy = _rng_arrays((2, 2, 6, 5, 4, 3))
    wide = np.zeros((2, 2, 6, 8), dtype=np.float32)
    wide[..., ::2] = q
    y = ops.scaled_dot_product_attention(wide[..., ::2], k.astype(np.float64), v)
    _close(y, reference(q, k, v)[0])


BAD_CALLS = [
    (lambda q, k, v: ops.scaled_dot_product_attention(q[0], k, v), ValueError, "q"),
    (lambda q, k, v: ops.scaled_dot_product_attention(q, k[..., :3], v), ValueError, "k must"),
    (lambda q, k, v: ops.scaled_dot_product_attention(q, k, v[:, :, :2]), ValueError, "v must"),
    (lambda q, k, v: ops.scaled_dot_product_attention(q[:1], k, v), ValueError, "k must"),
    (lambda q, k, v: ops.scaled_dot_product_attention(q.astype(np.int32), k, v), TypeError,
     "q must be a floating-point"),
    (lambda q, k, v: ops.scaled_dot_product_attention(q, k, "v"), TypeError, "v"),
    (lambda q, k, v: ops.scaled_dot_product_attention(q, k, v, np.ones((5, 4), np.int64)),
     TypeError, "attn_mask must be a bool"),
    (lambda q, k, v: ops.scaled_dot_product_attention(q, k, v, np.ones((3, 5), bool)),
     ValueError, "attn_mask must broadcast"),
    (lambda q, k, v: ops.scaled_dot_product_attention(q, k, v, np.ones((5, 4), bool), True),
     ValueError, "attn_mask must be None when is_causal"),
    (lambda q, k, v: ops.scaled_dot_product_attention(q, k, v, is_causal=1), TypeError,
     "is_causal"),
    (lambda q, k, v: ops.scaled_dot_product_attention(q, k, v, scale="a"), TypeError, "scale"),
    (lambda q, k, v: ops.scaled_dot_product_attention(q, k, v, out=np.empty((2, 3, 5, 2),
                                                                              np.float32)),
     ValueError, "out must have shape"),
    (lambda q, k, v: ops.scaled_dot_product_attention_backward(np.ones((2, 3, 5, 2), np.float32),
                                                               q, k, v),
     ValueError, "dy must have"),
]


@pytest.mark.parametrize("call, error, words", BAD_CALLS)
def test_bad_input_raises_naming_the_argument(call, error, words):
    q, k, v, _ = _rng_arrays((2, 3, 5, 4, 6, 7))
    with pytest.raises(error, match=words):
        call(q, k, v)


def test_kernels_refuse_views_they_cannot_walk():
    q, k, v, _ = _rng_arrays((1, 2, 4, 4, 6, 6))
    out = np.empty((1, 2, 4, 6), dtype=np.float32)
    with pytest.raises(ValueError, match="q's last axis must be contiguous"):
        kernels.attention_forward(np.zeros((1, 2, 4, 12), np.float32)[..., ::2], k, v, out)
    with pytest.raises(ValueError, match="token rows must not overlap"):
        kernels.attention_forward(np.broadcast_to(q[:, :, :1], q.shape), k, v, out)
    with pytest.raises(ValueError, match="out must be writable"):
        kernels.attention_forward(q, k, v, np.broadcast_to(out, out.shape))
    with pytest.raises(TypeError, match="k must be an aligned float32"):
        kernels.attention_forward(q, k.astype(np.float64), v, out)
    with pytest.raises(ValueError, match="log_sum_exp must have 8 elements"):
        kernels.attention_forward(q, k, v, out, np.empty(7, np.float32))
    with pytest.raises(ValueError, match="mask must have shape"):
        kernels.attention_forward(q, k, v, out, None, np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="key_counts must have 1 elements"):
        kernels.attention_forward(q, k, v, out, None, None, False, np.array([1, 2]))
    with pytest.raises(ValueError, match="probabilities must have 32 elements"):
        kernels.attention_forward(q, k, v, out, probabilities=np.empty(8, np.float32))
    grads = [np.empty(a.shape, np.float32) for a in (q, k, v)]
    with pytest.raises(TypeError, match="log_sum_exp must be a numpy array"):
        kernels.attention_backward(out, q, k, v, out, None, *grads)


MASK_KINDS_TORCH = ["none", "bool", "float", "key_padding", "causal"]


@pytest.mark.parametrize("kind", MASK_KINDS_TORCH)
@pytest.mark.parametrize("shape", [(2, 3, 5, 7, 8, 8), (1, 4, 33, 20, 32, 16),
                                   (2, 2, 12, 12, 64, 64)])
def test_matches_pytorch_forward_and_autograd(kind, shape):
    torch = pytest.importorskip("torch")
    q, k, v, dy = _rng_arrays(shape, seed=11)
    mask, causal = _mask(kind, shape)
    tensors = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
    torch_mask = None if mask is None else torch.tensor(mask if mask.dtype == bool
                                                        else mask.astype(np.float32))
    expected = torch.nn.functional.scaled_dot_product_attention(*tensors, attn_mask=torch_mask,
                                                                is_causal=causal)
    expected.backward(torch.tensor(dy))
    y = ops.scaled_dot_product_attention(q, k, v, mask, causal)
    _close(y, expected.detach().numpy())
    grads = ops.scaled_dot_product_attention_backward(dy, q, k, v, mask, causal)
    for got, tensor in zip(grads, tensors):
        _close(got, tensor.grad.numpy(), tol=3e-5)


def _end_padding_counts(mask):
    """The numpy statement of attention_key_counts: each row's keys, when
    every row masks exactly its end; else None."""
    padded = mask if mask.dtype == np.bool_ else np.isneginf(mask)
    counts = mask.shape[1] - padded.sum(axis=1)
    ends = np.array_equal(padded, np.arange(mask.shape[1]) >= counts[:, None])
    zeros = mask.dtype == np.bool_ or not np.any((mask != 0) & ~padded)
    return counts if ends and zeros else None


@pytest.mark.parametrize("seed", range(40))
def test_key_counts_of_a_padding_mask(seed):
    from pynn._kernels import core as kernels

    rng = np.random.default_rng(seed)
    rows, keys = int(rng.integers(1, 6)), int(rng.integers(0, 9))
    lengths = rng.integers(0, keys + 1, rows)
    padding = np.arange(keys) >= lengths[:, None]
    if seed % 4 == 1 and keys:  # a hole in some row
        padding[rng.integers(rows), rng.integers(keys)] ^= True
    masks = [padding, np.where(padding, -np.inf, 0.0).astype(np.float32)]
    if seed % 4 == 2 and keys:  # a float mask with a value other than 0 and -inf
        masks[1][rng.integers(rows), rng.integers(keys)] = [-0.0, 1.5, np.nan, np.inf][seed % 3]
    for mask in masks:
        counts = np.full(rows, -7, dtype=np.int64)
        expected = _end_padding_counts(mask)
        assert kernels.attention_key_counts(mask, counts) == (expected is not None)
        if expected is not None:
            np.testing.assert_array_equal(counts, expected)


def test_key_counts_refuse_wrong_arrays():
    from pynn._kernels import core as kernels

    with pytest.raises(TypeError, match="mask must be"):
        kernels.attention_key_counts(np.zeros((2, 3), np.int64), np.empty(2, np.int64))
    with pytest.raises(ValueError, match="counts must have 2 elements"):
        kernels.attention_key_counts(np.zeros((2, 3), bool), np.empty(3, np.int64))
    with pytest.raises(ValueError, match="2-D"):
        kernels.attention_key_counts(np.zeros(3, bool), np.empty(3, np.int64))
