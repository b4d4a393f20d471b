"""The training loop: it learns (XOR, digits, a squiggly function), is
deterministic, allocates nothing in steady state, and refuses bad input."""
import tracemalloc

import numpy as np
import pytest

import pynn
from pynn import Sequential, optim
from pynn.callbacks import Callback, EarlyStopping
from pynn.layers import Dropout, Linear, ReLU, Tanh
from pynn.losses import CrossEntropyLoss, MSELoss


def classifier(sizes, seed=0, dropout=None):
    rng = np.random.default_rng(seed)
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        linear = Linear(fan_in, fan_out)
        bound = 1.0 / np.sqrt(fan_in)
        for param in linear.params.values():
            param[...] = rng.uniform(-bound, bound, param.shape)
        layers += [linear, ReLU()] + ([Dropout(dropout)] if dropout else [])
    return Sequential(*layers[:-2 if dropout else -1])


def blobs(samples=200, features=6, classes=3, seed=0, spread=1.0):
    """Gaussian clusters around fixed centres; ``seed`` draws the samples."""
    centres = np.random.default_rng(100).standard_normal((classes, features)) * 2
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, samples)
    x = (centres[y] + spread * rng.standard_normal((samples, features))).astype(np.float32)
    return x, y


def test_learns_xor():
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
    y = np.array([0, 1, 1, 0])
    model = classifier((2, 16, 2), seed=1)
    history = model.fit(x, y, loss=CrossEntropyLoss(), optimizer=optim.Adam(model, lr=0.05),
                        epochs=200, batch_size=4, seed=0, verbose=False)
    assert history.history["accuracy"][-1] == 1.0
    np.testing.assert_array_equal(model.predict(x).argmax(axis=1), y)


def test_digits_mlp_reaches_97_percent():
    x, y = pynn.datasets.load_digits()
    order = np.random.default_rng(0).permutation(len(x))
    split = int(0.75 * len(x))
    train, test = order[:split], order[split:]
    model = classifier((64, 128, 10))
    model.fit(x[train], y[train], loss=CrossEntropyLoss(), optimizer=optim.Adam(model, lr=3e-3),
              epochs=30, batch_size=32, seed=0, verbose=False)
    accuracy = model.evaluate(x[test], y[test], loss=CrossEntropyLoss())["accuracy"]
    assert accuracy >= 0.97


def test_one_hidden_layer_fits_a_squiggly_function():
    """Universal approximation made concrete: 128 tanh units, each starting as a
    steep step at its own point of [-π, π], learn sin(3x) + 0.3 sin(17x)."""
    x = np.linspace(-np.pi, np.pi, 1024, dtype=np.float32)[:, None]
    y = (np.sin(3 * x) + 0.3 * np.sin(17 * x)).astype(np.float32)
    hidden = 128
    rng = np.random.default_rng(0)
    model = Sequential(Linear(1, hidden), Tanh(), Linear(hidden, 1))
    slopes = rng.choice([-1.0, 1.0], hidden) * rng.uniform(4.0, 16.0, hidden)
    model[0].params["weight"][:, 0] = slopes
    model[0].params["bias"][...] = -slopes * np.linspace(-np.pi, np.pi, hidden)
    for param in model[2].params.values():
        param[...] = rng.uniform(-1.0, 1.0, param.shape) / np.sqrt(hidden)
    optimizer = optim.Adam(model, lr=0.01)
    schedule = optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=300)

    class Anneal(Callback):
        def on_epoch_end(self, epoch, logs):
            schedule.step()

    model.fit(x, y, loss=MSELoss(), optimizer=optimizer, epochs=300, batch_size=64,
              seed=0, callbacks=[Anneal()], verbose=False)
    assert model.evaluate(x, y, loss=MSELoss())["loss"] < 1e-3


