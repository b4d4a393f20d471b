"""The transformer encoder layer, batch-first, with PyTorch's keys (contract
in base.py): self-attention and a two-layer feed-forward block, each in a
residual connection with a LayerNorm after it (post-norm, PyTorch's default)
or before it (``norm_first``)."""
import collections.abc

import numpy as np

from pynn._checks import as_count, as_float32, as_real
from pynn._kernels import core as kernels
from pynn.layers.activations import GELU
from pynn.layers.attention import MultiheadAttention, _checked_mask
from pynn.layers.base import Layer
from pynn.layers.dense import Dropout, Linear
from pynn.layers.normalization import LayerNorm


class _Joined(collections.abc.MutableMapping):
    """One of a composite layer's ``params``, ``grads`` or ``buffers``: its
    parts' dicts under ``"<part>.<key>"``, read and written through, so an
    optimizer or a gradient arena that rebinds an entry rebinds the part's."""

    def __init__(self, parts, attribute):
        self._parts, self._attribute = parts, attribute

    def _locate(self, key):
        part, _, inner = key.partition(".")
        layer = self._parts.get(part)
        if layer is None:
            raise KeyError(key)
        inner_dict = getattr(layer, self._attribute)
        if inner not in inner_dict:
            raise KeyError(key)
        return inner_dict, inner

    def __getitem__(self, key):
        inner_dict, inner = self._locate(key)
        return inner_dict[inner]

    def __setitem__(self, key, value):
        inner_dict, inner = self._locate(key)
        inner_dict[inner] = value

    def __delitem__(self, key):
        raise TypeError("a composite layer's tensors cannot be removed")

    def __iter__(self):
        for part, layer in self._parts.items():
            for inner in getattr(layer, self._attribute):
                yield f"{part}.{inner}"

    def __len__(self):
        return sum(len(getattr(layer, self._attribute)) for layer in self._parts.values())


