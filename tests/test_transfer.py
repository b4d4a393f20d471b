"""Transfer learning: pretrain on digits 0-4, save, load, freeze the body,
train a new head on digits 5-9, then fine-tune everything gently."""
import numpy as np

import pynn
from pynn import Sequential
from pynn.layers import Linear, ReLU
from pynn.losses import CrossEntropyLoss
from pynn.optim import Adam


def halves():
    """Digits 0-4, and digits 5-9 relabelled 0-4, in a fixed shuffled order."""
    x, y = pynn.datasets.load_digits()
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    low, high = y < 5, y >= 5
    return (x[low], y[low]), (x[high], y[high] - 5)


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x), axis=1) == y))


def test_frozen_body_new_head_then_fine_tuning(tmp_path):
    (x_low, y_low), (x_high, y_high) = halves()
    pretrained = Sequential(Linear(64, 128), ReLU(), Linear(128, 5))
    pretrained.fit(x_low, y_low, loss=CrossEntropyLoss(), optimizer=Adam(pretrained, lr=3e-3),
                   epochs=10, seed=0, verbose=False)
    assert accuracy(pretrained, x_low, y_low) >= 0.97
    path = tmp_path / "pretrained.safetensors"
    pretrained.save(path)

    body = pynn.load(path).layers[:2]
    model = Sequential(*body, Linear(128, 5))
    model.freeze(2)
    frozen = {key: array.copy() for key, array in model.state_dict().items() if key.startswith("0.")}
    cut = len(x_high) * 3 // 4
    train, test = (x_high[:cut], y_high[:cut]), (x_high[cut:], y_high[cut:])
    history = model.fit(*train, loss=CrossEntropyLoss(), optimizer=Adam(model, lr=1e-2),
                        epochs=20, seed=1, verbose=False)

    for key, before in frozen.items():
        assert model.state_dict()[key].tobytes() == before.tobytes(), f"frozen {key} changed"
    assert not model[0].trainable and not any(grad.any() for grad in model[0].grads.values()), \
        "a frozen layer's weight gradients must not even be computed"
    assert history.history["loss"][-1] < 0.25 * history.history["loss"][0]
    head_accuracy = accuracy(model, *test)
    # Chance is 0.2. Measured 0.92-0.96 over four pretraining seeds with these
    # settings (0.951 for seed 0); a head that does not learn stays near 0.2,
    # and 0.88 leaves room for rounding differences between ISAs and threads.
    assert head_accuracy >= 0.88, head_accuracy

    model.unfreeze()
    model.fit(*train, loss=CrossEntropyLoss(), optimizer=Adam(model, lr=1e-4), epochs=5, seed=2, verbose=False)
    assert model.state_dict()["0.weight"].tobytes() != frozen["0.weight"].tobytes()
    # a small learning rate refines without destroying (measured 0.93-0.97)
    assert accuracy(model, *test) >= head_accuracy - 0.02
