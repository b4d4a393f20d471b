"""The training loop behind ``Sequential.fit`` and ``Sequential.evaluate``.

One step is forward, loss, backward, optimizer step, on a mini-batch gathered
into buffers reused for the whole run, so after the first batch of a shape a
step allocates nothing beyond small Python objects. The same seed and thread
count give bit-identical weights.

``Sequential.fit`` and ``Sequential.evaluate`` reach ``fit`` and ``evaluate``
through the hooks of the same names (``pynn._hooks``), installed here; with a
``comm``, ``fit`` trains through the ``DataParallel`` class that
``pynn.distributed`` installs as the ``data_parallel`` hook."""
import contextlib
import time
import weakref

import numpy as np

from pynn import _hooks, losses
from pynn._checks import as_count, as_float32, as_indices
from pynn._kernels.core import embedding_gather
from pynn.callbacks import Callback, History
from pynn.optim import Optimizer

# Seconds between progress-bar metric refreshes: formatting them every batch
# would cost more than a small training step.
_POSTFIX_INTERVAL = 0.2

# Each model's gathered mini-batches, kept as long as the model lives so that
# later calls to fit reuse them.
_BATCH_BUFFERS = weakref.WeakKeyDictionary()


def _is_classification(loss):
    return isinstance(loss, (losses.CrossEntropyLoss, losses.BCEWithLogitsLoss))


def _check_loss(loss, where):
    if isinstance(loss, type) or not callable(loss) or not callable(getattr(loss, "backward", None)):
        shown = f"the class {loss.__name__}" if isinstance(loss, type) else type(loss).__name__
        raise TypeError(f"{where}: loss must be a loss object such as CrossEntropyLoss(), got {shown}")


def _check_data(model, x, y, loss, where, x_name, y_name):
    if not model.layers:
        raise ValueError(f"{where}: the model has no layers")
    x = model.layers[0].check_input(x)
    if isinstance(loss, losses.CrossEntropyLoss):
        y = as_indices(y, where, y_name, ndim=1)
    else:
        y = as_float32(y, where, y_name)
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
        raise ValueError(f"{where}: {x_name} and {y_name} must have the same number of samples, "
                         f"got {x_name} of shape {x.shape} and {y_name} of shape {y.shape}")
    return x, y


class _Accuracy:
    """Counts correct predictions into reused buffers (no per-batch allocation)."""

    def __init__(self, loss):
        self.binary = isinstance(loss, losses.BCEWithLogitsLoss)
        self._buffers = {}

    def _buffer(self, name, shape, dtype):
        array = self._buffers.get(name)
        if array is None or array.shape != shape:
            array = self._buffers[name] = np.empty(shape, dtype=dtype)
        return array

    def count(self, pred, target):
        """(correct, total) for one batch."""
        if self.binary:
            predicted = self._buffer("predicted", pred.shape, bool)
            actual = self._buffer("actual", target.shape, bool)
            np.greater(pred, 0.0, out=predicted)
            np.greater(target, 0.5, out=actual)
            np.equal(predicted, actual, out=predicted)
            return int(np.count_nonzero(predicted)), predicted.size
        classes = self._buffer("classes", pred.shape[:1], np.int64)
        hits = self._buffer("hits", pred.shape[:1], bool)
        np.argmax(pred, axis=1, out=classes)
        np.equal(classes, target, out=hits)
        return int(np.count_nonzero(hits)), hits.size


class _Batches:
    """Mini-batches in a given order, gathered into ``buffers`` (the model's,
    so they are reused across epochs and across calls to fit)."""

    def __init__(self, x, y, batch_size, buffers):
        self.x, self.y, self.batch_size = x, y, batch_size
        self._buffers = buffers

    def _gather(self, role, source, indices):
        shape = (len(indices),) + source.shape[1:]
        key = (role, shape, source.dtype)
        buffer = self._buffers.get(key)
        if buffer is None:
            if len(self._buffers) >= 8:  # a caller cycling through many shapes
                self._buffers.clear()
            buffer = self._buffers[key] = np.empty(shape, dtype=source.dtype)
        if source.dtype == np.float32 and source.ndim > 1:
            # the threaded row gather: np.take copies rows one by one on one core
            embedding_gather(source.reshape(len(source), -1), indices,
                             buffer.reshape(len(indices), -1), where="fit")
        else:
            np.take(source, indices, axis=0, out=buffer)
        return buffer

    def __call__(self, order):
        for start in range(0, len(self.x), self.batch_size):
            if order is None:  # no shuffling: contiguous row slices, no copy
                stop = start + self.batch_size
                yield self.x[start:stop], self.y[start:stop]
            else:
                indices = order[start:start + self.batch_size]
                yield self._gather("x", self.x, indices), self._gather("y", self.y, indices)


def _reseed_dropout(model, seeds):
    for layer, seed in zip((layer for layer in model.layers if hasattr(layer, "reseed")), seeds):
        layer.reseed(np.random.default_rng(seed))


def fit(model, x, y, *, loss, optimizer, epochs=1, batch_size=32, shuffle=True,
        validation_data=None, seed=None, callbacks=(), verbose=True, comm=None):
    """``Sequential.fit``. With a ``comm``, every rank runs this on its own
    shard through ``DataParallel``, and an exception anywhere in it (argument
    checks included) aborts the whole job rather than leaving ranks waiting."""
    data_parallel = None
    guard = contextlib.nullcontext()
    if comm is not None:
        data_parallel = _hooks.get("data_parallel", "Sequential.fit(comm=...)")
        guard = data_parallel.guard(comm, "Sequential.fit")
    with guard:
        return _fit(model, x, y, loss, optimizer, epochs, batch_size, shuffle, validation_data,
                    seed, callbacks, verbose, comm, data_parallel)


