"""The layer contract written once in pynn/layers/base.py: the forward
template, the check that backward follows a training forward, and the dy check,
the same for every layer a model file may name."""
import re

import numpy as np
import pytest

from pynn import layers
from pynn.layers.base import LAYER_TYPES

rng = np.random.default_rng(0)
IMAGES = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
ROWS = rng.standard_normal((4, 3)).astype(np.float32)
SIGNALS = rng.standard_normal((2, 3, 7)).astype(np.float32)
TOKENS = rng.standard_normal((2, 5, 4)).astype(np.float32)
ATTENTION_MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
CASES = {
    "Linear": (lambda: layers.Linear(3, 5), ROWS),
    "Flatten": (layers.Flatten, IMAGES),
    "Dropout": (lambda: layers.Dropout(0.3, seed=1), ROWS),
    "Embedding": (lambda: layers.Embedding(7, 2), np.array([[1, 6], [0, 3]])),
    "ReLU": (layers.ReLU, ROWS),
    "LeakyReLU": (layers.LeakyReLU, ROWS),
    "Sigmoid": (layers.Sigmoid, ROWS),
    "Tanh": (layers.Tanh, ROWS),
    "GELU": (layers.GELU, ROWS),
    "Softmax": (layers.Softmax, ROWS),
    "SiLU": (layers.SiLU, ROWS),
    "Hardswish": (layers.Hardswish, ROWS),
    "Hardsigmoid": (layers.Hardsigmoid, ROWS),
    "ReLU6": (layers.ReLU6, ROWS),
    "Conv2d": (lambda: layers.Conv2d(3, 4, 3, padding=1), IMAGES),
    "MaxPool2d": (lambda: layers.MaxPool2d(2), IMAGES),
    "AvgPool2d": (lambda: layers.AvgPool2d(2), IMAGES),
    "GlobalAvgPool2d": (layers.GlobalAvgPool2d, IMAGES),
    "AdaptiveAvgPool2d": (lambda: layers.AdaptiveAvgPool2d((4, None)), IMAGES),
    "Conv1d": (lambda: layers.Conv1d(3, 4, 3, padding=1), SIGNALS),
    "MaxPool1d": (lambda: layers.MaxPool1d(2), SIGNALS),
    "AvgPool1d": (lambda: layers.AvgPool1d(3, stride=2, padding=1), SIGNALS),
    "BatchNorm1d": (lambda: layers.BatchNorm1d(3), ROWS),
    "BatchNorm2d": (lambda: layers.BatchNorm2d(3), IMAGES),
    # merge layers take a list of inputs
    "Add": (layers.Add, [IMAGES, IMAGES[:, :, :1, :1]]),
    "Multiply": (layers.Multiply, [IMAGES[:, :, :1, :1], IMAGES]),
    "Concatenate": (lambda: layers.Concatenate(axis=1), [IMAGES, IMAGES[:, :2]]),
    "Dot": (layers.Dot, [ROWS, ROWS]),
    "Reshape": (lambda: layers.Reshape((-1, 6)), IMAGES),
    "Permute": (lambda: layers.Permute((0, 2, 3, 1)), IMAGES),
    "Identity": (layers.Identity, ROWS),
    "LayerNorm": (lambda: layers.LayerNorm([6, 6]), IMAGES),
    "MultiheadAttention": (lambda: layers.MultiheadAttention(4, 2), TOKENS),
    "TransformerEncoderLayer": (lambda: layers.TransformerEncoderLayer(4, 2, 8), TOKENS),
    "PositionalEmbedding": (lambda: layers.PositionalEmbedding(6, 4), TOKENS),
    "PaddingMask": (layers.PaddingMask, ATTENTION_MASK),
    "MeanPooling": (layers.MeanPooling, [TOKENS, ATTENTION_MASK]),
    "LogSoftmax": (layers.LogSoftmax, ROWS),
    "Affine": (lambda: layers.Affine((3, 1, 1)), IMAGES),
}
# layers whose output is a view of the input, not an output buffer of their own
VIEWS = {"Flatten", "Reshape", "Identity"}


def shape_of(x):
    """What output_shape takes for the input x: a list of shapes for a list."""
    return [item.shape for item in x] if isinstance(x, list) else x.shape


def test_every_layer_type_is_covered():
    assert set(CASES) == set(LAYER_TYPES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_backward_before_a_training_forward_is_refused(name):
    make, x = CASES[name]
    layer = make()
    message = rf"{name}.backward: call forward\(x, training=True\) first"
    with pytest.raises(RuntimeError, match=message):
        layer.backward(np.ones(layer.output_shape(shape_of(x)), np.float32))
    layer.forward(x)  # an inference forward keeps nothing for backward
    with pytest.raises(RuntimeError, match=message):
        layer.backward(np.ones(layer.output_shape(shape_of(x)), np.float32))


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_misshaped_dy_is_refused_with_both_shapes(name):
    make, x = CASES[name]
    layer = make()
    y = layer.forward(x, training=True)
    wrong = np.ones(y.shape[:-1] + (y.shape[-1] + 1,), np.float32)
    expected = (f"{name}.backward: dy must have the forward output's shape {y.shape}, "
                f"got {wrong.shape}")
    with pytest.raises(ValueError, match=re.escape(expected)):
        layer.backward(wrong)
    with pytest.raises(TypeError, match=rf"{name}.backward"):
        layer.backward(np.ones(y.shape, dtype=np.complex64))


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_forward_template_reuses_training_buffers_and_not_inference_ones(name):
    make, x = CASES[name]
    layer = make()
    first = layer.forward(x, training=True)
    second = layer.forward(x, training=True)
    assert first.shape == layer.output_shape(shape_of(x)) and first.dtype == np.float32
    if name not in VIEWS:
        assert second is first  # the layer's own buffer, reused
        inference = layer.forward(x)
        assert not np.shares_memory(inference, first)
    layer.backward(np.ones(first.shape, np.float32))
