"""Generated good and bad inputs thrown at every public op, layer, loss and
optimizer: good ones agree with a float64 reference, bad ones raise
ValueError/TypeError/IndexError naming the op. Nothing may crash the process.

PYNN_FUZZ_EXAMPLES sets the examples per test (default 600; CI runs the
default, which makes over 5,000 cases in all)."""
import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import pynn
from pynn import layers, ops
from pynn._kernels import core as kernels
from tests.helpers import assert_matmul_close, class_loss64, elementwise_loss64
from tests.test_ops_attention import reference as attention_reference
from tests.test_ops_attention import reference_backward as attention_reference_backward
from tests.test_ops_conv import reference_conv, reference_conv_backward

EXAMPLES = int(os.environ.get("PYNN_FUZZ_EXAMPLES", "600"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
REFUSALS = (ValueError, TypeError, IndexError)

FLOAT_KINDS = ["float32", "float64", "float16", "fortran", "negative_stride", "readonly", "list"]
BAD_KINDS = ["int32", "int64", "bool", "complex64", "object", "string", "none"]


@st.composite
def shapes(draw, min_rank=0, max_rank=4, max_side=5):
    rank = draw(st.integers(min_rank, max_rank))
    return tuple(draw(st.integers(0, max_side)) for _ in range(rank))


@st.composite
def values(draw, shape, specials=True):
    """float64 values of ``shape``: ordinary numbers, with NaN/Inf sometimes."""
    size = math.prod(shape)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    data = rng.normal(scale=draw(st.sampled_from([0.1, 1.0, 30.0])), size=size)
    if specials and size and draw(st.booleans()):
        picks = rng.integers(0, size, size=draw(st.integers(1, 3)))
        data[picks] = rng.choice([np.nan, np.inf, -np.inf], size=len(picks))
    return data.reshape(shape)


def make_input(kind, data):
    """``data`` (float64) dressed as ``kind``: a float layout pynn must accept,
    or a type it must refuse."""
    if kind in ("float32", "float64", "float16"):
        return data.astype(kind)
    if kind == "fortran":
        array = data.astype(np.float32)
        return np.asfortranarray(array) if array.ndim else array
    if kind == "negative_stride":
        if data.ndim == 0:
            return data.astype(np.float32)
        return np.ascontiguousarray(data[::-1], dtype=np.float32)[::-1]
    if kind == "readonly":
        array = data.astype(np.float32)
        array.flags.writeable = False
        return array
    if kind == "list":
        # a list cannot hold an empty multi-axis shape ([] reads back as (0,))
        return data.tolist() if data.size or data.ndim < 2 else data
    if kind == "string":
        return "not an array"
    if kind == "none":
        return None
    if kind == "object":
        return data.astype(object)
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(data).astype(kind)


def as_reference(kind, data):
    """What the op computes on: the input rounded to float32, in float64."""
    source = data.astype(np.float16) if kind == "float16" else data
    return source.astype(np.float32).astype(np.float64)


def expect_refusal(call, where):
    with pytest.raises(REFUSALS) as caught:
        call()
    assert where in str(caught.value), f"message does not name {where}: {caught.value}"


def assert_elementwise(result, reference, rtol=3e-6, atol=1e-6):
    assert result.dtype == np.float32 and result.shape == reference.shape
    with np.errstate(invalid="ignore", over="ignore"):
        np.testing.assert_allclose(result.astype(np.float64), reference, rtol=rtol, atol=atol,
                                   equal_nan=True)


def _erf(x):
    return np.vectorize(math.erf, otypes=[np.float64])(x) if x.size else x


ELEMENTWISE = {
    "relu": (ops.relu, lambda x: np.where(np.isnan(x), x, np.maximum(x, 0))),
    "leaky_relu": (lambda x: ops.leaky_relu(x, negative_slope=0.2),
                   lambda x: np.where(x > 0, x, 0.2 * x)),
    "sigmoid": (ops.sigmoid, lambda x: 0.5 * (1 + np.tanh(x / 2))),
    "tanh": (ops.tanh, np.tanh),
    # the plain formula, as numpy evaluates it: gelu(-inf) = -inf * 0 = NaN
    "gelu": (ops.gelu, lambda x: 0.5 * x * (1 + _erf(x / np.sqrt(2)))),
    # as PyTorch: silu(-inf) = -inf * 0 = NaN, hardswish(-inf) = -inf * 0 = NaN
    "silu": (ops.silu, lambda x: x / (1 + np.exp(-x))),
    "hardswish": (ops.hardswish, lambda x: x * np.clip(x + 3, 0, 6) / 6),
    "hardsigmoid": (ops.hardsigmoid, lambda x: np.clip(x + 3, 0, 6) / 6),
    "relu6": (ops.relu6, lambda x: np.clip(x, 0, 6)),
}


@fuzz
@given(st.sampled_from(sorted(ELEMENTWISE)), st.sampled_from(FLOAT_KINDS + BAD_KINDS),
       shapes(), st.data())
def test_elementwise_ops(name, kind, shape, data):
    op, reference = ELEMENTWISE[name]
    x = data.draw(values(shape))
    if kind in BAD_KINDS:
        expect_refusal(lambda: op(make_input(kind, x)), name)
        return
    with np.errstate(all="ignore"):
        assert_elementwise(op(make_input(kind, x)), reference(as_reference(kind, x)))


def _silu_slope(x):
    s = 1 / (1 + np.exp(-x))  # not 0 where dy = inf meets a very negative x
    return s * (1 + x * (1 - s))


# dy, x -> dx as PyTorch's backward: NaN x passes dy where no comparison holds
ELEMENTWISE_BACKWARD = {
    "silu_backward": lambda dy, x: dy * _silu_slope(x),
    "hardswish_backward": lambda dy, x: np.where(x <= -3, 0, np.where(x < 3, dy * (x / 3 + 0.5), dy)),
    "hardsigmoid_backward": lambda dy, x: np.where((x > -3) & (x < 3), dy / 6, 0),
    "relu6_backward": lambda dy, x: np.where((x <= 0) | (x >= 6), 0, dy),
}


@fuzz
@given(st.sampled_from(sorted(ELEMENTWISE_BACKWARD)), st.sampled_from(FLOAT_KINDS + BAD_KINDS),
       shapes(), st.booleans(), st.data())
def test_elementwise_backward_ops(name, kind, shape, mismatched, data):
    op, reference = getattr(ops, name), ELEMENTWISE_BACKWARD[name]
    x = data.draw(values(shape))
    dy = data.draw(values(shape[:-1] + (shape[-1] + 1,) if mismatched and shape else shape))
    mismatched = dy.shape != x.shape
    if kind in BAD_KINDS or mismatched:
        expect_refusal(lambda: op(make_input(kind, dy), x.astype(np.float32)), name)
        return
    with np.errstate(all="ignore"):
        expected = reference(as_reference(kind, dy), x.astype(np.float32).astype(np.float64))
        assert_elementwise(op(make_input(kind, dy), x.astype(np.float32)), expected,
                           rtol=2e-6, atol=1e-6)


@fuzz
@given(st.sampled_from(["softmax", "log_softmax"]), st.sampled_from(FLOAT_KINDS + BAD_KINDS),
       shapes(min_rank=1), st.integers(-5, 4), st.data())
def test_softmax_family(name, kind, shape, axis, data):
    op = getattr(ops, name)
    x = data.draw(values(shape, specials=False))
    if kind in BAD_KINDS or not -len(shape) <= axis < len(shape):
        expect_refusal(lambda: op(make_input(kind, x), axis=axis), name)
        return
    x64 = as_reference(kind, x)
    shifted = x64 - (np.max(x64, axis=axis, keepdims=True) if x64.size else 0)
    log_sum = np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))
    expected = shifted - log_sum if name == "log_softmax" else np.exp(shifted - log_sum)
    assert_elementwise(op(make_input(kind, x), axis=axis), expected, rtol=2e-5, atol=2e-6)


