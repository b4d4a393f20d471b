"""Stateless kernels: numpy arrays in, numpy arrays out (../shared/API.md)."""
from pynn.ops.dense import matmul
from pynn.ops.dense import linear, linear_backward
from pynn.ops.activations import (
    gelu, gelu_backward, hardsigmoid, hardsigmoid_backward, hardswish, hardswish_backward,
    leaky_relu, leaky_relu_backward, log_softmax, log_softmax_backward, relu, relu6,
    relu6_backward, relu_backward, sigmoid, sigmoid_backward, silu, silu_backward, softmax,
    softmax_backward, tanh, tanh_backward,
)
from pynn.ops.normalization import layer_norm, layer_norm_backward
from pynn.ops.attention import (
    scaled_dot_product_attention, scaled_dot_product_attention_backward,
)
from pynn.ops.losses import (
    binary_cross_entropy_with_logits, cross_entropy, huber_loss, l1_loss, mse, nll_loss,
)
from pynn.ops.conv import (
    adaptive_avg_pool2d, adaptive_avg_pool2d_backward, avg_pool2d, avg_pool2d_backward, conv2d,
    conv2d_backward, global_avg_pool2d, global_avg_pool2d_backward, max_pool2d,
    max_pool2d_backward,
)
from pynn.ops.conv1d import (
    avg_pool1d, avg_pool1d_backward, conv1d, conv1d_backward, max_pool1d, max_pool1d_backward,
)

__all__ = ["matmul"]
__all__ += ["linear", "linear_backward", "relu", "relu_backward", "leaky_relu",
            "leaky_relu_backward", "sigmoid", "sigmoid_backward", "tanh", "tanh_backward",
            "gelu", "gelu_backward", "softmax", "softmax_backward", "log_softmax",
            "log_softmax_backward", "cross_entropy", "mse", "binary_cross_entropy_with_logits"]
__all__ += ["silu", "silu_backward", "hardswish", "hardswish_backward", "hardsigmoid",
            "hardsigmoid_backward", "relu6", "relu6_backward", "layer_norm",
            "layer_norm_backward"]
__all__ += ["nll_loss", "l1_loss", "huber_loss"]
__all__ += ["conv2d", "conv2d_backward", "max_pool2d", "max_pool2d_backward", "avg_pool2d",
            "avg_pool2d_backward", "global_avg_pool2d", "global_avg_pool2d_backward"]
__all__ += ["adaptive_avg_pool2d", "adaptive_avg_pool2d_backward", "conv1d", "conv1d_backward",
            "max_pool1d", "max_pool1d_backward", "avg_pool1d", "avg_pool1d_backward"]
__all__ += ["scaled_dot_product_attention", "scaled_dot_product_attention_backward"]
