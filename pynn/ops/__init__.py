"""Stateless kernels: numpy arrays in, numpy arrays out (../shared/API.md)."""
from pynn.ops.dense import matmul
from pynn.ops.dense import linear, linear_backward
from pynn.ops.activations import (
    gelu, gelu_backward, leaky_relu, leaky_relu_backward, log_softmax, log_softmax_backward,
    relu, relu_backward, sigmoid, sigmoid_backward, softmax, softmax_backward, tanh,
    tanh_backward,
)
from pynn.ops.losses import binary_cross_entropy_with_logits, cross_entropy, mse

__all__ = ["matmul"]
__all__ += ["linear", "linear_backward", "relu", "relu_backward", "leaky_relu",
            "leaky_relu_backward", "sigmoid", "sigmoid_backward", "tanh", "tanh_backward",
            "gelu", "gelu_backward", "softmax", "softmax_backward", "log_softmax",
            "log_softmax_backward", "cross_entropy", "mse", "binary_cross_entropy_with_logits"]
