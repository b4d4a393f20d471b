"""Learning-rate schedules as torch.optim.lr_scheduler, stepped once per epoch
or, in ``fit(scheduler_interval="batch")``, once per batch.

Each uses PyTorch's form of the same schedule (the recursive, chainable one
where PyTorch has it), so the learning rates agree with PyTorch's to the last
bit, ``CosineAnnealingLR`` past ``T_max`` included. As in PyTorch, building a
schedule sets the rate of step 0 (``LinearLR`` scales it by
``start_factor``; ``OneCycleLR`` sets ``max_lr / div_factor``), and the first
schedule built on an optimizer records its rate then as the base every later
one starts from (PyTorch's ``initial_lr``)."""
import bisect
import math

from pynn._checks import as_count, as_real
from pynn.optim.optimizer import Optimizer


def _checked_optimizer(optimizer, where):
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"{where}: optimizer must be a pynn.optim optimizer, got {type(optimizer).__name__}")
    return optimizer


def _in_range(value, where, name, low, high, high_open=False):
    value = as_real(value, where, name)
    if not (low <= value < high if high_open else low <= value <= high):
        bracket = ")" if high_open else "]"
        raise ValueError(f"{where}: {name} must be in [{low}, {high}{bracket}, got {value}")
    return value


class LRScheduler:
    def __init__(self, optimizer):
        self.optimizer = _checked_optimizer(optimizer, type(self).__name__)
        if getattr(optimizer, "_initial_lr", None) is None:
            optimizer._initial_lr = optimizer.lr
        self.base_lr = optimizer._initial_lr
        self.last_epoch = -1
        self._initial_step()

    def _initial_step(self):
        """PyTorch's step at construction: to step 0, at its rate."""
        self.last_epoch += 1
        self.optimizer.lr = self._first_lr(self.optimizer.lr)

    def _first_lr(self, lr):
        return lr

    def step(self):
        self.last_epoch += 1
        self.optimizer.lr = self._next_lr(self.optimizer.lr)

    def _restart(self):
        """Back to step 0 at its closed-form rate (``SequentialLR`` at a milestone)."""
        self.last_epoch = 0
        self.optimizer.lr = self._closed_form_lr()

    def _undo(self):
        """``SequentialLR``'s undoing of the step each schedule took when built."""
        self.last_epoch -= 1

    def get_last_lr(self):
        return [self.optimizer.lr]

    def state_dict(self):
        return {key: value for key, value in vars(self).items() if key != "optimizer"}

    def load_state_dict(self, state_dict):
        self.__dict__.update({key: value for key, value in state_dict.items() if key != "optimizer"})


