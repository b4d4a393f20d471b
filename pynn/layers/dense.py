"""Dense layers: Linear, Dropout, Embedding (contract in base.py)."""
import math

import numpy as np

from pynn import init
from pynn._checks import aligned_zeros, as_count, as_float32, as_indices, as_real, empty_float32
from pynn._kernels import core as kernels
from pynn.layers.base import Layer
from pynn.ops.dense import _rows, gemm_into


class Linear(Layer):
    """y = x Wᵀ + b over the last axis; weight [out_features, in_features].

    ``activation`` (None or "relu") fuses a following ReLU into the GEMM's
    epilogue: forward then returns relu(x Wᵀ + b) and backward expects
    dL/d(that). A model sets it when it drops the ReLU layer that follows."""

    def __init__(self, in_features, out_features, bias=True, name=None):
        super().__init__(name=name)
        self.in_features = as_count(in_features, "Linear", "in_features")
        self.out_features = as_count(out_features, "Linear", "out_features")
        if not isinstance(bias, (bool, np.bool_)):
            raise TypeError(f"Linear: bias must be True or False, got {type(bias).__name__} {bias!r}")
        self.activation = None
        weight = empty_float32((self.out_features, self.in_features), "Linear", "weight")
        # PyTorch's default: kaiming_uniform(a=√5), i.e. U(±1/√fan_in), for both tensors
        init.kaiming_uniform_(weight, a=math.sqrt(5))
        self.params["weight"] = weight
        self.grads["weight"] = np.zeros_like(weight)
        if bias:
            bound = 1.0 / math.sqrt(self.in_features)
            self.params["bias"] = init.uniform_(np.empty(self.out_features, np.float32),
                                                -bound, bound)
            self.grads["bias"] = np.zeros(self.out_features, dtype=np.float32)
        self._x = self._y = None

    def config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": "bias" in self.params}

    def output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if not input_shape or input_shape[-1] != self.in_features:
            raise ValueError(f"Linear: input must end in in_features={self.in_features}, "
                             f"got shape {input_shape}")
        return input_shape[:-1] + (self.out_features,)

    def check_input(self, x):
        x = as_float32(x, "Linear", "x")
        self.output_shape(x.shape)
        return x

    def infer(self, x, out):
        gemm_into("Linear", _rows(x), self.params["weight"], _rows(out), False, True, 1.0, 0.0,
                  self.params.get("bias"), None, self.activation == "relu")
        return out

    def kernel_step(self, input_shape):
        return ("gemm", (self.params["weight"], self.params.get("bias"), self.activation == "relu"),
                ((self.params, "weight"), (self.params, "bias")))

    def backward(self, dy, input_grad=True):
        """dZ = dY (masked by y > 0 with a fused ReLU),  dW = dZᵀ X,  db = Σ_rows dZ,  dX = dZ W."""
        x, y = self._kept("_x"), self._kept("_y")
        dz = _rows(self._checked_dy(dy, y.shape))
        dbias = self.grads.get("bias") if self.trainable else None
        if self.activation == "relu":
            dz = kernels.relu_mask_column_sums(dz, _rows(y), self.workspace("dz", dz.shape), dbias)
        elif dbias is not None:
            kernels.column_sums(dz, dbias)
        weight = self.params["weight"]
        if self.trainable:
            gemm_into("Linear.backward", dz, _rows(x), self.grads["weight"], True, False, 1.0, 0.0)
        if not input_grad:
            return None
        dx = self.workspace("dx", x.shape)
        gemm_into("Linear.backward", dz, weight, _rows(dx), False, False, 1.0, 0.0)
        return dx


def _generator_from(seed, where):
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:  # drawn from pynn.init's generator, so manual_seed fixes it
        return np.random.default_rng(init.default_generator().integers(2 ** 63))
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{where}: seed must be a non-negative int or a numpy.random.Generator, "
                        f"got {type(seed).__name__} {seed!r}")
    if seed < 0:
        raise ValueError(f"{where}: seed must be a non-negative int, got {seed}")
    return np.random.default_rng(int(seed))


class Dropout(Layer):
    """Zeroes each element with probability p in training and scales the
    survivors by 1 / (1 - p) (inverted dropout); the identity at inference."""

    def __init__(self, p=0.5, seed=None, name=None):
        super().__init__(name=name)
        p = as_real(p, "Dropout", "p")
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = p
        self.seed = seed if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) else None
        self.generator = _generator_from(seed, "Dropout")
        self._draws = None

    def reseed(self, seed):
        """Restart the mask stream from ``seed`` (an int or a Generator)."""
        self.generator = _generator_from(seed, "Dropout.reseed")

    def config(self):
        return {"p": self.p} if self.seed is None else {"p": self.p, "seed": int(self.seed)}

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def check_input(self, x):
        return as_float32(x, "Dropout", "x")

    def infer(self, x, out):
        return x

    def kernel_step(self, input_shape):
        return "view", (), ()

    def forward(self, x, training=False):
        """The template, except that inference returns ``x`` itself (no copy)."""
        return super().forward(x, training) if training else self.check_input(x)

    def _forward_training(self, x, out):
        draws = self.workspace("draws", x.shape)
        self.generator.random(dtype=np.float32, out=draws)
        self._draws = draws
        return kernels.elementwise("dropout", x, draws, out, self.p)

    def backward(self, dy, input_grad=True):
        """dx = dy [draw >= p] / (1 - p): the forward's mask."""
        draws = self._kept("_draws")
        dy = self._checked_dy(dy, draws.shape)
        if not input_grad:
            return None
        return kernels.elementwise("dropout", dy, draws, self.workspace("dx", dy.shape), self.p)


