"""MultiheadAttention and TransformerEncoderLayer against float64 references
written here and finite differences, in graphs (variable lengths, masks,
sharing, freezing, saving) and under the allocation bound."""
import math

import numpy as np
import pytest

import pynn
from pynn.layers import MultiheadAttention, TransformerEncoderLayer
from tests.helpers import check_gradient, peak_bytes_of

rng = np.random.default_rng(3)
_erf = np.vectorize(math.erf)


def mha_reference(layer, query, key, value, padding=None):
    """float64 attention with the layer's parameters; ``padding`` [N, S] bool
    (True: padding) or float (added)."""
    p = {name: array.astype(np.float64) for name, array in layer.params.items()}
    e, h = layer.embed_dim, layer.num_heads
    d = e // h
    w, b = p["in_proj_weight"], p.get("in_proj_bias", np.zeros(3 * e))
    q, k, v = (x.astype(np.float64) @ w[i * e:(i + 1) * e].T + b[i * e:(i + 1) * e]
               for i, x in enumerate((query, key, value)))

    def heads(x):
        return x.reshape(x.shape[0], x.shape[1], h, d).transpose(0, 2, 1, 3)

    scores = heads(q) @ heads(k).transpose(0, 1, 3, 2) / math.sqrt(d)
    if padding is not None:
        bias = np.where(padding, -np.inf, 0.0) if padding.dtype == np.bool_ else padding
        scores = scores + bias[:, None, None, :]
    scores -= scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(axis=-1, keepdims=True)
    out = (weights @ heads(v)).transpose(0, 2, 1, 3).reshape(query.shape[0], query.shape[1], e)
    return out @ p["out_proj.weight"].T + p.get("out_proj.bias", 0.0)


def layer_norm(x, weight, bias, eps):
    centred = x - x.mean(axis=-1, keepdims=True)
    return centred / np.sqrt((centred ** 2).mean(axis=-1, keepdims=True) + eps) * weight + bias


def encoder_reference(layer, x, padding=None):
    p = {name: array.astype(np.float64) for name, array in layer.params.items()}
    x = x.astype(np.float64)

    def attention(x):
        return mha_reference(layer.self_attn, x, x, x, padding)

    def feed_forward(x):
        hidden = x @ p["linear1.weight"].T + p["linear1.bias"]
        hidden = np.maximum(hidden, 0) if layer.activation == "relu" else \
            0.5 * hidden * (1 + _erf(hidden / math.sqrt(2)))
        return hidden @ p["linear2.weight"].T + p["linear2.bias"]

    def norm(x, which):
        return layer_norm(x, p[f"{which}.weight"], p[f"{which}.bias"], layer.layer_norm_eps)

    if layer.norm_first:
        x = x + attention(norm(x, "norm1"))
        return x + feed_forward(norm(x, "norm2"))
    x = norm(x + attention(x), "norm1")
    return norm(x + feed_forward(x), "norm2")


def randomise(layer, scale=0.3):
    for array in layer.params.values():
        array[...] = rng.standard_normal(array.shape) * scale
    return layer


def sequences(n=2, t=5, e=8):
    return rng.standard_normal((n, t, e)).astype(np.float32)


PADDING = np.array([[False] * 5, [False, False, False, True, True]])


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("mask", [None, "bool", "bool with holes", "float", "float padding"])
def test_self_attention_matches_the_reference(bias, mask):
    layer = randomise(MultiheadAttention(8, 2, bias=bias))
    x = sequences()
    padding = {None: None, "bool": PADDING, "bool with holes": np.array([[True, False] * 2 + [False]] * 2),
               "float": rng.standard_normal((2, 5)).astype(np.float32),
               "float padding": np.where(PADDING, -np.inf, 0.0).astype(np.float32)}[mask]
    y = layer.forward(x) if padding is None else layer.forward(x, key_padding_mask=padding)
    np.testing.assert_allclose(y, mha_reference(layer, x, x, x, padding), rtol=1e-4, atol=1e-5)
    assert np.array_equal(y, layer.forward(x if padding is None else [x, padding], training=True))


def test_cross_attention_matches_the_reference_with_other_lengths():
    layer = randomise(MultiheadAttention(8, 4))
    query, key, value = sequences(t=3), sequences(t=6), sequences(t=6)
    padding = np.zeros((2, 6), bool)
    padding[1, 4:] = True
    y = layer.forward([query, key, value, padding])
    np.testing.assert_allclose(y, mha_reference(layer, query, key, value, padding), rtol=1e-4, atol=1e-5)


def _loss_through(layer, inputs, position, weights):
    def loss(value):
        args = list(inputs)
        args[position] = value
        return float((layer.forward(args if len(args) > 1 else args[0]) * weights).sum())
    return loss


