"""pynn.onnx.load on damaged and hostile files: valid models mutated by byte
flips, truncation and field edits through the onnx protobuf classes. Every
outcome is a model that predicts, or a ModelFormatError; nothing else comes
out and nothing crashes. A seeded loop, so a failure names its case."""
import math

import numpy as np
import pytest

import pynn
import pynn.onnx

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

CASES_PER_SEED = 420
MAX_EDITS = 4
OPS = ["Conv", "Gemm", "MatMul", "BatchNormalization", "LayerNormalization", "Relu", "LeakyRelu",
       "Sigmoid", "Tanh", "Gelu", "HardSwish", "HardSigmoid", "Clip", "Softmax", "LogSoftmax",
       "MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean", "Flatten", "Reshape",
       "Squeeze", "Unsqueeze", "Transpose", "Concat", "Gather", "Identity", "Dropout", "Cast",
       "Add", "Sub", "Mul", "Div", "Shape", "Slice", "Mod", "Sqrt", "Erf", "Pow", "Constant",
       "Sin", "Loop", "Where", "Equal", "IsInf", "Not", "ReduceMax", "ReduceSum", "Expand",
       "ConstantOfShape", ""]
ATTRIBUTES = ["axis", "perm", "pads", "kernel_shape", "strides", "group", "transA", "transB",
              "alpha", "beta", "to", "allowzero", "keepdims", "axes", "epsilon", "approximate",
              "auto_pad", "ceil_mode", "count_include_pad", "dilations", "storage_order",
              "training_mode", "momentum", "start", "end", "value", "fmod"]
LOCATIONS = ["../outside.bin", "/etc/passwd", "weights.bin", "", "a/../../b", "nul\x00l",
             "C:\\x", "weights.bin/..", "./weights.bin", "\\\\server\\share"]


