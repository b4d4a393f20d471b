"""Optimizers: SGD, Adam, AdamW, RMSprop, Adagrad with torch.optim's update rules.

Each ``step()`` is one fused kernel pass over every trainable parameter
(csrc/optim.c); frozen layers (``trainable=False``) are skipped. An optimizer
takes the model (a ``Sequential`` or a single layer), reads the gradients its
``backward`` wrote and updates the parameters in place.

Row-sparse parameters: when a layer reports the rows its last ``backward``
touched (``Embedding``'s ``touched_rows``), only those rows and their state
are updated; the rows the batch did not touch are left exactly as they are
(lazy, as torch.optim.SparseAdam and TensorFlow's lazy Adam). For plain SGD
without weight decay that is the dense result; with momentum, weight decay
or Adam's moments, an untouched row is neither decayed nor moved by its
momentum until a batch touches it again (docs/embeddings.md)."""
import numpy as np

from pynn import _hooks
from pynn._checks import aligned_zeros, as_real
from pynn._kernels.core import ParameterTable
from pynn.layers.base import Layer


def parameter_owners(model, where):
    """``(name prefix, owner)`` for every object holding ``params``, ``grads``
    and ``trainable``: the layers of a ``Sequential``, or a single layer."""
    if isinstance(model, Layer):
        return [("", model)]
    owners = getattr(model, "parameter_owners", None)
    if owners is None:
        raise TypeError(f"{where}: model must be a pynn Sequential or layer, got {type(model).__name__}")
    return list(owners())


class Optimizer:
    _hyperparameters = ()

    def __init__(self, model, lr, **hyperparameters):
        self._model = model
        self._owners = parameter_owners(model, type(self).__name__)
        self.lr = lr
        for name, value in hyperparameters.items():
            setattr(self, name, value)
        self.state = {}
        self._bound = None      # [(owner, key, param, grad, name)] of the trainable parameters
        self._row_sources = None  # per bound parameter: (its owner's touched_rows or None, key)
        self._trainable = None  # each owner's trainable flag when bound
        self._table = None
        self._initial_lr = None  # set by the first schedule built on it (PyTorch's initial_lr)

    @property
    def model(self):
        """The model (or single layer) this optimizer was built for and updates."""
        return self._model

    @property
    def lr(self):
        return self._lr

    @lr.setter
    def lr(self, value):
        value = as_real(value, type(self).__name__, "lr")
        if not value >= 0.0:
            raise ValueError(f"{type(self).__name__}: lr must be >= 0, got {value}")
        self._lr = value

    def _kernel_table(self):
        """The kernel's pointer table, rebuilt only when freezing changed or an
        array behind it was replaced; otherwise a few identity checks."""
        trainable = [owner.trainable for _, owner in self._owners]
        if (self._table is not None and trainable == self._trainable and all(
                owner.params[key] is param and owner.grads[key] is grad
                for owner, key, param, grad, _ in self._bound)):
            return self._table
        self._trainable = trainable
        self._bound = [(owner, key, param, owner.grads[key], prefix + key)
                       for prefix, owner in self._owners if owner.trainable
                       for key, param in owner.params.items()]
        self._row_sources = [(getattr(owner, "touched_rows", None), key)
                             for owner, key, _, _, _ in self._bound]
        self._table = self._build_table([(name, param, grad) for _, _, param, grad, name in self._bound])
        return self._table

    def _touched_rows(self):
        """Per bound parameter, the only rows its gradient may hold non-zero
        (None: every row), or None when no parameter is row-sparse."""
        rows = [touched(key) if touched is not None else None for touched, key in self._row_sources]
        return rows if any(entry is not None for entry in rows) else None

    def _build_table(self, active):
        raise NotImplementedError

    def _momentum_table(self):
        """The kernel table, rebuilt with momentum buffers when ``momentum``
        became non-zero after it was built (as a OneCycleLR may set it)."""
        table = self._kernel_table()
        if self.momentum != 0.0 and not self._has_momentum_buffers:
            self._table = None
            table = self._kernel_table()
        return table

    def _step_counts(self, active):
        """One int64 array of step counts; each parameter's ``state["step"]``
        becomes a view into it, which the kernel increments for all at once."""
        steps = np.zeros(len(active), dtype=np.int64)
        for index, (name, _, _) in enumerate(active):
            entry = self.state.setdefault(name, {})
            steps[index] = entry.get("step", 0)
            entry["step"] = steps[index:index + 1].reshape(())
        return steps

    def _slots(self, active, slot, wanted=True):
        """Each active parameter's ``slot`` state array (zeros when new), or
        None for every one when not ``wanted``."""
        if not wanted:
            return [None] * len(active)
        slots = []
        for name, param, _ in active:
            entry = self.state.setdefault(name, {})
            if slot not in entry:
                entry[slot] = aligned_zeros(param.shape)
            slots.append(entry[slot])
        return slots

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
        shapes = {prefix + key: param.shape for prefix, owner in self._owners
                  for key, param in owner.params.items()}
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
        self._table = None

    def __reduce__(self):
        """Pickle as the model plus safetensors bytes of this optimizer's state
        (``pynn.io.optimizer_to_bytes``): no code inside."""
        return _hooks.get("reduce_optimizer", f"pickling a {type(self).__name__}")(self)


