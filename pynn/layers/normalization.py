"""Normalisation layers (contract in base.py), as torch.nn.BatchNorm1d/2d and
torch.nn.LayerNorm."""
import numpy as np

from pynn._checks import as_count, as_float32, as_real
from pynn._kernels import core as kernels
from pynn.layers.base import Layer
from pynn.ops.normalization import checked_eps, normalized_shape_of, rows_and_length


class _BatchNorm(Layer):
    """Normalises over every axis but axis 1 (the channels).

    Training: y = (x - mean_B) / √(var_B + eps) · weight + bias with the batch's
    mean and biased variance; the running statistics move by ``momentum``
    (r = (1 - momentum) r + momentum s, the unbiased variance for
    running_var; momentum None: the cumulative average, as PyTorch).
    Inference uses the running statistics.

    ``activation`` (None or "relu") fuses a following ReLU, as
    ``Conv2d.activation``: backward then expects dL/d(relu output), and
    masks it inside its own passes."""
    _ranks = ()

    def __init__(self, num_features, eps=1e-5, momentum=0.1, name=None):
        super().__init__(name=name)
        name = type(self).__name__
        self.num_features = as_count(num_features, name, "num_features")
        self.eps = as_real(eps, name, "eps")
        if not self.eps > 0.0:
            raise ValueError(f"{name}: eps must be > 0, got {self.eps}")
        self.momentum = None if momentum is None else as_real(momentum, name, "momentum")
        if self.momentum is not None and not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"{name}: momentum must be in [0, 1] or None, got {self.momentum}")
        c = self.num_features
        self.params["weight"] = np.ones(c, dtype=np.float32)
        self.params["bias"] = np.zeros(c, dtype=np.float32)
        self.grads["weight"] = np.zeros(c, dtype=np.float32)
        self.grads["bias"] = np.zeros(c, dtype=np.float32)
        self.buffers["running_mean"] = np.zeros(c, dtype=np.float32)
        self.buffers["running_var"] = np.ones(c, dtype=np.float32)
        self.buffers["num_batches_tracked"] = np.zeros((), dtype=np.int64)
        self.activation = None
        self._x = None
        self._relu = False  # whether the last training forward applied the ReLU

    def config(self):
        return {"num_features": self.num_features, "eps": self.eps, "momentum": self.momentum}

    def output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) not in self._ranks or input_shape[1] != self.num_features:
            ranks = " or ".join(f"{rank}-D" for rank in self._ranks)
            raise ValueError(f"{type(self).__name__}: x must be {ranks} with num_features="
                             f"{self.num_features} channels on axis 1, got shape {input_shape}")
        return input_shape

    def check_input(self, x):
        x = as_float32(x, type(self).__name__, "x")
        self.output_shape(x.shape)
        return x

    def infer(self, x, out):
        kernels.batchnorm_eval_forward(x, self.params["weight"], self.params["bias"], self.eps,
                                       self.buffers["running_mean"], self.buffers["running_var"], out)
        if self.activation == "relu":
            kernels.elementwise("relu", out, None, out)
        return out

    def _forward_training(self, x, out):
        """Normalise by the batch's statistics and move the running ones."""
        if x.size // self.num_features <= 1:
            raise ValueError(f"{type(self).__name__}: training needs more than 1 value per "
                             f"channel, got input shape {x.shape}")
        tracked = self.buffers["num_batches_tracked"]
        tracked += 1
        factor = 1.0 / float(tracked) if self.momentum is None else self.momentum
        c = self.num_features
        self._mean = self.workspace("mean", (c,))
        self._invstd = self.workspace("invstd", (c,))
        self._x = x
        self._relu = self.activation == "relu"
        return kernels.batchnorm_train_forward(x, self.params["weight"], self.params["bias"], self.eps,
                                               factor, self.buffers["running_mean"],
                                               self.buffers["running_var"], self._mean, self._invstd,
                                               out, self._relu)

    def backward(self, dy, input_grad=True):
        """dbias = Σ g,  dweight = Σ g x̂,  dx = weight/σ (g - mean(g) - x̂ mean(g x̂)), with
        g = dy, or with a fused ReLU dy masked by the forward's output > 0."""
        x = self._kept("_x")
        dy = self._checked_dy(dy, x.shape)
        dx = self.workspace("dx", x.shape) if input_grad else None
        trainable = self.trainable
        kernels.batchnorm_backward(dy, x, self.params["weight"], self.params["bias"], self._mean,
                                   self._invstd, dx, self.grads["weight"] if trainable else None,
                                   self.grads["bias"] if trainable else None, self._relu)
        return dx


