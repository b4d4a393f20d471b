"""Optimizers: SGD, Adam, AdamW with torch.optim's update rules.

Each ``step()`` is one fused kernel pass over every trainable parameter
(csrc/optim.c); frozen layers (``trainable=False``) are skipped. An optimizer
takes the model (a ``Sequential`` or a single layer), reads the gradients its
``backward`` wrote and updates the parameters in place."""
import numpy as np

from pynn._checks import as_real
from pynn._kernels.optim import ParameterTable
from pynn.layers.base import Layer


def parameter_slots(model, where):
    """``(name, param, grad, trainable)`` for every parameter of ``model``."""
    if isinstance(model, Layer):
        return [(name, param, model.grads[name], model.trainable)
                for name, param in model.params.items()]
    slots = getattr(model, "parameter_slots", None)
    if slots is None:
        raise TypeError(f"{where}: model must be a pynn Sequential or layer, got {type(model).__name__}")
    return list(slots())


class Optimizer:
    _hyperparameters = ()

    def __init__(self, model, lr, **hyperparameters):
        where = type(self).__name__
        self._model = model
        parameter_slots(model, where)  # refuses a wrong model now, not at the first step
        self.lr = lr
        for name, value in hyperparameters.items():
            setattr(self, name, value)
        self.state = {}
        self._table = None
        self._table_key = None

    @property
    def lr(self):
        return self._lr

    @lr.setter
    def lr(self, value):
        value = as_real(value, type(self).__name__, "lr")
        if not value >= 0.0:
            raise ValueError(f"{type(self).__name__}: lr must be >= 0, got {value}")
        self._lr = value

    def _active_slots(self):
        return [(name, param, grad) for name, param, grad, trainable
                in parameter_slots(self._model, type(self).__name__) if trainable]

    def _bind(self, active, state_names):
        """The kernel's pointer table, rebuilt only when the arrays behind it change."""
        key = [(param, grad) + tuple(self.state.get(name, {}).get(s) for s in state_names)
               for name, param, grad in active]
        if self._table_key is None or len(key) != len(self._table_key) or any(
                a is not b for new, old in zip(key, self._table_key) for a, b in zip(new, old)):
            columns = list(zip(*key)) if key else [()] * (2 + len(state_names))
            self._table = ParameterTable(*[list(column) for column in columns])
            self._table_key = key
        return self._table

    # -- persistence, as torch.optim: hyperparameters plus per-parameter state --
    def state_dict(self):
        group = {"lr": self.lr}
        group.update({name: getattr(self, name) for name in self._hyperparameters})
        return {"state": {name: dict(entry) for name, entry in self.state.items()},
                "param_groups": [group]}

    def load_state_dict(self, state_dict):
        where = f"{type(self).__name__}.load_state_dict"
        try:
            group, = state_dict["param_groups"]
            entries = state_dict["state"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{where}: expected a dict with 'state' and one entry in "
                             f"'param_groups', as state_dict() returns") from None
        shapes = {name: param.shape for name, param, _, _ in parameter_slots(self._model, where)}
        new_state = {}
        for name, entry in entries.items():
            if name not in shapes:
                raise ValueError(f"{where}: state for unknown parameter {name!r}")
            new_state[name] = {}
            for key, value in entry.items():
                value = np.array(value, dtype=np.int64 if key == "step" else np.float32)
                if key != "step" and value.shape != shapes[name]:
                    raise ValueError(f"{where}: {name}.{key} has shape {value.shape}, "
                                     f"the parameter {shapes[name]}")
                new_state[name][key] = value
        self.lr = group["lr"]
        for name in self._hyperparameters:
            if name in group:
                setattr(self, name, group[name])
        self.state = new_state
        self._table_key = None


class SGD(Optimizer):
    """``p -= lr * d`` with ``d = g + weight_decay * p``, through a momentum buffer
    ``b = momentum * b + d`` (Nesterov: ``d + momentum * b``), as torch.optim.SGD."""
    _hyperparameters = ("momentum", "nesterov", "weight_decay")

    def __init__(self, model, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
        momentum = as_real(momentum, "SGD", "momentum")
        weight_decay = as_real(weight_decay, "SGD", "weight_decay")
        if not 0.0 <= momentum:
            raise ValueError(f"SGD: momentum must be >= 0, got {momentum}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"SGD: weight_decay must be >= 0, got {weight_decay}")
        if nesterov and momentum == 0.0:
            raise ValueError("SGD: nesterov=True needs a momentum > 0")
        super().__init__(model, lr, momentum=momentum, nesterov=bool(nesterov),
                         weight_decay=weight_decay)

    def step(self):
        active = self._active_slots()
        first_step = [False] * len(active)
        if self.momentum != 0.0:
            for i, (name, param, _) in enumerate(active):
                entry = self.state.setdefault(name, {})
                if "momentum_buffer" not in entry:
                    entry["momentum_buffer"] = np.empty_like(param)
                    first_step[i] = True
        self._bind(active, ("momentum_buffer",)).sgd(
            self.lr, self.momentum, self.weight_decay, self.nesterov, first_step)


class Adam(Optimizer):
    """Adam as torch.optim.Adam: ``weight_decay`` is added to the gradient (L2)."""
    _hyperparameters = ("betas", "eps", "weight_decay")
    _decoupled = False

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        where = type(self).__name__
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise TypeError(f"{where}: betas must be a pair of numbers, got {betas!r}") from None
        betas = (as_real(beta1, where, "betas[0]"), as_real(beta2, where, "betas[1]"))
        for index, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"{where}: betas[{index}] must be in [0, 1), got {beta}")
        eps = as_real(eps, where, "eps")
        weight_decay = as_real(weight_decay, where, "weight_decay")
        if not eps >= 0.0:
            raise ValueError(f"{where}: eps must be >= 0, got {eps}")
        if not weight_decay >= 0.0:
            raise ValueError(f"{where}: weight_decay must be >= 0, got {weight_decay}")
        super().__init__(model, lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def step(self):
        active = self._active_slots()
        steps = []
        for name, param, _ in active:
            entry = self.state.get(name)
            if entry is None:
                entry = self.state[name] = {"step": np.zeros((), dtype=np.int64),
                                            "exp_avg": np.zeros_like(param),
                                            "exp_avg_sq": np.zeros_like(param)}
            entry["step"] += 1
            steps.append(int(entry["step"]))
        table = self._bind(active, ("exp_avg", "exp_avg_sq"))
        table.adam(self.lr, self.betas[0], self.betas[1], self.eps, self.weight_decay,
                   self._decoupled, steps)


class AdamW(Adam):
    """AdamW as torch.optim.AdamW: decoupled decay ``p *= 1 - lr * weight_decay``."""
    _decoupled = True

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(model, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


from pynn.optim import lr_scheduler  # noqa: E402  (schedules refer to Optimizer)

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "lr_scheduler"]
