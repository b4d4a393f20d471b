"""fit over a re-iterable of (x_batch, y_batch) pairs (fit(batches, loss=...)
without y): it trains as arrays do, reads each pass afresh, refuses an
iterator its first epoch used up, and leaves the array paths as they were."""
import numpy as np
import pytest

import pynn
from pynn import Sequential, optim
from pynn.layers import Linear, ReLU
from pynn.losses import CrossEntropyLoss, MSELoss, NLLLoss
from tests.helpers import peak_bytes_of


def data(samples=100, features=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, samples)
    x = (np.eye(classes, features)[y] * 2 + rng.standard_normal((samples, features))).astype(np.float32)
    return x, y


def model_and_optimizer(seed=3):
    pynn.init.manual_seed(seed)
    model = Sequential(Linear(6, 16), ReLU(), Linear(16, 3))
    return model, optim.SGD(model, lr=0.1, momentum=0.9)


def pairs(x, y, batch_size):
    return [(x[start:start + batch_size], y[start:start + batch_size])
            for start in range(0, len(x), batch_size)]


class Batches:
    """A reader over in-memory arrays that starts a new pass on each iter()."""

    def __init__(self, x, y, batch_size, with_len=True):
        self.x, self.y, self.batch_size, self.passes = x, y, batch_size, 0
        if with_len:
            self.__class__ = SizedBatches

    def __iter__(self):
        self.passes += 1
        for start in range(0, len(self.x), self.batch_size):
            yield self.x[start:start + self.batch_size], self.y[start:start + self.batch_size]