@fuzz
@given(st.sampled_from(FLOAT_KINDS[:3] + BAD_KINDS), shapes(0, 3, 6), shapes(0, 3, 6),
       st.booleans(), st.booleans(), st.data())
def test_matmul(kind, shape_a, shape_b, trans_a, trans_b, data):
    a = data.draw(values(shape_a, specials=False))
    b = data.draw(values(shape_b, specials=False))
    call = lambda: ops.matmul(make_input(kind, a), make_input(kind, b),  # noqa: E731
                              trans_a=trans_a, trans_b=trans_b)
    good = kind not in BAD_KINDS and len(shape_a) == 2 and len(shape_b) == 2
    a64 = as_reference(kind, a).T if trans_a and good else as_reference(kind, a)
    b64 = as_reference(kind, b).T if trans_b and good else as_reference(kind, b)
    if not good or a64.shape[1] != b64.shape[0]:
        expect_refusal(call, "matmul")
        return
    assert_matmul_close(call(), a64, b64, a64 @ b64, a64.shape[1])


@fuzz
@given(st.sampled_from(FLOAT_KINDS[:3] + BAD_KINDS), shapes(0, 3, 5), st.integers(0, 5),
       st.integers(0, 5), st.sampled_from([None, "good", "short"]), st.data())
def test_linear(kind, x_shape, in_features, out_features, bias_kind, data):
    x = data.draw(values(x_shape, specials=False))
    weight = data.draw(values((out_features, in_features), specials=False))
    bias = None if bias_kind is None else data.draw(
        values((out_features + (bias_kind == "short"),), specials=False))
    args = [make_input(kind, x), weight.astype(np.float32),
            None if bias is None else bias.astype(np.float32)]
    good = (kind not in BAD_KINDS and len(x_shape) >= 1 and x_shape[-1] == in_features
            and bias_kind != "short")
    if not good:
        expect_refusal(lambda: ops.linear(*args), "linear")
        return
    x64, w64 = as_reference(kind, x), weight.astype(np.float32).astype(np.float64)
    expected = x64 @ w64.T + (0 if bias is None else bias.astype(np.float32))
    count = math.prod(x_shape[:-1])
    assert_matmul_close(ops.linear(*args).reshape(count, out_features),
                        x64.reshape(count, in_features), w64.T,
                        expected.reshape(count, out_features), in_features)


@fuzz
@given(st.integers(0, 6), st.integers(1, 6), st.sampled_from(["int64", "int32", "float32", "bool"]),
       st.integers(-3, 3), st.data())
