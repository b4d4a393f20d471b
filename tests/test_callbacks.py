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


def test_on_batch_end_sees_every_batch_of_fit():
    import pynn
    from pynn.layers import Linear
    from pynn.losses import MSELoss

    class Batches(Callback):
        def __init__(self):
            self.seen = []

        def on_batch_end(self, batch, logs):
            self.seen.append((batch, logs["loss"]))

    model = pynn.Sequential(Linear(2, 1))
    x, y = np.ones((10, 2), np.float32), np.zeros((10, 1), np.float32)
    spy = Batches()
    model.fit(x, y, loss=MSELoss(), optimizer=pynn.optim.SGD(model, lr=0.0), epochs=2, batch_size=4,
              callbacks=[spy], verbose=False)
    assert [batch for batch, _ in spy.seen] == [0, 1, 2, 0, 1, 2]
    expected = float(np.mean(model.predict(x) ** 2))
    assert all(loss == pytest.approx(expected, rel=1e-6) for _, loss in spy.seen)


class SavingModel(StateModel):
    def save(self, path):
        with open(path, "w") as file:
            file.write(str(self.weight[0]))


def test_model_checkpoint_saves_only_improvements_and_formats_the_path(tmp_path):
    import pynn
    from pynn.callbacks import ModelCheckpoint

    drive(ModelCheckpoint(tmp_path / "best.txt"), [5.0, 3.0, 4.0, 2.5, 2.6], model=SavingModel())
    assert (tmp_path / "best.txt").read_text() == "3.0"
    checkpoint = ModelCheckpoint(str(tmp_path / "m-{epoch:02d}-{val_accuracy:.2f}.txt"),
                                 monitor="val_accuracy")
    drive(checkpoint, [0.5, 0.7, 0.6], monitor="val_accuracy", model=SavingModel())
    assert sorted(p.name for p in tmp_path.glob("m-*")) == ["m-01-0.50.txt", "m-02-0.70.txt"]
    assert checkpoint.best == 0.7 and checkpoint.best_epoch == 1
    drive(ModelCheckpoint(tmp_path / "every.txt", save_best_only=False), [1.0, 2.0], model=SavingModel())
    assert (tmp_path / "every.txt").read_text() == "1.0"
    model = pynn.Sequential(pynn.layers.Linear(2, 1))  # a real model file, written by save
    checkpoint = ModelCheckpoint(tmp_path / "real.safetensors")
    checkpoint.set_model(model)
    checkpoint.on_train_begin()
    checkpoint.on_epoch_end(0, {"val_loss": 1.0})
    np.testing.assert_array_equal(pynn.load(tmp_path / "real.safetensors")[0].params["weight"],
                                  model[0].params["weight"])


def test_csv_logger_writes_a_row_per_epoch_and_appends(tmp_path):
    from pynn.callbacks import CSVLogger

    path = tmp_path / "log.csv"
    drive(CSVLogger(path), [3.0, 2.0])
    assert path.read_text().splitlines() == ["epoch,loss,val_loss", "0,1.0,3.0", "1,1.0,2.0"]
    drive(CSVLogger(path, append=True), [1.5])
    assert path.read_text().splitlines()[-1] == "0,1.0,1.5" and len(path.read_text().splitlines()) == 4
    drive(CSVLogger(path, separator=";"), [7.0])
    assert path.read_text().splitlines() == ["epoch;loss;val_loss", "0;1.0;7.0"]


def test_bad_arguments_of_the_new_callbacks():
    from pynn.callbacks import CSVLogger, ModelCheckpoint

    with pytest.raises(TypeError, match="ModelCheckpoint: path must be a str or path"):
        ModelCheckpoint(3)
    with pytest.raises(TypeError, match="ModelCheckpoint: monitor must be a metric name"):
        ModelCheckpoint("m.safetensors", monitor=None)
    with pytest.raises(ValueError, match="ModelCheckpoint: monitor='val_loss' is not among"):
        drive(ModelCheckpoint("unused.safetensors"), [1.0], monitor="loss_other", model=SavingModel())
    with pytest.raises(TypeError, match="CSVLogger: path must be a str or path"):
        CSVLogger(None)
    with pytest.raises(ValueError, match="CSVLogger: separator must be one character"):
        CSVLogger("log.csv", separator=";;")