def train_once(threads, seed):
    pynn.set_num_threads(threads)
    x, y = blobs()
    model = classifier((6, 32, 32, 3), seed=3, dropout=0.2)
    model.fit(x, y, loss=CrossEntropyLoss(), optimizer=optim.SGD(model, lr=0.05, momentum=0.9),
              epochs=3, batch_size=16, seed=seed, verbose=False)
    return {k: v.copy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("threads", [1, 2])
def test_same_seed_and_threads_give_bit_identical_weights(threads, set_threads):
    first, second, other = train_once(threads, 7), train_once(threads, 7), train_once(threads, 8)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    assert any(not np.array_equal(first[key], other[key]) for key in first)


@pytest.mark.parametrize("make_optimizer", [lambda m: optim.SGD(m, lr=0.01, momentum=0.9),
                                            lambda m: optim.AdamW(m)])
def test_training_step_allocates_under_64_kib_in_steady_state(make_optimizer):
    x = np.random.default_rng(0).random((512, 784), dtype=np.float32)
    y = np.random.default_rng(1).integers(0, 10, 512)
    model = classifier((784, 256, 128, 10))
    optimizer, loss = make_optimizer(model), CrossEntropyLoss()
    model.fit(x, y, loss=loss, optimizer=optimizer, batch_size=128, verbose=False)
    x_batch, y_batch = x[:128], y[:128]

    def step():
        pred = model.forward(x_batch, training=True)
        loss(pred, y_batch)
        model.backward(loss.backward())
        optimizer.step()

    step()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(5):
            step()
        step_peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        model.fit(x, y, loss=loss, optimizer=optimizer, batch_size=128, verbose=False)
        fit_growth = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert step_peak < 64 * 1024
    assert fit_growth < 64 * 1024


def test_history_metrics_and_the_partial_last_batch():
    x, y = blobs(samples=10)
    model = classifier((6, 8, 3))
    optimizer = optim.Adam(model, lr=0.01)
    history = model.fit(x, y, loss=CrossEntropyLoss(), optimizer=optimizer, epochs=2,
                        batch_size=4, validation_data=(x, y), verbose=False)
    assert sorted(history.history) == ["accuracy", "loss", "val_accuracy", "val_loss"]
    assert all(len(values) == 2 for values in history.history.values())
    assert int(optimizer.state["0.weight"]["step"]) == 6  # 4 + 4 + 2 per epoch
    history = model.fit(x, np.zeros((10, 3), np.float32), loss=MSELoss(),
                        optimizer=optimizer, verbose=False)
    assert sorted(history.history) == ["loss"]


def test_evaluate_matches_the_loss_of_predict():
    x, y = blobs(samples=300)
    model = classifier((6, 8, 3))
    loss = CrossEntropyLoss()
    scores = model.evaluate(x, y, loss=loss, batch_size=64)
    logits = model.predict(x).astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    assert scores["loss"] == pytest.approx(-log_probs[np.arange(len(y)), y].mean(), rel=1e-5)
    assert scores["accuracy"] == pytest.approx(np.mean(logits.argmax(axis=1) == y))


def test_early_stopping_restores_the_best_weights():
    # few noisy samples and a wide layer: the validation loss soon rises again
    x, y = blobs(samples=40, seed=1, spread=2.0)
    x_val, y_val = blobs(samples=200, seed=2, spread=2.0)
    model = classifier((6, 128, 3))
    snapshots = []

    class Snapshot(Callback):
        def on_epoch_end(self, epoch, logs):
            snapshots.append({k: v.copy() for k, v in self.model.state_dict().items()})

    stopper = EarlyStopping(patience=3)
    history = model.fit(x, y, loss=CrossEntropyLoss(),
                        optimizer=optim.SGD(model, lr=0.02, momentum=0.9), epochs=60,
                        batch_size=8, validation_data=(x_val, y_val), seed=0,
                        callbacks=[Snapshot(), stopper], verbose=False)
    val_loss = history.history["val_loss"]
    assert len(val_loss) < 60, "training should have stopped early"
    best = int(np.argmin(val_loss))
    assert stopper.best_epoch == best
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, snapshots[best][key])


def test_progress_bar_only_when_verbose(capsys):
    x, y = blobs(samples=20)
    model = classifier((6, 4, 3))
    model.fit(x, y, loss=CrossEntropyLoss(), optimizer=optim.SGD(model, lr=0.1), verbose=False)
    assert capsys.readouterr().err == ""
    model.fit(x, y, loss=CrossEntropyLoss(), optimizer=optim.SGD(model, lr=0.1), epochs=2)
    err = capsys.readouterr().err
    assert "Epoch 2/2" in err and "loss=" in err and "accuracy=" in err


def test_errors_name_the_offending_argument():
    x, y = blobs(samples=12)
    model = classifier((6, 4, 3))
    opt = optim.SGD(model, lr=0.1)
    ce = CrossEntropyLoss()
    with pytest.raises(ValueError, match=r"x and y must have the same number of samples.*\(12, 6\).*\(11,\)"):
        model.fit(x, y[:11], loss=ce, optimizer=opt, verbose=False)
    with pytest.raises(TypeError, match="fit: y must be an integer array"):
        model.fit(x, y.astype(np.float32), loss=ce, optimizer=opt, verbose=False)
    with pytest.raises(TypeError, match="Linear"):
        model.fit(x.astype(np.int64), y, loss=ce, optimizer=opt, verbose=False)
    with pytest.raises(ValueError, match="Linear"):
        model.fit(x[:, :5], y, loss=ce, optimizer=opt, verbose=False)
    with pytest.raises(TypeError, match="loss must be a loss object such as CrossEntropyLoss\\(\\), got the class"):
        model.fit(x, y, loss=CrossEntropyLoss, optimizer=opt, verbose=False)
    with pytest.raises(TypeError, match="optimizer must be a pynn.optim optimizer"):
        model.fit(x, y, loss=ce, optimizer="sgd", verbose=False)
    with pytest.raises(ValueError, match="optimizer was built for another model"):
        model.fit(x, y, loss=ce, optimizer=optim.SGD(classifier((6, 4, 3)), lr=0.1), verbose=False)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        model.fit(x, y, loss=ce, optimizer=opt, batch_size=0, verbose=False)
    with pytest.raises(TypeError, match="validation_data must be a pair"):
        model.fit(x, y, loss=ce, optimizer=opt, validation_data=x, verbose=False)
    with pytest.raises(ValueError, match=r"validation_data\[0\] and validation_data\[1\]"):
        model.fit(x, y, loss=ce, optimizer=opt, validation_data=(x, y[:3]), verbose=False)
    with pytest.raises(TypeError, match=r"callbacks\[0\] must be a pynn.callbacks.Callback"):
        model.fit(x, y, loss=ce, optimizer=opt, callbacks=[print], verbose=False)
    with pytest.raises(IndexError):
        model.fit(x, np.full(12, 3), loss=ce, optimizer=opt, verbose=False)
    with pytest.raises(TypeError, match="fit: seed must be an integer"):
        model.fit(x, y, loss=ce, optimizer=opt, seed="abc", verbose=False)
    empty = Sequential()
    with pytest.raises(ValueError, match="fit: the model has no layers"):
        empty.fit(x, y, loss=ce, optimizer=optim.SGD(empty, lr=0.1), verbose=False)