def test_cross_entropy(rows, classes, target_dtype, target_shift, data):
    logits = data.draw(values((rows, classes), specials=False)).astype(np.float32)
    rng = np.random.default_rng(rows * 7 + classes)
    target = rng.integers(0, classes, size=rows) + (target_shift if rows else 0)
    target = target.astype(target_dtype)
    if target_dtype in ("float32", "bool"):
        expect_refusal(lambda: ops.cross_entropy(logits, target), "cross_entropy")
        return
    if rows and (target.min() < 0 or target.max() >= classes):
        with pytest.raises(IndexError, match=str(int(target[(target < 0) | (target >= classes)][0]))):
            ops.cross_entropy(logits, target)
        return
    loss, grad = ops.cross_entropy(logits, target)
    if rows == 0:
        assert math.isnan(loss) and grad.shape == (0, classes)
        return
    z = logits.astype(np.float64)
    log_probs = z - z.max(1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
    expected = -log_probs[np.arange(rows), target].mean()
    assert loss == pytest.approx(expected, rel=1e-5, abs=1e-5)
    onehot = np.eye(classes)[target]
    assert_elementwise(grad, (np.exp(log_probs) - onehot) / rows, rtol=1e-4, atol=1e-6)


@fuzz
@given(st.sampled_from(FLOAT_KINDS[:3] + BAD_KINDS), shapes(1, 3), st.booleans(), st.data())
def test_mse(kind, shape, mismatched, data):
    pred = data.draw(values(shape, specials=False))
    target = data.draw(values(shape[:-1] + (shape[-1] + mismatched,), specials=False))
    if kind in BAD_KINDS or mismatched:
        expect_refusal(lambda: ops.mse(make_input(kind, pred), target.astype(np.float32)), "mse")
        return
    loss, grad = ops.mse(make_input(kind, pred), target.astype(np.float32))
    difference = as_reference(kind, pred) - target.astype(np.float32)
    if pred.size == 0:
        assert math.isnan(loss)
        return
    assert loss == pytest.approx(np.mean(difference**2), rel=1e-5, abs=1e-6)
    assert_elementwise(grad, 2 * difference / pred.size, rtol=1e-5, atol=1e-7)


CLASS_WEIGHTS = {"none": lambda classes, rng: None,
                 "good": lambda classes, rng: (rng.random(classes) + 0.1).astype(np.float32),
                 "float64": lambda classes, rng: rng.random(classes) + 0.1,
                 "long": lambda classes, rng: np.ones(classes + 1, np.float32),
                 "int": lambda classes, rng: np.ones(classes, np.int64),
                 "2d": lambda classes, rng: np.ones((1, classes), np.float32)}


@fuzz
@given(st.integers(0, 6), st.integers(1, 6), st.sampled_from(["cross_entropy", "nll_loss"]),
       st.sampled_from(sorted(CLASS_WEIGHTS)), st.sampled_from([-100, 0, 2, 1.5, True]),
       st.sampled_from([0.0, 0.4, 1.0, -0.1, 1.5, float("nan"), "0.1"]),
       st.sampled_from(["mean", "sum", "none", None]), st.data())
def test_class_index_losses_with_options(rows, classes, name, weight_kind, ignore_index, smoothing,
                                         reduction, data):
    scores = data.draw(values((rows, classes), specials=False)).astype(np.float32)
    rng = np.random.default_rng(rows * 7 + classes)
    target = rng.integers(-1, classes + 1, size=rows)
    if isinstance(ignore_index, int) and not isinstance(ignore_index, bool):
        target[rng.random(rows) < 0.3] = ignore_index
    weight = CLASS_WEIGHTS[weight_kind](classes, rng)
    options = {"weight": weight, "ignore_index": ignore_index, "reduction": reduction}
    if name == "cross_entropy":
        options["label_smoothing"] = smoothing
    op = getattr(ops, name)
    if (weight_kind in ("long", "int", "2d") or reduction not in ("mean", "sum")
            or isinstance(ignore_index, (bool, float))
            or (name == "cross_entropy" and smoothing not in (0.0, 0.4, 1.0))):
        expect_refusal(lambda: op(scores, target, **options), name)
        return
    outside = ((target < 0) | (target >= classes)) & (target != ignore_index)
    if outside.any():
        with pytest.raises(IndexError, match=f"class {target[outside][0]}"):
            op(scores, target, **options)
        return
    loss, grad = op(scores, target, **options)
    expected, expected_grad = class_loss64(
        scores, target, None if weight is None else weight.astype(np.float32), ignore_index,
        options.get("label_smoothing", 0.0), reduction, log_probs=name == "nll_loss")
    if np.isnan(expected):
        assert math.isnan(loss)
    else:
        assert loss == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert_elementwise(grad, expected_grad, rtol=1e-4, atol=1e-6)


@fuzz
@given(st.sampled_from(["mse", "l1", "huber", "bce"]), st.sampled_from(FLOAT_KINDS[:3] + BAD_KINDS),
       shapes(1, 3), st.sampled_from(["mean", "sum", "none"]),
       st.sampled_from([1.0, 0.3, 0.0, -1.0, float("nan"), None]),
       st.sampled_from(["none", "per_position", "one", "wrong"]), st.data())
def test_elementwise_losses_with_options(name, kind, shape, reduction, delta, pos_weight_kind, data):
    pred = data.draw(values(shape, specials=False))
    rng = np.random.default_rng(len(shape) * 11 + sum(shape))
    target = (rng.random(shape) if name == "bce" else rng.normal(size=shape)).astype(np.float32)
    last = shape[-1]
    pos_weight = {"none": None, "per_position": (rng.random(last) * 3).astype(np.float32),
                  "one": np.array([2.5], np.float32),
                  "wrong": np.ones(last + 2, np.float32)}[pos_weight_kind]
    op, where, options = {
        "mse": (ops.mse, "mse", {}), "l1": (ops.l1_loss, "l1_loss", {}),
        "huber": (ops.huber_loss, "huber_loss", {"delta": delta}),
        "bce": (ops.binary_cross_entropy_with_logits, "binary_cross_entropy_with_logits",
                {"pos_weight": pos_weight})}[name]
    call = lambda: op(make_input(kind, pred), target, reduction=reduction, **options)  # noqa: E731
    bad_option = (name == "huber" and not (isinstance(delta, float) and delta > 0)) or (
        name == "bce" and pos_weight_kind == "wrong")
    if kind in BAD_KINDS or reduction == "none" or bad_option:
        expect_refusal(call, where)
        return
    loss, grad = call()
    extra = {"delta": delta} if name == "huber" else {}
    if name == "bce" and pos_weight is not None:
        extra["pos_weight"] = pos_weight
    expected, expected_grad = elementwise_loss64(name, as_reference(kind, pred), target, reduction, **extra)
    if pred.size == 0 and reduction == "mean":
        assert math.isnan(loss)
        return
    assert loss == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert_elementwise(grad, expected_grad, rtol=1e-5, atol=1e-7)


def conv2d_reference(x, weight, bias, stride, padding, dilation, groups):
    n, c, h, w = x.shape
    out_c, c_per_group, kh, kw = weight.shape
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    ow = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    y = np.zeros((n, out_c, oh, ow))
    per_group = out_c // groups
    for o in range(out_c):
        g = o // per_group
        for i in range(kh):
            for j in range(kw):
                window = padded[:, g * c_per_group:(g + 1) * c_per_group,
                                i * dilation:i * dilation + stride * (oh - 1) + 1:stride,
                                j * dilation:j * dilation + stride * (ow - 1) + 1:stride]
                y[:, o] += np.einsum("nchw,c->nhw", window, weight[o, :, i, j])
        if bias is not None:
            y[:, o] += bias[o]
    return y


@fuzz
@given(st.integers(0, 2), st.sampled_from([1, 2, 3, 4]), st.integers(1, 7), st.integers(1, 7),
       st.sampled_from([1, 2, 4]), st.integers(1, 4), st.integers(0, 3), st.integers(0, 3),
       st.integers(0, 2), st.sampled_from([1, 2]), st.booleans(), st.data())
def test_conv2d(batch, channels, height, width, out_channels, kernel, stride, padding, dilation,
                groups, with_bias, data):
    x = data.draw(values((batch, channels, height, width), specials=False)).astype(np.float32)
    in_per_group = max(channels // groups, 1)
    weight = data.draw(values((out_channels, in_per_group, kernel, kernel), specials=False))
    weight = weight.astype(np.float32)
    bias = np.linspace(-1, 1, out_channels, dtype=np.float32) if with_bias else None
    call = lambda: ops.conv2d(x, weight, bias, stride=stride, padding=padding,  # noqa: E731
                              dilation=dilation, groups=groups)
    span = dilation * (kernel - 1) + 1
    good = (stride >= 1 and dilation >= 1 and channels % groups == 0
            and out_channels % groups == 0 and channels // groups == in_per_group
            and height + 2 * padding >= span and width + 2 * padding >= span)
    if not good:
        expect_refusal(call, "conv2d")
        return
    expected = conv2d_reference(x.astype(np.float64), weight.astype(np.float64), bias, stride,
                                padding, dilation, groups)
    result = call()
    assert result.shape == expected.shape
    scale = np.abs(x).max(initial=0) * np.abs(weight).sum(axis=(1, 2, 3)).max() + 1.0
    np.testing.assert_allclose(result, expected, atol=1e-5 * scale, rtol=0)


@fuzz
@given(st.integers(1, 3), st.integers(16, 20), st.integers(5, 40), st.integers(5, 40),
       st.integers(16, 20), st.integers(0, 2), st.booleans(), st.data())
def test_conv2d_winograd_shapes(batch, channels, height, width, out_channels, padding, with_bias,
                                data):
    """3x3 at stride 1 with 16 channels or more: the Winograd path where the
    shape takes it, forward and input gradient (the full correlation of dy
    with the flipped kernel, its channel axes swapped)."""
    x = data.draw(values((batch, channels, height, width), specials=False)).astype(np.float32)
    weight = data.draw(values((out_channels, channels, 3, 3), specials=False)).astype(np.float32)
    bias = np.linspace(-1, 1, out_channels, dtype=np.float32) if with_bias else None
    expected = conv2d_reference(x.astype(np.float64), weight.astype(np.float64), bias, 1,
                                padding, 1, 1)
    result = ops.conv2d(x, weight, bias, padding=padding)
    scale = np.abs(x).max(initial=0) * np.abs(weight).sum(axis=(1, 2, 3)).max() + 1.0
    np.testing.assert_allclose(result, expected, atol=1e-5 * scale, rtol=0)
    dy = data.draw(values(expected.shape, specials=False)).astype(np.float32)
    dx = ops.conv2d_backward(dy, x, weight, padding=padding)[0]
    flipped = weight.astype(np.float64)[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
    expected_dx = conv2d_reference(dy.astype(np.float64), flipped, None, 1, 2 - padding, 1, 1)
    dscale = np.abs(dy).max(initial=0) * np.abs(weight).sum(axis=(0, 2, 3)).max() + 1.0
    np.testing.assert_allclose(dx, expected_dx, atol=1e-5 * dscale, rtol=0)


@fuzz
@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 7), st.integers(1, 7),
       st.integers(0, 4), st.sampled_from([None, 1, 2, 3, 0]), st.integers(0, 2),
       st.booleans(), st.sampled_from(["max", "avg"]), st.data())
def test_pooling(batch, channels, height, width, kernel, stride, padding, ceil_mode, kind, data):
    x = data.draw(values((batch, channels, height, width), specials=False)).astype(np.float32)
    op = ops.max_pool2d if kind == "max" else ops.avg_pool2d
    where = f"{kind}_pool2d"
    call = lambda: op(x, kernel, stride=stride, padding=padding, ceil_mode=ceil_mode)  # noqa: E731
    step = kernel if stride is None else stride

    def out_size(size):
        """PyTorch's rule: in ceil mode the last window must start inside the
        input or its left padding."""
        span = size + 2 * padding - kernel
        count = (-(-span // step) if ceil_mode else span // step) + 1
        if ceil_mode and (count - 1) * step >= size + padding:
            count -= 1
        return count

    if kernel < 1 or step < 1 or 2 * padding > kernel or out_size(height) < 1 \
            or out_size(width) < 1:
        expect_refusal(call, where)
        return
    oh, ow = out_size(height), out_size(width)
    fill = -np.inf if kind == "max" else 0.0
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (padding, padding + kernel),
                                           (padding, padding + kernel)), constant_values=fill)
    expected = np.empty((batch, channels, oh, ow))
    for i in range(oh):
        for j in range(ow):
            window = padded[:, :, i * step:i * step + kernel, j * step:j * step + kernel]
            if kind == "max":
                expected[:, :, i, j] = window.max(axis=(2, 3))
            else:
                # count_include_pad: padding counts, the ceil-mode overhang does not
                rows = min(i * step + kernel, height + 2 * padding) - i * step
                cols = min(j * step + kernel, width + 2 * padding) - j * step
                expected[:, :, i, j] = window.sum(axis=(2, 3)) / (rows * cols)
    result = call()
    assert result.shape == expected.shape
    np.testing.assert_allclose(result, expected, rtol=2e-6, atol=1e-6)


@fuzz
@given(st.sampled_from(FLOAT_KINDS[:3] + BAD_KINDS), shapes(0, 4, 5), st.integers(0, 3),
       st.sampled_from(["good", "none", "short"]), st.sampled_from([1e-5, 0.5, 0.0, -1.0]),
       st.data())
def test_layer_norm(kind, shape, axes, affine, eps, data):
    axes = min(axes, len(shape))  # the trailing axes, or (with 0) a size that may not match
    normalized_shape = shape[len(shape) - axes:] if axes else (data.draw(st.integers(0, 5)),)
    x = data.draw(values(shape, specials=False))
    side = normalized_shape[:-1] + (normalized_shape[-1] + (affine == "short"),)
    weight = None if affine == "none" else data.draw(values(side, specials=False)).astype(np.float32)
    bias = None if affine == "none" else data.draw(values(side, specials=False)).astype(np.float32)
    dy = data.draw(values(shape, specials=False)).astype(np.float32)
    forward = lambda: ops.layer_norm(make_input(kind, x), normalized_shape, weight, bias,  # noqa: E731
                                     eps=eps)
    backward = lambda: ops.layer_norm_backward(dy, make_input(kind, x), normalized_shape,  # noqa: E731
                                               weight, eps=eps, bias=bias)
    count = len(normalized_shape)
    good = (kind not in BAD_KINDS and affine != "short" and eps >= 0 and len(shape) >= count
            and shape[len(shape) - count:] == normalized_shape)
    if not good:
        expect_refusal(forward, "layer_norm")
        expect_refusal(backward, "layer_norm_backward")
        return
    x64 = as_reference(kind, x)
    axes = tuple(range(len(shape) - count, len(shape)))
    with np.errstate(all="ignore"):
        centred = x64 - (x64.mean(axis=axes, keepdims=True) if x64.size else 0)
        invstd = 1 / np.sqrt((centred ** 2).mean(axis=axes, keepdims=True) + eps) if x64.size else 0
        xhat = centred * invstd
        expected = xhat * (1 if weight is None else weight) + (0 if bias is None else bias)
        g = dy * (1 if weight is None else weight)
        expected_dx = invstd * (g - g.mean(axis=axes, keepdims=True)
                                - xhat * (g * xhat).mean(axis=axes, keepdims=True)) if x64.size else g
    # eps = 0 on a constant row divides by zero, in PyTorch too: compared where finite
    finite = np.isfinite(expected) if eps == 0 else np.ones(expected.shape, bool)
    y = forward()
    assert y.shape == x.shape and y.dtype == np.float32
    assert_elementwise(y[finite], expected[finite], rtol=1e-4, atol=1e-4)
    dx, dweight, dbias = backward()
    scale = 1 + np.abs(invstd * g).max(initial=0)
    assert_elementwise(dx[finite], expected_dx[finite], rtol=1e-4, atol=1e-4 * scale)
    if weight is not None and eps > 0:
        leading = tuple(range(len(shape) - count))
        assert_elementwise(dweight, (dy * xhat).sum(axis=leading), rtol=1e-4, atol=1e-4 * scale)
        assert_elementwise(dbias, dy.astype(np.float64).sum(axis=leading), rtol=1e-4, atol=1e-4)


@fuzz
@given(st.integers(0, 2), st.integers(1, 3), st.integers(0, 6), st.integers(0, 6),
       st.integers(1, 5), st.integers(0, 4), st.sampled_from(FLOAT_KINDS[:3] + BAD_KINDS),
       st.sampled_from(["none", "bool", "float", "causal", "causal_and_mask", "int",
                        "wrong_shape", "wrong_head_dim", "wrong_dy"]), st.data())
def test_scaled_dot_product_attention(batch, heads, queries, keys, head_dim, value_dim, kind,
                                      case, data):
    q = data.draw(values((batch, heads, queries, head_dim), specials=False))
    k = data.draw(values((batch, heads, keys, head_dim + (case == "wrong_head_dim")),
                         specials=False)).astype(np.float32)
    v = data.draw(values((batch, heads, keys, value_dim), specials=False)).astype(np.float32)
    dy = data.draw(values((batch, heads, queries, value_dim + (case == "wrong_dy")),
                          specials=False)).astype(np.float32)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    mask = {"bool": rng.random((queries, keys)) < 0.7,
            "float": rng.normal(size=(heads, 1, keys)),
            "causal_and_mask": np.ones((queries, keys), bool),
            "int": np.ones((queries, keys), np.int64),
            "wrong_shape": np.ones((queries + 2, keys), bool)}.get(case)
    causal = case in ("causal", "causal_and_mask")
    forward = lambda: ops.scaled_dot_product_attention(make_input(kind, q), k, v,  # noqa: E731
                                                       mask, causal)
    backward = lambda: ops.scaled_dot_product_attention_backward(  # noqa: E731
        dy, make_input(kind, q), k, v, mask, causal)
    if kind in BAD_KINDS or case in ("causal_and_mask", "int", "wrong_shape", "wrong_head_dim",
                                     "wrong_dy"):
        if case != "wrong_dy" or kind in BAD_KINDS:
            expect_refusal(forward, "scaled_dot_product_attention")
        expect_refusal(backward, "scaled_dot_product_attention_backward")
        return
    q64 = as_reference(kind, q)
    expected, _ = attention_reference(q64, k, v, mask, causal)
    expected_grads = attention_reference_backward(dy, q64, k, v, mask, causal)
    # the float32 scores' rounding, which the softmax turns into relative error
    magnitude = (np.abs(q64) @ np.abs(np.swapaxes(k, -1, -2))).max(initial=0) / np.sqrt(head_dim)
    tol = 8 * (head_dim + 1) * np.finfo(np.float32).eps * (1 + magnitude) + 1e-5
    y = forward()
    assert y.shape == expected.shape and y.dtype == np.float32
    assert_elementwise(y, expected, rtol=tol, atol=tol * (1 + np.abs(v).max(initial=0)))
    for got, want in zip(backward(), expected_grads):
        assert got.dtype == np.float32 and got.shape == want.shape
        assert_elementwise(got, want, rtol=tol, atol=4 * tol * (1 + np.abs(want).max(initial=0)))


def conv1d_reference(x, weight, bias, stride, padding, dilation, groups):
    n, c, length = x.shape
    out_c, c_per_group, kernel = weight.shape
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding)))
    ol = (length + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    y = np.zeros((n, out_c, ol))
    per_group = out_c // groups
    for o in range(out_c):
        g = o // per_group
        for i in range(kernel):
            window = padded[:, g * c_per_group:(g + 1) * c_per_group,
                            i * dilation:i * dilation + stride * (ol - 1) + 1:stride]
            y[:, o] += np.einsum("ncl,c->nl", window, weight[o, :, i])
        if bias is not None:
            y[:, o] += bias[o]
    return y


@fuzz
@given(st.integers(0, 2), st.sampled_from([1, 2, 3, 4]), st.integers(1, 12),
       st.sampled_from([1, 2, 4]), st.integers(1, 5), st.integers(0, 3), st.integers(0, 3),
       st.integers(0, 2), st.sampled_from([1, 2]), st.booleans(), st.data())
def test_conv1d(batch, channels, length, out_channels, kernel, stride, padding, dilation, groups,
                with_bias, data):
    x = data.draw(values((batch, channels, length), specials=False)).astype(np.float32)
    in_per_group = max(channels // groups, 1)
    weight = data.draw(values((out_channels, in_per_group, kernel), specials=False))
    weight = weight.astype(np.float32)
    bias = np.linspace(-1, 1, out_channels, dtype=np.float32) if with_bias else None
    call = lambda: ops.conv1d(x, weight, bias, stride=stride, padding=padding,  # noqa: E731
                              dilation=dilation, groups=groups)
    good = (stride >= 1 and dilation >= 1 and channels % groups == 0
            and out_channels % groups == 0 and channels // groups == in_per_group
            and length + 2 * padding >= dilation * (kernel - 1) + 1)
    if not good:
        expect_refusal(call, "conv1d")
        return
    expected = conv1d_reference(x.astype(np.float64), weight.astype(np.float64), bias, stride,
                                padding, dilation, groups)
    result = call()
    assert result.shape == expected.shape
    scale = np.abs(x).max(initial=0) * np.abs(weight).sum(axis=(1, 2)).max() + 1.0
    np.testing.assert_allclose(result, expected, atol=1e-5 * scale, rtol=0)
    dy = np.ones(result.shape, np.float32)
    dx, dweight, dbias = ops.conv1d_backward(dy, x, weight, stride=stride, padding=padding,
                                             dilation=dilation, groups=groups)
    assert dx.shape == x.shape and dweight.shape == weight.shape
    np.testing.assert_allclose(dbias, np.full(out_channels, batch * result.shape[2]))


@fuzz
@given(st.integers(0, 2), st.integers(2, 5), st.integers(1, 9), st.integers(1, 9),
       st.integers(1, 5), st.integers(1, 5), st.integers(1, 3), st.integers(1, 3),
       st.integers(0, 3), st.integers(0, 3), st.booleans(), st.data())
def test_depthwise_conv2d(batch, channels, height, width, kernel_h, kernel_w, stride_h, stride_w,
                          pad_h, pad_w, relu, data):
    """groups == channels == out_channels: forward (with ReLU) and gradients against float64."""
    x = data.draw(values((batch, channels, height, width), specials=False)).astype(np.float32)
    weight = data.draw(values((channels, 1, kernel_h, kernel_w), specials=False)).astype(np.float32)
    bias = np.linspace(-1, 1, channels, dtype=np.float32)
    geometry = dict(stride=(stride_h, stride_w), padding=(pad_h, pad_w), dilation=(1, 1),
                    groups=channels)
    if height + 2 * pad_h < kernel_h or width + 2 * pad_w < kernel_w:
        expect_refusal(lambda: ops.conv2d(x, weight, bias, **geometry), "conv2d")
        return
    expected = reference_conv(x, weight, bias, **geometry)
    out = np.empty(expected.shape, np.float32)
    kernels.conv2d_forward(x, weight, bias, out, geometry["stride"],
                           geometry["padding"], (1, 1), channels, relu)
    scale = np.abs(x).max(initial=0) * np.abs(weight).sum(axis=(1, 2, 3)).max() + 1.0
    np.testing.assert_allclose(out, np.maximum(expected, 0) if relu else expected,
                               atol=1e-5 * scale, rtol=0)
    dy = data.draw(values(expected.shape, specials=False)).astype(np.float32)
    dx, dweight, dbias = ops.conv2d_backward(dy, x, weight, **geometry)
    rx, rw, rb = reference_conv_backward(dy, x, weight, **geometry)
    np.testing.assert_allclose(dx, rx, atol=1e-5 * (np.abs(dy).max(initial=0) * scale + 1), rtol=0)
    dy_scale = np.abs(dy).sum() * np.abs(x).max(initial=0) + 1.0
    np.testing.assert_allclose(dweight, rw, atol=1e-5 * dy_scale, rtol=0)
    np.testing.assert_allclose(dbias, rb, atol=1e-5 * (np.abs(dy).sum() + 1), rtol=0)


@fuzz
@given(st.integers(0, 2), st.integers(1, 3), st.integers(1, 11), st.integers(0, 4),
       st.sampled_from([None, 1, 2, 3, 0]), st.integers(0, 2), st.integers(0, 3), st.booleans(),
       st.booleans(), st.sampled_from(["max", "avg"]), st.data())
def test_pooling1d(batch, channels, length, kernel, stride, padding, dilation, ceil_mode, include,
                   kind, data):
    x = data.draw(values((batch, channels, length), specials=False)).astype(np.float32)
    if kind == "max":
        call = lambda: ops.max_pool1d(x, kernel, stride=stride, padding=padding,  # noqa: E731
                                      dilation=dilation, ceil_mode=ceil_mode)
    else:
        dilation = 1
        call = lambda: ops.avg_pool1d(x, kernel, stride=stride, padding=padding,  # noqa: E731
                                      ceil_mode=ceil_mode, count_include_pad=include)
    step = kernel if stride is None else stride
    reach = dilation * (kernel - 1) + 1
    if kernel < 1 or step < 1 or dilation < 1 or 2 * padding > kernel:
        expect_refusal(call, f"{kind}_pool1d")
        return
    span = length + 2 * padding - reach
    count = (-(-span // step) if ceil_mode else span // step) + 1
    if ceil_mode and (count - 1) * step >= length + padding:
        count -= 1  # the last window must start inside the input or its left padding
    if count < 1:
        expect_refusal(call, f"{kind}_pool1d")
        return
    fill = -np.inf if kind == "max" else 0.0
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (padding, padding + reach)),
                    constant_values=fill)
    expected = np.empty((batch, channels, count))
    for t in range(count):
        start = t * step
        window = padded[:, :, start:start + reach:dilation]
        if kind == "max":
            expected[:, :, t] = window.max(axis=2)
        else:
            inside = min(start + kernel, padding + length) - max(start, padding)
            divisor = min(start + kernel, length + 2 * padding) - start if include else inside
            expected[:, :, t] = window.sum(axis=2) / divisor
    result = call()
    assert result.shape == expected.shape
    np.testing.assert_allclose(result, expected, rtol=2e-6, atol=1e-6)


OUTPUT_SIZES = [1, 2, 3, 7, 0, -1, (2, None), (None, None), (None, 5), [3, 1], (0, 2), (1, 2, 3),
                (2,), 2.0, "3", None, (True, 2)]


@fuzz
@given(st.integers(0, 2), st.integers(1, 3), st.integers(0, 7), st.integers(0, 7),
       st.sampled_from(OUTPUT_SIZES), st.sampled_from(FLOAT_KINDS + BAD_KINDS), st.data())
def test_adaptive_avg_pool2d(batch, channels, height, width, output_size, kind, data):
    source = data.draw(values((batch, channels, height, width), specials=False))
    x = make_input(kind, source)
    call = lambda: ops.adaptive_avg_pool2d(x, output_size)  # noqa: E731
    pair = output_size if isinstance(output_size, (tuple, list)) else (output_size,) * 2
    good_size = output_size is not None and len(pair) == 2 and all(
        item is None or (type(item) is int and item >= 0) for item in pair)
    if kind in BAD_KINDS or not good_size or height == 0 or width == 0:
        expect_refusal(call, "adaptive_avg_pool2d")
        return
    out_h, out_w = (extent if item is None else item for item, extent in zip(pair, (height, width)))
    reference = as_reference(kind, source)
    expected = np.empty((batch, channels, out_h, out_w))
    dx = np.zeros(reference.shape)
    dy = np.linspace(-1, 1, expected.size).reshape(expected.shape)
    for i in range(out_h):
        h0, h1 = i * height // out_h, -(-(i + 1) * height // out_h)
        for j in range(out_w):
            w0, w1 = j * width // out_w, -(-(j + 1) * width // out_w)
            expected[:, :, i, j] = reference[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
            dx[:, :, h0:h1, w0:w1] += dy[:, :, i, j][:, :, None, None] / ((h1 - h0) * (w1 - w0))
    assert_elementwise(call(), expected, rtol=2e-6, atol=1e-6)
    assert_elementwise(ops.adaptive_avg_pool2d_backward(dy.astype(np.float32), x, output_size),
                       dx, rtol=2e-6, atol=1e-6)


def fused_batch_norm():
    """A BatchNorm1d carrying the ReLU after it, as a model wires one."""
    layer = layers.BatchNorm1d(4)
    layer.activation = "relu"
    return layer


LAYERS = [
    lambda: layers.Linear(4, 3), lambda: layers.ReLU(), lambda: layers.Tanh(),
    lambda: layers.Softmax(), lambda: layers.Flatten(), lambda: layers.Dropout(0.3, seed=0),
    lambda: layers.BatchNorm1d(4), lambda: layers.Conv2d(4, 2, 3, padding=1),
    lambda: layers.MaxPool2d(2), lambda: layers.GlobalAvgPool2d(), lambda: layers.Embedding(5, 3),
    lambda: layers.Reshape((-1, 2)), lambda: layers.Permute((0, 2, 1)), lambda: layers.Identity(),
    lambda: layers.SiLU(), lambda: layers.Hardswish(), lambda: layers.Hardsigmoid(),
    lambda: layers.ReLU6(), lambda: layers.LayerNorm(5), lambda: layers.LayerNorm([4, 5]),
    lambda: layers.Conv1d(4, 2, 3, padding=1), lambda: layers.MaxPool1d(2),
    lambda: layers.AvgPool1d(3, stride=2, padding=1), lambda: layers.AdaptiveAvgPool2d((2, None)),
    lambda: layers.Embedding(5, 3, padding_idx=-2),
    lambda: layers.MultiheadAttention(5, 1), lambda: layers.TransformerEncoderLayer(5, 1, 8),
    lambda: layers.PositionalEmbedding(4, 5), lambda: layers.PaddingMask(),
    lambda: layers.LogSoftmax(), lambda: layers.Affine((2, 1)),
    lambda: layers.Affine((5,), shift=False), lambda: layers.Affine((), scale=False),
    lambda: fused_batch_norm(),
]


@fuzz
@given(st.integers(0, len(LAYERS) - 1), st.sampled_from(FLOAT_KINDS[:3] + BAD_KINDS + ["int64"]),
       shapes(0, 4, 5), st.booleans(), st.data())
def test_layers_answer_or_refuse(index, kind, shape, training, data):
    """Any input: a result of the documented shape, or a clear refusal naming the layer."""
    layer = LAYERS[index]()
    x = make_input(kind, data.draw(values(shape, specials=False)))
    if isinstance(layer, layers.Embedding) and isinstance(x, np.ndarray) and x.dtype.kind == "i":
        x = x % 7  # some in range, some (5, 6) out of range
    name = type(layer).__name__
    try:
        y = layer.forward(x, training=training)
    except REFUSALS as error:
        assert name in str(error), f"message does not name {name}: {error}"
        return
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    assert y.shape == layer.output_shape(np.shape(x))
    if training:
        dx = layer.backward(np.ones_like(y))
        assert dx is None or dx.shape == np.shape(x)


def merge_reference(name, x, axis):
    """What a merge layer computes, in float64 on the float32-rounded inputs."""
    rank = max(item.ndim for item in x)
    x = [item.reshape(item.shape[:1] + (1,) * (rank - item.ndim) + item.shape[1:]) for item in x]
    if name == "Add":
        return sum(x[1:], x[0])
    if name == "Multiply":
        return x[0] * x[1]
    if name == "Concatenate":
        return np.concatenate(x, axis=axis)
    return (x[0] * x[1]).sum(axis=1, keepdims=True)


@st.composite
def merge_inputs(draw, name):
    """The layer's name and 2 or 3 input shapes that often fit together: one
    base shape (mostly [N, D] for Dot), some of its axes set to 1, leading
    axes dropped or an axis resized, and sometimes a shape of its own."""
    base = draw(shapes(2, 2, 4) if name == "Dot" and draw(st.booleans()) else shapes(1, 4, 4))
    result = []
    for _ in range(draw(st.integers(2, 3))):
        shape = list(base)
        change = draw(st.sampled_from(["same", "ones", "resize", "drop", "other"]))
        if change == "ones" and len(shape) > 1:
            shape[draw(st.integers(1, len(shape) - 1))] = 1
        elif change == "resize" and len(shape) > 1:
            shape[draw(st.integers(1, len(shape) - 1))] = draw(st.integers(0, 4))
        elif change == "drop" and len(shape) > 1:
            del shape[1]
        elif change == "other":
            shape = list(draw(shapes(0, 4, 4)))
        result.append(tuple(shape))
    return name, result


@fuzz
@given(st.sampled_from(["Add", "Multiply", "Concatenate", "Dot"]).flatmap(merge_inputs),
       st.sampled_from(FLOAT_KINDS[:3] * 4 + BAD_KINDS), st.integers(-3, 3), st.booleans(), st.data())
def test_merge_layers_answer_or_refuse(case, kind, axis, training, data):
    """Lists of inputs of any shapes: the float64 reference's answer, or a
    refusal naming the layer."""
    name, input_shapes = case
    if name == "Concatenate" and axis == 0:
        axis = 1
    layer = layers.Concatenate(axis=axis) if name == "Concatenate" else getattr(layers, name)()
    sources = [data.draw(values(shape, specials=False)) for shape in input_shapes]
    x = [make_input(kind if position == 0 else "float32", source)
         for position, source in enumerate(sources)]
    try:
        y = layer.forward(x, training=training)
    except REFUSALS as error:
        assert name in str(error), f"message does not name {name}: {error}"
        return
    expected = merge_reference(name, [as_reference(kind, sources[0])] +
                               [as_reference("float32", source) for source in sources[1:]], axis)
    assert y.dtype == np.float32 and y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5 * (1 + np.abs(expected).max(initial=0)))
    if training:
        dx = layer.backward(np.ones_like(y))
        assert [gradient.shape for gradient in dx] == [np.shape(item) for item in x]


@fuzz
@given(shapes(3, 3, 4), st.sampled_from(FLOAT_KINDS[:3] + BAD_KINDS), st.sampled_from(["int64", "int32", "float32", "bool", "short"]),
       st.booleans(), st.data())
def test_mean_pooling_answers_or_refuses(shape, kind, mask_kind, training, data):
    """States of any kind and masks of any kind: the masked mean, or a refusal naming the layer."""
    layer = layers.MeanPooling()
    source = data.draw(values(shape, specials=False))
    states = make_input(kind, source)
    weights = data.draw(hnp.arrays(np.int64, shape[:2] if mask_kind != "short" else shape[:1],
                                   elements=st.integers(0, 1)))
    mask = weights.astype(np.float32 if mask_kind == "float32" else
                          bool if mask_kind == "bool" else np.int32 if mask_kind == "int32" else np.int64)
    try:
        y = layer.forward([states, mask], training=training)
    except REFUSALS as error:
        assert "MeanPooling" in str(error), f"message does not name MeanPooling: {error}"
        return
    reference = as_reference(kind, source)
    expected = (reference * weights[..., None]).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)[:, None]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5 * (1 + np.abs(expected).max(initial=0)))
    if training:
        dx, dmask = layer.backward(np.ones_like(y))
        assert dx.shape == states.shape and dmask is None


