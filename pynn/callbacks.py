"""Hooks into ``Sequential.fit``: a ``Callback`` base, ``EarlyStopping``, ``History``.

``fit`` calls ``set_model(model)`` and ``on_train_begin()`` once, then
``on_epoch_end(epoch, logs)`` after every epoch (``logs`` holds that epoch's
``loss`` and, where they apply, ``accuracy``, ``val_loss``, ``val_accuracy``;
returning True stops training), and ``on_train_end()`` last."""
import math

import numpy as np

from pynn._checks import as_count, as_real


class Callback:
    model = None

    def set_model(self, model):
        self.model = model

    def on_train_begin(self):
        pass

    def on_epoch_end(self, epoch, logs):
        """Return True to stop training after this epoch."""
        return False

    def on_train_end(self):
        pass


class History(Callback):
    """What ``fit`` returns: ``history[name]`` is the list of per-epoch values."""

    def __init__(self):
        self.history = {}
        self.epoch = []

    def on_epoch_end(self, epoch, logs):
        self.epoch.append(epoch)
        for name, value in logs.items():
            self.history.setdefault(name, []).append(value)
        return False

    def __repr__(self):
        return f"History(epochs={len(self.epoch)}, metrics={sorted(self.history)})"


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for
    ``patience`` epochs. Losses improve downwards, accuracies upwards. With
    ``restore_best_weights`` the model ends training with the weights (and
    buffers) of its best epoch, whether training stopped early or ran out of
    epochs."""

    def __init__(self, monitor="val_loss", patience=5, min_delta=0.0, restore_best_weights=True):
        if not isinstance(monitor, str):
            raise TypeError(f"EarlyStopping: monitor must be a metric name, got {type(monitor).__name__}")
        self.monitor = monitor
        self.patience = as_count(patience, "EarlyStopping", "patience", minimum=0)
        self.min_delta = abs(as_real(min_delta, "EarlyStopping", "min_delta"))
        self.restore_best_weights = bool(restore_best_weights)
        self.higher_is_better = "acc" in monitor

    def on_train_begin(self):
        self.best = -math.inf if self.higher_is_better else math.inf
        self.best_epoch = None
        self.stopped_epoch = None
        self.wait = 0
        self._best_state = None

    def _improved(self, value):
        if self.higher_is_better:
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def on_epoch_end(self, epoch, logs):
        if self.monitor not in logs:
            raise ValueError(f"EarlyStopping: monitor={self.monitor!r} is not among this "
                             f"training's metrics {sorted(logs)}")
        value = logs[self.monitor]
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self._snapshot()
            return False
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            return True
        return False

    def _snapshot(self):
        state = self.model.state_dict()
        if self._best_state is None:
            self._best_state = {name: np.array(array, copy=True) for name, array in state.items()}
        else:
            for name, array in state.items():
                np.copyto(self._best_state[name], array)

    def on_train_end(self):
        if self.restore_best_weights and self._best_state is not None:
            self.model.load_state_dict(self._best_state)
