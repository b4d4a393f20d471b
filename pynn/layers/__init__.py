"""Layers (../shared/API.md): each holds ``params``/``grads``/``buffers`` and
runs forward and backward through pynn's kernels."""
from pynn.layers.base import LAYER_TYPES, Layer
from pynn.layers.dense import Dropout, Embedding, Flatten, Linear
from pynn.layers.activations import GELU, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from pynn.layers.conv import AvgPool2d, Conv2d, GlobalAvgPool2d, MaxPool2d
from pynn.layers.normalization import BatchNorm1d, BatchNorm2d
from pynn.layers.merge import Add, Concatenate, Dot, Multiply
from pynn.layers.shape import Identity, Permute, Reshape

__all__ = ["Layer", "LAYER_TYPES", "Linear", "Flatten", "Dropout", "Embedding",
           "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "GELU", "Softmax"]
__all__ += ["Conv2d", "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d", "BatchNorm1d", "BatchNorm2d"]
__all__ += ["Add", "Multiply", "Concatenate", "Dot", "Reshape", "Permute", "Identity"]