PADDING_IDX = st.one_of(st.none(), st.integers(-60, 60), st.integers(-2**70, 2**70), st.booleans(),
                        st.floats(-60, 60), st.sampled_from(["1", [1], np.int32(-3), np.uint8(4)]))


@fuzz
@given(st.integers(1, 50), PADDING_IDX)
def test_embedding_padding_idx_is_accepted_as_pytorch_or_refused(num_embeddings, padding_idx):
    valid = padding_idx is None or (isinstance(padding_idx, (int, np.integer))
                                    and not isinstance(padding_idx, bool)
                                    and -num_embeddings <= padding_idx < num_embeddings)
    if not valid:
        with pytest.raises((ValueError, TypeError), match="Embedding: padding_idx"):
            layers.Embedding(num_embeddings, 2, padding_idx=padding_idx)
        return
    layer = layers.Embedding(num_embeddings, 2, padding_idx=padding_idx)
    row = None if padding_idx is None else int(padding_idx) % num_embeddings
    assert layer.padding_idx == row
    assert layers.Embedding(**layer.config()).padding_idx == row
    if row is not None:
        assert not layer.params["weight"][row].any()


@fuzz
@given(st.integers(1, 12), st.one_of(st.none(), st.integers(-12, 11)),
       st.lists(st.tuples(shapes(0, 3, 4), st.integers(0, 2**32 - 1)), min_size=1, max_size=5),
       st.sampled_from(["int64", "int32", "uint8"]))