def _fit(model, x, y, loss, optimizer, epochs, batch_size, shuffle, validation_data, seed,
         callbacks, verbose, comm, data_parallel):
    where = "Sequential.fit"
    _check_loss(loss, where)
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"{where}: optimizer must be a pynn.optim optimizer such as "
                        f"SGD(model, lr=0.1), got {type(optimizer).__name__}")
    if optimizer.model is not model:
        raise ValueError(f"{where}: optimizer was built for another model; build it with this one")
    epochs = as_count(epochs, where, "epochs")
    batch_size = as_count(batch_size, where, "batch_size")
    callbacks = list(callbacks)
    for index, callback in enumerate(callbacks):
        if not isinstance(callback, Callback):
            raise TypeError(f"{where}: callbacks[{index}] must be a pynn.callbacks.Callback, "
                            f"got {type(callback).__name__}")
    x, y = _check_data(model, x, y, loss, where, "x", "y")
    if x.shape[0] == 0:
        raise ValueError(f"{where}: x has no samples (shape {x.shape})")
    model.input_shape = x.shape[1:]
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise TypeError(f"{where}: validation_data must be a pair (x_val, y_val), "
                            f"got {type(validation_data).__name__}")
        validation_data = _check_data(model, *validation_data, loss, where,
                                      "validation_data[0]", "validation_data[1]")

    if seed is not None:
        seed = as_count(seed, where, "seed", minimum=0)
    parallel = None
    if comm is not None:  # each rank trains on its own shard; see pynn.distributed
        parallel = data_parallel(model, optimizer, comm)
        parallel.plan_epoch(x.shape[0], batch_size, where)
        verbose = verbose and parallel.rank == 0
    shuffle_seed, dropout_seed = np.random.SeedSequence(seed).spawn(2)
    if seed is not None:
        _reseed_dropout(model, dropout_seed.spawn(len(model.layers)))
    rng = np.random.default_rng(shuffle_seed)
    classification = _is_classification(loss)
    accuracy = _Accuracy(loss) if classification else None
    batches = _Batches(x, y, batch_size, _BATCH_BUFFERS.setdefault(model, {}))
    history = History()
    everyone = [history] + callbacks
    for callback in everyone:
        callback.set_model(model)
        callback.on_train_begin()
    if verbose:
        from tqdm.auto import tqdm

    samples = x.shape[0]
    for epoch in range(epochs):
        bar = tqdm(total=samples, desc=f"Epoch {epoch + 1}/{epochs}", unit="sample",
                   leave=True) if verbose else None
        shown = time.monotonic()
        loss_sum, correct, counted = 0.0, 0, 0
        order = rng.permutation(samples) if shuffle else None
        for step, (x_batch, y_batch) in enumerate(batches(order)):
            pred = model.forward(x_batch, training=True)
            loss_sum += loss(pred, y_batch) * len(x_batch)
            if parallel is None:
                model.backward(loss.backward(), input_grad=False)
                optimizer.step()
            else:
                parallel.step(loss.backward(), parallel.share(step, len(x_batch)))
            if classification:
                hits, total = accuracy.count(pred, y_batch)
                correct += hits
                counted += total
            if bar is not None:
                bar.update(len(x_batch))
                if time.monotonic() - shown >= _POSTFIX_INTERVAL:
                    shown = time.monotonic()
                    bar.set_postfix(loss=f"{loss_sum / bar.n:.4f}", refresh=False)
        seen = samples
        if parallel is not None:
            loss_sum, correct, counted, seen = parallel.sum_over_ranks(loss_sum, correct, counted, seen)
        logs = {"loss": loss_sum / seen}
        if classification:
            logs["accuracy"] = correct / counted
        if validation_data is not None:
            scores = evaluate(model, *validation_data, loss=loss, checked=True)
            logs.update({f"val_{name}": value for name, value in scores.items()})
        if bar is not None:
            bar.set_postfix({name: f"{value:.4f}" for name, value in logs.items()})
            bar.close()
        stops = [bool(callback.on_epoch_end(epoch, logs)) for callback in everyone]
        stop = any(stops)
        if parallel is not None:  # the same decision on every rank
            stop = parallel.any_rank(stop)
        if stop:
            break
    for callback in everyone:
        callback.on_train_end()
    return history


def evaluate(model, x, y, *, loss, batch_size=256, checked=False):
    """Mean loss (and accuracy for classification) over ``(x, y)`` in inference mode."""
    where = "Sequential.evaluate"
    if not checked:
        _check_loss(loss, where)
        batch_size = as_count(batch_size, where, "batch_size")
        x, y = _check_data(model, x, y, loss, where, "x", "y")
    samples = x.shape[0]
    if samples == 0:
        raise ValueError(f"{where}: x has no samples (shape {x.shape})")
    accuracy = _Accuracy(loss) if _is_classification(loss) else None
    loss_sum, correct, counted = 0.0, 0, 0
    for start in range(0, samples, batch_size):
        x_batch, y_batch = x[start:start + batch_size], y[start:start + batch_size]
        pred = model.predict(x_batch)
        loss_sum += loss(pred, y_batch) * len(x_batch)
        if accuracy is not None:
            hits, total = accuracy.count(pred, y_batch)
            correct += hits
            counted += total
    scores = {"loss": loss_sum / samples}
    if accuracy is not None:
        scores["accuracy"] = correct / counted
    return scores


_hooks.install("fit", fit)
_hooks.install("evaluate", evaluate)