class SizedBatches(Batches):
    def __len__(self):
        return -(-len(self.x) // self.batch_size)


class SelfIterating:
    """An object that is its own iterator but rewinds in __iter__: re-iterable."""

    def __init__(self, batches):
        self.batches, self.position = batches, 0

    def __iter__(self):
        self.position = 0
        return self

    def __next__(self):
        if self.position == len(self.batches):
            raise StopIteration
        self.position += 1
        return self.batches[self.position - 1]


def weights(model):
    return {key: value.copy() for key, value in model.state_dict().items()}


def test_a_list_of_pairs_trains_bit_for_bit_as_the_arrays_in_order():
    x, y = data()
    by_arrays, optimizer = model_and_optimizer()
    expected = by_arrays.fit(x, y, loss=CrossEntropyLoss(), optimizer=optimizer, epochs=3,
                             batch_size=16, shuffle=False, seed=1, verbose=False)
    by_pairs, optimizer = model_and_optimizer()
    history = by_pairs.fit(pairs(x, y, 16), loss=CrossEntropyLoss(), optimizer=optimizer, epochs=3,
                           seed=1, verbose=False)
    assert history.history == expected.history
    for key, value in weights(by_arrays).items():
        np.testing.assert_array_equal(by_pairs.state_dict()[key], value)
    assert by_pairs.input_shape == (6,)


@pytest.mark.parametrize("make", [lambda x, y: Batches(x, y, 16, with_len=False),
                                  lambda x, y: Batches(x, y, 16),
                                  lambda x, y: SelfIterating(pairs(x, y, 16))],
                         ids=["reader", "sized reader", "own iterator that rewinds"])
def test_a_re_iterable_is_read_once_per_epoch_and_learns(make):
    x, y = data(samples=300)
    x_val, y_val = data(samples=100, seed=1)
    model, optimizer = model_and_optimizer()
    source = make(x, y)
    history = model.fit(source, loss=CrossEntropyLoss(), optimizer=optimizer, epochs=4,
                        validation_data=(x_val, y_val), verbose=False)
    assert sorted(history.history) == ["accuracy", "loss", "val_accuracy", "val_loss"]
    assert len(history.history["loss"]) == 4
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert history.history["val_accuracy"][-1] > 0.75  # chance is 1/3
    if isinstance(source, Batches):
        assert source.passes == 4


def test_a_generator_trains_one_epoch_and_is_refused_at_the_second():
    x, y = data()
    model, optimizer = model_and_optimizer()
    history = model.fit((pair for pair in pairs(x, y, 32)), loss=CrossEntropyLoss(),
                        optimizer=optimizer, epochs=1, verbose=False)
    assert len(history.history["loss"]) == 1
    epochs_seen = []

    class Record(pynn.callbacks.Callback):
        def on_epoch_end(self, epoch, logs):
            epochs_seen.append(epoch)

    with pytest.raises(TypeError, match=r"Sequential.fit: x yielded no batches in epoch 2: a generator "
                                        r"or other iterator is used up by one pass; .*__iter__ starts a new pass"):
        model.fit((pair for pair in pairs(x, y, 32)), loss=CrossEntropyLoss(), optimizer=optimizer,
                  epochs=3, callbacks=[Record()], verbose=False)
    assert epochs_seen == [0]
    with pytest.raises(TypeError, match="used up by one pass"):
        model.fit(iter(pairs(x, y, 32)), loss=CrossEntropyLoss(), optimizer=optimizer, epochs=2,
                  verbose=False)


def test_a_re_iterable_that_comes_back_empty_is_refused():
    x, y = data()

    class Once:
        def __init__(self):
            self.left = [pairs(x, y, 50)]

        def __iter__(self):
            return iter(self.left.pop() if self.left else [])

    model, optimizer = model_and_optimizer()
    with pytest.raises(ValueError, match="x yielded no batches in epoch 2"):
        model.fit(Once(), loss=CrossEntropyLoss(), optimizer=optimizer, epochs=2, verbose=False)


def test_a_multi_input_model_with_arrays_and_with_batches():
    pynn.init.manual_seed(0)
    a, b = pynn.Input((4,), name="a"), pynn.Input((2,), name="b")
    joined = pynn.layers.Concatenate()([Linear(4, 5, name="left")(a), Linear(2, 5, name="right")(b)])
    model = pynn.Model([a, b], Linear(10, 1, name="out")(joined))
    rng = np.random.default_rng(0)
    xa, xb = rng.standard_normal((64, 4), np.float32), rng.standard_normal((64, 2), np.float32)
    target = (xa.sum(1, keepdims=True) - xb[:, :1]).astype(np.float32)
    start = weights(model)
    by_arrays = model.fit([xa, xb], target, loss=MSELoss(), optimizer=optim.SGD(model, lr=0.05),
                          epochs=2, batch_size=16, shuffle=False, verbose=False)
    after_arrays = weights(model)
    model.load_state_dict(start)
    batches = [([xa[i:i + 16], xb[i:i + 16]], target[i:i + 16]) for i in range(0, 64, 16)]
    by_batches = model.fit(batches, loss=MSELoss(), optimizer=optim.SGD(model, lr=0.05), epochs=2,
                           verbose=False)
    assert by_batches.history == by_arrays.history
    for key, value in after_arrays.items():
        np.testing.assert_array_equal(model.state_dict()[key], value)
    # two arrays and no y: a list of inputs is not a list of pairs, and the message says so
    with pytest.raises(TypeError, match=r"Model.fit: without y, x must yield \(x_batch, y_batch\) "
                                        r"pairs; batch 0 is ndarray"):
        model.fit([xa, xb], loss=MSELoss(), optimizer=optim.SGD(model, lr=0.05), verbose=False)


def test_progress_bar_counts_batches(capsys):
    x, y = data(samples=40)
    model, optimizer = model_and_optimizer()
    model.fit(Batches(x, y, 10), loss=CrossEntropyLoss(), optimizer=optimizer, epochs=2)
    err = capsys.readouterr().err
    assert "Epoch 2/2" in err and "4/4" in err and "batch" in err and "loss=" in err
    model.fit(Batches(x, y, 10, with_len=False), loss=CrossEntropyLoss(), optimizer=optimizer)
    err = capsys.readouterr().err
    assert "Epoch 1/1" in err and "4batch" in err.replace(" ", "")


def test_bad_batches_are_refused_by_name():
    x, y = data(samples=20)
    model, optimizer = model_and_optimizer()
    loss = CrossEntropyLoss()
    with pytest.raises(TypeError, match=r"Sequential.fit: y is missing: pass targets y with array inputs x, "
                                        r"or x as a re-iterable of \(x_batch, y_batch\) pairs; got x of type ndarray"):
        model.fit(x, loss=loss, optimizer=optimizer, verbose=False)
    with pytest.raises(TypeError, match="y is missing.*got x of type int"):
        model.fit(3, loss=loss, optimizer=optimizer, verbose=False)
    with pytest.raises(TypeError, match="batch 1 is tuple of length 3"):
        model.fit([(x, y), (x, y, y)], loss=loss, optimizer=optimizer, verbose=False)
    with pytest.raises(ValueError, match=r"x_batch 1 and y_batch 1 must have the same number of samples"):
        model.fit([(x, y), (x, y[:5])], loss=loss, optimizer=optimizer, verbose=False)
    with pytest.raises(TypeError, match="y_batch 0 must be an integer array"):
        model.fit([(x, y.astype(np.float32))], loss=loss, optimizer=optimizer, verbose=False)
    with pytest.raises(ValueError, match=r"x_batch 0 has no samples"):
        model.fit([(x[:0], y[:0])], loss=loss, optimizer=optimizer, verbose=False)
    with pytest.raises(ValueError, match=r"x yielded no \(x_batch, y_batch\) pairs"):
        model.fit([], loss=loss, optimizer=optimizer, verbose=False)
    with pytest.raises(ValueError, match="Linear"):
        model.fit([(x[:, :5], y)], loss=loss, optimizer=optimizer, verbose=False)

    class OneRank:
        def Get_size(self):
            return 1

    with pytest.raises(ValueError, match="comm needs arrays x and y"):
        model.fit(pairs(x, y, 5), loss=loss, optimizer=optimizer, comm=OneRank(), verbose=False)


def test_class_index_losses_in_fit_and_accuracy_skips_ignored_rows():
    x, y = data(samples=60)
    y_masked = y.copy()
    y_masked[::3] = -100
    model, optimizer = model_and_optimizer()
    history = model.fit(x, y_masked, loss=CrossEntropyLoss(label_smoothing=0.1), optimizer=optimizer,
                        epochs=20, batch_size=60, shuffle=False, verbose=False)
    assert np.isfinite(history.history["loss"]).all()
    scores = model.evaluate(x, y_masked, loss=CrossEntropyLoss())
    kept = y_masked != -100
    predicted = model.predict(x).argmax(axis=1)
    assert scores["accuracy"] == pytest.approx(np.mean(predicted[kept] == y[kept]))
    assert scores["accuracy"] != pytest.approx(np.mean(predicted == y_masked))
    log_probs = pynn.ops.log_softmax(model.predict(x))
    nll = NLLLoss()
    assert model.evaluate(x, y, loss=CrossEntropyLoss())["loss"] == pytest.approx(nll(log_probs, y), rel=1e-5)
    model.fit(pairs(x, y, 20), loss=NLLLoss(), optimizer=optimizer, verbose=False)  # index targets accepted


@pytest.mark.parametrize("over", ["arrays", "pairs"])
def test_fit_allocates_under_64_kib_in_steady_state(over):
    rng = np.random.default_rng(0)
    x, y = rng.random((512, 784), dtype=np.float32), rng.integers(0, 10, 512)
    model = Sequential(Linear(784, 256), ReLU(), Linear(256, 10))
    optimizer, loss = optim.SGD(model, lr=0.01, momentum=0.9), CrossEntropyLoss()
    source = pairs(x, y, 128)

    def epoch():
        if over == "arrays":
            model.fit(x, y, loss=loss, optimizer=optimizer, batch_size=128, verbose=False)
        else:
            model.fit(source, loss=loss, optimizer=optimizer, verbose=False)

    epoch()
    assert peak_bytes_of(epoch, times=2) < 64 * 1024
