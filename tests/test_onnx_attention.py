"""pynn.onnx.load of attention: torch.onnx.export's nn.MultiheadAttention and
nn.TransformerEncoderLayer models against ONNX Runtime, training and saving
them, pynn's own transformer translations read back bit for bit, and the
refusal of damaged attention subgraphs."""
import warnings

import numpy as np
import pytest

import pynn
import pynn.onnx
from pynn import layers

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
nn = torch.nn

FEATURES, EMBED = 6, 16
RNG = np.random.default_rng(2024)


class SelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.mha = nn.MultiheadAttention(EMBED, 4, batch_first=True)

    def forward(self, x, mask=None):
        return self.mha(x, x, x, key_padding_mask=mask, need_weights=False)[0]


class Encoder(nn.Module):
    """Linear -> TransformerEncoderLayer x2 -> mean over tokens -> Linear."""

    def __init__(self, norm_first, activation):
        super().__init__()
        self.inp = nn.Linear(FEATURES, EMBED)
        self.layers = nn.ModuleList([nn.TransformerEncoderLayer(
            EMBED, 4, 32, dropout=0.1, activation=activation, batch_first=True,
            norm_first=norm_first) for _ in range(2)])
        self.out = nn.Linear(EMBED, 3)

    def forward(self, x, mask=None):
        h = self.inp(x)
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=mask)
        return self.out(h.mean(dim=1))


# name -> (module factory, features of x, takes a key-padding mask)
MODELS = {
    "attention": (SelfAttention, EMBED, False),
    "attention_masked": (SelfAttention, EMBED, True),
    "post_relu": (lambda: Encoder(False, "relu"), FEATURES, False),
    "post_gelu": (lambda: Encoder(False, "gelu"), FEATURES, False),
    "pre_relu": (lambda: Encoder(True, "relu"), FEATURES, False),
    "pre_gelu": (lambda: Encoder(True, "gelu"), FEATURES, False),
    "post_relu_masked": (lambda: Encoder(False, "relu"), FEATURES, True),
    "pre_gelu_masked": (lambda: Encoder(True, "gelu"), FEATURES, True),
}


def export(name, length, path):
    """The TorchScript export (dynamo=False, opset 17) with a dynamic batch;
    it writes the key length into a Reshape, so each file takes one length."""
    make, features, masked = MODELS[name]
    torch.manual_seed(len(name) + length)
    module = make().eval()
    x = torch.randn(2, length, features)
    arguments = (x, torch.zeros(2, length, dtype=torch.bool)) if masked else (x,)
    names = ["x", "mask"][:len(arguments)]
    axes = {item: {0: "batch"} for item in names + ["y"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, arguments, str(path), input_names=names, output_names=["y"],
                          dynamic_axes=axes, opset_version=17, dynamo=False)
    return module


def feeds(name, batch, length):
    _, features, masked = MODELS[name]
    given = {"x": RNG.standard_normal((batch, length, features)).astype(np.float32)}
    if masked:
        padded = RNG.random((batch, length)) < 0.3
        padded[:, 0] = False  # a row of padding only is NaN in ONNX Runtime, zeros in pynn
        given["mask"] = padded
    return given


def predict(model, given):
    return model.predict(list(given.values()) if len(given) > 1 else given["x"])


@pytest.mark.parametrize("length", [5, 9])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_pytorch_attention_exports_match_onnx_runtime(tmp_path, name, length):
    path = tmp_path / "model.onnx"
    export(name, length, path)
    model = pynn.onnx.load(path)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("MultiheadAttention") == (1 if name.startswith("attention") else 2)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 8, 64):
        given = feeds(name, batch, length)
        np.testing.assert_allclose(predict(model, given), session.run(None, given)[0],
                                   atol=1e-5, rtol=1e-4)


def test_the_attention_takes_torch_s_weights_and_node_names(tmp_path):
    module = export("post_relu_masked", 5, tmp_path / "model.onnx")
    model = pynn.onnx.load(tmp_path / "model.onnx")
    state = model.state_dict()
    attention = module.layers[1].self_attn
    np.testing.assert_array_equal(state["layers.1.self_attn.MultiheadAttention.in_proj_weight"],
                                  attention.in_proj_weight.detach().numpy())
    np.testing.assert_array_equal(state["layers.1.self_attn.MultiheadAttention.out_proj.bias"],
                                  attention.out_proj.bias.detach().numpy())
    layer = model.get_layer("layers.1.self_attn.MultiheadAttention")
    assert (layer.embed_dim, layer.num_heads) == (EMBED, 4)


