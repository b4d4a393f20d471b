"""Multi-head attention and the transformer encoder layer, batch-first, with
PyTorch's parameter names (contract in base.py).

``MultiheadAttention`` projects its inputs with one GEMM (self-attention, the
packed [N, T, 3E] projection) or three (cross-attention), hands the heads to
the attention kernel as strided views of those projections (no transposes),
and lets the kernel write each head's output straight into [N, T, E] for the
output projection. Backward runs the same way in reverse."""
import math

import numpy as np

from pynn import init
from pynn._checks import as_count, as_float32, as_mask, empty_float32
from pynn._kernels import core as kernels
from pynn.layers.base import Layer
from pynn.ops.dense import _rows, gemm_into


# Training keeps the attention probabilities for backward up to this many
# floats (64 MiB), which spares backward recomputing them; beyond, one
# log-sum-exp per query row.
KEEP_PROBABILITIES_FLOATS = 1 << 24


def _heads(x, heads):
    """[N, T, E] (any row stride, contiguous features) as [N, heads, T, E / heads]."""
    n, t, e = x.shape
    return x.reshape(n, t, heads, e // heads).transpose(0, 2, 1, 3)


class MultiheadAttention(Layer):
    """Attention over ``num_heads`` heads of ``embed_dim / num_heads`` features:
    softmax(Q Kᵀ / √head_dim + mask) V per head, between the in-projection
    (``in_proj_weight`` [3E, E], ``in_proj_bias``) and the output projection
    (``out_proj.weight``, ``out_proj.bias``). Called on one tensor [N, T, E]
    it is self-attention; on ``[query, key, value]`` cross-attention; a
    key-padding mask [N, S] comes as ``forward(x, key_padding_mask=m)`` or as
    a last list item: bool, True where the key is padding, or float32, added
    to the scores (as PyTorch's ``key_padding_mask``). Returns the attention
    output only (PyTorch's ``need_weights=False``)."""
    takes_list = None  # one tensor, or a list

    def __init__(self, embed_dim, num_heads, bias=True, name=None):
        super().__init__(name=name)
        self.embed_dim = as_count(embed_dim, "MultiheadAttention", "embed_dim")
        self.num_heads = as_count(num_heads, "MultiheadAttention", "num_heads")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"MultiheadAttention: embed_dim ({self.embed_dim}) must be divisible by "
                             f"num_heads ({self.num_heads})")
        if not isinstance(bias, (bool, np.bool_)):
            raise TypeError(f"MultiheadAttention: bias must be True or False, got {bias!r:.40}")
        e = self.embed_dim
        # PyTorch's initialisation: Xavier-uniform in-projection, zero biases,
        # the output projection as a Linear's weight
        tensors = {"in_proj_weight": init.xavier_uniform_(empty_float32((3 * e, e), "MultiheadAttention",
                                                                         "in_proj_weight")),
                   "out_proj.weight": init.kaiming_uniform_(np.empty((e, e), np.float32), a=math.sqrt(5))}
        if bias:
            tensors["in_proj_bias"] = np.zeros(3 * e, dtype=np.float32)
            tensors["out_proj.bias"] = np.zeros(e, dtype=np.float32)
        for key in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"):
            if key in tensors:
                self.params[key] = tensors[key]
                self.grads[key] = np.zeros_like(tensors[key])
        self._x = None

    def config(self):
        return {"embed_dim": self.embed_dim, "num_heads": self.num_heads,
                "bias": "in_proj_bias" in self.params}

    # -- inputs: x, [x, mask], [q, k, v] or [q, k, v, mask] ------------------------
    def input_dtypes(self, count):
        dtypes = ["float32"] * count
        if count in (2, 4):
            dtypes[-1] = ("bool", "float32")
        return dtypes

    def _parts(self, x):
        """``(query, key, value, mask)`` of the accepted input forms."""
        if not isinstance(x, (list, tuple)):
            return x, x, x, None
        if len(x) == 2:
            return x[0], x[0], x[0], x[1]
        if len(x) in (3, 4):
            return x[0], x[1], x[2], x[3] if len(x) == 4 else None
        raise ValueError(f"MultiheadAttention: takes x, [x, mask], [query, key, value] or "
                         f"[query, key, value, mask], got a list of {len(x)}")

    def output_shape(self, input_shape):
        many = isinstance(input_shape, list)
        query, key, value, mask = self._parts(input_shape) if many else (input_shape,) * 3 + (None,)
        e = self.embed_dim
        query, key, value = tuple(query), tuple(key), tuple(value)
        if len(query) != 3 or query[2] != e or len(key) != 3 or key[2] != e or value != key \
                or key[0] != query[0]:
            raise ValueError(f"MultiheadAttention: query [N, T, {e}], key and value [N, S, {e}] "
                             f"expected, got {query}, {key}, {value}")
        if mask is not None and tuple(mask) != key[:2]:
            raise ValueError(f"MultiheadAttention: key_padding_mask must be [N, S] = {key[:2]}, "
                             f"got {tuple(mask)}")
        return query

    def check_input(self, x):
        where = "MultiheadAttention"
        if isinstance(x, (list, tuple)):
            names = ["query", "key", "value"][:len(x) - (len(x) in (2, 4))]
            if len(x) == 2:
                names = ["x"]
            checked = [as_float32(item, where, name) for item, name in zip(x, names)]
            if len(x) in (2, 4):
                checked.append(_checked_mask(x[-1]))
            x = checked
        else:
            x = as_float32(x, where, "x")
        self.output_shape([item.shape for item in x] if isinstance(x, list) else x.shape)
        return x

    def forward(self, x, training=False, key_padding_mask=None):
        if key_padding_mask is not None:
            if isinstance(x, (list, tuple)) and len(x) in (2, 4):
                raise ValueError("MultiheadAttention: the mask is given twice, in the list and as "
                                 "key_padding_mask")
            x = list(x) + [key_padding_mask] if isinstance(x, (list, tuple)) else [x, key_padding_mask]
        x = self.check_input(x)
        query = self._parts(x)[0]
        if not training:
            return self.infer(x, np.empty(query.shape, dtype=np.float32))
        return self._forward_training(x, self.workspace("y", query.shape))

    # -- the computation ---------------------------------------------------------------
    def _project(self, query, key, value, packed):
        """The in-projections: with ``packed`` [N, T, 3E] for self-attention, else
        three fresh arrays; returns the three [N, *, E] views."""
        weight, bias, e = self.params["in_proj_weight"], self.params.get("in_proj_bias"), self.embed_dim
        if packed is not None:
            gemm_into("MultiheadAttention", _rows(query), weight, _rows(packed), False, True, 1.0, 0.0,
                      bias)
            return packed[..., :e], packed[..., e:2 * e], packed[..., 2 * e:]
        views = []
        for part, source in enumerate((query, key, value)):
            target = np.empty(source.shape, dtype=np.float32)
            gemm_into("MultiheadAttention", _rows(source), weight[part * e:(part + 1) * e], _rows(target),
                      False, True, 1.0, 0.0, None if bias is None else bias[part * e:(part + 1) * e])
            views.append(target)
        return views

    def _attend(self, q, k, v, mask, heads_out, kept):
        h = self.num_heads
        kernels.attention_forward(_heads(q, h), _heads(k, h), _heads(v, h), _heads(heads_out, h),
                                  **kept, **_mask_arguments(mask, h, q.shape[1]))

    def infer(self, x, out):
        query, key, value, mask = self._parts(x)
        self_attention = key is query and value is query
        packed = (np.empty(query.shape[:2] + (3 * self.embed_dim,), dtype=np.float32)
                  if self_attention else None)
        q, k, v = self._project(query, key, value, packed)
        heads_out = np.empty(query.shape, dtype=np.float32)
        self._attend(q, k, v, mask, heads_out, {})
        gemm_into("MultiheadAttention", _rows(heads_out), self.params["out_proj.weight"], _rows(out),
                  False, True, 1.0, 0.0, self.params.get("out_proj.bias"))
        return out

    def _forward_training(self, x, out):
        query, key, value, mask = self._parts(x)
        self_attention = key is query and value is query
        packed = (self.workspace("qkv", query.shape[:2] + (3 * self.embed_dim,))
                  if self_attention else None)
        q, k, v = self._project(query, key, value, packed)
        heads_out = self.workspace("heads_out", query.shape)
        n, t, s = query.shape[0], query.shape[1], key.shape[1]
        kept = {"log_sum_exp": self.workspace("log_sum_exp", (n, self.num_heads, t))}
        if n * self.num_heads * t * s <= KEEP_PROBABILITIES_FLOATS:
            kept["probabilities"] = self.workspace("probabilities", (n, self.num_heads, t, s))
        self._attend(q, k, v, mask, heads_out, kept)
        gemm_into("MultiheadAttention", _rows(heads_out), self.params["out_proj.weight"], _rows(out),
                  False, True, 1.0, 0.0, self.params.get("out_proj.bias"))
        self._x, self._qkv, self._heads_out, self._kept_attention = x, (q, k, v), heads_out, kept
        self._y = out
        return out

    def backward(self, dy, input_grad=True):
        """Output projection, attention, then in-projection, each in reverse:
        d heads_out = dy W_out, (dq, dk, dv) from the attention kernel's
        backward, dW_in = dqkvᵀ x, dx = dqkv W_in (summed over q, k and v for
        self-attention)."""
        x = self._kept("_x")
        query, key, value, mask = self._parts(x)
        dy = _rows(self._checked_dy(dy, self._kept("_y").shape))
        q, k, v = self._qkv
        heads_out, trainable, e, h = self._heads_out, self.trainable, self.embed_dim, self.num_heads
        if trainable:
            gemm_into("MultiheadAttention.backward", dy, _rows(heads_out), self.grads["out_proj.weight"],
                      True, False, 1.0, 0.0)
            if "out_proj.bias" in self.grads:
                kernels.column_sums(dy, self.grads["out_proj.bias"])
        d_heads_out = self.workspace("d_heads_out", heads_out.shape)
        gemm_into("MultiheadAttention.backward", dy, self.params["out_proj.weight"], _rows(d_heads_out),
                  False, False, 1.0, 0.0)
        self_attention = key is query and value is query
        if self_attention:
            dqkv = self.workspace("dqkv", query.shape[:2] + (3 * e,))
            dq, dk, dv = dqkv[..., :e], dqkv[..., e:2 * e], dqkv[..., 2 * e:]
        else:
            dq = self.workspace("dq", q.shape)
            dk = self.workspace("dk", k.shape)
            dv = self.workspace("dv", v.shape)
        kernels.attention_backward(_heads(d_heads_out, h), _heads(q, h), _heads(k, h), _heads(v, h),
                                   _heads(heads_out, h), self._kept_attention["log_sum_exp"], _heads(dq, h),
                                   _heads(dk, h), _heads(dv, h),
                                   probabilities=self._kept_attention.get("probabilities"),
                                   **_mask_arguments(mask, h, q.shape[1]))
        weight = self.params["in_proj_weight"]
        if self_attention:
            if trainable:
                gemm_into("MultiheadAttention.backward", _rows(dqkv), _rows(query),
                          self.grads["in_proj_weight"], True, False, 1.0, 0.0)
                if "in_proj_bias" in self.grads:
                    kernels.column_sums(_rows(dqkv), self.grads["in_proj_bias"])
            if not input_grad:
                return None
            dx = self.workspace("dx", query.shape)
            gemm_into("MultiheadAttention.backward", _rows(dqkv), weight, _rows(dx), False, False, 1.0, 0.0)
            return dx if not isinstance(x, list) else [dx, None]
        grads = []
        for part, (source, d_part) in enumerate(zip((query, key, value), (dq, dk, dv))):
            rows = slice(part * e, (part + 1) * e)
            if trainable:
                gemm_into("MultiheadAttention.backward", _rows(d_part), _rows(source),
                          self.grads["in_proj_weight"][rows], True, False, 1.0, 0.0)
                if "in_proj_bias" in self.grads:
                    kernels.column_sums(_rows(d_part), self.grads["in_proj_bias"][rows])
            if input_grad:
                d_source = self.workspace(f"d_input{part}", source.shape)
                gemm_into("MultiheadAttention.backward", _rows(d_part), weight[rows], _rows(d_source),
                          False, False, 1.0, 0.0)
                grads.append(d_source)
        if not input_grad:
            return None
        return grads + [None] * (len(x) - 3)


def _checked_mask(mask):
    """A key-padding mask [N, S]: bool (True where the key is padding) or float32."""
    if isinstance(mask, np.ndarray) and mask.dtype == np.bool_:
        return as_mask(mask, "MultiheadAttention", "key_padding_mask")
    return as_float32(mask, "MultiheadAttention", "key_padding_mask")


def _mask_arguments(mask, heads, queries):
    """A key-padding mask [N, S] as the attention kernel takes it: the number
    of leading keys to attend per sequence when the mask pads at the end (the
    padded keys then cost nothing), else the mask as [N, heads, T, S] by zero
    strides, a bool one turned over since the kernel's True means attend."""
    if mask is None:
        return {}
    counts = np.empty(mask.shape[0], dtype=np.int64)
    if kernels.attention_key_counts(np.ascontiguousarray(mask), counts):
        return {"key_counts": counts}
    if mask.dtype == np.bool_:
        mask = np.logical_not(mask)
    return {"mask": np.broadcast_to(mask[:, None, None, :], (mask.shape[0], heads, queries, mask.shape[1]))}