def test_embedding_training_steps_answer_or_refuse(num_embeddings, padding_idx, steps, dtype):
    """Any sequence of index batches, some out of range: an IndexError naming the
    value, or the dense gradient of that batch (earlier batches' rows zero) and
    the rows an optimizer step then changes, none but the touched ones."""
    padding_idx = padding_idx if padding_idx is None or -num_embeddings <= padding_idx < num_embeddings else None
    layer = layers.Embedding(num_embeddings, 3, padding_idx=padding_idx)
    row = layer.padding_idx
    optimizer = pynn.optim.Adam(layer, lr=0.1)
    for shape, seed in steps:
        rng = np.random.default_rng(seed)
        low = 0 if dtype == "uint8" else -2
        indices = rng.integers(low, num_embeddings + 2, shape).astype(dtype)
        if (indices < 0).any() or (indices >= num_embeddings).any():
            with pytest.raises(IndexError, match="Embedding: index -?[0-9]+ is out of range"):
                layer.forward(indices, training=True)
            continue
        layer.forward(indices, training=True)
        dy = rng.standard_normal(shape + (3,)).astype(np.float32)
        layer.backward(dy)
        expected = np.zeros((num_embeddings, 3))
        np.add.at(expected, indices.reshape(-1).astype(np.int64), dy.reshape(-1, 3))
        if row is not None:
            expected[row] = 0.0
        np.testing.assert_allclose(layer.grads["weight"], expected, rtol=1e-5, atol=1e-6)
        touched = set(indices.reshape(-1).tolist()) - {row}
        assert sorted(layer.touched_rows("weight").tolist()) == sorted(touched)
        before = layer.params["weight"].copy()
        optimizer.step()
        changed = set(np.flatnonzero(np.any(layer.params["weight"] != before, axis=1)).tolist())
        assert changed <= touched