class StepLR(LRScheduler):
    """Multiply the learning rate by ``gamma`` every ``step_size`` epochs."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        self.step_size = as_count(step_size, "StepLR", "step_size")
        self.gamma = as_real(gamma, "StepLR", "gamma")
        super().__init__(optimizer)

    def _next_lr(self, lr):
        return lr * self.gamma if self.last_epoch % self.step_size == 0 else lr

    def _closed_form_lr(self):
        return self.base_lr * self.gamma ** (self.last_epoch // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """``eta_min + (base_lr - eta_min)(1 + cos(pi t / T_max)) / 2``, continued as
    PyTorch's recursion past ``T_max`` (the rate rises again)."""

    def __init__(self, optimizer, T_max, eta_min=0.0):  # noqa: N803 (PyTorch's name)
        self.T_max = as_count(T_max, "CosineAnnealingLR", "T_max")
        self.eta_min = as_real(eta_min, "CosineAnnealingLR", "eta_min")
        super().__init__(optimizer)

    def _next_lr(self, lr):
        t, period = self.last_epoch, self.T_max
        if (t - 1 - period) % (2 * period) == 0:
            return lr + (self.base_lr - self.eta_min) * (1 - math.cos(math.pi / period)) / 2
        return ((1 + math.cos(math.pi * t / period))
                / (1 + math.cos(math.pi * (t - 1) / period))
                * (lr - self.eta_min) + self.eta_min)

    def _closed_form_lr(self):
        return (self.eta_min + (self.base_lr - self.eta_min)
                * (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2)


class ExponentialLR(LRScheduler):
    """Multiply the learning rate by ``gamma`` every epoch."""

    def __init__(self, optimizer, gamma):
        self.gamma = as_real(gamma, "ExponentialLR", "gamma")
        super().__init__(optimizer)

    def _next_lr(self, lr):
        return lr * self.gamma

    def _closed_form_lr(self):
        return self.base_lr * self.gamma ** self.last_epoch


class MultiStepLR(LRScheduler):
    """Multiply the learning rate by ``gamma`` at each milestone epoch (by
    ``gamma ** k`` at one listed ``k`` times)."""

    def __init__(self, optimizer, milestones, gamma=0.1):
        try:
            listed = list(milestones)
        except TypeError:
            raise TypeError(f"MultiStepLR: milestones must be a list of epochs, "
                            f"got {type(milestones).__name__}") from None
        self.milestones = sorted(as_count(epoch, "MultiStepLR", f"milestones[{index}]", minimum=0)
                                 for index, epoch in enumerate(listed))
        self.gamma = as_real(gamma, "MultiStepLR", "gamma")
        super().__init__(optimizer)

    def _first_lr(self, lr):
        return self._next_lr(lr)

    def _next_lr(self, lr):
        hits = self.milestones.count(self.last_epoch)
        return lr * self.gamma ** hits if hits else lr

    def _closed_form_lr(self):
        return self.base_lr * self.gamma ** bisect.bisect_right(self.milestones, self.last_epoch)


class LinearLR(LRScheduler):
    """Scale the learning rate linearly from ``start_factor`` to ``end_factor``
    over ``total_iters`` epochs, then hold it."""

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5):
        start_factor = as_real(start_factor, "LinearLR", "start_factor")
        if not 0.0 < start_factor <= 1.0:
            raise ValueError(f"LinearLR: start_factor must be in (0, 1], got {start_factor}")
        self.start_factor = start_factor
        self.end_factor = _in_range(end_factor, "LinearLR", "end_factor", 0.0, 1.0)
        self.total_iters = as_count(total_iters, "LinearLR", "total_iters")
        super().__init__(optimizer)

    def _first_lr(self, lr):
        return lr * self.start_factor

    def _next_lr(self, lr):
        if self.last_epoch > self.total_iters:
            return lr
        change = self.end_factor - self.start_factor
        return lr * (1.0 + change / (self.total_iters * self.start_factor
                                     + (self.last_epoch - 1) * change))

    def _closed_form_lr(self):
        return self.base_lr * (self.start_factor + (self.end_factor - self.start_factor)
                               * min(self.total_iters, self.last_epoch) / self.total_iters)