class TransformerEncoderLayer(Layer):
    """``x`` [N, T, d_model] (or ``[x, key_padding_mask]``, the mask as
    ``MultiheadAttention`` takes it) -> [N, T, d_model]:
    post-norm ``x = norm1(x + sa(x)); x = norm2(x + ff(x))``, pre-norm
    ``x = x + sa(norm1(x)); x = x + ff(norm2(x))``, with
    ``ff(x) = linear2(dropout(activation(linear1(x))))`` and dropout after
    ``sa`` and ``ff``; activation "relu" or "gelu" (exact). Its tensors are
    its parts' under PyTorch's names (``self_attn.in_proj_weight``,
    ``linear1.weight``, ``norm2.bias``, ...)."""
    takes_list = None  # x, or [x, key_padding_mask]

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, activation="relu",
                 layer_norm_eps=1e-5, norm_first=False, name=None):
        where = "TransformerEncoderLayer"
        self.d_model = as_count(d_model, where, "d_model")
        self.nhead = as_count(nhead, where, "nhead")
        self.dim_feedforward = as_count(dim_feedforward, where, "dim_feedforward")
        self.dropout_p = as_real(dropout, where, "dropout")
        if activation not in ("relu", "gelu"):
            raise ValueError(f'{where}: activation must be "relu" or "gelu", got {activation!r:.40}')
        self.activation = activation
        self.layer_norm_eps = as_real(layer_norm_eps, where, "layer_norm_eps")
        if not isinstance(norm_first, (bool, np.bool_)):
            raise TypeError(f"{where}: norm_first must be True or False, got {norm_first!r:.40}")
        self.norm_first = bool(norm_first)
        self._parts = {
            "self_attn": MultiheadAttention(self.d_model, self.nhead),
            "linear1": Linear(self.d_model, self.dim_feedforward),
            "dropout": Dropout(self.dropout_p),
            "linear2": Linear(self.dim_feedforward, self.d_model),
            "norm1": LayerNorm(self.d_model, eps=self.layer_norm_eps),
            "norm2": LayerNorm(self.d_model, eps=self.layer_norm_eps),
            "dropout1": Dropout(self.dropout_p),
            "dropout2": Dropout(self.dropout_p),
        }
        if activation == "relu":
            self._parts["linear1"].activation = "relu"  # fused into the GEMM's epilogue
        else:
            self._parts["gelu"] = GELU()
        super().__init__(name=name)
        self.params = _Joined(self._parts, "params")
        self.grads = _Joined(self._parts, "grads")
        self.buffers = _Joined(self._parts, "buffers")
        self._x = None

    def __getattr__(self, name):
        parts = self.__dict__.get("_parts")
        if parts is not None and name in parts:
            return parts[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute {name!r}")

    @property
    def trainable(self):
        return self._trainable

    @trainable.setter
    def trainable(self, value):
        self._trainable = bool(value)
        for part in self._parts.values():
            part.trainable = self._trainable

    def config(self):
        return {"d_model": self.d_model, "nhead": self.nhead, "dim_feedforward": self.dim_feedforward,
                "dropout": self.dropout_p, "activation": self.activation,
                "layer_norm_eps": self.layer_norm_eps, "norm_first": self.norm_first}

    def reseed(self, seed):
        """Reseed the three dropouts (``fit(seed=)``), each from its own stream."""
        for part, stream in zip(("dropout", "dropout1", "dropout2"),
                                np.random.default_rng(seed).spawn(3)):
            self._parts[part].reseed(stream)

    # -- shapes and inputs -------------------------------------------------------------
    def input_dtypes(self, count):
        return ["float32", ("bool", "float32")][:count]

    def output_shape(self, input_shape):
        x, mask = (input_shape if len(input_shape) == 2 else (None, None)) if isinstance(
            input_shape, list) else (input_shape, None)
        x = None if x is None else tuple(x)
        if x is None or len(x) != 3 or x[2] != self.d_model or (
                mask is not None and tuple(mask) != x[:2]):
            raise ValueError(f"TransformerEncoderLayer: takes x [N, T, {self.d_model}] or [x, "
                             f"key_padding_mask [N, T]], got {input_shape}")
        return x

    def check_input(self, x):
        if isinstance(x, (list, tuple)):
            if len(x) != 2:
                raise ValueError(f"TransformerEncoderLayer: takes x or [x, key_padding_mask], got a "
                                 f"list of {len(x)}")
            x = [as_float32(x[0], "TransformerEncoderLayer", "x"), _checked_mask(x[1])]
        else:
            x = as_float32(x, "TransformerEncoderLayer", "x")
        self.output_shape([item.shape for item in x] if isinstance(x, list) else x.shape)
        return x

    def forward(self, x, training=False, src_key_padding_mask=None):
        if src_key_padding_mask is not None:
            if isinstance(x, (list, tuple)):
                raise ValueError("TransformerEncoderLayer: the mask is given twice, in the list and "
                                 "as src_key_padding_mask")
            x = [x, src_key_padding_mask]
        x = self.check_input(x)
        return self._run(x, training)

    def infer(self, x, out):
        """Post-norm inference sums each residual connection inside its
        LayerNorm's pass and reuses the attention's buffer for the feed-forward
        output; pre-norm, or an ``out`` that may share x's memory, runs as
        training does."""
        source = x[0] if isinstance(x, list) else x
        if self.norm_first or np.may_share_memory(out, source):
            out[...] = self._run(x, False)
            return out
        attended = self.self_attn.infer(x, np.empty(source.shape, dtype=np.float32))
        residual = np.empty(source.shape, dtype=np.float32)
        self._normalized_sum(self.norm1, source, attended, residual)
        hidden = self.linear1.infer(residual, np.empty(source.shape[:-1] + (self.dim_feedforward,),
                                                       dtype=np.float32))
        if self.activation == "gelu":
            self.gelu.infer(hidden, hidden)
        self._normalized_sum(self.norm2, residual, self.linear2.infer(hidden, attended), out)
        return out

    def _normalized_sum(self, norm, x, branch, out):
        """out = norm(x + branch), bit for bit add_into then norm.infer."""
        kernels.layer_norm(x, norm.params.get("weight"), norm.params.get("bias"), norm.eps, out,
                           x.size // self.d_model, self.d_model, None, branch)

    # -- the computation ---------------------------------------------------------------
    @staticmethod
    def _step(part, x, training):
        """A part's training forward, or its unchecked inference on our checked input."""
        if training:
            return part.forward(x, training=True)
        shape = part.output_shape([item.shape for item in x] if isinstance(x, list) else x.shape)
        return part.infer(x, np.empty(shape, dtype=np.float32))

    def _feed_forward(self, x, training):
        hidden = self._step(self.linear1, x, training)
        if self.activation == "gelu":
            hidden = self._step(self.gelu, hidden, training)
        if training and self.dropout_p:
            hidden = self.dropout.forward(hidden, training=True)
        out = self._step(self.linear2, hidden, training)
        if training and self.dropout_p:
            out = self.dropout2.forward(out, training=True)
        return out

    def _attention(self, x, mask, training):
        out = self._step(self.self_attn, x if mask is None else [x, mask], training)
        if training and self.dropout_p:
            out = self.dropout1.forward(out, training=True)
        return out

    def _buffer(self, name, shape, training):
        return self.workspace(name, shape) if training else np.empty(shape, dtype=np.float32)

    def _run(self, x, training):
        x, mask = (x[0], x[1]) if isinstance(x, list) else (x, None)
        residual = self._buffer("residual", x.shape, training)
        if self.norm_first:
            kernels.add_into(x, self._attention(self._step(self.norm1, x, training), mask, training),
                             residual)
            out = self._buffer("y", x.shape, training)
            kernels.add_into(residual, self._feed_forward(self._step(self.norm2, residual, training),
                                                          training), out)
        else:
            kernels.add_into(x, self._attention(x, mask, training), residual)
            residual = self._step(self.norm1, residual, training)
            summed = self._buffer("summed", x.shape, training)
            kernels.add_into(residual, self._feed_forward(residual, training), summed)
            out = self._step(self.norm2, summed, training)
        if training:
            self._x = x
            self._masked = mask is not None
        return out

    def _feed_forward_backward(self, dy):
        if self.dropout_p:
            dy = self.dropout2.backward(dy)
        dy = self.linear2.backward(dy)
        if self.dropout_p:
            dy = self.dropout.backward(dy)
        if self.activation == "gelu":
            dy = self.gelu.backward(dy)
        return self.linear1.backward(dy)

    def _attention_backward(self, dy, input_grad):
        if self.dropout_p:
            dy = self.dropout1.backward(dy)
        dx = self.self_attn.backward(dy, input_grad=input_grad)
        return dx[0] if isinstance(dx, list) else dx

    def backward(self, dy, input_grad=True):
        """The residual branches in reverse; each residual sum passes its
        gradient both to the branch and straight through."""
        x = self._kept("_x")
        dy = self._checked_dy(dy, x.shape)
        through = self.workspace("d_residual", x.shape)
        if self.norm_first:
            kernels.add_into(dy, self.norm2.backward(self._feed_forward_backward(dy)), through)
            d_normed = self.norm1.backward(self._attention_backward(through, True), input_grad=input_grad)
            if not input_grad:
                return None
            dx = self.workspace("dx", x.shape)
            kernels.add_into(through, d_normed, dx)
        else:
            d_summed = self.norm2.backward(dy)
            kernels.add_into(d_summed, self._feed_forward_backward(d_summed), through)
            d_residual = self.norm1.backward(through)
            d_attention = self._attention_backward(d_residual, input_grad)
            if not input_grad:
                return None
            dx = self.workspace("dx", x.shape)
            kernels.add_into(d_residual, d_attention, dx)
        return [dx, None] if self._masked else dx

    def _twin(self):
        twin, _ = super()._twin()
        twin._parts = {key: part._twin()[0] for key, part in self._parts.items()}
        twin.params = _Joined(twin._parts, "params")
        twin.grads = _Joined(twin._parts, "grads")
        twin.buffers = _Joined(twin._parts, "buffers")
        return twin, [(self, twin)]
