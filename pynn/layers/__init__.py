"""Layers (../shared/API.md): each holds ``params``/``grads``/``buffers`` and
runs forward and backward through pynn's kernels."""
from pynn.layers.base import LAYER_TYPES, Layer
from pynn.layers.dense import Dropout, Embedding, Flatten, Linear
from pynn.layers.activations import GELU, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh

__all__ = ["Layer", "LAYER_TYPES", "Linear", "Flatten", "Dropout", "Embedding",
           "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "GELU", "Softmax"]
