"""A run resumed from a checkpoint ends bit-identical to an uninterrupted one."""
import json

import numpy as np
import pytest

import pynn
from pynn import ModelFormatError, Sequential
from pynn.layers import Add, Dropout, Linear, ReLU
from pynn.losses import CrossEntropyLoss
from pynn.optim import SGD, Adagrad, Adam, RMSprop, lr_scheduler
from pynn.optim.lr_scheduler import StepLR

EPOCHS, SPLIT = 6, 3


def data():
    x, y = pynn.datasets.load_digits()
    return x[:300], y[:300]


def build(init_seed, graph=False):
    """The same architecture; ``init_seed`` sets the starting weights, so a
    resumed run must get everything from the checkpoint."""
    rng = np.random.default_rng(init_seed)
    if graph:  # the Sequential's keys, plus a skip connection
        x = pynn.Input((64,))
        h = Dropout(0.2, seed=0, name="2")(ReLU(name="1")(Linear(64, 32, name="0")(x)))
        model = pynn.Model(x, Add()([Linear(32, 10, name="3")(h), Linear(64, 10, name="skip")(x)]))
    else:
        model = Sequential(Linear(64, 32), ReLU(), Dropout(0.2, seed=0), Linear(32, 10))
    for name, array in model.state_dict().items():
        array[...] = rng.uniform(-0.3, 0.3, array.shape)
    optimizer = Adam(model, lr=3e-3)
    return model, optimizer, StepLR(optimizer, step_size=2, gamma=0.5)


def run_epochs(model, optimizer, scheduler, rng, first, last):
    """One epoch = our own shuffle (rng) + fit without reseeding, so the
    Dropout generator carries on from where it was."""
    x, y = data()
    for _ in range(first, last):
        order = rng.permutation(len(x))
        model.fit(x[order], y[order], loss=CrossEntropyLoss(), optimizer=optimizer,
                  epochs=1, batch_size=64, shuffle=False, verbose=False)
        scheduler.step()


@pytest.mark.parametrize("graph", [False, True])
def test_resumed_run_is_bit_identical(tmp_path, graph):
    model, optimizer, scheduler = build(init_seed=1, graph=graph)
    rng = np.random.default_rng(42)
    run_epochs(model, optimizer, scheduler, rng, 0, EPOCHS)

    first, first_optimizer, first_scheduler = build(init_seed=1, graph=graph)
    first_rng = np.random.default_rng(42)
    run_epochs(first, first_optimizer, first_scheduler, first_rng, 0, SPLIT)
    path = tmp_path / "checkpoint.safetensors"
    pynn.save_checkpoint(path, first, first_optimizer, epoch=SPLIT, scheduler=first_scheduler, rng=first_rng)

    resumed, resumed_optimizer, resumed_scheduler = build(init_seed=2, graph=graph)
    resumed_rng = np.random.default_rng(0)
    epoch = pynn.load_checkpoint(path, resumed, resumed_optimizer, scheduler=resumed_scheduler, rng=resumed_rng)
    assert epoch == SPLIT
    run_epochs(resumed, resumed_optimizer, resumed_scheduler, resumed_rng, epoch, EPOCHS)

    for key, array in model.state_dict().items():
        assert resumed.state_dict()[key].tobytes() == array.tobytes(), key
    assert resumed_optimizer.lr == optimizer.lr
    for name, entry in optimizer.state.items():
        for slot, value in entry.items():
            assert np.asarray(resumed_optimizer.state[name][slot]).tobytes() == np.asarray(value).tobytes()
    # and the resumed run really needed the checkpoint: without it the weights differ
    stale, stale_optimizer, stale_scheduler = build(init_seed=2, graph=graph)
    run_epochs(stale, stale_optimizer, stale_scheduler, np.random.default_rng(0), SPLIT, EPOCHS)
    assert stale.state_dict()["0.weight"].tobytes() != model.state_dict()["0.weight"].tobytes()


