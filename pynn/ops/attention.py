"""Scaled dot-product attention and its backward pass (csrc/attention.c), as
torch.nn.functional.scaled_dot_product_attention on [N, heads, tokens,
features] arrays. The kernels underneath (``kernels.attention_forward`` and
``kernels.attention_backward``, pynn/_kernels/attention.pxi) take strided
views, for layers that attend straight out of a packed projection."""
import numpy as np

from pynn._checks import as_float32, check_out
from pynn._kernels import core as kernels


def _checked_flag(is_causal, where):
    if not isinstance(is_causal, (bool, np.bool_)):
        raise TypeError(f"{where}: is_causal must be a bool, got {type(is_causal).__name__}")
    return bool(is_causal)


def _checked_scale(scale, where):
    if scale is None:
        return None
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (int, float, np.number)):
        raise TypeError(f"{where}: scale must be a real number or None, got "
                        f"{type(scale).__name__}")
    scale = float(scale)
    if not np.isfinite(scale):
        raise ValueError(f"{where}: scale must be finite, got {scale}")
    return scale


def _inputs(q, k, v, where):
    """q [N, H, T, D], k [N, H, S, D], v [N, H, S, Dv] as float32, checked."""
    q = as_float32(q, where, "q", ndim=4)
    k = as_float32(k, where, "k", ndim=4)
    v = as_float32(v, where, "v", ndim=4)
    if k.shape[:2] != q.shape[:2] or k.shape[3] != q.shape[3]:
        raise ValueError(f"{where}: k must have shape [N, heads, S, head_dim] = "
                         f"{q.shape[:2] + ('S', q.shape[3])} to match q {q.shape}, "
                         f"got {k.shape}")
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"{where}: v must have shape [N, heads, S, value_dim] = "
                         f"{k.shape[:3] + ('value_dim',)} to match k {k.shape}, got {v.shape}")
    return q, k, v


def _mask(attn_mask, is_causal, shape, where):
    """attn_mask as a bool or float32 view broadcast to [N, H, T, S], or None."""
    if attn_mask is None:
        return None
    if is_causal:
        raise ValueError(f"{where}: attn_mask must be None when is_causal is True "
                         f"(as in PyTorch)")
    if not isinstance(attn_mask, np.ndarray):
        attn_mask = np.asarray(attn_mask)
    if attn_mask.dtype == np.bool_:
        mask = attn_mask
    elif attn_mask.dtype.kind == "f":
        mask = attn_mask.astype(np.float32, copy=False)
    else:
        raise TypeError(f"{where}: attn_mask must be a bool or floating-point array, got "
                        f"dtype {attn_mask.dtype}")
    if not mask.flags.aligned:
        mask = mask.copy()
    try:
        return np.broadcast_to(mask, shape)
    except ValueError:
        raise ValueError(f"{where}: attn_mask must broadcast to [N, heads, T, S] = {shape}, "
                         f"got shape {attn_mask.shape}") from None


def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False, scale=None,
                                 out=None):
    """softmax(q kᵀ scale + mask) v per batch and head, for q [N, heads, T,
    head_dim], k [N, heads, S, head_dim], v [N, heads, S, value_dim] ->
    [N, heads, T, value_dim]. scale defaults to 1 / √head_dim. attn_mask
    broadcasts to [N, heads, T, S]: bool True where attention is allowed, or
    float added to the scores. is_causal lets query t see keys s <= t (the
    upper-left triangle, as PyTorch, also when T != S). A query row that may
    see no key gives zeros, as PyTorch 2.13 does on CPU."""
    where = "scaled_dot_product_attention"
    is_causal = _checked_flag(is_causal, where)
    scale = _checked_scale(scale, where)
    q, k, v = _inputs(q, k, v, where)
    shape = q.shape[:3] + (v.shape[3],)
    mask = _mask(attn_mask, is_causal, q.shape[:3] + (k.shape[2],), where)
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    else:
        inputs = (q, k, v) if mask is None else (q, k, v, mask)
        out = check_out(out, shape, where, inputs=inputs)
    return kernels.attention_forward(q, k, v, out, None, mask, is_causal, None, scale)


def scaled_dot_product_attention_backward(dy, q, k, v, attn_mask=None, is_causal=False,
                                          scale=None):
    """(dq, dk, dv) for dy, the gradient of scaled_dot_product_attention(q,
    k, v, ...)'s output (which it recomputes, with each query row's
    log-sum-exp). Rows that see no key pass no gradient."""
    where = "scaled_dot_product_attention_backward"
    is_causal = _checked_flag(is_causal, where)
    scale = _checked_scale(scale, where)
    q, k, v = _inputs(q, k, v, where)
    shape = q.shape[:3] + (v.shape[3],)
    dy = as_float32(dy, where, "dy", ndim=4)
    if dy.shape != shape:
        raise ValueError(f"{where}: dy must have the output's shape {shape}, got {dy.shape}")
    mask = _mask(attn_mask, is_causal, q.shape[:3] + (k.shape[2],), where)
    out = np.empty(shape, dtype=np.float32)
    log_sum_exp = np.empty(q.shape[:3], dtype=np.float32)
    kernels.attention_forward(q, k, v, out, log_sum_exp, mask, is_causal, None, scale)
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    kernels.attention_backward(dy, q, k, v, out, log_sum_exp, dq, dk, dv, mask, is_causal, None,
                               scale)
    return dq, dk, dv
