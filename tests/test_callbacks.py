"""Callbacks: History records, EarlyStopping's patience, direction and restore."""
import numpy as np
import pytest

from pynn.callbacks import Callback, EarlyStopping, History


class StateModel:
    """What callbacks need of a model: state_dict() of live arrays and load_state_dict()."""

    def __init__(self):
        self.weight = np.zeros(3, dtype=np.float32)

    def state_dict(self):
        return {"0.weight": self.weight}

    def load_state_dict(self, state):
        np.copyto(self.weight, state["0.weight"])


def drive(callback, values, monitor="val_loss", model=None):
    """Feed per-epoch values; the model's weight is set to the epoch number first.
    Returns the epochs run."""
    model = model or StateModel()
    callback.set_model(model)
    callback.on_train_begin()
    epochs = 0
    for epoch, value in enumerate(values):
        model.weight[...] = epoch
        epochs += 1
        if callback.on_epoch_end(epoch, {monitor: value, "loss": 1.0}):
            break
    callback.on_train_end()
    return epochs, model


def test_history_collects_per_epoch_lists():
    history = History()
    history.on_epoch_end(0, {"loss": 2.0, "accuracy": 0.5})
    history.on_epoch_end(1, {"loss": 1.0, "accuracy": 0.75})
    assert history.history == {"loss": [2.0, 1.0], "accuracy": [0.5, 0.75]}
    assert history.epoch == [0, 1]


def test_stops_after_patience_epochs_without_improvement():
    epochs, _ = drive(EarlyStopping(patience=2), [5.0, 4.0, 4.5, 4.2, 3.0, 1.0])
    assert epochs == 4  # best at epoch 1, then two epochs without improvement


def test_min_delta_counts_small_gains_as_none():
    epochs, _ = drive(EarlyStopping(patience=1, min_delta=0.5), [5.0, 4.8, 4.7, 1.0])
    assert epochs == 2


def test_accuracy_improves_upwards():
    epochs, _ = drive(EarlyStopping(monitor="val_accuracy", patience=1), [0.5, 0.7, 0.6, 0.9],
                      monitor="val_accuracy")
    assert epochs == 3


def test_restores_best_weights_when_stopping_and_when_running_out():
    _, model = drive(EarlyStopping(patience=2), [5.0, 3.0, 4.0, 4.5, 0.1])
    np.testing.assert_array_equal(model.weight, 1.0)
    _, model = drive(EarlyStopping(patience=10), [5.0, 3.0, 4.0])
    np.testing.assert_array_equal(model.weight, 1.0)
    _, model = drive(EarlyStopping(patience=2, restore_best_weights=False), [5.0, 3.0, 4.0, 4.5])
    np.testing.assert_array_equal(model.weight, 3.0)


def test_missing_monitor_names_the_available_metrics():
    with pytest.raises(ValueError, match=r"monitor='val_loss' is not among .*'loss'"):
        stopper = EarlyStopping()
        stopper.set_model(StateModel())
        stopper.on_train_begin()
        stopper.on_epoch_end(0, {"loss": 1.0})


def test_bad_arguments():
    with pytest.raises(ValueError, match="EarlyStopping: patience must be >= 0, got -1"):
        EarlyStopping(patience=-1)
    with pytest.raises(TypeError, match="EarlyStopping: monitor must be a metric name"):
        EarlyStopping(monitor=3)


def test_base_callback_never_stops():
    assert not Callback().on_epoch_end(0, {"loss": 1.0})
