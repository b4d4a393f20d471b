"""clip_grad_norm_ against a float64 reference and torch.nn.utils, in fit,
and the allocation bound of a training step that clips and schedules."""
import math

import numpy as np
import pytest

import pynn
from pynn import optim
from pynn.layers import Embedding
from pynn.losses import CrossEntropyLoss
from pynn.optim.lr_scheduler import OneCycleLR
from tests.helpers import peak_bytes_of
from tests.test_fit import classifier
from tests.test_optim import Holder, gradient_sequence, kernel_path  # noqa: F401 (fixture)

NORM_TYPES = [2.0, 1.0, 3.0, 0.5, math.inf]


def fill(holder, scale=1.0, seed=1):
    grads = gradient_sequence(holder, 1, seed=seed)[0]
    for name, g in grads.items():
        holder.grads[name][...] = g * scale
    return {name: g.astype(np.float64) * scale for name, g in grads.items()}


def reference_norm(grads, norm_type):
    flat = np.concatenate([g.reshape(-1) for g in grads.values()])
    if math.isinf(norm_type):
        return np.max(np.abs(flat))
    return np.sum(np.abs(flat) ** norm_type) ** (1 / norm_type)


@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize("max_norm", [0.5, 1e9])
def test_matches_float64_reference(norm_type, max_norm, kernel_path):  # noqa: F811
    holder = Holder()
    grads = fill(holder)
    expected = reference_norm(grads, norm_type)
    total = optim.clip_grad_norm_(holder, max_norm, norm_type)
    assert isinstance(total, float)
    assert total == pytest.approx(expected, rel=1e-9)
    factor = min(1.0, max_norm / (expected + 1e-6))
    for name, g in grads.items():
        np.testing.assert_allclose(holder.grads[name], g * factor, rtol=2e-7, atol=1e-30)
        if factor == 1.0:
            assert holder.grads[name].tobytes() == g.astype(np.float32).tobytes()


def test_the_norm_does_not_depend_on_the_thread_count(set_threads):
    totals = []
    for threads in (1, 2):
        set_threads(threads)
        holder = Holder(shapes=[(300001,), (5,)])
        fill(holder)
        totals.append(optim.clip_grad_norm_(holder, 1.0))
    assert totals[0] == totals[1]


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
def test_matches_torch(norm_type):
    torch = pytest.importorskip("torch")
    holder = Holder()
    grads = fill(holder, scale=3.0)
    tensors = [torch.zeros(g.shape, requires_grad=True) for g in grads.values()]
    for tensor, g in zip(tensors, grads.values()):
        tensor.grad = torch.from_numpy(g.astype(np.float32))
    expected = float(torch.nn.utils.clip_grad_norm_(tensors, 2.0, norm_type))
    assert optim.clip_grad_norm_(holder, 2.0, norm_type) == pytest.approx(expected, rel=1e-5)  # float32 sums
    for tensor, name in zip(tensors, holder.grads):
        np.testing.assert_allclose(holder.grads[name], tensor.grad.numpy(), rtol=1e-5, atol=1e-30)


def test_nan_and_inf_spread_as_in_pytorch():
    holder = Holder(shapes=[(4,)])
    holder.grads["p0.w"][...] = [1.0, np.nan, 2.0, 3.0]
    assert math.isnan(optim.clip_grad_norm_(holder, 1.0))
    assert np.isnan(holder.grads["p0.w"]).all()
    holder.grads["p0.w"][...] = [1.0, np.nan, 2.0, 3.0]
    assert math.isnan(optim.clip_grad_norm_(holder, 1.0, math.inf))


def test_frozen_layers_are_left_out():
    holder = Holder(shapes=[(3,), (4,)])
    holder.owners["p1.w"].trainable = False
    holder.grads["p0.w"][...] = [3.0, 0.0, 4.0]
    holder.grads["p1.w"][...] = 100.0
    assert optim.clip_grad_norm_(holder, 1.0) == pytest.approx(5.0)
    np.testing.assert_array_equal(holder.grads["p1.w"], 100.0)
    holder.owners["p1.w"].trainable = True  # the table follows freezing
    assert optim.clip_grad_norm_(holder, 1e9) == pytest.approx(math.sqrt(1 + 4 * 100.0 ** 2), rel=1e-6)