def test_sgd_momentum_checkpoint_round_trip(tmp_path):
    model = Sequential(Linear(64, 10))
    optimizer = SGD(model, lr=0.05, momentum=0.9, nesterov=True)
    x, y = data()
    model.fit(x, y, loss=CrossEntropyLoss(), optimizer=optimizer, epochs=1, seed=3, verbose=False)
    path = tmp_path / "sgd.safetensors"
    pynn.save_checkpoint(path, model, optimizer, epoch=1)
    other = Sequential(Linear(64, 10))
    other_optimizer = SGD(other, lr=0.5)
    assert pynn.load_checkpoint(path, other, other_optimizer) == 1
    assert other_optimizer.momentum == 0.9 and other_optimizer.nesterov is True and other_optimizer.lr == 0.05
    model.fit(x, y, loss=CrossEntropyLoss(), optimizer=optimizer, epochs=1, seed=4, verbose=False)
    other.fit(x, y, loss=CrossEntropyLoss(), optimizer=other_optimizer, epochs=1, seed=4, verbose=False)
    assert other.state_dict()["0.weight"].tobytes() == model.state_dict()["0.weight"].tobytes()


def test_mismatched_checkpoints_change_nothing(tmp_path):
    model, optimizer, scheduler = build(init_seed=1)
    path = tmp_path / "c.safetensors"
    pynn.save_checkpoint(path, model, optimizer, epoch=0, scheduler=scheduler)
    other = Sequential(Linear(64, 16), ReLU(), Dropout(0.2, seed=0), Linear(16, 10))
    other_optimizer = Adam(other)
    before = {key: array.copy() for key, array in other.state_dict().items()}
    with pytest.raises(ModelFormatError, match="0.weight.*expected shape"):
        pynn.load_checkpoint(path, other, other_optimizer, scheduler=StepLR(other_optimizer, 2))
    for key, array in other.state_dict().items():
        assert array.tobytes() == before[key].tobytes()
    same, same_optimizer, _ = build(init_seed=2)
    with pytest.raises(ModelFormatError, match="scheduler"):
        pynn.load_checkpoint(path, same, same_optimizer)  # saved with a scheduler
    with pytest.raises(ModelFormatError, match="holds Adam state, the optimizer is SGD"):
        pynn.load_checkpoint(path, same, SGD(same, lr=0.1), scheduler=scheduler)
    model.save(tmp_path / "model.safetensors")
    with pytest.raises(ModelFormatError, match="not a pynn checkpoint"):
        pynn.load_checkpoint(tmp_path / "model.safetensors", same, same_optimizer)


def test_resume_with_fit_seeded_per_epoch(tmp_path):
    x, y = data()

    def train(model, optimizer, first, last):
        for epoch in range(first, last):
            model.fit(x, y, loss=CrossEntropyLoss(), optimizer=optimizer, epochs=1, batch_size=50,
                      seed=100 + epoch, verbose=False)

    model, optimizer, _ = build(init_seed=1)
    train(model, optimizer, 0, 4)
    first, first_optimizer, _ = build(init_seed=1)
    train(first, first_optimizer, 0, 2)
    pynn.save_checkpoint(tmp_path / "c.safetensors", first, first_optimizer, epoch=2)
    resumed, resumed_optimizer, _ = build(init_seed=3)
    train(resumed, resumed_optimizer, pynn.load_checkpoint(tmp_path / "c.safetensors", resumed,
                                                           resumed_optimizer), 4)
    for key, array in model.state_dict().items():
        assert resumed.state_dict()[key].tobytes() == array.tobytes(), key


SCHEDULES = {
    "StepLR": lambda o: StepLR(o, step_size=2, gamma=0.5),
    "LinearLR": lambda o: lr_scheduler.LinearLR(o, start_factor=0.2, total_iters=7),
    "ExponentialLR": lambda o: lr_scheduler.ExponentialLR(o, gamma=0.9),
    "MultiStepLR": lambda o: lr_scheduler.MultiStepLR(o, milestones=[3, 9, 9], gamma=0.5),
    "OneCycleLR": lambda o: lr_scheduler.OneCycleLR(o, max_lr=1e-2, total_steps=5 * EPOCHS, three_phase=True),
    "SequentialLR": lambda o: lr_scheduler.SequentialLR(o, [lr_scheduler.LinearLR(o, 0.1, total_iters=4),
                                                            lr_scheduler.CosineAnnealingLR(o, T_max=9)], [4]),
    "ReduceLROnPlateau": lambda o: lr_scheduler.ReduceLROnPlateau(o, patience=0, threshold=0.5, cooldown=1),
}
OPTIMIZERS = {"StepLR": Adam, "LinearLR": lambda m, lr: RMSprop(m, lr=lr, momentum=0.5, centered=True),
              "ExponentialLR": lambda m, lr: Adagrad(m, lr=lr * 10, lr_decay=0.01),
              "MultiStepLR": lambda m, lr: SGD(m, lr=lr * 10, momentum=0.9),
              "OneCycleLR": Adam, "SequentialLR": lambda m, lr: RMSprop(m, lr=lr),
              "ReduceLROnPlateau": Adam}