def test_an_imported_encoder_trains_freezes_by_node_name_and_saves(tmp_path):
    export("pre_gelu_masked", 5, tmp_path / "model.onnx")
    model = pynn.onnx.load(tmp_path / "model.onnx")
    given = feeds("pre_gelu_masked", 32, 5)
    x = list(given.values())
    y = RNG.integers(0, 3, 32)
    model.freeze("layers.0")
    frozen = {key: value.copy() for key, value in model.state_dict().items()
              if key.startswith("layers.0")}
    trained = model.state_dict()["layers.1.self_attn.MultiheadAttention.in_proj_weight"].copy()
    loss = pynn.losses.CrossEntropyLoss()
    before = model.evaluate(x, y, loss=loss)["loss"]
    model.fit(x, y, loss=loss, optimizer=pynn.optim.Adam(model, lr=3e-3), epochs=6, batch_size=16,
              shuffle=False, verbose=False)
    assert model.evaluate(x, y, loss=loss)["loss"] < before
    state = model.state_dict()
    for key, value in frozen.items():
        np.testing.assert_array_equal(state[key], value, err_msg=key)
    assert not np.array_equal(state["layers.1.self_attn.MultiheadAttention.in_proj_weight"], trained)
    model.save(tmp_path / "model.safetensors")
    again = pynn.load(tmp_path / "model.safetensors")
    np.testing.assert_array_equal(again.predict(x), model.predict(x))


def import_export_import(tmp_path, path):
    first = pynn.onnx.load(path)
    pynn.onnx.export(first, tmp_path / "second.onnx")
    second = pynn.onnx.load(tmp_path / "second.onnx")
    first_state, second_state = first.state_dict(), second.state_dict()
    assert sorted(first_state) == sorted(second_state)
    for key, array in first_state.items():
        np.testing.assert_array_equal(second_state[key], array, err_msg=key)
    return first, second


@pytest.mark.parametrize("name", ["post_gelu", "pre_gelu_masked"])
def test_a_pytorch_encoder_imports_exports_and_imports_to_identical_bits(tmp_path, name):
    export(name, 5, tmp_path / "first.onnx")
    first, second = import_export_import(tmp_path, tmp_path / "first.onnx")
    given = feeds(name, 8, 5)
    np.testing.assert_array_equal(predict(second, given), predict(first, given))
    session = ort.InferenceSession(str(tmp_path / "second.onnx"), providers=["CPUExecutionProvider"])
    names = [item.name for item in session.get_inputs()]
    np.testing.assert_allclose(session.run(None, dict(zip(names, given.values())))[0],
                               predict(first, given), atol=1e-5, rtol=1e-4)


def pynn_transformer():
    """Token states and their int64 attention mask through pynn's sequence
    layers, every length variable."""
    x = pynn.Input((None, 8), name="x")
    mask = pynn.Input((None,), dtype="int64", name="mask")
    bias = layers.PaddingMask(name="pad")(mask)
    h = layers.PositionalEmbedding(12, 8, name="pos")(x)
    h = layers.TransformerEncoderLayer(8, 2, 16, dropout=0.0, name="enc0")([h, bias])
    h = layers.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation="gelu", norm_first=True,
                                       name="enc1")([h, bias])
    h = layers.MultiheadAttention(8, 4, name="attn")([h, bias])
    pooled = layers.MeanPooling(name="pool")([h, mask])
    return pynn.Model([x, mask], layers.Linear(8, 3, name="head")(pooled))


def token_feeds(batch, length):
    mask = (RNG.random((batch, length)) < 0.7).astype(np.int64)
    mask[:, 0] = 1
    return [RNG.standard_normal((batch, length, 8)).astype(np.float32), mask]


@pytest.mark.parametrize("opset", [17, 14])
def test_pynn_transformer_exports_import_back_to_identical_bits(tmp_path, opset):
    original = pynn_transformer()
    pynn.onnx.export(original, tmp_path / "first.onnx", opset=opset)
    first, second = import_export_import(tmp_path, tmp_path / "first.onnx")
    kinds = {type(layer).__name__ for layer in first.layers}
    assert {"MultiheadAttention", "PositionalEmbedding", "PaddingMask", "MeanPooling"} <= kinds
    session = ort.InferenceSession(str(tmp_path / "second.onnx"), providers=["CPUExecutionProvider"])
    for batch, length in ((1, 4), (8, 7), (64, 12)):
        given = token_feeds(batch, length)
        np.testing.assert_array_equal(second.predict(given), first.predict(given))
        np.testing.assert_allclose(first.predict(given), original.predict(given), atol=1e-5,
                                   rtol=1e-4)
        np.testing.assert_allclose(session.run(None, {"x": given[0], "mask": given[1]})[0],
                                   first.predict(given), atol=1e-5, rtol=1e-4)


def test_a_bool_masked_pynn_attention_reads_back(tmp_path):
    x = pynn.Input((None, 8), name="x")
    mask = pynn.Input((None,), dtype="bool", name="mask")
    original = pynn.Model([x, mask], layers.MultiheadAttention(8, 2, name="attn")([x, mask]))
    pynn.onnx.export(original, tmp_path / "model.onnx")
    model = pynn.onnx.load(tmp_path / "model.onnx")
    padded = RNG.random((5, 6)) < 0.5
    padded[:, 0] = False
    given = [RNG.standard_normal((5, 6, 8)).astype(np.float32), padded]
    np.testing.assert_allclose(model.predict(given), original.predict(given), atol=1e-6, rtol=1e-5)


# -- damaged attention subgraphs -----------------------------------------------------