class SGD(Optimizer):
    """``p -= lr * d`` with ``d = g + weight_decay * p``, through a momentum buffer
    ``b = momentum * b + d`` (Nesterov: ``d + momentum * b``), as torch.optim.SGD.

    Row-sparse parameters (embeddings) are updated only in the rows the batch
    touched: exactly torch.optim.SGD's result without momentum and weight
    decay; with either, the untouched rows and their momentum are left as
    they are (lazy) instead of decaying."""
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

    def _build_table(self, active):
        self._has_momentum_buffers = self.momentum != 0.0
        return ParameterTable([p for _, p, _ in active], [g for _, _, g in active],
                              self._slots(active, "momentum_buffer", self.momentum != 0.0))

    def step(self):
        table = self._momentum_table()
        table.sgd(self.lr, self.momentum, self.weight_decay, self.nesterov, self._touched_rows())


class Adam(Optimizer):
    """Adam as torch.optim.Adam: ``weight_decay`` is added to the gradient (L2).

    Row-sparse parameters (embeddings) are updated lazily, as
    torch.optim.SparseAdam: only the rows the batch touched, and their
    moments, take a step (torch.optim.Adam's formula); the others and their
    moments are left as they are. The step count is per parameter and
    advances on every ``step()``, as SparseAdam's."""
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

    def _build_table(self, active):
        steps = self._step_counts(active)
        return ParameterTable([p for _, p, _ in active], [g for _, _, g in active],
                              self._slots(active, "exp_avg"), self._slots(active, "exp_avg_sq"), steps)

    def step(self):
        table = self._kernel_table()
        table.adam(self.lr, self.betas[0], self.betas[1], self.eps, self.weight_decay,
                   self._decoupled, self._touched_rows())


class AdamW(Adam):
    """AdamW as torch.optim.AdamW: decoupled decay ``p *= 1 - lr * weight_decay``;
    row-sparse parameters lazily as in Adam (untouched rows are not decayed)."""
    _decoupled = True

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(model, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def _nonnegative(where, **values):
    """The values as floats, each checked to be a real number >= 0."""
    checked = {}
    for name, value in values.items():
        checked[name] = as_real(value, where, name)
        if not checked[name] >= 0.0:
            raise ValueError(f"{where}: {name} must be >= 0, got {checked[name]}")
    return checked


class RMSprop(Optimizer):
    """RMSprop as torch.optim.RMSprop: ``weight_decay`` is added to the
    gradient, ``square_avg`` is a running mean of its square with weight
    ``alpha`` (less that of the running mean ``grad_avg`` when ``centered``),
    and the step is ``g / (sqrt(square_avg) + eps)``, through a momentum
    buffer when ``momentum`` > 0. Row-sparse parameters lazily as in Adam."""
    _hyperparameters = ("alpha", "eps", "weight_decay", "momentum", "centered")

    def __init__(self, model, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False):
        if not isinstance(centered, (bool, np.bool_)):
            raise TypeError(f"RMSprop: centered must be True or False, got {type(centered).__name__}")
        super().__init__(model, lr, **_nonnegative("RMSprop", alpha=alpha, eps=eps,
                                                   weight_decay=weight_decay, momentum=momentum),
                         centered=bool(centered))

    def _build_table(self, active):
        steps = self._step_counts(active)
        self._has_momentum_buffers = self.momentum != 0.0
        return ParameterTable([p for _, p, _ in active], [g for _, _, g in active],
                              self._slots(active, "square_avg"),
                              self._slots(active, "momentum_buffer", self.momentum != 0.0), steps,
                              self._slots(active, "grad_avg", self.centered))

    def step(self):
        table = self._momentum_table()
        table.rmsprop(self.lr, self.alpha, self.eps, self.weight_decay, self.momentum,
                      self.centered, self._touched_rows())


class Adagrad(Optimizer):
    """Adagrad as torch.optim.Adagrad: ``weight_decay`` is added to the
    gradient, ``sum`` accumulates its square, and the step is ``clr * g /
    (sqrt(sum) + eps)`` with ``clr = lr / (1 + (step - 1) * lr_decay)``.
    Row-sparse parameters lazily as in Adam: only the touched rows and their
    sums move; the step count, one per parameter, advances on every step."""
    _hyperparameters = ("lr_decay", "weight_decay", "eps")

    def __init__(self, model, lr=1e-2, lr_decay=0.0, weight_decay=0.0, eps=1e-10):
        super().__init__(model, lr, **_nonnegative("Adagrad", lr_decay=lr_decay,
                                                   weight_decay=weight_decay, eps=eps))

    def _build_table(self, active):
        steps = self._step_counts(active)
        return ParameterTable([p for _, p, _ in active], [g for _, _, g in active],
                              self._slots(active, "sum"), None, steps)

    def step(self):
        self._kernel_table().adagrad(self.lr, self.lr_decay, self.weight_decay, self.eps,
                                     self._touched_rows())