def _checked_padding_idx(padding_idx, num_embeddings):
    """PyTorch's rule: None, or an int in [-num_embeddings, num_embeddings),
    a negative one counting from the end; returned as the row it names."""
    if padding_idx is None:
        return None
    row = as_count(padding_idx, "Embedding", "padding_idx", minimum=-num_embeddings)
    if row >= num_embeddings:
        raise ValueError(f"Embedding: padding_idx must be in [-{num_embeddings}, {num_embeddings}) "
                         f"for num_embeddings={num_embeddings}, got {row}")
    return row % num_embeddings


class Embedding(Layer):
    """Rows of a [num_embeddings, embedding_dim] table picked by integer
    indices of any shape: output indices.shape + (embedding_dim,).

    ``padding_idx`` as PyTorch's: None or a row (negative counts from the
    end, stored as the row it names); that row starts at zero and its
    gradient is always zero, so optimizers never update it.

    ``grads["weight"]`` is the whole dense gradient, but ``backward`` costs
    O(rows in the batch): it re-zeroes the rows the previous backward wrote,
    then adds into this batch's rows. ``touched_rows("weight")`` lists those
    rows, and optimizers update only them (docs/embeddings.md)."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, name=None):
        super().__init__(name=name)
        self.num_embeddings = as_count(num_embeddings, "Embedding", "num_embeddings")
        self.embedding_dim = as_count(embedding_dim, "Embedding", "embedding_dim")
        self.padding_idx = _checked_padding_idx(padding_idx, self.num_embeddings)
        weight = empty_float32((self.num_embeddings, self.embedding_dim), "Embedding", "weight")
        self.params["weight"] = init.normal_(weight)  # PyTorch's default: N(0, 1)
        if self.padding_idx is not None:
            weight[self.padding_idx] = 0.0
        # on a cache line, as the table: a row of 16k floats then spans k lines, not k + 1
        self.grads["weight"] = aligned_zeros(weight.shape)
        self._indices = None
        self._marks = None           # one zero byte per row, the kernel's scratch
        self._rows = np.empty(0, dtype=np.int64)
        self._row_count = 0          # _rows[:_row_count]: the rows backward wrote ...
        self._rows_written_into = self.grads["weight"]  # ... into this array, zero elsewhere
        self._rows_valid = True

    def config(self):
        config = {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim}
        if self.padding_idx is not None:
            config["padding_idx"] = self.padding_idx
        return config

    def output_shape(self, input_shape):
        return tuple(input_shape) + (self.embedding_dim,)

    def check_input(self, x):
        return as_indices(x, "Embedding", "indices")

    def input_dtypes(self, count):
        return ["int64"] * count

    def infer(self, x, out):
        return kernels.embedding_gather(self.params["weight"], x, out)

    def _forward_training(self, indices, out):
        self.infer(indices, out)  # checks every index before any is kept
        self._indices = indices
        return out

    def backward(self, dy, input_grad=True):
        """dW[i] = Σ of dy over the positions holding index i (none for
        padding_idx); indices get no gradient. Frozen: grads untouched."""
        indices = self._kept("_indices")
        dy = self._checked_dy(dy, self.output_shape(indices.shape))
        if self.trainable:
            self._write_gradient(dy, indices)
        return None

    def _write_gradient(self, dy, indices):
        grad = self.grads["weight"]
        if grad is not self._rows_written_into or not self._rows_valid:
            grad.fill(0.0)  # replaced or written elsewhere: no row is known to be zero
            self._rows_written_into, self._rows_valid, self._row_count = grad, True, 0
        if self._marks is None:
            self._marks = np.zeros(self.num_embeddings, dtype=np.uint8)
        if len(self._rows) < indices.size:
            rows = np.empty(max(indices.size, 2 * len(self._rows)), dtype=np.int64)
            rows[:self._row_count] = self._rows[:self._row_count]
            self._rows = rows
        self._row_count = kernels.embedding_scatter_add(
            dy, indices, grad, self._rows, self._row_count, self._marks, self.padding_idx)

    def _twin(self):
        """A twin with its own record of the rows it writes."""
        twin, pairs = super()._twin()
        twin.grads = {"weight": aligned_zeros(self.grads["weight"].shape)}
        twin._rows, twin._row_count, twin._marks = np.empty(0, dtype=np.int64), 0, None
        twin._rows_written_into = twin.grads["weight"]
        return twin, pairs

    def touched_rows(self, key):
        """The distinct rows of ``grads[key]`` the last backward wrote (int64,
        a view of a reused buffer; none before the first), every other row
        being zero; None when that is not known (``grads`` replaced, or
        written elsewhere since)."""
        if key != "weight" or not self._rows_valid or self.grads["weight"] is not self._rows_written_into:
            return None
        return self._rows[:self._row_count]

    def forget_touched_rows(self):
        self._rows_valid = False  # the next backward zeroes the whole gradient first