HYPERPARAMETERS = st.sampled_from([0.1, 0.0, -0.1, float("nan"), float("inf"), "0.1", None, True])


@fuzz
@given(st.sampled_from(["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"]), HYPERPARAMETERS, HYPERPARAMETERS,
       st.sampled_from([(0.9, 0.999), (0.9,), (1.0, 0.5), (-0.1, 0.9), "ab"]))
def test_optimizer_hyperparameters(name, lr, second, betas):
    model = pynn.Sequential(layers.Linear(3, 2))
    cls = getattr(pynn.optim, name)
    keywords = {"SGD": {"momentum": second}, "RMSprop": {"momentum": second},
                "Adagrad": {"lr_decay": second}}.get(name, {"eps": second, "betas": betas})

    def valid_number(value, allow_zero=True):
        return isinstance(value, float) and (value > 0 or (allow_zero and value == 0))

    if float("inf") in (lr, second):
        return  # PyTorch accepts infinite hyperparameters; either answer is defensible
    good = valid_number(lr) and valid_number(second)  # PyTorch: momentum, eps, lr_decay >= 0
    if name in ("Adam", "AdamW"):
        good = good and isinstance(betas, tuple) and len(betas) == 2 and all(0 <= b < 1 for b in betas)
    if not good:
        with pytest.raises(REFUSALS) as caught:
            cls(model, lr=lr, **keywords)
        assert name in str(caught.value)
        return
    optimizer = cls(model, lr=lr, **keywords)
    x = np.ones((2, 3), np.float32)
    model.forward(x, training=True)
    model.backward(np.ones((2, 2), np.float32))
    optimizer.step()
    assert all(np.isfinite(p).all() for _, p in model.named_parameters())