def damaged(tmp_path, edit):
    export("attention", 5, tmp_path / "model.onnx")
    model = onnx.load(str(tmp_path / "model.onnx"))
    edit(model.graph)
    onnx.save(model, str(tmp_path / "damaged.onnx"))
    return tmp_path / "damaged.onnx"


def node_named(graph, op_type, index=0):
    return [node for node in graph.node if node.op_type == op_type][index]


def test_a_wrongly_shaped_projection_weight_is_refused_by_node(tmp_path):
    def edit(graph):
        weight = next(item for item in graph.initializer if item.name == "mha.out_proj.weight")
        weight.CopyFrom(onnx.numpy_helper.from_array(np.ones((EMBED, 8), np.float32), weight.name))
    with pytest.raises(pynn.ModelFormatError, match=r"node '/mha/Softmax' \(Softmax, opset 17\): the "
                                                    r"projections' weights \(48, 16\) and \(16, 8\)"):
        pynn.onnx.load(damaged(tmp_path, edit))


def test_a_subgraph_computing_something_else_is_refused_naming_the_softmax(tmp_path):
    def edit(graph):
        node_named(graph, "Add").op_type = "Sub"  # bias - x W: q, k and v negated
    with pytest.raises(pynn.ModelFormatError, match=r"node '/mha/Softmax' \(Softmax, opset 17\).*"
                                                    r"does not compute multi-head attention"):
        pynn.onnx.load(damaged(tmp_path, edit))


def test_a_missing_softmax_is_refused_by_node(tmp_path):
    def edit(graph):
        node_named(graph, "Softmax").op_type = "Identity"
    with pytest.raises(pynn.ModelFormatError, match=r"node '/mha/\w+' \(\w+, opset 17\)"):
        pynn.onnx.load(damaged(tmp_path, edit))


def test_an_extra_reader_of_an_intermediate_is_refused_by_node(tmp_path):
    def edit(graph):
        scores = node_named(graph, "Softmax")
        graph.node.append(onnx.helper.make_node("Relu", [scores.output[0]], ["peek"], name="peek"))
        graph.output.append(onnx.helper.make_tensor_value_info("peek", onnx.TensorProto.FLOAT, None))
    with pytest.raises(pynn.ModelFormatError, match=r"node '/mha/Softmax' \(Softmax, opset 17\): "
                                                    r"an attention whose probabilities are read by "
                                                    r"\['/mha/MatMul_2', 'peek'\]"):
        pynn.onnx.load(damaged(tmp_path, edit))


def test_an_extra_reader_inside_is_refused_naming_the_node_it_reads(tmp_path):
    def edit(graph):
        scores = node_named(graph, "MatMul", 1)  # q · kᵀ, q scaled by a Mul before
        graph.node.append(onnx.helper.make_node("Relu", [scores.input[0]], ["peek"], name="peek"))
        graph.output.append(onnx.helper.make_tensor_value_info("peek", onnx.TensorProto.FLOAT, None))
    with pytest.raises(pynn.ModelFormatError, match=r"node '/mha/Mul_\d+' \(Mul, opset 17\): "
                                                    r"its output .* is read by node 'peek' outside"):
        pynn.onnx.load(damaged(tmp_path, edit))


def test_a_length_the_graph_does_not_take_is_refused_by_node(tmp_path):
    """torch writes the traced key length into a Reshape: a file declaring
    the length variable is refused where the attention breaks at others."""
    def edit(graph):
        for value in list(graph.input) + list(graph.output):
            value.type.tensor_type.shape.dim[1].dim_param = "length"
    with pytest.raises(pynn.ModelFormatError, match=r"node '/mha/Reshape_\d+' \(Reshape, opset 17\)"
                                                    r": in the attention"):
        pynn.onnx.load(damaged(tmp_path, edit))


def test_an_int64_mask_read_by_one_attention_becomes_padding_mask_and_attention(tmp_path):
    x = pynn.Input((None, 8), name="x")
    mask = pynn.Input((None,), dtype="int64", name="mask")
    bias = layers.PaddingMask(name="pad")(mask)
    original = pynn.Model([x, mask], layers.MultiheadAttention(8, 2, name="attn")([x, bias]))
    pynn.onnx.export(original, tmp_path / "model.onnx")
    model = pynn.onnx.load(tmp_path / "model.onnx")
    assert [type(layer).__name__ for layer in model.layers] == ["PaddingMask", "MultiheadAttention"]
    given = token_feeds(6, 5)
    given[0] = given[0][..., :8]
    np.testing.assert_allclose(model.predict(given), original.predict(given), atol=1e-6, rtol=1e-5)


def test_cross_attention_is_refused_naming_the_softmax(tmp_path):
    query = pynn.Input((4, 8), name="query")
    memory = pynn.Input((4, 8), name="memory")
    attention = layers.MultiheadAttention(8, 2, name="attn")
    pynn.onnx.export(pynn.Model([query, memory], attention([query, memory, memory])),
                     tmp_path / "model.onnx")
    with pytest.raises(pynn.ModelFormatError, match=r"node 'attn/Softmax' \(Softmax, opset 17\): an "
                                                    r"attention whose q, k and v project different "
                                                    r"tensors"):
        pynn.onnx.load(tmp_path / "model.onnx")