class BatchNorm1d(_BatchNorm):
    """Over [N, C] or [N, C, L]."""
    _ranks = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Over [N, C, H, W]."""
    _ranks = (4,)


class LayerNorm(Layer):
    """Normalises each sample over its trailing ``normalized_shape`` axes:
    y = (x - mean) / √(var + eps) · weight + bias (biased variance). With
    ``elementwise_affine`` the parameters ``weight`` (ones) and, with
    ``bias``, ``bias`` (zeros) have shape ``normalized_shape``."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, name=None):
        super().__init__(name=name)
        self.normalized_shape = normalized_shape_of(normalized_shape, "LayerNorm")
        self.eps = checked_eps(eps, "LayerNorm")
        for flag, value in (("elementwise_affine", elementwise_affine), ("bias", bias)):
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"LayerNorm: {flag} must be a bool, got {type(value).__name__} "
                                f"{value!r:.40}")
        self.elementwise_affine = bool(elementwise_affine)
        self.use_bias = bool(bias)
        if self.elementwise_affine:
            self.params["weight"] = np.ones(self.normalized_shape, dtype=np.float32)
            self.grads["weight"] = np.zeros(self.normalized_shape, dtype=np.float32)
            if self.use_bias:
                self.params["bias"] = np.zeros(self.normalized_shape, dtype=np.float32)
                self.grads["bias"] = np.zeros(self.normalized_shape, dtype=np.float32)
        self._x = self._stats = None

    def config(self):
        return {"normalized_shape": list(self.normalized_shape), "eps": self.eps,
                "elementwise_affine": self.elementwise_affine, "bias": self.use_bias}

    def output_shape(self, input_shape):
        rows_and_length(tuple(input_shape), self.normalized_shape, "LayerNorm")
        return tuple(input_shape)

    def check_input(self, x):
        x = as_float32(x, "LayerNorm", "x")
        self.output_shape(x.shape)
        return x

    def infer(self, x, out):
        rows, length = rows_and_length(x.shape, self.normalized_shape, "LayerNorm")
        return kernels.layer_norm(x, self.params.get("weight"), self.params.get("bias"), self.eps,
                                  out, rows, length)

    def _forward_training(self, x, out):
        """Keeps x and each row's mean and 1 / σ, which backward reuses."""
        rows, length = rows_and_length(x.shape, self.normalized_shape, "LayerNorm")
        self._stats = self.workspace("stats", (rows, 2), np.float64)
        self._x = x
        return kernels.layer_norm(x, self.params.get("weight"), self.params.get("bias"), self.eps,
                                  out, rows, length, self._stats)

    def backward(self, dy, input_grad=True):
        """dx = (g - mean(g) - x̂ mean(g x̂)) / σ with g = dy · weight, per
        sample; dweight = Σ dy x̂ and dbias = Σ dy over the samples."""
        x = self._kept("_x")
        dy = self._checked_dy(dy, x.shape)
        dx = self.workspace("dx", x.shape) if input_grad else None
        trainable = self.trainable
        dweight = self.grads.get("weight") if trainable else None
        dbias = self.grads.get("bias") if trainable else None
        if dx is None and dweight is None and dbias is None:
            return None
        rows, length = rows_and_length(x.shape, self.normalized_shape, "LayerNorm")
        kernels.layer_norm_backward(dy, x, self.params.get("weight"), self.eps, dx, dweight,
                                    dbias, rows, length, self._stats)
        return dx