def test_an_embedding_gradient_is_read_in_its_touched_rows():
    layer = Embedding(1000, 8)
    layer.forward(np.array([3, 7, 3]), training=True)
    dy = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    layer.backward(dy)
    dense = layer.grads["weight"].astype(np.float64)
    total = optim.clip_grad_norm_(layer, 0.1)
    assert total == pytest.approx(np.linalg.norm(dense), rel=1e-9)
    np.testing.assert_allclose(layer.grads["weight"], dense * 0.1 / (total + 1e-6), rtol=1e-6)


def test_bad_arguments_name_themselves():
    holder = Holder()
    with pytest.raises(ValueError, match="clip_grad_norm_: max_norm must be >= 0"):
        optim.clip_grad_norm_(holder, -1.0)
    with pytest.raises(TypeError, match="clip_grad_norm_: max_norm must be a real number"):
        optim.clip_grad_norm_(holder, "1")
    for norm_type in (0.0, -2.0, float("nan")):
        with pytest.raises(ValueError, match="clip_grad_norm_: norm_type must be > 0"):
            optim.clip_grad_norm_(holder, 1.0, norm_type)
    with pytest.raises(TypeError, match="clip_grad_norm_: model must be a pynn Sequential or layer"):
        optim.clip_grad_norm_(object(), 1.0)
    model = classifier((4, 3))
    x, y = np.ones((8, 4), np.float32), np.zeros(8, np.int64)
    with pytest.raises(ValueError, match="fit: clip_grad_norm must be >= 0"):
        model.fit(x, y, loss=CrossEntropyLoss(), optimizer=optim.SGD(model, lr=0.1), clip_grad_norm=-1,
                  verbose=False)


def test_fit_clips_before_every_step():
    x, y = pynn.datasets.load_digits()
    x, y = x[:96], y[:96]
    clipped, manual = classifier((64, 16, 10)), classifier((64, 16, 10))
    optimizer, manual_optimizer = optim.SGD(clipped, lr=0.5), optim.SGD(manual, lr=0.5)
    clipped.fit(x, y, loss=CrossEntropyLoss(), optimizer=optimizer, batch_size=32, shuffle=False,
                clip_grad_norm=0.05, verbose=False)
    loss = CrossEntropyLoss()
    norms = []
    for start in range(0, 96, 32):
        loss(manual.forward(x[start:start + 32], training=True), y[start:start + 32])
        manual.backward(loss.backward(), input_grad=False)
        norms.append(optim.clip_grad_norm_(manual, 0.05))
        manual_optimizer.step()
    assert min(norms) > 0.05  # every step was clipped
    for key, array in manual.state_dict().items():
        assert clipped.state_dict()[key].tobytes() == array.tobytes(), key


def test_a_step_with_clipping_and_a_per_batch_schedule_allocates_under_64_kib():
    x = np.random.default_rng(0).random((512, 784), dtype=np.float32)
    y = np.random.default_rng(1).integers(0, 10, 512)
    model = classifier((784, 256, 128, 10))
    optimizer, loss = optim.Adam(model), CrossEntropyLoss()
    schedule = OneCycleLR(optimizer, max_lr=1e-2, total_steps=1000)
    model.fit(x, y, loss=loss, optimizer=optimizer, batch_size=128, scheduler=schedule,
              scheduler_interval="batch", clip_grad_norm=1.0, verbose=False)
    x_batch, y_batch = x[:128], y[:128]

    def step():
        loss(model.forward(x_batch, training=True), y_batch)
        model.backward(loss.backward(), input_grad=False)
        optim.clip_grad_norm_(model, 1.0)
        optimizer.step()
        schedule.step()

    step()
    assert peak_bytes_of(step) < 64 * 1024
    assert peak_bytes_of(lambda: model.fit(
        x, y, loss=loss, optimizer=optimizer, batch_size=128, scheduler=schedule,
        scheduler_interval="batch", clip_grad_norm=1.0, verbose=False), times=1) < 256 * 1024