def weights(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def model_of(nodes, inputs, outputs, constants, opset=17):
    graph = helper.make_graph(
        nodes, "seed", [helper.make_tensor_value_info(*item) for item in inputs],
        [helper.make_tensor_value_info(*item) for item in outputs],
        [numpy_helper.from_array(value, key) for key, value in constants.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def seeds():
    """Small valid models covering the importer's paths."""
    rng = np.random.default_rng(0)
    F, I = TensorProto.FLOAT, TensorProto.INT64
    mlp = model_of(
        [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], name="/fc1/Gemm", transB=1, alpha=0.5),
         helper.make_node("Relu", ["h"], ["r"], name="/act/Relu"),
         helper.make_node("MatMul", ["r", "W2"], ["m"], name="/fc2/MatMul"),
         helper.make_node("Add", ["m", "b2"], ["a"], name="/fc2/Add"),
         helper.make_node("Softmax", ["a"], ["y"], name="/Softmax", axis=-1)],
        [("x", F, ["N", 6])], [("y", F, ["N", 3])],
        {"W1": weights(rng, 5, 6), "b1": weights(rng, 5), "W2": weights(rng, 5, 3),
         "b2": weights(rng, 3)})
    convnet = model_of(
        [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="/conv/Conv", pads=[1, 1, 1, 1],
                          kernel_shape=[3, 3], group=1),
         helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"], name="/bn/BN"),
         helper.make_node("MaxPool", ["n"], ["p"], name="/pool/MaxPool", kernel_shape=[2, 2],
                          strides=[2, 2]),
         helper.make_node("GlobalAveragePool", ["p"], ["g"], name="/gap/GAP"),
         helper.make_node("Mul", ["p", "g"], ["e"], name="/se/Mul"),
         helper.make_node("AveragePool", ["e"], ["q"], name="/avg/AveragePool", kernel_shape=[2, 2],
                          strides=[2, 2]),
         helper.make_node("Flatten", ["q"], ["f"], name="/Flatten", axis=1),
         helper.make_node("Gemm", ["f", "W2"], ["y"], name="/fc/Gemm", transB=1)],
        [("x", F, ["N", 2, 8, 8])], [("y", F, ["N", 3])],
        {"W": weights(rng, 4, 2, 3, 3), "B": weights(rng, 4), "s": weights(rng, 4),
         "b": weights(rng, 4), "m": weights(rng, 4), "v": np.abs(weights(rng, 4)) + 1,
         "W2": weights(rng, 3, 16)})
    shapes = model_of(
        [helper.make_node("Shape", ["x"], ["s"], name="/Shape"),
         helper.make_node("Gather", ["s", "zero"], ["n"], name="/Gather", axis=0),
         helper.make_node("Unsqueeze", ["n", "axes"], ["n1"], name="/Unsqueeze"),
         helper.make_node("Slice", ["s", "one", "three"], ["rest"], name="/Slice"),
         helper.make_node("Concat", ["n1", "minus"], ["t"], name="/Concat", axis=0),
         helper.make_node("Transpose", ["x"], ["tx"], name="/Transpose", perm=[0, 2, 1]),
         helper.make_node("Reshape", ["tx", "t"], ["r"], name="/Reshape"),
         helper.make_node("Concat", ["r", "r"], ["y"], name="/Concat_1", axis=1)],
        [("x", F, ["N", 3, 4])], [("y", F, ["N", 24])],
        {"zero": np.array(0, np.int64), "axes": np.array([0], np.int64),
         "one": np.array([1], np.int64), "three": np.array([3], np.int64),
         "minus": np.array([-1], np.int64)}, opset=14)
    patterns = model_of(
        [helper.make_node("ReduceMean", ["x"], ["mu"], name="/ln/ReduceMean", axes=[-1]),
         helper.make_node("Sub", ["x", "mu"], ["d"], name="/ln/Sub"),
         helper.make_node("Pow", ["d", "two"], ["p"], name="/ln/Pow"),
         helper.make_node("ReduceMean", ["p"], ["v"], name="/ln/ReduceMean_1", axes=[-1]),
         helper.make_node("Add", ["v", "eps"], ["ve"], name="/ln/Add"),
         helper.make_node("Sqrt", ["ve"], ["sd"], name="/ln/Sqrt"),
         helper.make_node("Div", ["d", "sd"], ["nrm"], name="/ln/Div"),
         helper.make_node("Mul", ["nrm", "gamma"], ["g"], name="/ln/Mul"),
         helper.make_node("Add", ["g", "beta"], ["l"], name="/ln/Add_1"),
         helper.make_node("Div", ["l", "sqrt2"], ["ds"], name="/act/Div"),
         helper.make_node("Erf", ["ds"], ["er"], name="/act/Erf"),
         helper.make_node("Add", ["er", "one"], ["a1"], name="/act/Add"),
         helper.make_node("Mul", ["l", "a1"], ["m1"], name="/act/Mul"),
         helper.make_node("Mul", ["m1", "half"], ["y"], name="/act/Mul_1")],
        [("x", F, ["N", 3, 5])], [("y", F, ["N", 3, 5])],
        {"two": np.array(2, np.float32), "eps": np.array(1e-5, np.float32),
         "gamma": weights(rng, 5), "beta": weights(rng, 5),
         "sqrt2": np.array(math.sqrt(2), np.float32), "one": np.array(1, np.float32),
         "half": np.array(0.5, np.float32)}, opset=13)
    embedding = model_of(
        [helper.make_node("Gather", ["table", "ids"], ["e"], name="/emb/Gather"),
         helper.make_node("LayerNormalization", ["e", "s", "b"], ["l"], name="/ln/LN", axis=-1),
         helper.make_node("Constant", [], ["k"], name="/Constant",
                          value=helper.make_tensor("k", F, [4], [1, 2, 3, 4])),
         helper.make_node("Sub", ["k", "l"], ["d"], name="/Sub"),
         helper.make_node("Clip", ["d", "lo", "hi"], ["y"], name="/Clip")],
        [("ids", I, ["N", 3])], [("y", F, ["N", 3, 4])],
        {"table": weights(rng, 7, 4), "s": weights(rng, 4), "b": weights(rng, 4),
         "lo": np.array(0, np.float32), "hi": np.array(6, np.float32)}, opset=18)
    return [mlp, convnet, shapes, patterns, embedding, transformer()]