class OneCycleLR(LRScheduler):
    """The 1cycle policy, meant to be stepped once per batch: the rate rises
    from ``max_lr / div_factor`` to ``max_lr`` over the first ``pct_start`` of
    ``total_steps`` (or ``epochs * steps_per_epoch``) and falls to
    ``max_lr / div_factor / final_div_factor`` by the end, annealed by a
    cosine or linearly; with ``three_phase`` it returns to the start before
    falling. With ``cycle_momentum`` the momentum (SGD, RMSprop) or Adam's
    ``betas[0]`` moves the other way, between ``max_momentum`` and
    ``base_momentum``. Stepping past ``total_steps`` raises ValueError; the
    rate of step ``total_steps`` (after the last batch) extrapolates the last
    phase, as PyTorch's does, but stops at 0 where PyTorch's linear one dips
    below it."""

    def __init__(self, optimizer, max_lr, total_steps=None, epochs=None, steps_per_epoch=None,
                 pct_start=0.3, anneal_strategy="cos", cycle_momentum=True, base_momentum=0.85,
                 max_momentum=0.95, div_factor=25.0, final_div_factor=1e4, three_phase=False):
        where = "OneCycleLR"
        _checked_optimizer(optimizer, where)
        if total_steps is not None:
            self.total_steps = as_count(total_steps, where, "total_steps")
        elif epochs is not None and steps_per_epoch is not None:
            self.total_steps = (as_count(epochs, where, "epochs")
                                * as_count(steps_per_epoch, where, "steps_per_epoch"))
        else:
            raise ValueError(f"{where}: give total_steps, or epochs and steps_per_epoch")
        pct_start = _in_range(pct_start, where, "pct_start", 0.0, 1.0)
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"{where}: anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r:.60}")
        self.anneal_strategy = anneal_strategy
        max_lr = as_real(max_lr, where, "max_lr")
        if not max_lr >= 0.0:
            raise ValueError(f"{where}: max_lr must be >= 0, got {max_lr}")
        div_factor = as_real(div_factor, where, "div_factor")
        final_div_factor = as_real(final_div_factor, where, "final_div_factor")
        for name, value in (("div_factor", div_factor), ("final_div_factor", final_div_factor)):
            if not value > 0.0:
                raise ValueError(f"{where}: {name} must be > 0, got {value}")
        total = self.total_steps
        if three_phase:
            self.phases = [
                {"end_step": float(pct_start * total) - 1, "start_lr": "initial_lr", "end_lr": "max_lr",
                 "start_momentum": "max_momentum", "end_momentum": "base_momentum"},
                {"end_step": float(2 * pct_start * total) - 2, "start_lr": "max_lr", "end_lr": "initial_lr",
                 "start_momentum": "base_momentum", "end_momentum": "max_momentum"},
                {"end_step": total - 1, "start_lr": "initial_lr", "end_lr": "min_lr",
                 "start_momentum": "max_momentum", "end_momentum": "max_momentum"}]
        else:
            self.phases = [
                {"end_step": float(pct_start * total) - 1, "start_lr": "initial_lr", "end_lr": "max_lr",
                 "start_momentum": "max_momentum", "end_momentum": "base_momentum"},
                {"end_step": total - 1, "start_lr": "max_lr", "end_lr": "min_lr",
                 "start_momentum": "base_momentum", "end_momentum": "max_momentum"}]
        starts = [0.0] + [phase["end_step"] for phase in self.phases[:-1]]
        if any(phase["end_step"] == start for phase, start in zip(self.phases, starts)):
            raise ValueError(f"{where}: pct_start={pct_start} leaves a phase without steps "
                             f"in total_steps={total}")
        initial_lr = max_lr / div_factor
        self.anchors = {"initial_lr": initial_lr, "max_lr": max_lr,
                        "min_lr": initial_lr / final_div_factor}
        self.cycle_momentum = bool(cycle_momentum)
        if self.cycle_momentum:
            self.use_beta1 = hasattr(optimizer, "betas")
            if not self.use_beta1 and not hasattr(optimizer, "momentum"):
                raise ValueError(f"{where}: cycle_momentum needs an optimizer with a momentum or "
                                 f"betas, got {type(optimizer).__name__}; pass cycle_momentum=False")
            high = 1.0 if self.use_beta1 else math.inf
            self.anchors["max_momentum"] = _in_range(max_momentum, where, "max_momentum", 0.0, high, True)
            self.anchors["base_momentum"] = _in_range(base_momentum, where, "base_momentum", 0.0, high, True)
            self._set_momentum(optimizer, self.anchors["max_momentum"])
        optimizer._initial_lr = initial_lr
        super().__init__(optimizer)

    def _set_momentum(self, optimizer, momentum):
        if self.use_beta1:
            optimizer.betas = (momentum, *optimizer.betas[1:])
        else:
            optimizer.momentum = momentum

    def _anneal(self, start, end, pct):
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _first_lr(self, lr):
        return self._closed_form_lr()

    def _next_lr(self, lr):
        return self._closed_form_lr()

    def _closed_form_lr(self):
        """The rate of step ``last_epoch``; sets the momentum of that step too."""
        step = self.last_epoch
        if step > self.total_steps:
            raise ValueError(f"OneCycleLR: stepped {step} times, past total_steps={self.total_steps}")
        start_step = 0.0
        for index, phase in enumerate(self.phases):
            end_step = phase["end_step"]
            if step <= end_step or index == len(self.phases) - 1:
                pct = (step - start_step) / (end_step - start_step)
                if self.cycle_momentum:
                    self._set_momentum(self.optimizer, self._anneal(
                        self.anchors[phase["start_momentum"]], self.anchors[phase["end_momentum"]], pct))
                return max(0.0, self._anneal(self.anchors[phase["start_lr"]],
                                             self.anchors[phase["end_lr"]], pct))
            start_step = end_step