@pytest.mark.parametrize("name, interval", [(name, interval) for name in sorted(SCHEDULES)
                                             for interval in ("epoch", "batch")
                                             if (name, interval) != ("ReduceLROnPlateau", "batch")])
def test_fit_with_a_schedule_resumes_bit_identically(tmp_path, name, interval):
    """fit(scheduler=..., clip_grad_norm=...) one epoch per call, seeded per
    epoch; a checkpoint halfway holds the schedule, the optimizer's state
    (momentum or beta1 a OneCycleLR moved included) and the weights."""
    x, y = data()

    def build(init_seed):
        model = Sequential(Linear(64, 32), ReLU(), Linear(32, 10))
        for array in model.state_dict().values():
            array[...] = np.random.default_rng(init_seed).uniform(-0.3, 0.3, array.shape)
        optimizer = OPTIMIZERS[name](model, lr=3e-3)
        return model, optimizer, SCHEDULES[name](optimizer)

    def train(model, optimizer, scheduler, first, last):
        for epoch in range(first, last):
            model.fit(x, y, loss=CrossEntropyLoss(), optimizer=optimizer, epochs=1, batch_size=64,
                      seed=100 + epoch, scheduler=scheduler, scheduler_interval=interval,
                      clip_grad_norm=0.5, validation_data=(x[:50], y[:50]), verbose=False)

    model, optimizer, scheduler = build(1)
    train(model, optimizer, scheduler, 0, EPOCHS)
    first, first_optimizer, first_scheduler = build(1)
    train(first, first_optimizer, first_scheduler, 0, SPLIT)
    path = tmp_path / "c.safetensors"
    pynn.save_checkpoint(path, first, first_optimizer, epoch=SPLIT, scheduler=first_scheduler)
    resumed, resumed_optimizer, resumed_scheduler = build(2)
    epoch = pynn.load_checkpoint(path, resumed, resumed_optimizer, scheduler=resumed_scheduler)
    train(resumed, resumed_optimizer, resumed_scheduler, epoch, EPOCHS)
    for key, array in model.state_dict().items():
        assert resumed.state_dict()[key].tobytes() == array.tobytes(), key
    assert resumed_optimizer.lr == optimizer.lr
    assert resumed_scheduler.state_dict() == scheduler.state_dict()
    stale, stale_optimizer, stale_scheduler = build(1)
    stale.load_state_dict(first.state_dict())
    train(stale, stale_optimizer, stale_scheduler, SPLIT, EPOCHS)  # without the optimizer and schedule
    assert stale.state_dict()["0.weight"].tobytes() != model.state_dict()["0.weight"].tobytes()


def test_a_hostile_nested_schedule_state_is_refused(tmp_path):
    from pynn import io

    model = Sequential(Linear(64, 10))
    optimizer = SGD(model, lr=0.1)
    make = SCHEDULES["SequentialLR"]
    path = tmp_path / "c.safetensors"
    pynn.save_checkpoint(path, model, optimizer, scheduler=make(optimizer))
    tensors, metadata = io.read_tensors(path)
    state = json.loads(metadata["scheduler"])
    state["schedulers"][1]["T_max"] = "nine"
    metadata["scheduler"] = json.dumps(state)
    io.save_tensors(path, tensors, metadata)
    with pytest.raises(ModelFormatError, match="scheduler state .* does not fit SequentialLR"):
        pynn.load_checkpoint(path, model, optimizer, scheduler=make(SGD(model, lr=0.1)))
