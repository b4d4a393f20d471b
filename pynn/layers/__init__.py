"""Layers (../shared/API.md): each holds ``params``/``grads``/``buffers`` and
runs forward and backward through pynn's kernels."""
from pynn.layers.base import LAYER_TYPES, Layer
from pynn.layers.dense import Dropout, Embedding, Flatten, Linear
from pynn.layers.activations import GELU, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from pynn.layers.conv import AdaptiveAvgPool2d, AvgPool2d, Conv2d, GlobalAvgPool2d, MaxPool2d
from pynn.layers.conv1d import AvgPool1d, Conv1d, MaxPool1d
from pynn.layers.normalization import BatchNorm1d, BatchNorm2d

__all__ = ["Layer", "LAYER_TYPES", "Linear", "Flatten", "Dropout", "Embedding",
           "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "GELU", "Softmax"]
__all__ += ["Conv2d", "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d", "BatchNorm1d", "BatchNorm2d"]
__all__ += ["Conv1d", "MaxPool1d", "AvgPool1d", "AdaptiveAvgPool2d"]