def unaligned_float32(shape, seed=0):
    """A float32 array at an odd address, as a view into a byte buffer can be."""
    values = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    raw = np.zeros(values.nbytes + 1, np.uint8)
    array = raw[1:].view(np.float32).reshape(shape)
    array[...] = values
    assert not array.flags.aligned
    return array


def test_unaligned_inputs_are_copied_and_unaligned_out_refused():
    a, b = unaligned_float32((7, 5)), unaligned_float32((5, 3), seed=1)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    assert_matmul_close(ops.matmul(a, b), a64, b64, a64 @ b64, 5)
    assert_elementwise(ops.tanh(a), np.tanh(a64))
    model = pynn.Sequential(layers.Linear(5, 3), layers.ReLU())
    np.testing.assert_array_equal(model.predict(a), model.predict(np.ascontiguousarray(a)))
    with pytest.raises(ValueError, match="aligned"):
        ops.matmul(a64.astype(np.float32), b64.astype(np.float32), out=unaligned_float32((7, 3)))


@pytest.mark.parametrize("build,name", [
    (lambda: layers.Linear(2**40, 2**40), "Linear"),
    (lambda: layers.Embedding(2**50, 2**20), "Embedding"),
    (lambda: layers.Conv2d(2**30, 2**30, 3), "Conv2d"),
    (lambda: ops.conv2d(np.ones((1, 1, 3, 3), np.float32), np.ones((1, 1, 1, 1), np.float32),
                        padding=2**40), "conv2d"),
    (lambda: layers.Multiply().output_shape([(2, 2**40, 1), (2, 1, 2**40)]), "Multiply"),
    (lambda: layers.Conv1d(2**31, 2**31, 2**10), "Conv1d"),
    (lambda: ops.conv1d(np.ones((1, 1, 3), np.float32), np.ones((1, 1, 1), np.float32),
                        padding=2**62), "conv1d"),
    (lambda: ops.adaptive_avg_pool2d(np.ones((1, 1, 3, 3), np.float32), (2**40, 2**40)),
     "adaptive_avg_pool2d"),
])
def test_sizes_beyond_any_address_space_are_refused_by_name(build, name):
    with pytest.raises(ValueError, match=f"{name}.*address space"):
        build()


