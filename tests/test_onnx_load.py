"""pynn.onnx.load: each supported op on its own against ONNX Runtime, the
shape arithmetic exporters emit, the refusals, and whole PyTorch exports."""
import math
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import pynn
import pynn.onnx
from pynn import layers

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64
RNG = np.random.default_rng(1234)


def weights(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def tensor_info(name, shape, element=FLOAT):
    return helper.make_tensor_value_info(name, element, shape)


def save(tmp_path, nodes, inputs, outputs, constants=(), opset=17, name="model.onnx"):
    """An ONNX file of ``nodes``; inputs/outputs are (name, shape[, element type])
    with "N" for the batch axis; constants a dict name -> array."""
    graph = helper.make_graph(
        nodes, "test", [tensor_info(*item) for item in inputs],
        [tensor_info(*item) for item in outputs],
        [numpy_helper.from_array(value, key) for key, value in dict(constants).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def runtime(path, feeds):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def assert_matches_runtime(path, feeds, atol=1e-5, rtol=1e-4):
    """pynn's predict (and its training forward) agree with ONNX Runtime."""
    model = pynn.onnx.load(path)
    expected = runtime(path, feeds)
    arrays = list(feeds.values())
    got = model.predict(arrays if len(arrays) > 1 else arrays[0])
    got = got if isinstance(got, list) else [got]
    assert len(got) == len(expected)
    for value, reference in zip(got, expected):
        assert value.shape == reference.shape
        np.testing.assert_allclose(value, reference, atol=atol, rtol=rtol)
    forward = model.forward(arrays if len(arrays) > 1 else arrays[0])
    forward = forward if isinstance(forward, list) else [forward]
    for value, reference in zip(forward, expected):
        np.testing.assert_allclose(value, reference, atol=atol, rtol=rtol)
    return model


def node(op, inputs, outputs, name=None, **attributes):
    return helper.make_node(op, inputs, outputs, name=name or f"/{op.lower()}/{op}", **attributes)


def images(n=3, c=4, h=7, w=6):
    return RNG.standard_normal((n, c, h, w)).astype(np.float32)


# -- dense ----------------------------------------------------------------------------
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("bias_shape", [None, (5,), (1, 5), ()])
def test_gemm_with_transb_alpha_beta(tmp_path, trans_b, bias_shape):
    b = weights(5, 3) if trans_b else weights(3, 5)
    constants = {"B": b}
    inputs = ["x", "B"]
    if bias_shape is not None:
        constants["C"] = weights(*bias_shape)
        inputs.append("C")
    path = save(tmp_path, [node("Gemm", inputs, ["y"], transB=trans_b, alpha=0.7, beta=1.3)],
                [("x", ["N", 3])], [("y", ["N", 5])], constants)
    model = assert_matches_runtime(path, {"x": weights(4, 3)})
    assert [type(layer).__name__ for layer in model.layers] == ["Linear"]


@pytest.mark.parametrize("shape", [(4, 3), (4, 2, 3)])
def test_matmul_and_constant_add_become_one_linear(tmp_path, shape):
    nodes = [node("MatMul", ["x", "W"], ["h"], name="/fc/MatMul"),
             node("Add", ["h", "b"], ["y"], name="/fc/Add")]
    path = save(tmp_path, nodes, [("x", ["N", *shape[1:]])], [("y", ["N", *shape[1:-1], 5])],
                {"W": weights(3, 5), "b": weights(5)})
    model = assert_matches_runtime(path, {"x": weights(*shape)})
    assert [type(layer).__name__ for layer in model.layers] == ["Linear"]
    assert sorted(model.state_dict()) == ["fc.MatMul.bias", "fc.MatMul.weight"]


def test_matmul_read_twice_keeps_its_add_apart(tmp_path):
    nodes = [node("MatMul", ["x", "W"], ["h"], name="mm"), node("Add", ["h", "b"], ["a"], name="add"),
             node("Mul", ["h", "a"], ["y"], name="mul")]
    path = save(tmp_path, nodes, [("x", ["N", 3])], [("y", ["N", 5])],
                {"W": weights(3, 5), "b": weights(1, 5)})
    model = assert_matches_runtime(path, {"x": weights(4, 3)})
    assert [type(layer).__name__ for layer in model.layers] == ["Linear", "Affine", "Multiply"]


def test_gather_on_a_constant_table_is_an_embedding(tmp_path):
    path = save(tmp_path, [node("Gather", ["table", "ids"], ["y"], name="emb")],
                [("ids", ["N", 3], INT64)], [("y", ["N", 3, 4])], {"table": weights(10, 4)})
    model = assert_matches_runtime(path, {"ids": RNG.integers(0, 10, (5, 3)).astype(np.int64)})
    assert isinstance(model.get_layer("emb"), layers.Embedding)


# -- convolution and pooling ------------------------------------------------------------
@pytest.mark.parametrize("groups, dilation, stride, pad, bias", [
    (1, 1, 1, 1, True), (2, 2, 2, 2, False), (4, 1, 1, 1, True), (1, 1, 2, 0, True)])
def test_conv2d(tmp_path, groups, dilation, stride, pad, bias):
    constants = {"W": weights(8, 4 // groups, 3, 3)}
    if bias:
        constants["B"] = weights(8)
    path = save(tmp_path, [node("Conv", ["x", *constants], ["y"], group=groups,
                                dilations=[dilation] * 2, strides=[stride] * 2, pads=[pad] * 4,
                                kernel_shape=[3, 3])],
                [("x", ["N", 4, 9, 8])], [("y", None)], constants)
    model = assert_matches_runtime(path, {"x": images(3, 4, 9, 8)})
    assert isinstance(model.layers[0], layers.Conv2d)


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
def test_conv_auto_pad(tmp_path, auto_pad):
    path = save(tmp_path, [node("Conv", ["x", "W"], ["y"], auto_pad=auto_pad, strides=[1, 2])],
                [("x", ["N", 2, 7, 9])], [("y", None)], {"W": weights(3, 2, 3, 3)})
    assert_matches_runtime(path, {"x": images(2, 2, 7, 9)})


def test_uneven_same_padding_is_refused(tmp_path):
    path = save(tmp_path, [node("Conv", ["x", "W"], ["y"], name="c", auto_pad="SAME_UPPER")],
                [("x", ["N", 2, 6, 6])], [("y", None)], {"W": weights(3, 2, 2, 2)})
    with pytest.raises(pynn.ModelFormatError, match=r"'c' \(Conv, opset 17\).*unevenly"):
        pynn.onnx.load(path)


def test_a_small_scale_over_a_huge_layer_norm_is_refused(tmp_path):
    path = save(tmp_path, [node("LayerNormalization", ["x", "s"], ["y"], name="ln")],
                [("x", ["N", 1 << 20])], [("y", None)], {"s": weights(1)})
    with pytest.raises(pynn.ModelFormatError, match=r"'ln' .*larger than the file's scale"):
        pynn.onnx.load(path)


@pytest.mark.parametrize("groups, dilation, stride, pad", [(1, 1, 1, 1), (3, 2, 2, 2)])
def test_conv1d(tmp_path, groups, dilation, stride, pad):
    constants = {"W": weights(6, 3 // groups, 3), "B": weights(6)}
    path = save(tmp_path, [node("Conv", ["x", "W", "B"], ["y"], group=groups, dilations=[dilation],
                                strides=[stride], pads=[pad, pad])],
                [("x", ["N", 3, 11])], [("y", None)], constants)
    model = assert_matches_runtime(path, {"x": weights(2, 3, 11)})
    assert isinstance(model.layers[0], layers.Conv1d)


def test_conv_with_asymmetric_pads_is_refused(tmp_path):
    path = save(tmp_path, [node("Conv", ["x", "W"], ["y"], name="c", pads=[0, 0, 1, 1])],
                [("x", ["N", 4, 5, 5])], [("y", None)], {"W": weights(2, 4, 3, 3)})
    with pytest.raises(pynn.ModelFormatError, match=r"node 'c' \(Conv, opset 17\).*asymmetric"):
        pynn.onnx.load(path)


@pytest.mark.parametrize("rank", [2, 3, 4])
def test_batch_normalization(tmp_path, rank):
    shape = {2: ["N", 4], 3: ["N", 4, 5], 4: ["N", 4, 5, 3]}[rank]
    constants = {"scale": weights(4), "bias": weights(4), "mean": weights(4),
                 "var": np.abs(weights(4)) + 0.5}
    path = save(tmp_path, [node("BatchNormalization", ["x", *constants], ["y"], epsilon=1e-3,
                                momentum=0.8)],
                [("x", shape)], [("y", shape)], constants, opset=15)
    x = RNG.standard_normal([3] + shape[1:]).astype(np.float32)
    model = assert_matches_runtime(path, {"x": x})
    layer = model.layers[0]
    assert isinstance(layer, layers.BatchNorm2d if rank == 4 else layers.BatchNorm1d)
    np.testing.assert_array_equal(layer.buffers["running_var"], constants["var"])
    assert layer.momentum == pytest.approx(0.2)


@pytest.mark.parametrize("kernel, stride, pad, dilation, ceil", [
    (2, 2, 0, 1, 0), (3, 2, 1, 1, 0), (3, 1, 1, 2, 0), (3, 2, 0, 1, 1)])
def test_max_pool(tmp_path, kernel, stride, pad, dilation, ceil):
    for spatial, shape in ((2, ["N", 3, 9, 8]), (1, ["N", 3, 11])):
        path = save(tmp_path, [node("MaxPool", ["x"], ["y"], kernel_shape=[kernel] * spatial,
                                    strides=[stride] * spatial, pads=[pad] * 2 * spatial,
                                    dilations=[dilation] * spatial, ceil_mode=ceil)],
                    [("x", shape)], [("y", None)], name=f"pool{spatial}.onnx")
        assert_matches_runtime(path, {"x": RNG.standard_normal([2] + shape[1:]).astype(np.float32)})


@pytest.mark.parametrize("kernel, stride, pad, include, ceil", [
    (2, 2, 0, 0, 0), (3, 2, 1, 0, 0), (3, 2, 1, 1, 0), (3, 1, 1, 1, 0)])
def test_average_pool(tmp_path, kernel, stride, pad, include, ceil):
    for spatial, shape in ((2, ["N", 3, 9, 8]), (1, ["N", 3, 11])):
        path = save(tmp_path, [node("AveragePool", ["x"], ["y"], kernel_shape=[kernel] * spatial,
                                    strides=[stride] * spatial, pads=[pad] * 2 * spatial,
                                    count_include_pad=include, ceil_mode=ceil)],
                    [("x", shape)], [("y", None)], name=f"pool{spatial}.onnx")
        assert_matches_runtime(path, {"x": RNG.standard_normal([2] + shape[1:]).astype(np.float32)})


@pytest.mark.parametrize("shape", [["N", 4, 5, 3], ["N", 4, 7]])
def test_global_average_pool_keeps_the_trailing_ones(tmp_path, shape):
    path = save(tmp_path, [node("GlobalAveragePool", ["x"], ["y"], name="gap")],
                [("x", shape)], [("y", ["N", 4] + [1] * (len(shape) - 2))])
    model = assert_matches_runtime(path, {"x": RNG.standard_normal([2] + shape[1:]).astype(np.float32)})
    assert any(isinstance(layer, layers.GlobalAvgPool2d) for layer in model.layers)


@pytest.mark.parametrize("opset, keepdims", [(13, 1), (13, 0), (18, 1)])
def test_reduce_mean_over_the_spatial_axes(tmp_path, opset, keepdims):
    constants = {}
    if opset >= 18:
        constants["axes"] = np.array([2, 3], np.int64)
        reduce = node("ReduceMean", ["x", "axes"], ["y"], keepdims=keepdims)
    else:
        reduce = node("ReduceMean", ["x"], ["y"], axes=[-2, -1], keepdims=keepdims)
    path = save(tmp_path, [reduce], [("x", ["N", 4, 5, 3])], [("y", None)], constants, opset)
    assert_matches_runtime(path, {"x": images(2, 4, 5, 3)})


# -- activations -------------------------------------------------------------------------
ACTIVATIONS = [
    ("Relu", {}, 17), ("LeakyRelu", {"alpha": 0.2}, 17), ("Sigmoid", {}, 17), ("Tanh", {}, 17),
    ("Gelu", {}, 20), ("Gelu", {"approximate": "tanh"}, 20), ("HardSwish", {}, 17),
    ("HardSigmoid", {"alpha": 1.0 / 6.0, "beta": 0.5}, 17), ("Softmax", {}, 13),
    ("Softmax", {"axis": 1}, 17), ("LogSoftmax", {}, 17), ("LogSoftmax", {"axis": -1}, 21),
]


@pytest.mark.parametrize("op, attributes, opset", ACTIVATIONS)
def test_activations(tmp_path, op, attributes, opset):
    path = save(tmp_path, [node(op, ["x"], ["y"], **attributes)], [("x", ["N", 3, 5])],
                [("y", ["N", 3, 5])], opset=opset)
    assert_matches_runtime(path, {"x": 4 * weights(4, 3, 5)})


@pytest.mark.parametrize("low, high, kind", [(0.0, 6.0, "ReLU6"), (0.0, None, "ReLU")])
def test_clip_as_relu6_or_relu(tmp_path, low, high, kind):
    constants = {"low": np.array(low, np.float32)}
    inputs = ["x", "low"]
    if high is not None:
        constants["high"] = np.array(high, np.float32)
        inputs.append("high")
    path = save(tmp_path, [node("Clip", inputs, ["y"])], [("x", ["N", 5])], [("y", ["N", 5])],
                constants)
    model = assert_matches_runtime(path, {"x": 8 * weights(4, 5)})
    assert type(model.layers[0]).__name__ == kind


def test_other_clips_are_refused(tmp_path):
    constants = {"low": np.array(-1.0, np.float32), "high": np.array(1.0, np.float32)}
    path = save(tmp_path, [node("Clip", ["x", "low", "high"], ["y"], name="clamp")],
                [("x", ["N", 5])], [("y", ["N", 5])], constants)
    with pytest.raises(pynn.ModelFormatError, match=r"'clamp' \(Clip, opset 17\)"):
        pynn.onnx.load(path)


@pytest.mark.parametrize("form", ["mul_last", "half_first", "mul_by_inverse"])
def test_the_erf_pattern_is_one_exact_gelu(tmp_path, form):
    if form == "half_first":
        nodes = [node("Div", ["x", "sqrt2"], ["d"], name="/act/Div"),
                 node("Erf", ["d"], ["e"], name="/act/Erf"),
                 node("Add", ["e", "one"], ["a"], name="/act/Add"),
                 node("Mul", ["x", "half"], ["h"], name="/act/Mul"),
                 node("Mul", ["h", "a"], ["y"], name="/act/Mul_1")]
    else:
        scaled = (node("Mul", ["x", "inv_sqrt2"], ["d"], name="/act/Scale") if form == "mul_by_inverse"
                  else node("Div", ["x", "sqrt2"], ["d"], name="/act/Div"))
        nodes = [scaled, node("Erf", ["d"], ["e"], name="/act/Erf"),
                 node("Add", ["one", "e"], ["a"], name="/act/Add"),
                 node("Mul", ["x", "a"], ["m"], name="/act/Mul"),
                 node("Mul", ["m", "half"], ["y"], name="/act/Mul_1")]
    constants = {"sqrt2": np.array(math.sqrt(2), np.float32), "one": np.array(1, np.float32),
                 "half": np.array(0.5, np.float32),
                 "inv_sqrt2": np.array(1 / math.sqrt(2), np.float32)}
    path = save(tmp_path, nodes, [("x", ["N", 6])], [("y", ["N", 6])], constants)
    model = assert_matches_runtime(path, {"x": 3 * weights(5, 6)})
    assert [type(layer).__name__ for layer in model.layers] == ["GELU"]


@pytest.mark.parametrize("order", [["x", "s"], ["s", "x"]])
def test_sigmoid_times_its_input_is_one_silu(tmp_path, order):
    nodes = [node("Sigmoid", ["x"], ["s"], name="/act/Sigmoid"),
             node("Mul", order, ["y"], name="/act/Mul")]
    path = save(tmp_path, nodes, [("x", ["N", 6])], [("y", ["N", 6])])
    model = assert_matches_runtime(path, {"x": 3 * weights(5, 6)})
    assert [(layer.name, type(layer).__name__) for layer in model.layers] == [("act.SiLU", "SiLU")]


def test_erf_alone_is_refused(tmp_path):
    path = save(tmp_path, [node("Erf", ["x"], ["y"], name="e")], [("x", ["N", 6])], [("y", ["N", 6])])
    with pytest.raises(pynn.ModelFormatError, match=r"'e' \(Erf, opset 17\).*not supported"):
        pynn.onnx.load(path)


# -- normalisation -------------------------------------------------------------------------
@pytest.mark.parametrize("axis, bias", [(-1, True), (-2, False)])
def test_layer_normalization(tmp_path, axis, bias):
    shape = (3, 5) if axis == -2 else (5,)
    constants = {"scale": weights(*shape)}
    if bias:
        constants["bias"] = weights(*shape)
    path = save(tmp_path, [node("LayerNormalization", ["x", *constants], ["y"], axis=axis,
                                epsilon=1e-3)],
                [("x", ["N", 3, 5])], [("y", ["N", 3, 5])], constants)
    model = assert_matches_runtime(path, {"x": weights(4, 3, 5)})
    assert model.layers[0].normalized_shape == shape


@pytest.mark.parametrize("opset, affine", [(13, True), (18, True), (13, False)])
def test_the_decomposed_layer_norm_is_one_layer(tmp_path, opset, affine):
    constants = {"two": np.array(2.0, np.float32), "eps": np.array(1e-5, np.float32)}
    if opset >= 18:
        constants["axes"] = np.array([-1], np.int64)
        mean = [node("ReduceMean", ["x", "axes"], ["m"], name="/ln/ReduceMean"),
                node("ReduceMean", ["p", "axes"], ["v"], name="/ln/ReduceMean_1")]
    else:
        mean = [node("ReduceMean", ["x"], ["m"], axes=[-1], name="/ln/ReduceMean"),
                node("ReduceMean", ["p"], ["v"], axes=[-1], name="/ln/ReduceMean_1")]
    nodes = [mean[0], node("Sub", ["x", "m"], ["d"], name="/ln/Sub"),
             node("Pow", ["d", "two"], ["p"], name="/ln/Pow"), mean[1],
             node("Add", ["v", "eps"], ["ve"], name="/ln/Add"),
             node("Sqrt", ["ve"], ["s"], name="/ln/Sqrt"),
             node("Div", ["d", "s"], ["n" if affine else "y"], name="/ln/Div")]
    if affine:
        constants.update(gamma=weights(8), beta=weights(8))
        nodes += [node("Mul", ["n", "gamma"], ["g"], name="/ln/Mul"),
                  node("Add", ["g", "beta"], ["y"], name="/ln/Add_1")]
    path = save(tmp_path, nodes, [("x", ["N", 3, 8])], [("y", ["N", 3, 8])], constants, opset)
    model = assert_matches_runtime(path, {"x": 2 * weights(4, 3, 8) + 1})
    assert [type(layer).__name__ for layer in model.layers] == ["LayerNorm"]


# -- shapes --------------------------------------------------------------------------------
def test_flatten(tmp_path):
    path = save(tmp_path, [node("Flatten", ["x"], ["y"], axis=1)], [("x", ["N", 4, 3, 2])],
                [("y", ["N", 24])])
    assert_matches_runtime(path, {"x": images(3, 4, 3, 2)})


def test_reshape_through_the_shape_arithmetic_exporters_emit(tmp_path):
    """x.view(x.size(0), -1) as TorchScript exports it, plus Slice, Cast,
    Mul, Div, Mod and Sqrt folded at load."""
    constants = {"zero": np.array(0, np.int64), "axes0": np.array([0], np.int64),
                 "minus_one": np.array([-1], np.int64), "start": np.array([1], np.int64),
                 "end": np.array([4], np.int64), "four": np.array([4], np.int64),
                 "three": np.array([3], np.int64)}
    nodes = [node("Shape", ["x"], ["s"], name="/Shape"),
             node("Gather", ["s", "zero"], ["n"], name="/Gather", axis=0),
             node("Unsqueeze", ["n", "axes0"], ["n1"], name="/Unsqueeze"),
             node("Slice", ["s", "start", "end"], ["rest"], name="/Slice"),
             node("Cast", ["rest"], ["rest_f"], name="/Cast", to=TensorProto.FLOAT),
             node("Sqrt", ["rest_f"], ["root"], name="/Sqrt"),
             node("Mul", ["rest", "four"], ["r4"], name="/Mul"),
             node("Div", ["r4", "four"], ["r1"], name="/Div"),
             node("Mod", ["r1", "three"], ["unused"], name="/Mod"),
             node("Concat", ["n1", "minus_one"], ["target"], name="/Concat", axis=0),
             node("Reshape", ["x", "target"], ["y"], name="/Reshape")]
    path = save(tmp_path, nodes, [("x", ["N", 4, 3, 2])], [("y", ["N", 24])], constants, 14)
    model = assert_matches_runtime(path, {"x": images(5, 4, 3, 2)})
    assert [type(layer).__name__ for layer in model.layers] == ["Reshape"]
    for batch in (1, 8):
        assert model.predict(images(batch, 4, 3, 2)).shape == (batch, 24)


@pytest.mark.parametrize("target", [[0, 6, 4], [-1, 2, 12], [0, -1]])
def test_reshape_to_a_constant_target_keeping_the_batch(tmp_path, target):
    path = save(tmp_path, [node("Reshape", ["x", "t"], ["y"])], [("x", ["N", 4, 3, 2])],
                [("y", None)], {"t": np.array(target, np.int64)})
    assert_matches_runtime(path, {"x": images(3, 4, 3, 2)})


def test_reshape_that_moves_the_batch_is_refused(tmp_path):
    path = save(tmp_path, [node("Reshape", ["x", "t"], ["y"], name="r")], [("x", ["N", 4, 3])],
                [("y", None)], {"t": np.array([-1, 3], np.int64)})
    with pytest.raises(pynn.ModelFormatError, match=r"'r' \(Reshape, opset 17\).*batch"):
        pynn.onnx.load(path)


def test_squeeze_and_unsqueeze_with_axes_inputs(tmp_path):
    nodes = [node("Unsqueeze", ["x", "axes"], ["u"]), node("Squeeze", ["u", "axes"], ["s"]),
             node("Unsqueeze", ["s", "last"], ["y"], name="/unsqueeze_1/Unsqueeze")]
    constants = {"axes": np.array([1], np.int64), "last": np.array([-1], np.int64)}
    path = save(tmp_path, nodes, [("x", ["N", 4, 3])], [("y", ["N", 4, 3, 1])], constants)
    assert_matches_runtime(path, {"x": weights(2, 4, 3)})


def test_transpose_keeping_the_batch_is_a_permute(tmp_path):
    path = save(tmp_path, [node("Transpose", ["x"], ["y"], perm=[0, 2, 3, 1])],
                [("x", ["N", 4, 3, 2])], [("y", ["N", 3, 2, 4])])
    model = assert_matches_runtime(path, {"x": images(3, 4, 3, 2)})
    assert isinstance(model.layers[0], layers.Permute)


def test_concat_of_two_tensors(tmp_path):
    nodes = [node("Relu", ["x"], ["a"]), node("Sigmoid", ["x"], ["b"]),
             node("Concat", ["a", "b", "x"], ["y"], axis=-1)]
    path = save(tmp_path, nodes, [("x", ["N", 3, 4])], [("y", ["N", 3, 12])])
    assert_matches_runtime(path, {"x": weights(2, 3, 4)})


# -- arithmetic ----------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["Add", "Mul", "Sub"])
def test_two_tensors_broadcast(tmp_path, op):
    nodes = [node("GlobalAveragePool", ["x"], ["g"]), node("Sigmoid", ["g"], ["s"]),
             node(op, ["x", "s"], ["y"], name="/gate/Op")]
    path = save(tmp_path, nodes, [("x", ["N", 4, 5, 3])], [("y", ["N", 4, 5, 3])])
    assert_matches_runtime(path, {"x": images(2, 4, 5, 3)})


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("constant_first", [False, True])
@pytest.mark.parametrize("shape", [(), (4, 1, 1), (1, 1, 5, 3)])
def test_arithmetic_with_a_constant(tmp_path, op, constant_first, shape):
    constant = weights(*shape) + (3.0 if op == "Div" else 0.0)
    operands = ["c", "x"] if constant_first else ["x", "c"]
    path = save(tmp_path, [node("Relu", ["x0"], ["x"]), node(op, operands, ["y"], name="arith")],
                [("x0", ["N", 4, 5, 3])], [("y", ["N", 4, 5, 3])], {"c": constant})
    if op == "Div" and constant_first:
        with pytest.raises(pynn.ModelFormatError, match=r"'arith' \(Div, opset 17\)"):
            pynn.onnx.load(path)
        return
    model = assert_matches_runtime(path, {"x0": images(2, 4, 5, 3)})
    assert isinstance(model.get_layer("arith"), layers.Affine)


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
def test_per_channel_constants_fold_into_the_convolution_before(tmp_path, op):
    constants = {"W": weights(4, 3, 3, 3), "B": weights(4), "c": weights(4, 1, 1) + 3.0}
    nodes = [node("Conv", ["x", "W", "B"], ["h"], name="conv", pads=[1, 1, 1, 1]),
             node(op, ["h", "c"], ["y"], name="arith")]
    path = save(tmp_path, nodes, [("x", ["N", 3, 6, 5])], [("y", ["N", 4, 6, 5])], constants)
    model = assert_matches_runtime(path, {"x": images(2, 3, 6, 5)})
    assert [type(layer).__name__ for layer in model.layers] == ["Conv2d"]


# -- small ops -----------------------------------------------------------------------------
def test_identity_dropout_and_constant(tmp_path):
    value = helper.make_tensor("v", FLOAT, [3], [1.0, 2.0, 3.0])
    nodes = [node("Constant", [], ["k"], value=value), node("Identity", ["x"], ["i"]),
             node("Dropout", ["i"], ["d"], name="/drop/Dropout"),
             node("Add", ["d", "k"], ["y"], name="/add/Add")]
    path = save(tmp_path, nodes, [("x", ["N", 3])], [("y", ["N", 3])])
    assert_matches_runtime(path, {"x": weights(4, 3)})


def test_two_inputs_and_two_outputs(tmp_path):
    nodes = [node("Add", ["a", "b"], ["s"]), node("Relu", ["s"], ["r"]), node("Tanh", ["b"], ["t"])]
    path = save(tmp_path, nodes, [("a", ["N", 3]), ("b", ["N", 3])], [("r", ["N", 3]), ("t", ["N", 3])])
    assert_matches_runtime(path, {"a": weights(2, 3), "b": weights(2, 3)})


# -- refusals ------------------------------------------------------------------------------
def test_an_unsupported_op_is_named_with_its_node_and_opset(tmp_path):
    path = save(tmp_path, [node("Sin", ["x"], ["y"], name="/head/Sin")], [("x", ["N", 3])],
                [("y", ["N", 3])], opset=19)
    with pytest.raises(pynn.ModelFormatError,
                       match=r"node '/head/Sin' \(Sin, opset 19\): this op is not supported"):
        pynn.onnx.load(path)


@pytest.mark.parametrize("opset", [12, 22])
def test_opsets_outside_13_to_21_are_refused(tmp_path, opset):
    path = save(tmp_path, [node("Relu", ["x"], ["y"])], [("x", ["N", 3])], [("y", ["N", 3])],
                opset=opset)
    with pytest.raises(pynn.ModelFormatError, match=f"opset {opset} is not supported"):
        pynn.onnx.load(path)


def test_an_unnamed_dynamic_extent_besides_the_batch_is_refused(tmp_path):
    path = save(tmp_path, [node("Relu", ["x"], ["y"])], [("x", ["N", None])], [("y", ["N", None])])
    with pytest.raises(pynn.ModelFormatError, match="static shape apart from the batch"):
        pynn.onnx.load(path)


def test_a_named_length_is_a_variable_axis(tmp_path):
    path = save(tmp_path, [node("Relu", ["x"], ["y"])], [("x", ["N", "T", 3])], [("y", ["N", "T", 3])])
    model = pynn.onnx.load(path)
    assert model.inputs[0].shape == (None, 3)
    for length in (2, 7):
        x = RNG.standard_normal((4, length, 3)).astype(np.float32)
        np.testing.assert_array_equal(model.predict(x), np.maximum(x, 0))


def test_two_named_lengths_are_refused(tmp_path):
    path = save(tmp_path, [node("Add", ["a", "b"], ["y"])], [("a", ["N", "T"]), ("b", ["N", "S"])],
                [("y", ["N", "T"])])
    with pytest.raises(pynn.ModelFormatError, match="pynn reads one"):
        pynn.onnx.load(path)


def test_a_tensor_shorter_than_its_dims_is_refused(tmp_path):
    path = save(tmp_path, [node("MatMul", ["x", "W"], ["y"])], [("x", ["N", 3])], [("y", ["N", 2])],
                {"W": weights(3, 2)})
    model = onnx.load(str(path))
    model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:-4]
    onnx.save(model, str(path))
    with pytest.raises(pynn.ModelFormatError, match=r"20 bytes of data for dims \(3, 2\)"):
        pynn.onnx.load(path)


def test_a_file_beyond_the_size_limit_is_refused(tmp_path, monkeypatch):
    path = save(tmp_path, [node("Relu", ["x"], ["y"])], [("x", ["N", 3])], [("y", ["N", 3])])
    monkeypatch.setattr(pynn.onnx.importer, "MAX_FILE_BYTES", 16)
    with pytest.raises(pynn.ModelFormatError, match="more than the 16"):
        pynn.onnx.load(path)


def test_garbage_is_refused(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\xff\x00 definitely not protobuf" * 3)
    with pytest.raises(pynn.ModelFormatError):
        pynn.onnx.load(path)


def external_model(tmp_path, location):
    """A MatMul whose weight lives in external data at ``location``."""
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    weight = weights(3, 2)
    tensor = numpy_helper.from_array(weight, "W")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "24")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([node("MatMul", ["x", "W"], ["y"])], "g",
                              [tensor_info("x", ["N", 3])], [tensor_info("y", ["N", 2])], [tensor])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path, weight


def test_external_data_inside_the_folder_is_read(tmp_path):
    path, weight = external_model(tmp_path, "weights/w.bin")
    (path.parent / "weights").mkdir()
    (path.parent / "weights" / "w.bin").write_bytes(weight.tobytes())
    assert_matches_runtime(path, {"x": weights(4, 3)})


@pytest.mark.parametrize("location", ["/etc/passwd", "../outside.bin", "weights/../../outside.bin",
                                      "link.bin", "missing.bin", ""])
def test_external_data_outside_the_folder_is_refused(tmp_path, location):
    (tmp_path / "outside.bin").write_bytes(bytes(24))
    path, _ = external_model(tmp_path, location)
    os.symlink(tmp_path / "outside.bin", path.parent / "link.bin")
    with pytest.raises(pynn.ModelFormatError, match="external data"):
        pynn.onnx.load(path)


def test_importing_pynn_leaves_onnx_alone_and_a_missing_onnx_names_the_extra():
    code = ("import sys, pynn, pynn.onnx; assert 'onnx' not in sys.modules\n"
            "sys.modules['onnx'] = None\n"
            "try:\n    pynn.onnx.load('x.onnx')\n"
            "except ImportError as error:\n    print(error)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 0, result.stderr
    assert "pynn-runtime[onnx]" in result.stdout


# -- names, training, saving ----------------------------------------------------------------
def test_names_follow_the_nodes_and_freeze_by_node_name(tmp_path):
    nodes = [node("Gemm", ["x", "W1", "b1"], ["h"], name="/encoder/fc/Gemm", transB=1),
             node("Relu", ["h"], ["r"], name="/encoder/act/Relu"),
             node("Gemm", ["r", "W2", "b2"], ["y"], name="/head/Gemm", transB=1)]
    constants = {"W1": weights(8, 4), "b1": weights(8), "W2": weights(3, 8), "b2": weights(3)}
    path = save(tmp_path, nodes, [("x", ["N", 4])], [("y", ["N", 3])], constants)
    model = pynn.onnx.load(path)
    assert [layer.name for layer in model.layers] == ["encoder.fc.Gemm", "encoder.act.Relu",
                                                       "head.Gemm"]
    assert list(model.state_dict()) == ["encoder.fc.Gemm.weight", "encoder.fc.Gemm.bias",
                                        "head.Gemm.weight", "head.Gemm.bias"]
    frozen = model.get_layer("encoder.fc.Gemm").params["weight"].copy()
    model.freeze("encoder")
    x, y = weights(64, 4), RNG.integers(0, 3, 64)
    model.fit(x, y, loss=pynn.losses.CrossEntropyLoss(),
              optimizer=pynn.optim.SGD(model, lr=0.1), epochs=2, verbose=False)
    np.testing.assert_array_equal(model.get_layer("encoder.fc.Gemm").params["weight"], frozen)
    assert not np.array_equal(model.get_layer("head.Gemm").params["weight"], constants["W2"])


def test_clashing_node_names_get_suffixes(tmp_path):
    nodes = [node("Relu", ["x"], ["a"], name="block"), node("Relu", ["a"], ["b"], name="block"),
             node("Relu", ["b"], ["y"], name="block/inner")]
    path = save(tmp_path, nodes, [("x", ["N", 3])], [("y", ["N", 3])])
    names = [layer.name for layer in pynn.onnx.load(path).layers]
    assert names[:2] == ["block", "block_2"] and len(set(names)) == 3
    assert not names[2].startswith("block.")


# -- whole models exported from PyTorch ------------------------------------------------------
def pytorch_models():
    """name -> (module factory, sample shape, export options); skips without torch."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class BasicBlock(nn.Module):
        def __init__(self, channels_in, channels, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(channels_in, channels, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(channels)
            self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(channels)
            self.shortcut = nn.Sequential()
            if stride != 1 or channels_in != channels:
                self.shortcut = nn.Sequential(nn.Conv2d(channels_in, channels, 1, stride, bias=False),
                                              nn.BatchNorm2d(channels))

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.MaxPool2d(2))
            self.layer1 = BasicBlock(8, 8, 1)
            self.layer2 = BasicBlock(8, 16, 2)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            h = self.layer2(self.layer1(self.stem(x)))
            return self.fc(torch.flatten(self.pool(h), 1))

    class SqueezeExcite(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.reduce = nn.Conv2d(channels, channels // 4, 1)
            self.expand = nn.Conv2d(channels // 4, channels, 1)

        def forward(self, x):
            gate = torch.sigmoid(self.expand(torch.relu(self.reduce(self.pool(x)))))
            return x * gate

    class MobileNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.Hardswish())
            self.depthwise = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.BatchNorm2d(16),
                                           nn.ReLU6())
            self.se = SqueezeExcite(16)
            self.project = nn.Sequential(nn.Conv2d(16, 24, 1), nn.BatchNorm2d(24), nn.Hardswish())
            self.classifier = nn.Sequential(nn.Linear(24, 32), nn.Hardswish(), nn.Dropout(0.2),
                                            nn.Linear(32, 5))

        def forward(self, x):
            h = self.project(self.se(self.depthwise(self.stem(x))))
            return self.classifier(h.mean((2, 3)))

    class SequenceClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv1d(4, 16, 5, padding=2), nn.BatchNorm1d(16), nn.GELU(),
                                          nn.MaxPool1d(2), nn.Conv1d(16, 16, 3, padding=2, dilation=2),
                                          nn.ReLU(), nn.AvgPool1d(2))
            self.norm = nn.LayerNorm(16)
            self.head = nn.Linear(16 * 8, 3)

        def forward(self, x):
            h = self.features(x)
            h = self.norm(h.transpose(1, 2))
            return torch.log_softmax(self.head(h.reshape(h.size(0), -1)), dim=-1)

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(6, 16)
            self.layers = nn.ModuleList([nn.TransformerEncoderLayer(
                16, 4, 32, activation=activation, batch_first=True, norm_first=norm_first)
                for activation, norm_first in (("relu", False), ("gelu", True))])
            self.head = nn.Linear(16, 3)

        def forward(self, x):
            h = self.embed(x)
            for layer in self.layers:
                h = layer(h)
            return self.head(h.mean(dim=1))

    def mlp():
        return nn.Sequential(nn.Flatten(), nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 16), nn.Tanh(),
                             nn.Linear(16, 4), nn.Softmax(dim=-1))

    return {
        "mlp": (mlp, (3, 4), {}),
        "resnet": (ResNet, (3, 16, 16), {}),
        "resnet_unfolded": (ResNet, (3, 16, 16), {"do_constant_folding": False}),
        "mobilenet": (MobileNet, (3, 16, 16), {}),
        "sequence": (SequenceClassifier, (4, 32), {"opset_version": 14}),
        "sequence_opset17": (SequenceClassifier, (4, 32), {"opset_version": 17}),
        "transformer": (Encoder, (5, 6), {"opset_version": 17}),
    }


def trained_eval(module, shape, seed):
    """``module`` with non-trivial BatchNorm statistics, in eval mode."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(seed)
    module.train()
    with torch.no_grad():
        for _ in range(3):
            module(torch.randn(16, *shape) * 2 + 0.5)
    return module.eval()


def export(module, shape, path, **options):
    """The TorchScript exporter (dynamo=False): the default one needs onnxscript."""
    torch = pytest.importorskip("torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, (torch.randn(2, *shape),), str(path), input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}},
                          dynamo=False, **options)
    return path


@pytest.mark.parametrize("name", ["mlp", "resnet", "resnet_unfolded", "mobilenet", "sequence",
                                  "sequence_opset17", "transformer"])
def test_pytorch_exports_match_onnx_runtime_at_batch_1_8_64(tmp_path, name):
    torch = pytest.importorskip("torch")
    make, shape, options = pytorch_models()[name]
    module = trained_eval(make(), shape, seed=len(name))
    path = export(module, shape, tmp_path / f"{name}.onnx", **options)
    model = pynn.onnx.load(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 8, 64):
        x = RNG.standard_normal((batch,) + shape).astype(np.float32)
        expected = session.run(None, {"x": x})[0]
        np.testing.assert_allclose(model.predict(x), expected, atol=1e-5, rtol=1e-4)
        with torch.no_grad():
            np.testing.assert_allclose(model.predict(x), module(torch.from_numpy(x)).numpy(),
                                       atol=1e-4, rtol=1e-4)
    if name == "resnet_unfolded":
        kinds = {type(layer).__name__ for layer in model.layers}
        assert "BatchNorm2d" in kinds
    if name == "sequence":
        assert "LayerNorm" in {type(layer).__name__ for layer in model.layers}


@pytest.mark.parametrize("name", ["resnet_unfolded", "mobilenet", "sequence"])
def test_an_imported_model_trains_and_saves(tmp_path, name):
    make, shape, options = pytorch_models()[name]
    path = export(trained_eval(make(), shape, seed=3), shape, tmp_path / "m.onnx", **options)
    model = pynn.onnx.load(path)
    classes = 3 if name == "sequence" else model.outputs[0].shape[0]
    x = RNG.standard_normal((48,) + shape).astype(np.float32)
    y = RNG.integers(0, classes, 48)
    loss = pynn.losses.CrossEntropyLoss()  # on log-probabilities too: log_softmax is idempotent
    before = model.evaluate(x, y, loss=loss)["loss"]
    model.fit(x, y, loss=loss, optimizer=pynn.optim.Adam(model, lr=3e-3), epochs=8,
              batch_size=16, shuffle=False, verbose=False)
    assert model.evaluate(x, y, loss=loss)["loss"] < before
    model.save(tmp_path / "m.safetensors")
    again = pynn.load(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(again.predict(x), model.predict(x))


@pytest.mark.parametrize("name", ["mlp", "resnet", "resnet_unfolded", "mobilenet", "sequence_opset17",
                                  "transformer"])
def test_import_export_import_gives_identical_bits(tmp_path, name):
    make, shape, options = pytorch_models()[name]
    path = export(trained_eval(make(), shape, seed=5), shape, tmp_path / "first.onnx", **options)
    first = pynn.onnx.load(path)
    pynn.onnx.export(first, tmp_path / "second.onnx")
    second = pynn.onnx.load(tmp_path / "second.onnx")
    x = RNG.standard_normal((8,) + shape).astype(np.float32)
    np.testing.assert_array_equal(second.predict(x), first.predict(x))
    first_state, second_state = first.state_dict(), second.state_dict()
    assert sorted(first_state) == sorted(second_state)
    for key, array in first_state.items():
        np.testing.assert_array_equal(second_state[key], array, err_msg=key)
    assert_matches_runtime(tmp_path / "second.onnx", {second.inputs[0].name or "input": x})


def test_the_onnx_finetune_example_fine_tunes_and_checks_its_export(tmp_path):
    from tests.test_examples import run_example

    out = run_example("onnx_finetune.py", "--epochs", "20", "--out", str(tmp_path / "out"), cwd=tmp_path)
    lines = {line.split(":")[0]: line for line in out.splitlines()}
    assert float(lines["after fine-tuning"].split()[-1]) > 0.5  # chance is 0.2 for five digits
    assert float(lines["ONNX Runtime on the exported file"].split()[-1]) < 1e-4
    assert (tmp_path / "out" / "finetuned.onnx").exists()


def test_the_shipped_pretrained_file_loads_and_classifies_digits():
    import os

    shipped = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "digits_cnn.onnx")
    model = pynn.onnx.load(shipped)
    x, y = pynn.datasets.load_digits()
    first = y < 5
    assert np.mean(np.argmax(model.predict(x[first].reshape(-1, 1, 8, 8)), axis=1) == y[first]) > 0.9