@pytest.mark.parametrize("cross", [False, True])
def test_attention_gradients_match_finite_differences(cross):
    layer = randomise(MultiheadAttention(8, 2))
    if cross:
        inputs = [sequences(t=3), sequences(t=4), sequences(t=4), PADDING[:, :4].copy()]
    else:
        inputs = [sequences(), PADDING]
    y = layer.forward(inputs, training=True)
    weights = rng.standard_normal(y.shape).astype(np.float32)
    grads = layer.backward(weights)
    for position in range(len(inputs) - 1):
        check_gradient(_loss_through(layer, inputs, position, weights), inputs[position], grads[position],
                       eps=1e-2, rtol=3e-2, atol=3e-3)
    assert grads[-1] is None
    for key in layer.params:
        param, analytic = layer.params[key], layer.grads[key].copy()

        def loss(value, key=key):
            saved = layer.params[key].copy()
            layer.params[key][...] = value
            result = float((layer.forward(inputs) * weights).sum())
            layer.params[key][...] = saved
            return result

        check_gradient(loss, param, analytic, eps=1e-2, rtol=3e-2, atol=3e-3)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_layer_matches_the_reference_and_finite_differences(norm_first, activation):
    layer = randomise(TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation=activation,
                                              norm_first=norm_first), scale=0.2)
    for which in ("norm1", "norm2"):
        layer.params[f"{which}.weight"][...] += 1.0
    x = sequences()
    y = layer.forward(x, src_key_padding_mask=PADDING)
    np.testing.assert_allclose(y, encoder_reference(layer, x, PADDING), rtol=1e-4, atol=2e-5)
    weights = rng.standard_normal(y.shape).astype(np.float32)
    assert np.array_equal(layer.forward([x, PADDING], training=True), y)
    dx, dmask = layer.backward(weights)
    assert dmask is None
    if activation == "relu":
        return  # finite differences straddle ReLU's kink; the torch tests check its gradients
    check_gradient(lambda v: float((layer.forward([v, PADDING]) * weights).sum()), x, dx,
                   eps=1e-2, rtol=3e-2, atol=3e-3)
    for key in ("self_attn.in_proj_weight", "linear1.weight", "linear2.bias", "norm1.weight"):
        analytic = layer.grads[key].copy()

        def loss(value, key=key):
            saved = layer.params[key].copy()
            layer.params[key][...] = value
            result = float((layer.forward([x, PADDING]) * weights).sum())
            layer.params[key][...] = saved
            return result

        check_gradient(loss, layer.params[key], analytic, eps=1e-2, rtol=3e-2, atol=3e-3)


def test_encoder_layer_keys_are_its_parts_live_arrays():
    layer = TransformerEncoderLayer(8, 2, 16)
    assert layer.params["linear1.weight"] is layer.linear1.params["weight"]
    replacement = np.zeros_like(layer.grads["norm2.bias"])
    layer.grads["norm2.bias"] = replacement  # a gradient arena rebinding an entry
    assert layer.norm2.grads["bias"] is replacement
    layer.trainable = False
    assert not layer.self_attn.trainable and not layer.norm1.trainable
    assert sorted(layer.params) == sorted(
        ["self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight",
         "self_attn.out_proj.bias", "linear1.weight", "linear1.bias", "linear2.weight",
         "linear2.bias", "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"])


def _text_model(e=8, heads=2, layers=2, vocab=11):
    ids = pynn.Input((None,), dtype="int64", name="ids")
    padding = pynn.Input((None,), dtype="bool", name="padding")
    x = pynn.layers.Embedding(vocab, e, name="embed")(ids)
    x = pynn.layers.PositionalEmbedding(16, e, name="positions")(x)
    for index in range(layers):
        x = TransformerEncoderLayer(e, heads, 2 * e, dropout=0.0, name=f"encoder.{index}")([x, padding])
    pooled = pynn.layers.Flatten()(pynn.layers.AdaptiveAvgPool2d((1, None))(
        pynn.layers.Reshape((1, -1, e))(x)))
    return pynn.Model([ids, padding], pynn.layers.Linear(e, 3, name="head")(pooled))


