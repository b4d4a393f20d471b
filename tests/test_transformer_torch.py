"""MultiheadAttention and TransformerEncoderLayer against torch.nn: a
PyTorch module's state dict loads unchanged and gives the same outputs and
gradients (forward in training mode with dropout 0, so autograd runs)."""
import numpy as np
import pytest

import pynn
from pynn.layers import MultiheadAttention, TransformerEncoderLayer

torch = pytest.importorskip("torch")
rng = np.random.default_rng(5)


def load_from(torch_module, layer):
    state = {key: value.detach().numpy() for key, value in torch_module.state_dict().items()}
    assert set(state) == set(layer.params)
    for key, value in state.items():
        layer.params[key][...] = value


def padding_mask(n, s):
    mask = np.zeros((n, s), bool)
    mask[1, s // 2:] = True
    return mask


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("masked", [False, True])
def test_encoder_layer_matches_torch(norm_first, activation, masked):
    torch.manual_seed(0)
    reference = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, activation=activation,
                                                 batch_first=True, norm_first=norm_first)
    layer = TransformerEncoderLayer(32, 4, 64, dropout=0.0, activation=activation, norm_first=norm_first)
    load_from(reference, layer)
    x = rng.standard_normal((3, 9, 32)).astype(np.float32)
    mask = padding_mask(3, 9) if masked else None
    x_t = torch.tensor(x, requires_grad=True)
    y_t = reference(x_t, src_key_padding_mask=None if mask is None else torch.tensor(mask))
    dy = rng.standard_normal(y_t.shape).astype(np.float32)
    y_t.backward(torch.tensor(dy))
    y = layer.forward(x if mask is None else [x, mask], training=True)
    np.testing.assert_allclose(y, y_t.detach().numpy(), rtol=1e-4, atol=1e-5)
    dx = layer.backward(dy)
    dx = dx[0] if masked else dx
    np.testing.assert_allclose(dx, x_t.grad.numpy(), rtol=1e-4, atol=1e-5)
    for key, param in reference.named_parameters():
        np.testing.assert_allclose(layer.grads[key], param.grad.numpy(), rtol=1e-4, atol=2e-5,
                                   err_msg=key)
    reference.eval()
    with torch.no_grad():
        expected = reference(torch.tensor(x), src_key_padding_mask=None if mask is None
                             else torch.tensor(mask)).numpy()
    if masked:  # torch's fast inference path leaves padded query rows as zeros
        expected[mask] = 0.0
        y_eval = layer.forward([x, mask])
        y_eval[mask] = 0.0
    else:
        y_eval = layer.forward(x)
    np.testing.assert_allclose(y_eval, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("form", ["self", "cross", "float mask"])
def test_multihead_attention_matches_torch(form):
    torch.manual_seed(1)
    reference = torch.nn.MultiheadAttention(24, 3, batch_first=True)
    layer = MultiheadAttention(24, 3)
    load_from(reference, layer)
    query = rng.standard_normal((2, 5, 24)).astype(np.float32)
    key = query if form != "cross" else rng.standard_normal((2, 7, 24)).astype(np.float32)
    value = query if form != "cross" else rng.standard_normal((2, 7, 24)).astype(np.float32)
    mask = (rng.standard_normal((2, key.shape[1])).astype(np.float32) if form == "float mask"
            else padding_mask(2, key.shape[1]))
    tensors = [torch.tensor(array, requires_grad=True) for array in (query, key, value)]
    if form != "cross":
        tensors = [tensors[0]] * 3
    y_t, _ = reference(*tensors, key_padding_mask=torch.tensor(mask), need_weights=False)
    dy = rng.standard_normal(y_t.shape).astype(np.float32)
    y_t.backward(torch.tensor(dy))
    inputs = [query, mask] if form != "cross" else [query, key, value, mask]
    y = layer.forward(inputs, training=True)
    np.testing.assert_allclose(y, y_t.detach().numpy(), rtol=1e-4, atol=1e-5)
    grads = layer.backward(dy)
    for ours, theirs in zip(grads, tensors if form == "cross" else tensors[:1]):
        np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=1e-4, atol=1e-5)
    for name, param in reference.named_parameters():
        np.testing.assert_allclose(layer.grads[name], param.grad.numpy(), rtol=1e-4, atol=2e-5,
                                   err_msg=name)


def test_a_torch_encoder_state_dict_loads_into_a_model_unchanged(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(2)
    encoder = torch.nn.TransformerEncoder(
        torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True), num_layers=2,
        enable_nested_tensor=False)
    save_file({key: value.contiguous() for key, value in encoder.state_dict().items()},
              tmp_path / "encoder.safetensors")
    x_in = pynn.Input((None, 16))
    x = x_in
    for index in range(2):
        x = TransformerEncoderLayer(16, 2, 32, dropout=0.0, name=f"layers.{index}")(x)
    model = pynn.Model(x_in, x)
    model.load_weights(tmp_path / "encoder.safetensors")
    sample = rng.standard_normal((4, 6, 16)).astype(np.float32)
    encoder.eval()
    with torch.no_grad():
        expected = encoder(torch.tensor(sample)).numpy()
    np.testing.assert_allclose(model.predict(sample), expected, rtol=1e-4, atol=1e-5)
