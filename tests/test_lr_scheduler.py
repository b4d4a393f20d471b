"""Learning-rate schedules: closed forms, and PyTorch's values when importable."""
import math

import numpy as np
import pytest

import pynn

from pynn import optim
from pynn.losses import CrossEntropyLoss
from pynn.optim.lr_scheduler import (CosineAnnealingLR, ExponentialLR, LinearLR, MultiStepLR,
                                     OneCycleLR, ReduceLROnPlateau, SequentialLR, StepLR)


class Holder:
    def parameter_owners(self):
        return []


def rates(scheduler, epochs):
    values = [scheduler.optimizer.lr]
    for _ in range(epochs):
        scheduler.step()
        values.append(scheduler.optimizer.lr)
    return np.array(values)


def test_step_lr_closed_form():
    scheduler = StepLR(optim.SGD(Holder(), lr=0.5), step_size=3, gamma=0.1)
    expected = [0.5 * 0.1 ** (epoch // 3) for epoch in range(11)]
    np.testing.assert_allclose(rates(scheduler, 10), expected, rtol=1e-12)


def test_cosine_closed_form_within_and_past_t_max():
    scheduler = CosineAnnealingLR(optim.Adam(Holder(), lr=0.2), T_max=7, eta_min=0.01)
    expected = [0.01 + (0.2 - 0.01) * (1 + math.cos(math.pi * t / 7)) / 2 for t in range(30)]
    np.testing.assert_allclose(rates(scheduler, 29), expected, rtol=1e-9, atol=1e-12)


def test_schedule_drives_the_optimizer_lr():
    optimizer = optim.SGD(Holder(), lr=1.0)
    scheduler = StepLR(optimizer, step_size=1, gamma=0.5)
    scheduler.step()
    assert optimizer.lr == 0.5 and scheduler.get_last_lr() == [0.5]


@pytest.mark.parametrize("make, make_torch", [
    (lambda o: StepLR(o, step_size=4, gamma=0.3), lambda o, t: t.optim.lr_scheduler.StepLR(o, 4, 0.3)),
    (lambda o: CosineAnnealingLR(o, T_max=5, eta_min=0.001),
     lambda o, t: t.optim.lr_scheduler.CosineAnnealingLR(o, T_max=5, eta_min=0.001)),
])
def test_matches_torch_bit_for_bit(make, make_torch):
    torch = pytest.importorskip("torch")
    reference_optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.3)
    reference = make_torch(reference_optimizer, torch)
    scheduler = make(optim.SGD(Holder(), lr=0.3))
    for _ in range(23):
        reference_optimizer.step()
        reference.step()
        scheduler.step()
        assert scheduler.optimizer.lr == reference_optimizer.param_groups[0]["lr"]


def test_state_dict_resumes_the_schedule():
    first = CosineAnnealingLR(optim.SGD(Holder(), lr=0.1), T_max=10)
    rates(first, 4)
    second = CosineAnnealingLR(optim.SGD(Holder(), lr=0.1), T_max=10)
    second.load_state_dict(first.state_dict())
    second.optimizer.lr = first.optimizer.lr
    np.testing.assert_array_equal(rates(first, 8), rates(second, 8))


def test_bad_arguments():
    with pytest.raises(TypeError, match="StepLR: optimizer must be a pynn.optim optimizer"):
        StepLR(object(), step_size=2)
    with pytest.raises(ValueError, match="StepLR: step_size must be >= 1, got 0"):
        StepLR(optim.SGD(Holder(), lr=0.1), step_size=0)
    with pytest.raises(TypeError, match="CosineAnnealingLR: T_max must be an integer"):
        CosineAnnealingLR(optim.SGD(Holder(), lr=0.1), T_max=2.5)


def test_linear_lr_closed_form():
    scheduler = LinearLR(optim.SGD(Holder(), lr=0.6), start_factor=0.25, end_factor=0.75, total_iters=4)
    expected = [0.6 * (0.25 + 0.5 * min(t, 4) / 4) for t in range(12)]
    np.testing.assert_allclose(rates(scheduler, 11), expected, rtol=1e-12)


def test_exponential_lr_closed_form():
    np.testing.assert_allclose(rates(ExponentialLR(optim.SGD(Holder(), lr=0.3), gamma=0.9), 20),
                               [0.3 * 0.9 ** t for t in range(21)], rtol=1e-12)


def test_multistep_lr_closed_form_with_a_repeated_milestone():
    scheduler = MultiStepLR(optim.SGD(Holder(), lr=1.0), milestones=[6, 2, 6], gamma=0.5)
    expected = [0.5 ** ((t >= 2) + 2 * (t >= 6)) for t in range(10)]
    np.testing.assert_allclose(rates(scheduler, 9), expected, rtol=1e-12)


def one_cycle_reference(t, total, max_lr, pct, div, final_div, strategy, three_phase, low=0.85, high=0.95):
    """(lr, momentum) of step t, from the 1cycle policy's description."""
    def anneal(start, end, fraction):
        if strategy == "cos":
            return end + (start - end) * (1 + math.cos(math.pi * fraction)) / 2
        return start + (end - start) * fraction
    initial, minimum = max_lr / div, max_lr / div / final_div
    up = pct * total - 1
    if three_phase:
        down = 2 * pct * total - 2
        if t <= up:
            return anneal(initial, max_lr, t / up), anneal(high, low, t / up)
        if t <= down:
            return anneal(max_lr, initial, (t - up) / (down - up)), anneal(low, high, (t - up) / (down - up))
        return anneal(initial, minimum, (t - down) / (total - 1 - down)), high
    if t <= up:
        return anneal(initial, max_lr, t / up), anneal(high, low, t / up)
    fraction = (t - up) / (total - 1 - up)
    return anneal(max_lr, minimum, fraction), anneal(low, high, fraction)


@pytest.mark.parametrize("strategy", ["cos", "linear"])
@pytest.mark.parametrize("three_phase", [False, True])
@pytest.mark.parametrize("make", [lambda: optim.SGD(Holder(), lr=1.0, momentum=0.5),
                                  lambda: optim.Adam(Holder()), lambda: optim.RMSprop(Holder())])
def test_one_cycle_closed_form_with_momentum(strategy, three_phase, make):
    optimizer = make()
    scheduler = OneCycleLR(optimizer, max_lr=0.4, total_steps=50, pct_start=0.25, div_factor=10.0,
                           final_div_factor=100.0, anneal_strategy=strategy, three_phase=three_phase)
    for t in range(50):
        lr, momentum = one_cycle_reference(t, 50, 0.4, 0.25, 10.0, 100.0, strategy, three_phase)
        assert optimizer.lr == pytest.approx(lr, rel=1e-12, abs=1e-15)
        current = optimizer.betas[0] if isinstance(optimizer, optim.Adam) else optimizer.momentum
        assert current == pytest.approx(momentum, rel=1e-12)
        scheduler.step()
    with pytest.raises(ValueError, match="OneCycleLR: stepped 51 times, past total_steps=50"):
        scheduler.step()


def test_one_cycle_without_momentum_cycling_leaves_momentum_alone():
    optimizer = optim.Adagrad(Holder())
    with pytest.raises(ValueError, match="OneCycleLR: cycle_momentum needs an optimizer with a momentum"):
        OneCycleLR(optimizer, max_lr=0.1, total_steps=10)
    sgd = optim.SGD(Holder(), lr=0.1, momentum=0.3)
    OneCycleLR(sgd, max_lr=0.1, total_steps=10, cycle_momentum=False).step()
    assert sgd.momentum == 0.3


def test_sequential_lr_warms_up_then_restarts_the_next_schedule():
    optimizer = optim.SGD(Holder(), lr=1.0)
    warmup = LinearLR(optimizer, start_factor=0.1, total_iters=4)
    decay = ExponentialLR(optimizer, gamma=0.5)
    scheduler = SequentialLR(optimizer, [warmup, decay], milestones=[4])
    expected = [0.1 + 0.9 * t / 4 for t in range(4)] + [0.5 ** (t - 4) for t in range(4, 10)]
    np.testing.assert_allclose(rates(scheduler, 9), expected, rtol=1e-12)


def plateau_reference(values, mode, factor, patience, threshold, threshold_mode, cooldown, min_lr, lr):
    best, bad, cooling, out = (math.inf if mode == "min" else -math.inf), 0, 0, []
    for value in values:
        if mode == "min":
            better = value < (best * (1 - threshold) if threshold_mode == "rel" else best - threshold)
        else:
            better = value > (best * (1 + threshold) if threshold_mode == "rel" else best + threshold)
        best, bad = (value, 0) if better else (best, bad + 1)
        if cooling:
            cooling, bad = cooling - 1, 0
        if bad > patience:
            if lr - max(lr * factor, min_lr) > 1e-8:
                lr = max(lr * factor, min_lr)
            cooling, bad = cooldown, 0
        out.append(lr)
    return out


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("threshold_mode", ["rel", "abs"])
def test_reduce_on_plateau_reference(mode, threshold_mode):
    rng = np.random.default_rng(1)
    values = (rng.random(80) + np.linspace(3, 0, 80) * (1 if mode == "min" else -1)).tolist()
    optimizer = optim.SGD(Holder(), lr=1.0)
    scheduler = ReduceLROnPlateau(optimizer, mode=mode, factor=0.5, patience=2, threshold=0.05,
                                  threshold_mode=threshold_mode, cooldown=3, min_lr=0.01)
    seen = []
    for value in values:
        scheduler.step(value)
        seen.append(optimizer.lr)
    assert seen == plateau_reference(values, mode, 0.5, 2, 0.05, threshold_mode, 3, 0.01, 1.0)
    assert min(seen) == 0.01 and len(set(seen)) > 3


TORCH_SCHEDULES = {
    "LinearLR": (lambda o: LinearLR(o, 0.2, 0.9, 30), lambda o, t: t.LinearLR(o, 0.2, 0.9, 30)),
    "ExponentialLR": (lambda o: ExponentialLR(o, 0.97), lambda o, t: t.ExponentialLR(o, 0.97)),
    "MultiStepLR": (lambda o: MultiStepLR(o, [10, 40, 40, 70], 0.5),
                    lambda o, t: t.MultiStepLR(o, [10, 40, 40, 70], 0.5)),
    "OneCycleLR": (lambda o: OneCycleLR(o, 0.3, total_steps=100),
                   lambda o, t: t.OneCycleLR(o, 0.3, total_steps=100)),
    "OneCycleLR-linear-3": (lambda o: OneCycleLR(o, 0.3, epochs=10, steps_per_epoch=10, anneal_strategy="linear",
                                                 three_phase=True, base_momentum=0.8, max_momentum=0.9),
                            lambda o, t: t.OneCycleLR(o, 0.3, epochs=10, steps_per_epoch=10,
                                                      anneal_strategy="linear", three_phase=True,
                                                      base_momentum=0.8, max_momentum=0.9)),
    "SequentialLR": (lambda o: SequentialLR(o, [LinearLR(o, 0.1, total_iters=10), CosineAnnealingLR(o, 30),
                                                MultiStepLR(o, [0, 20], 0.3)], [10, 60]),
                     lambda o, t: t.SequentialLR(o, [t.LinearLR(o, 0.1, total_iters=10), t.CosineAnnealingLR(o, 30),
                                                     t.MultiStepLR(o, [0, 20], 0.3)], [10, 60])),
}
TORCH_OPTIMIZERS = {"SGD": lambda m, lr: (optim.SGD(m, lr=lr, momentum=0.9), "SGD", dict(momentum=0.9)),
                    "Adam": lambda m, lr: (optim.Adam(m, lr=lr), "Adam", {}),
                    "RMSprop": lambda m, lr: (optim.RMSprop(m, lr=lr, momentum=0.5), "RMSprop",
                                              dict(momentum=0.5))}


def torch_rates(torch, name, optimizer_name, steps, metrics=None):
    """PyTorch's learning rates over ``steps`` steps (and its momentum or beta1)."""
    _, torch_name, kwargs = TORCH_OPTIMIZERS[optimizer_name](Holder(), 0.1)
    reference = getattr(torch.optim, torch_name)([torch.zeros(1, requires_grad=True)], lr=0.1, **kwargs)
    scheduler = TORCH_SCHEDULES[name][1](reference, torch.optim.lr_scheduler)
    group, values = reference.param_groups[0], []
    for index in range(steps):
        values.append((group["lr"], group["betas"][0] if "betas" in group else group["momentum"]))
        reference.step()
        scheduler.step(*([metrics[index]] if metrics else []))
    return values


@pytest.mark.parametrize("optimizer_name", sorted(TORCH_OPTIMIZERS))
@pytest.mark.parametrize("name", sorted(TORCH_SCHEDULES))
def test_new_schedules_match_torch_bit_for_bit_over_100_steps(name, optimizer_name):
    torch = pytest.importorskip("torch")
    optimizer, _, _ = TORCH_OPTIMIZERS[optimizer_name](Holder(), 0.1)
    scheduler = TORCH_SCHEDULES[name][0](optimizer)
    ours = []
    for _ in range(100):
        ours.append((optimizer.lr, optimizer.betas[0] if hasattr(optimizer, "betas") else optimizer.momentum))
        scheduler.step()
    assert ours == torch_rates(torch, name, optimizer_name, 100)


def test_reduce_on_plateau_matches_torch():
    torch = pytest.importorskip("torch")
    values = (np.random.default_rng(2).random(100) + np.linspace(2, 0, 100)).tolist()
    for mode in ("min", "max"):
        for threshold_mode in ("rel", "abs"):
            kwargs = dict(mode=mode, factor=0.3, patience=3, threshold=0.02, threshold_mode=threshold_mode,
                          cooldown=2, min_lr=1e-4)
            reference_optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
            reference = torch.optim.lr_scheduler.ReduceLROnPlateau(reference_optimizer, **kwargs)
            optimizer = optim.SGD(Holder(), lr=0.1)
            scheduler = ReduceLROnPlateau(optimizer, **kwargs)
            for value in values:
                reference_optimizer.step()
                reference.step(value)
                scheduler.step(value)
                assert optimizer.lr == reference_optimizer.param_groups[0]["lr"]


class RecordingSGD(optim.SGD):
    """SGD noting the rate each step uses."""

    def step(self):
        self.rates.append(self.lr)
        super().step()


@pytest.mark.parametrize("interval", ["epoch", "batch"])
@pytest.mark.parametrize("name", sorted(TORCH_SCHEDULES))
def test_fit_steps_schedules_as_torch_per_epoch_and_per_batch(name, interval):
    """Every batch trains at the rate PyTorch's schedule gives it: 100 steps
    of the schedule per batch (10 epochs of 10 batches), or 10 per epoch."""
    torch = pytest.importorskip("torch")
    from pynn.layers import Linear

    model = pynn.Sequential(Linear(4, 3))
    optimizer = RecordingSGD(model, lr=0.1, momentum=0.9)
    optimizer.rates = []
    scheduler = TORCH_SCHEDULES[name][0](optimizer)
    x = np.random.default_rng(0).random((100, 4), dtype=np.float32)
    y = np.arange(100) % 3
    model.fit(x, y, loss=CrossEntropyLoss(), optimizer=optimizer, epochs=10, batch_size=10,
              scheduler=scheduler, scheduler_interval=interval, verbose=False)
    expected = [lr for lr, _ in torch_rates(torch, name, "SGD", 100 if interval == "batch" else 10)]
    if interval == "epoch":
        expected = [lr for lr in expected for _ in range(10)]
    assert optimizer.rates == expected


def test_fit_steps_reduce_on_plateau_with_the_validation_loss_else_the_loss():
    from pynn.layers import Linear

    x = np.random.default_rng(0).random((40, 4), dtype=np.float32)
    y = np.arange(40) % 3
    for validation in (None, (x[:20], y[:20])):
        model = pynn.Sequential(Linear(4, 3))
        optimizer = optim.SGD(model, lr=0.0)
        seen = []

        class Spy(ReduceLROnPlateau):
            def step(self, metric):
                seen.append(metric)
                super().step(metric)

        history = model.fit(x, y, loss=CrossEntropyLoss(), optimizer=optimizer, epochs=3,
                            scheduler=Spy(optimizer), validation_data=validation, verbose=False)
        assert seen == history.history["val_loss" if validation else "loss"]


def test_fit_refuses_bad_schedule_arguments():
    from pynn.layers import Linear

    model = pynn.Sequential(Linear(4, 3))
    optimizer = optim.SGD(model, lr=0.1)
    x, y = np.ones((8, 4), np.float32), np.zeros(8, np.int64)
    fit = lambda **kwargs: model.fit(x, y, loss=CrossEntropyLoss(), optimizer=optimizer, verbose=False,
                                     **kwargs)
    with pytest.raises(TypeError, match="fit: scheduler must be a pynn.optim.lr_scheduler schedule"):
        fit(scheduler=object())
    with pytest.raises(ValueError, match="fit: scheduler drives another optimizer"):
        fit(scheduler=StepLR(optim.SGD(model, lr=0.1), 2))
    with pytest.raises(ValueError, match="fit: scheduler_interval must be 'epoch' or 'batch'"):
        fit(scheduler=StepLR(optimizer, 2), scheduler_interval="step")
    with pytest.raises(ValueError, match="fit: a ReduceLROnPlateau steps once per epoch"):
        fit(scheduler=ReduceLROnPlateau(optimizer), scheduler_interval="batch")


@pytest.mark.parametrize("build, error, pattern", [
    (lambda o: LinearLR(o, start_factor=0.0), ValueError, r"LinearLR: start_factor must be in \(0, 1\]"),
    (lambda o: LinearLR(o, end_factor=1.5), ValueError, r"LinearLR: end_factor must be in \[0.0, 1.0\]"),
    (lambda o: LinearLR(o, total_iters=0), ValueError, "LinearLR: total_iters must be >= 1"),
    (lambda o: ExponentialLR(o, gamma="x"), TypeError, "ExponentialLR: gamma must be a real number"),
    (lambda o: MultiStepLR(o, milestones=5), TypeError, "MultiStepLR: milestones must be a list"),
    (lambda o: MultiStepLR(o, milestones=[2, -1]), ValueError, r"MultiStepLR: milestones\[1\] must be >= 0"),
    (lambda o: OneCycleLR(o, max_lr=0.1), ValueError, "OneCycleLR: give total_steps"),
    (lambda o: OneCycleLR(o, max_lr=0.1, total_steps=0), ValueError, "OneCycleLR: total_steps must be >= 1"),
    (lambda o: OneCycleLR(o, max_lr=0.1, total_steps=9, pct_start=1.5), ValueError, "OneCycleLR: pct_start"),
    (lambda o: OneCycleLR(o, max_lr=0.1, total_steps=10, pct_start=0.1), ValueError,
     "OneCycleLR: pct_start=0.1 leaves a phase without steps"),
    (lambda o: OneCycleLR(o, max_lr=0.1, total_steps=9, anneal_strategy="exp"), ValueError,
     "OneCycleLR: anneal_strategy must be 'cos' or 'linear'"),
    (lambda o: OneCycleLR(o, max_lr=-0.1, total_steps=9), ValueError, "OneCycleLR: max_lr must be >= 0"),
    (lambda o: SequentialLR(o, [], []), ValueError, "SequentialLR: schedulers must be a non-empty list"),
    (lambda o: SequentialLR(o, [StepLR(o, 2), StepLR(o, 3)], []), ValueError,
     "SequentialLR: milestones must list 1 epochs"),
    (lambda o: SequentialLR(o, [ReduceLROnPlateau(o)], []), TypeError,
     r"SequentialLR: schedulers\[0\] must be a schedule other than ReduceLROnPlateau"),
    (lambda o: SequentialLR(o, [StepLR(optim.SGD(Holder(), lr=0.1), 2)], []), ValueError,
     r"SequentialLR: schedulers\[0\] drives another optimizer"),
    (lambda o: ReduceLROnPlateau(o, mode="down"), ValueError, "ReduceLROnPlateau: mode must be 'min' or 'max'"),
    (lambda o: ReduceLROnPlateau(o, threshold_mode="x"), ValueError, "ReduceLROnPlateau: threshold_mode"),
    (lambda o: ReduceLROnPlateau(o, factor=1.0), ValueError, "ReduceLROnPlateau: factor must be in"),
    (lambda o: ReduceLROnPlateau(o, patience=-1), ValueError, "ReduceLROnPlateau: patience must be >= 0"),
    (lambda o: ReduceLROnPlateau(o).step("low"), TypeError, "ReduceLROnPlateau.step: metric must be a real"),
    (lambda o: OneCycleLR(object(), max_lr=0.1, total_steps=5), TypeError, "OneCycleLR: optimizer must be"),
])
def test_bad_schedule_arguments_name_themselves(build, error, pattern):
    with pytest.raises(error, match=pattern):
        build(optim.SGD(Holder(), lr=0.1, momentum=0.9))