def transformer():
    """pynn's own translation of its sequence layers, the length variable."""
    import tempfile

    from pynn import layers

    pynn.init.manual_seed(0)
    x = pynn.Input((None, 8), name="x")
    h = layers.PositionalEmbedding(6, 8, name="pos")(x)
    h = layers.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation="gelu", name="enc")(h)
    model = pynn.Model(x, layers.MultiheadAttention(8, 4, name="attn")(h))
    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/transformer.onnx"
        pynn.onnx.export(model, path)
        return onnx.load(path)


def mutate_fields(model, rng):
    """One edit of a field pynn reads, made through the protobuf classes."""
    graph = model.graph
    choice = rng.integers(12)
    nodes = graph.node
    node = nodes[rng.integers(len(nodes))] if len(nodes) else None
    if choice == 0 and node is not None:
        node.op_type = OPS[rng.integers(len(OPS))]
    elif choice == 1 and node is not None and len(node.input):
        position = rng.integers(len(node.input))
        node.input[position] = ["", "undefined", node.output[0] if node.output else "x",
                                graph.input[0].name][rng.integers(4)]
    elif choice == 2 and node is not None:
        if len(node.attribute) and rng.random() < 0.7:
            attribute = node.attribute[rng.integers(len(node.attribute))]
        else:
            attribute = node.attribute.add()
            attribute.name = ATTRIBUTES[rng.integers(len(ATTRIBUTES))]
            attribute.type = int(rng.integers(0, 9))
        edit = rng.integers(6)
        if edit == 0:
            attribute.i = int(rng.choice([-(2 ** 62), -3, -1, 0, 1, 2, 7, 2 ** 40]))
        elif edit == 1:
            attribute.ints.extend(int(v) for v in rng.integers(-3, 9, rng.integers(0, 6)))
        elif edit == 2:
            attribute.f = float(rng.choice([np.nan, np.inf, -1.0, 0.0, 1e30, 0.5]))
        elif edit == 3:
            attribute.s = bytes(rng.integers(0, 256, rng.integers(0, 6)).astype(np.uint8))
        elif edit == 4:
            attribute.type = int(rng.integers(0, 13))
        else:
            del attribute.ints[:]
    elif choice == 3 and len(graph.initializer):
        tensor = graph.initializer[rng.integers(len(graph.initializer))]
        edit = rng.integers(5)
        if edit == 0:
            tensor.dims.append(int(rng.choice([0, 1, 2, 2 ** 31, -1])))
        elif edit == 1 and len(tensor.dims):
            tensor.dims[rng.integers(len(tensor.dims))] = int(rng.choice([0, 3, 2 ** 40, -5]))
        elif edit == 2:
            tensor.data_type = int(rng.integers(0, 20))
        elif edit == 3:
            tensor.raw_data = tensor.raw_data[:int(rng.integers(0, len(tensor.raw_data) + 1))]
        else:
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", LOCATIONS[rng.integers(len(LOCATIONS))]),
                               ("offset", str(rng.choice(["0", "-1", "99999", "x", "7"]))),
                               ("length", str(rng.choice(["4", "0", "1e3", "24"])))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
    elif choice == 4 and len(graph.input):
        dims = graph.input[0].type.tensor_type.shape.dim
        if len(dims) and rng.random() < 0.6:
            dim = dims[rng.integers(len(dims))]
            if rng.random() < 0.5:
                dim.dim_param = "T"
            else:
                dim.dim_value = int(rng.choice([0, 1, 5, 2 ** 33]))
        elif len(dims):
            del dims[rng.integers(len(dims))]
        else:
            graph.input[0].type.tensor_type.elem_type = int(rng.integers(0, 17))
    elif choice == 5:
        model.opset_import[0].version = int(rng.integers(1, 30))
    elif choice == 6 and len(graph.output):
        graph.output[0].name = ["", "x", "undefined", graph.node[0].output[0]][rng.integers(4)]
    elif choice == 7 and len(nodes) > 1:
        first, second = rng.choice(len(nodes), 2, replace=False)
        a, b = onnx.NodeProto(), onnx.NodeProto()
        a.CopyFrom(nodes[first])
        b.CopyFrom(nodes[second])
        nodes[first].CopyFrom(b)
        nodes[second].CopyFrom(a)
    elif choice == 8 and len(nodes):
        del nodes[rng.integers(len(nodes))]
    elif choice == 9 and node is not None:
        nodes.add().CopyFrom(node)
    elif choice == 10 and node is not None:
        node.domain = ["com.microsoft", "ai.onnx", "x"][rng.integers(3)]
    elif node is not None:
        node.output.append(["extra", node.output[0] if node.output else "", "x"][rng.integers(3)])