class GradientOwners:
    """Gradients without layers, as the optimizer protocol sees them."""

    def __init__(self, grads):
        self.owners = []
        for grad in grads:
            owner = type("Owner", (), {})()
            owner.params, owner.grads, owner.trainable = {"w": np.zeros_like(grad)}, {"w": grad}, True
            self.owners.append(owner)

    def parameter_owners(self):
        return [(f"{index}.", owner) for index, owner in enumerate(self.owners)]


@fuzz
@given(st.data(), st.lists(shapes(1, 3, 6), min_size=0, max_size=4),
       st.sampled_from([2.0, 1.0, 3.0, 0.5, math.inf, 0.0, -1.0, float("nan"), "2", None]),
       st.sampled_from([1.0, 0.0, 1e-3, 1e6, -1.0, float("nan"), math.inf, "1"]))
def test_clip_grad_norm_answers_or_refuses(data, grad_shapes, norm_type, max_norm):
    """Any gradients (NaN and Inf included) and arguments: the float64 norm and
    the gradients scaled by PyTorch's rule, or an error naming the argument."""
    grads = [data.draw(values(shape)).astype(np.float32) for shape in grad_shapes]
    model = GradientOwners(grads)
    before = [g.astype(np.float64) for g in grads]
    bad_max = not isinstance(max_norm, float) or not max_norm >= 0
    bad_type = not isinstance(norm_type, float) or not norm_type > 0
    if bad_max or bad_type:
        with pytest.raises(REFUSALS, match="clip_grad_norm_: " + ("max_norm" if bad_max else "norm_type")):
            pynn.optim.clip_grad_norm_(model, max_norm, norm_type)
        return
    total = pynn.optim.clip_grad_norm_(model, max_norm, norm_type)
    flat = np.concatenate([g.reshape(-1) for g in before]) if before else np.zeros(0)
    with np.errstate(over="ignore"):
        expected = (np.max(np.abs(flat), initial=0.0) if math.isinf(norm_type)
                    else np.sum(np.abs(flat) ** norm_type) ** (1 / norm_type))
    assert total == pytest.approx(expected, rel=1e-9, abs=1e-300, nan_ok=True)
    factor = max_norm / (expected + 1e-6)
    with np.errstate(invalid="ignore"):
        for grad, g in zip(grads, before):
            np.testing.assert_allclose(grad, g * min(factor, 1.0), rtol=1e-6, atol=1e-37)