class SequentialLR(LRScheduler):
    """``schedulers`` one after another, switching at each of ``milestones``
    (one fewer than the schedulers), where the next one restarts from step 0."""

    def __init__(self, optimizer, schedulers, milestones):
        where = "SequentialLR"
        _checked_optimizer(optimizer, where)
        if not isinstance(schedulers, (list, tuple)) or not schedulers:
            raise ValueError(f"{where}: schedulers must be a non-empty list of schedules")
        for index, scheduler in enumerate(schedulers):
            if isinstance(scheduler, ReduceLROnPlateau) or not isinstance(scheduler, LRScheduler):
                raise TypeError(f"{where}: schedulers[{index}] must be a schedule other than "
                                f"ReduceLROnPlateau, got {type(scheduler).__name__}")
            if scheduler.optimizer is not optimizer:
                raise ValueError(f"{where}: schedulers[{index}] drives another optimizer")
        if not isinstance(milestones, (list, tuple)) or len(milestones) != len(schedulers) - 1:
            raise ValueError(f"{where}: milestones must list {len(schedulers) - 1} epochs, one "
                             f"fewer than the schedulers, got {milestones!r:.60}")
        milestones = [as_count(epoch, where, f"milestones[{index}]") for index, epoch in enumerate(milestones)]
        if milestones != sorted(milestones):
            raise ValueError(f"{where}: milestones must be in increasing order, got {milestones}")
        self.optimizer = optimizer
        self.schedulers = list(schedulers)
        self.milestones = milestones
        self.last_epoch = 0
        optimizer.lr = optimizer._initial_lr
        self._undo()
        self.schedulers[bisect.bisect_right(self.milestones, 0)]._initial_step()

    def _undo(self):
        for scheduler in self.schedulers:
            scheduler._undo()

    def step(self):
        self.last_epoch += 1
        index = bisect.bisect_right(self.milestones, self.last_epoch)
        if index > 0 and self.milestones[index - 1] == self.last_epoch:
            self.schedulers[index]._restart()
        else:
            self.schedulers[index].step()

    def state_dict(self):
        state = {key: value for key, value in vars(self).items() if key not in ("optimizer", "schedulers")}
        state["schedulers"] = [scheduler.state_dict() for scheduler in self.schedulers]
        return state

    def load_state_dict(self, state_dict):
        for scheduler, state in zip(self.schedulers, state_dict["schedulers"]):
            scheduler.load_state_dict(state)
        self.__dict__.update({key: value for key, value in state_dict.items()
                              if key not in ("optimizer", "schedulers")})


class ReduceLROnPlateau(LRScheduler):
    """Multiply the learning rate by ``factor`` (not below ``min_lr``) once the
    metric given to ``step(metric)`` has not improved for ``patience`` epochs,
    then wait ``cooldown`` epochs before counting again. ``mode`` "min" or
    "max"; an improvement beats the best by ``threshold``, relative
    (``threshold_mode="rel"``) or absolute ("abs"). A reduction smaller than
    ``eps`` is skipped. ``fit`` steps it with ``val_loss``, else ``loss``."""

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4,
                 threshold_mode="rel", cooldown=0, min_lr=0.0, eps=1e-8):
        where = "ReduceLROnPlateau"
        self.optimizer = _checked_optimizer(optimizer, where)
        if mode not in ("min", "max"):
            raise ValueError(f"{where}: mode must be 'min' or 'max', got {mode!r:.60}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"{where}: threshold_mode must be 'rel' or 'abs', got {threshold_mode!r:.60}")
        self.mode, self.threshold_mode = mode, threshold_mode
        self.factor = _in_range(factor, where, "factor", 0.0, 1.0, high_open=True)
        self.patience = as_count(patience, where, "patience", minimum=0)
        self.threshold = _in_range(threshold, where, "threshold", 0.0, math.inf)
        self.cooldown = as_count(cooldown, where, "cooldown", minimum=0)
        self.min_lr = _in_range(min_lr, where, "min_lr", 0.0, math.inf)
        self.eps = _in_range(eps, where, "eps", 0.0, math.inf)
        self.last_epoch = 0
        self.best = math.inf if mode == "min" else -math.inf
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    def _is_better(self, value):
        if self.mode == "min":
            return value < (self.best * (1.0 - self.threshold) if self.threshold_mode == "rel"
                            else self.best - self.threshold)
        return value > (self.best * (self.threshold + 1.0) if self.threshold_mode == "rel"
                        else self.best + self.threshold)

    def step(self, metric):
        value = as_real(metric, "ReduceLROnPlateau.step", "metric")
        self.last_epoch += 1
        if self._is_better(value):
            self.best, self.num_bad_epochs = value, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs in cooldown do not count
        if self.num_bad_epochs > self.patience:
            lr = self.optimizer.lr
            reduced = max(lr * self.factor, self.min_lr)
            if lr - reduced > self.eps:
                self.optimizer.lr = reduced
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0