def test_a_graph_takes_any_sequence_length_and_predicts_what_forward_computes():
    model = _text_model()
    assert model.inputs[0].shape == (None,)
    for length in (1, 4, 9):
        ids = rng.integers(0, 11, (3, length))
        padding = np.zeros((3, length), bool)
        padding[1, length // 2 + 1:] = True
        predicted = model.predict([ids, padding])
        np.testing.assert_allclose(predicted, model.forward([ids, padding]), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="PositionalEmbedding"):
        model.predict([np.zeros((1, 17), np.int64), np.zeros((1, 17), bool)])
    with pytest.raises(TypeError, match="bool"):
        model.predict([np.zeros((1, 4), np.int64), np.zeros((1, 4), np.int64)])


def test_a_transformer_graph_trains_saves_and_loads(tmp_path):
    model = _text_model()
    ids = rng.integers(0, 11, (64, 6))
    padding = np.zeros((64, 6), bool)
    labels = (ids[:, 0] % 3).astype(np.int64)
    optimizer = pynn.optim.Adam(model, lr=1e-2)
    history = model.fit([ids, padding], labels, loss=pynn.losses.CrossEntropyLoss(), optimizer=optimizer, epochs=25,
                        batch_size=16, verbose=False, seed=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    model.save(tmp_path / "text.safetensors")
    loaded = pynn.load(tmp_path / "text.safetensors")
    assert np.array_equal(loaded.predict([ids, padding]), model.predict([ids, padding]))


def test_freezing_the_encoder_skips_its_weight_gradients():
    model = _text_model()
    model.freeze("encoder")
    for name, layer in model.named_layers():
        if name.startswith("encoder"):
            for grad in layer.grads.values():
                grad[...] = np.nan
    ids = rng.integers(0, 11, (4, 5))
    out = model.forward([ids, np.zeros((4, 5), bool)], training=True)
    model.backward(np.ones_like(out), input_grad=False)
    assert np.isfinite(model.get_layer("head").grads["weight"]).all()
    assert np.isfinite(model.get_layer("embed").grads["weight"]).all()
    for name, layer in model.named_layers():
        if name.startswith("encoder"):
            assert all(np.isnan(grad).all() for grad in layer.grads.values())


def test_a_shared_encoder_layer_sums_its_gradients():
    shared = randomise(TransformerEncoderLayer(8, 2, 16, dropout=0.0), scale=0.2)
    x_in = pynn.Input((None, 8))
    model = pynn.Model(x_in, shared(shared(x_in)))
    x = sequences(t=3)
    weights = rng.standard_normal(x.shape).astype(np.float32)
    model.forward(x, training=True)
    model.backward(weights)
    key = "linear1.weight"
    analytic = shared.grads[key].copy()

    def loss(value):
        saved = shared.params[key].copy()
        shared.params[key][...] = value
        result = float((model.forward(x) * weights).sum())
        shared.params[key][...] = saved
        return result

    check_gradient(loss, shared.params[key], analytic, eps=1e-2, rtol=3e-2, atol=3e-3)


def test_a_training_step_allocates_little_in_steady_state():
    model = _text_model(e=16, layers=1)
    ids = rng.integers(0, 11, (8, 12))
    padding = np.zeros((8, 12), bool)
    optimizer = pynn.optim.SGD(model, lr=1e-3)

    def step():
        out = model.forward([ids, padding], training=True)
        model.backward(out)
        optimizer.step()

    step()
    assert peak_bytes_of(step) < 64 * 1024


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="divisible"):
        MultiheadAttention(10, 3)
    with pytest.raises(ValueError, match="activation"):
        TransformerEncoderLayer(8, 2, activation="swish")
    layer = MultiheadAttention(8, 2)
    with pytest.raises(ValueError, match=r"key_padding_mask must be \[N, S\]"):
        layer.forward(sequences(), key_padding_mask=np.zeros((2, 4), bool))
    with pytest.raises(ValueError, match="query"):
        layer.forward(sequences(e=6))
    with pytest.raises(ValueError, match="twice"):
        layer.forward([sequences(), PADDING], key_padding_mask=PADDING)


def test_backward_from_the_log_sum_exp_alone_matches_backward_from_the_probabilities(monkeypatch):
    from pynn.layers import attention

    layer = randomise(MultiheadAttention(8, 2))
    x = sequences(t=6)
    weights = rng.standard_normal(x.shape).astype(np.float32)
    mask = np.zeros((2, 6), bool)
    mask[1, 4:] = True
    layer.forward([x, mask], training=True)
    assert "probabilities" in layer._kept_attention
    dx_probabilities = layer.backward(weights)[0].copy()
    with_probabilities = {key: grad.copy() for key, grad in layer.grads.items()}
    monkeypatch.setattr(attention, "KEEP_PROBABILITIES_FLOATS", 0)
    layer.forward([x, mask], training=True)
    assert "probabilities" not in layer._kept_attention
    dx = layer.backward(weights)[0]
    np.testing.assert_allclose(dx, dx_probabilities, rtol=1e-5, atol=1e-6)
    for key, grad in layer.grads.items():
        np.testing.assert_allclose(grad, with_probabilities[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_positional_embedding_and_mean_pooling_gradients_match_finite_differences():
    positions = pynn.layers.PositionalEmbedding(7, 3)
    x = sequences(n=2, t=5, e=3)
    weights = rng.standard_normal(x.shape).astype(np.float32)
    positions.forward(x, training=True)
    dx = positions.backward(weights)
    check_gradient(lambda v: float((positions.forward(v) * weights).sum()), x, dx)
    analytic = positions.grads["weight"].copy()
    assert not analytic[5:].any()  # positions past the length get no gradient

    def loss(value):
        saved = positions.params["weight"].copy()
        positions.params["weight"][...] = value
        result = float((positions.forward(x) * weights).sum())
        positions.params["weight"][...] = saved
        return result

    check_gradient(loss, positions.params["weight"], analytic)
    pooling = pynn.layers.MeanPooling()
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    pooled = pooling.forward([x, mask], training=True)
    np.testing.assert_allclose(pooled, (x * mask[..., None]).sum(1) / mask.sum(1, keepdims=True), rtol=1e-6)
    head = rng.standard_normal(pooled.shape).astype(np.float32)
    d_states, d_mask = pooling.backward(head)
    assert d_mask is None
    check_gradient(lambda v: float((pooling.forward([v, mask]) * head).sum()), x, d_states)
