"""Layers around token sequences [batch, length, dim] (contract in base.py):
learned absolute positions, the additive key-padding mask an attention mask
gives, and mean pooling under that mask (what sentence encoders return)."""
import numpy as np

from pynn import init
from pynn._checks import as_count, as_float32, as_indices
from pynn._kernels import core as kernels
from pynn.layers.base import Layer


class PositionalEmbedding(Layer):
    """y = x + weight[:length]: a learned vector per position (BERT's and
    GPT-2's absolute positions), for x [batch, length, embedding_dim] with
    length <= max_length; weight [max_length, embedding_dim], N(0, 1) as
    ``Embedding``."""

    def __init__(self, max_length, embedding_dim, name=None):
        super().__init__(name=name)
        self.max_length = as_count(max_length, "PositionalEmbedding", "max_length")
        self.embedding_dim = as_count(embedding_dim, "PositionalEmbedding", "embedding_dim")
        weight = np.empty((self.max_length, self.embedding_dim), dtype=np.float32)
        self.params["weight"] = init.normal_(weight)
        self.grads["weight"] = np.zeros_like(weight)
        self._x = None

    def config(self):
        return {"max_length": self.max_length, "embedding_dim": self.embedding_dim}

    def output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != 3 or input_shape[2] != self.embedding_dim or input_shape[1] > self.max_length:
            raise ValueError(f"PositionalEmbedding: input must be [batch, length <= {self.max_length}, "
                             f"{self.embedding_dim}], got shape {input_shape}")
        return input_shape

    def check_input(self, x):
        x = as_float32(x, "PositionalEmbedding", "x")
        self.output_shape(x.shape)
        return x

    def infer(self, x, out):
        return kernels.broadcast_binary("add", x, self.params["weight"][None, :x.shape[1]], out)

    def backward(self, dy, input_grad=True):
        """dx = dy;  dweight[t] = Σ_batch dy[:, t] for t < length, zero beyond."""
        x = self._kept("_x")
        dy = self._checked_dy(dy, x.shape)
        if self.trainable:
            dweight = self.grads["weight"]
            length = x.shape[1]
            dweight[length:] = 0.0
            kernels.broadcast_reduce(dy, None, dweight[None, :length])
        return dy if input_grad else None


class PaddingMask(Layer):
    """An attention mask [batch, length] (int64, non-zero for a token and zero
    for padding, as tokenizers give it) as the additive key-padding mask
    ``MultiheadAttention`` takes: 0 for a token, -inf for padding."""

    def output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != 2:
            raise ValueError(f"PaddingMask: the attention mask must be [batch, length], got shape "
                             f"{input_shape}")
        return input_shape

    def input_dtypes(self, count):
        return ["int64"] * count

    def check_input(self, x):
        x = as_indices(x, "PaddingMask", "mask")
        self.output_shape(x.shape)
        return x

    def infer(self, x, out):
        return kernels.padding_bias(x, out)

    def backward(self, dy, input_grad=True):
        """The mask is not differentiable: no input gradient."""
        self._checked_dy(dy, self._kept("_y").shape)
        return None


class MeanPooling(Layer):
    """``[states, attention_mask]`` -> the mean of each sequence's token states
    over its tokens, [batch, dim], as sentence-transformers pools: the mask
    (int64 [batch, length], 1 for a token, 0 for padding) weighs the states,
    and the sum is divided by the mask's sum (at least 1e-9)."""
    takes_list = True

    def output_shape(self, input_shape):
        states, mask = _two_shapes(input_shape)
        if len(states) != 3 or tuple(mask) != tuple(states[:2]):
            raise ValueError(f"MeanPooling: takes states [batch, length, dim] and a mask [batch, "
                             f"length], got shapes {tuple(states)} and {tuple(mask)}")
        return (states[0], states[2])

    def input_dtypes(self, count):
        return ["float32", "int64"][:count]

    def check_input(self, x):
        if not isinstance(x, (list, tuple)) or len(x) != 2:
            raise TypeError(f"MeanPooling: takes a list [states, attention_mask], got "
                            f"{type(x).__name__}")
        checked = [as_float32(x[0], "MeanPooling", "states"), as_indices(x[1], "MeanPooling", "mask")]
        self.output_shape([item.shape for item in checked])
        return checked

    def infer(self, x, out):
        return kernels.masked_mean(x[0], x[1], out)

    def backward(self, dy, input_grad=True):
        """d states[n, t] = mask[n, t] dy[n] / Σ_t mask[n, t]; the mask gets none."""
        states, mask = self._kept("_x")
        dy = self._checked_dy(dy, self._kept("_y").shape)
        if not input_grad:
            return None
        return [kernels.masked_mean_backward(dy, mask, self.workspace("dx", states.shape)), None]


def _two_shapes(input_shape):
    if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 2:
        raise ValueError(f"takes two inputs, got {input_shape!r:.80}")
    return tuple(input_shape[0]), tuple(input_shape[1])
