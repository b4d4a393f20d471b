"""Layers (../shared/API.md): each holds ``params``/``grads``/``buffers`` and
runs forward and backward through pynn's kernels."""
from pynn.layers.base import LAYER_TYPES, Layer
from pynn.layers.dense import Dropout, Embedding, Linear
from pynn.layers.activations import (
    GELU, Hardsigmoid, Hardswish, LeakyReLU, LogSoftmax, ReLU, ReLU6, Sigmoid, SiLU, Softmax,
    Tanh,
)
from pynn.layers.conv import AdaptiveAvgPool2d, AvgPool2d, Conv2d, GlobalAvgPool2d, MaxPool2d
from pynn.layers.conv1d import AvgPool1d, Conv1d, MaxPool1d
from pynn.layers.normalization import BatchNorm1d, BatchNorm2d, LayerNorm
from pynn.layers.merge import Add, Concatenate, Dot, Multiply
from pynn.layers.shape import Flatten, Identity, Permute, Reshape
from pynn.layers.attention import MultiheadAttention
from pynn.layers.transformer import TransformerEncoderLayer
from pynn.layers.sequence import MeanPooling, PaddingMask, PositionalEmbedding
from pynn.layers.affine import Affine

__all__ = ["Layer", "LAYER_TYPES", "Linear", "Flatten", "Dropout", "Embedding",
           "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "GELU", "Softmax"]
__all__ += ["SiLU", "Hardswish", "Hardsigmoid", "ReLU6"]
__all__ += ["Conv2d", "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d", "BatchNorm1d", "BatchNorm2d",
            "LayerNorm"]
__all__ += ["Conv1d", "MaxPool1d", "AvgPool1d", "AdaptiveAvgPool2d"]
__all__ += ["Add", "Multiply", "Concatenate", "Dot", "Reshape", "Permute", "Identity"]
__all__ += ["MultiheadAttention", "TransformerEncoderLayer", "PositionalEmbedding", "PaddingMask",
            "MeanPooling"]
__all__ += ["LogSoftmax", "Affine"]