def mutated_bytes(seed, rng):
    kind = rng.integers(3)
    if kind == 0:   # field edits
        model = onnx.ModelProto()
        model.CopyFrom(seed)
        for _ in range(rng.integers(1, MAX_EDITS)):
            mutate_fields(model, rng)
        return model.SerializeToString()
    data = bytearray(seed.SerializeToString())
    if kind == 1:   # byte flips
        for position in rng.integers(0, len(data), rng.integers(1, 9)):
            data[position] = int(rng.integers(256))
        return bytes(data)
    return bytes(data[:rng.integers(0, len(data))])  # truncation


def sample_input(tensor):
    shape = (2,) + tuple(4 if extent is None else extent for extent in tensor.shape)
    if math.prod(shape) > 100_000:
        return None
    if tensor.dtype in ("int64", "bool"):
        return np.zeros(shape, tensor.dtype)
    return np.linspace(-2, 2, math.prod(shape), dtype=np.float32).reshape(shape)


@pytest.mark.parametrize("seed_index", range(6))
def test_mutated_files_load_or_raise_model_format_error(tmp_path, seed_index):
    seed = seeds()[seed_index]
    (tmp_path / "weights.bin").write_bytes(bytes(64))
    (tmp_path.parent / "outside.bin").write_bytes(bytes(64))
    rng = np.random.default_rng(seed_index)
    path = tmp_path / "model.onnx"
    loaded = 0
    for case in range(CASES_PER_SEED):
        path.write_bytes(mutated_bytes(seed, rng))
        try:
            model = pynn.onnx.load(path)
        except pynn.ModelFormatError as error:
            assert str(error), f"case {case}: an empty message"
            continue
        loaded += 1
        inputs = [sample_input(tensor) for tensor in model.inputs]
        if any(item is None for item in inputs):
            continue
        try:
            model.predict(inputs if len(inputs) > 1 else inputs[0])
        except ValueError as error:  # a shape the loaded model refuses, by name
            assert str(error), f"case {case}: an empty message"
    assert 0 < loaded < CASES_PER_SEED  # the mutations both break files and leave some loadable


def test_the_seeds_match_onnx_runtime(tmp_path):
    import onnxruntime as ort
    for index, seed in enumerate(seeds()):
        path = tmp_path / f"seed{index}.onnx"
        path.write_bytes(seed.SerializeToString())
        model = pynn.onnx.load(path)
        x = sample_input(model.inputs[0])
        expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
            None, {seed.graph.input[0].name: x})[0]
        np.testing.assert_allclose(model.predict(x), expected, atol=1e-5, rtol=1e-4)
