"""Learning-rate schedules, stepped once per epoch, as torch.optim.lr_scheduler.

Both use PyTorch's recursive (chainable) form, so the learning rates agree with
PyTorch's to the last bit, past ``T_max`` included."""
import math

from pynn._checks import as_count, as_real
from pynn.optim.optimizer import Optimizer


class LRScheduler:
    def __init__(self, optimizer):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: optimizer must be a pynn.optim optimizer, "
                            f"got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.last_epoch = 0

    def step(self):
        self.last_epoch += 1
        self.optimizer.lr = self._next_lr(self.optimizer.lr)

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
