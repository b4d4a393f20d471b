"""Graph models against the equivalent PyTorch modules: a residual block with
BatchNorm in training mode, a squeeze-excite gate (Multiply broadcasting), a
concatenation, a shared layer and a nested Sequential give the same outputs,
the same parameter gradients and the same input gradients; the state dict of
the torch module loads unchanged; inference on any thread count gives the
same bits."""
import numpy as np
import pytest

import pynn
from pynn import layers

torch = pytest.importorskip("torch")
nn = torch.nn


class TorchNet(nn.Module):
    """Attribute paths equal the pynn layer names below."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.se = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 8))
        self.shared = nn.Linear(16, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        h = torch.relu(self.bn(self.stem(x)))
        r = torch.relu(self.conv(h) + h)
        gate = torch.sigmoid(self.se(r.mean(dim=(2, 3))))
        g = r * gate[:, :, None, None]
        pooled = torch.cat([g.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return self.head(self.shared(torch.tanh(self.shared(pooled))))


def pynn_net():
    x = pynn.Input((3, 8, 8), name="x")
    h = layers.ReLU()(layers.BatchNorm2d(8, name="bn")(
        layers.Conv2d(3, 8, 3, padding=1, bias=False, name="stem")(x)))
    r = layers.ReLU()(layers.Add()([layers.Conv2d(8, 8, 3, padding=1, name="conv")(h), h]))
    se = pynn.Sequential(layers.Linear(8, 4), layers.ReLU(), layers.Linear(4, 8), name="se")
    gate = layers.Sigmoid()(se(layers.GlobalAvgPool2d()(r)))
    g = layers.Multiply()([r, layers.Reshape((8, 1, 1))(gate)])
    maxed = layers.Flatten()(layers.MaxPool2d(8)(h))
    pooled = layers.Concatenate()([layers.GlobalAvgPool2d()(g), maxed])
    shared = layers.Linear(16, 16, name="shared")
    out = layers.Linear(16, 5, name="head")(shared(layers.Tanh()(shared(pooled))))
    return pynn.Model(x, out)


@pytest.fixture
def pair():
    torch.manual_seed(0)
    twin = TorchNet().double()
    model = pynn_net()
    model.load_state_dict({key: value.numpy().astype(np.float32) if value.is_floating_point()
                           else value.numpy() for key, value in twin.state_dict().items()})
    return model, twin


def test_the_torch_state_dict_has_the_same_keys(pair):
    model, twin = pair
    assert list(model.state_dict()) == list(twin.state_dict())


def test_training_outputs_and_every_gradient_match_torch(pair):
    model, twin = pair
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    dy = rng.standard_normal((4, 5)).astype(np.float32)
    y = model.forward(x, training=True)
    dx = model.backward(dy)
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    ty = twin(tx)
    ty.backward(torch.tensor(dy, dtype=torch.float64))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-3, atol=1e-5)
    grads = {prefix + key: layer.grads[key] for prefix, layer in model.parameter_owners()
             for key in layer.grads}
    for name, param in twin.named_parameters():
        np.testing.assert_allclose(grads[name], param.grad.numpy(), rtol=1e-3, atol=1e-5, err_msg=name)
    for name, buffer in twin.named_buffers():
        np.testing.assert_allclose(model.state_dict()[name], buffer.numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=name)


def test_inference_matches_torch_eval_and_any_thread_count(pair, set_threads):
    model, twin = pair
    rng = np.random.default_rng(2)
    state = model.state_dict()
    state["bn.running_mean"][...] = rng.standard_normal(8)
    state["bn.running_var"][...] = rng.uniform(0.5, 2.0, 8)
    twin.load_state_dict({key: torch.tensor(value.astype(np.float64) if value.dtype == np.float32 else value)
                          for key, value in state.items()})
    twin.eval()
    for batch in (1, 5, 64):
        x = rng.standard_normal((batch, 3, 8, 8)).astype(np.float32)
        set_threads(1)
        one = model.predict(x)
        set_threads(2)
        two = model.predict(x)
        np.testing.assert_array_equal(one, two)
        with torch.no_grad():
            want = twin(torch.tensor(x, dtype=torch.float64)).numpy()
        np.testing.assert_allclose(one, want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(model.forward(x), want, rtol=1e-4, atol=1e-5)


def test_load_weights_reads_a_torch_safetensors_state_dict(pair, tmp_path):
    from safetensors.torch import save_file

    model, twin = pair
    torch.manual_seed(7)
    other = TorchNet()
    save_file(other.state_dict(), tmp_path / "net.safetensors")
    model.load_weights(tmp_path / "net.safetensors")
    for key, value in other.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[key], value.numpy(), err_msg=key)


class TorchTwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(6, 8)
        self.side = nn.Linear(6, 8)
        self.classes = nn.Linear(8, 3)
        self.value = nn.Linear(8, 1)

    def forward(self, x):
        h = torch.tanh(self.body(x))
        return self.classes(h), self.value(h + torch.relu(self.side(x)))


def test_two_outputs_give_torch_outputs_and_gradients():
    torch.manual_seed(3)
    twin = TorchTwoHeads().double()
    x = pynn.Input((6,))
    h = layers.Tanh()(layers.Linear(6, 8, name="body")(x))
    side = layers.ReLU()(layers.Linear(6, 8, name="side")(x))
    model = pynn.Model(x, [layers.Linear(8, 3, name="classes")(h),
                           layers.Linear(8, 1, name="value")(layers.Add()([h, side]))])
    model.load_state_dict({key: value.numpy().astype(np.float32) for key, value in twin.state_dict().items()})
    rng = np.random.default_rng(4)
    data = rng.standard_normal((5, 6)).astype(np.float32)
    dy = [rng.standard_normal((5, 3)).astype(np.float32), rng.standard_normal((5, 1)).astype(np.float32)]
    outputs = model.forward(data, training=True)
    dx = model.backward(dy)
    tx = torch.tensor(data, dtype=torch.float64, requires_grad=True)
    classes, value = twin(tx)
    ((classes * torch.tensor(dy[0], dtype=torch.float64)).sum()
     + (value * torch.tensor(dy[1], dtype=torch.float64)).sum()).backward()
    np.testing.assert_allclose(outputs[0], classes.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs[1], value.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-4, atol=1e-6)
    for name, param in twin.named_parameters():
        layer, key = name.split(".")
        np.testing.assert_allclose(model.get_layer(layer).grads[key], param.grad.numpy(),
                                   rtol=1e-4, atol=1e-6, err_msg=name)
