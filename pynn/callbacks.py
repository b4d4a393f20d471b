"""Hooks into ``Sequential.fit``: a ``Callback`` base, ``EarlyStopping``,
``ModelCheckpoint``, ``CSVLogger``, ``History``.

``fit`` calls ``set_model(model)`` and ``on_train_begin()`` once, then
``on_batch_end(batch, logs)`` after every optimizer step (``batch`` counts
from 0 in each epoch, ``logs`` holds the batch's ``loss``) and
``on_epoch_end(epoch, logs)`` after every epoch (``logs`` holds that epoch's
``loss`` and, where they apply, ``accuracy``, ``val_loss``, ``val_accuracy``;
returning True stops training), and ``on_train_end()`` last. ``fit`` calls
``on_batch_end`` only on callbacks that override it."""
import csv
import math
import os

import numpy as np

from pynn._checks import as_count, as_real


class Callback:
    model = None

    def set_model(self, model):
        self.model = model

    def on_train_begin(self):
        pass

    def on_batch_end(self, batch, logs):
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


def _monitored(where, monitor, logs):
    if monitor not in logs:
        raise ValueError(f"{where}: monitor={monitor!r} is not among this training's metrics {sorted(logs)}")
    return logs[monitor]


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
        value = _monitored("EarlyStopping", self.monitor, logs)
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


class ModelCheckpoint(Callback):
    """Save the model (``model.save``, atomic) after every epoch in which
    ``monitor`` reached a new best (losses downwards, accuracies upwards),
    or after every epoch without ``save_best_only``. A ``str`` path may hold
    Keras's placeholders, filled by ``path.format(epoch=epoch + 1, **logs)``,
    e.g. ``"model-{epoch:02d}-{val_loss:.3f}.safetensors"``."""

    def __init__(self, path, monitor="val_loss", save_best_only=True):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"ModelCheckpoint: path must be a str or path, got {type(path).__name__}")
        if not isinstance(monitor, str):
            raise TypeError(f"ModelCheckpoint: monitor must be a metric name, got {type(monitor).__name__}")
        self.path, self.monitor, self.save_best_only = path, monitor, bool(save_best_only)
        self.higher_is_better = "acc" in monitor

    def on_train_begin(self):
        self.best = -math.inf if self.higher_is_better else math.inf
        self.best_epoch = None

    def on_epoch_end(self, epoch, logs):
        if self.save_best_only:
            value = _monitored("ModelCheckpoint", self.monitor, logs)
            if not (value > self.best if self.higher_is_better else value < self.best):
                return False
            self.best, self.best_epoch = value, epoch
        path = self.path.format(epoch=epoch + 1, **logs) if isinstance(self.path, str) else self.path
        self.model.save(path)
        return False


class CSVLogger(Callback):
    """Write one CSV row per epoch to ``path``: ``epoch`` and the metrics in
    ``logs`` (sorted by name; ``NA`` where an epoch lacks one), flushed every
    epoch. With ``append`` an existing file is continued without a new header."""

    def __init__(self, path, separator=",", append=False):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"CSVLogger: path must be a str or path, got {type(path).__name__}")
        if not isinstance(separator, str) or len(separator) != 1:
            raise ValueError(f"CSVLogger: separator must be one character, got {separator!r:.20}")
        self.path, self.separator, self.append = path, separator, bool(append)
        self._file = self._writer = None

    def on_train_begin(self):
        continuing = self.append and os.path.exists(self.path) and os.path.getsize(self.path) > 0
        self._file = open(self.path, "a" if self.append else "w", newline="", encoding="utf-8")
        self._header_written = continuing
        self._writer = None

    def on_epoch_end(self, epoch, logs):
        if self._writer is None:
            self._writer = csv.DictWriter(self._file, ["epoch"] + sorted(logs), restval="NA",
                                          extrasaction="ignore", delimiter=self.separator)
            if not self._header_written:
                self._writer.writeheader()
        self._writer.writerow({"epoch": epoch, **{name: float(value) for name, value in logs.items()}})
        self._file.flush()
        return False

    def on_train_end(self):
        if self._file is not None:
            self._file.close()
            self._file = self._writer = None
