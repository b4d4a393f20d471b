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
import copy
import time
import weakref

import numpy as np

from pynn import _hooks, losses
from pynn._checks import as_count, as_float32, as_indices, as_real
from pynn._kernels.core import embedding_gather, scale
from pynn.callbacks import Callback, History
from pynn.optim import Optimizer, clip_grad_norm_
from pynn.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

# Seconds between progress-bar metric refreshes: formatting them every batch
# would cost more than a small training step.
_POSTFIX_INTERVAL = 0.2

# Each model's gathered mini-batches, kept as long as the model lives so that
# later calls to fit reuse them.
_BATCH_BUFFERS = weakref.WeakKeyDictionary()


def _is_classification(loss):
    return isinstance(loss, losses.CLASSIFICATION_LOSSES)


def _check_loss(loss, where):
    if isinstance(loss, type) or not callable(loss) or not callable(getattr(loss, "backward", None)):
        shown = f"the class {loss.__name__}" if isinstance(loss, type) else type(loss).__name__
        raise TypeError(f"{where}: loss must be a loss object such as CrossEntropyLoss(), got {shown}")


def _outputs(model):
    return getattr(model, "output_count", 1)


def _check_losses(model, loss, loss_weights, where):
    """One loss object per output (a single one is copied for each), and their weights."""
    count = _outputs(model)
    if isinstance(loss, (list, tuple)):
        if len(loss) != count:
            raise ValueError(f"{where}: loss must hold one loss per output ({count}), got {len(loss)}")
        losses_ = list(loss)
    else:
        losses_ = [loss] + [copy.deepcopy(loss) for _ in range(count - 1)]
    for item in losses_:
        _check_loss(item, where)
    if loss_weights is None:
        return losses_, None
    if not isinstance(loss_weights, (list, tuple)) or len(loss_weights) != count:
        raise ValueError(f"{where}: loss_weights must be a list of {count} numbers, got {loss_weights!r:.60}")
    weights = [as_real(weight, where, f"loss_weights[{index}]") for index, weight in enumerate(loss_weights)]
    return losses_, weights


def _shapes(arrays):
    return arrays[0].shape if len(arrays) == 1 else [array.shape for array in arrays]


def _check_data(model, x, y, losses_, where, x_name, y_name):
    """Inputs and targets as lists (one per model input and output)."""
    if not getattr(model, "layers", None):
        raise ValueError(f"{where}: the model has no layers")
    x = model.check_input(x)
    xs = x if getattr(model, "takes_list", False) else [x]
    if len(losses_) > 1:
        if not isinstance(y, (list, tuple)) or len(y) != len(losses_):
            raise TypeError(f"{where}: {y_name} must be a list of {len(losses_)} target arrays, "
                            f"one per output, got {type(y).__name__}")
        ys = list(y)
    else:
        ys = [y]
    for index, (loss, target) in enumerate(zip(losses_, ys)):
        name = f"{y_name}[{index}]" if len(ys) > 1 else y_name
        if isinstance(loss, losses.CLASS_INDEX_LOSSES):
            ys[index] = as_indices(target, where, name, ndim=1)
        else:
            ys[index] = as_float32(target, where, name)
    for value in xs + ys:
        if value.ndim == 0 or value.shape[0] != xs[0].shape[0]:
            raise ValueError(f"{where}: {x_name} and {y_name} must have the same number of samples, "
                             f"got {x_name} of shape {_shapes(xs)} and {y_name} of shape {_shapes(ys)}")
    return xs, ys


class _Accuracy:
    """Counts correct predictions into reused buffers (no per-batch allocation);
    rows whose target is the loss's ``ignore_index`` are not counted."""

    def __init__(self, loss):
        self.binary = isinstance(loss, losses.BCEWithLogitsLoss)
        self.ignore_index = getattr(loss, "ignore_index", None)
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
        if self.ignore_index is None:
            return int(np.count_nonzero(hits)), hits.size
        counted = self._buffer("counted", pred.shape[:1], bool)
        np.not_equal(target, self.ignore_index, out=counted)
        np.logical_and(hits, counted, out=hits)
        return int(np.count_nonzero(hits)), int(np.count_nonzero(counted))


class _Batches:
    """Mini-batches of arrays, shuffled by ``rng`` (None: in order), gathered
    into ``buffers`` (the model's, so they are reused across epochs and across
    calls to fit). The progress bar counts samples."""
    unit = "sample"

    def __init__(self, x, y, batch_size, buffers, rng):
        self.x, self.y, self.batch_size = x, y, batch_size
        self._buffers, self._rng = buffers, rng
        self.total = len(x[0])

    def progress(self, rows):
        return rows

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
        else:  # indices from a permutation of the rows: "clip" never clips, and skips numpy's checked copy
            source.take(indices, axis=0, out=buffer, mode="clip")
        return buffer

    def epoch(self, epoch):
        """``(inputs, targets)`` lists per batch."""
        rows = len(self.x[0])
        order = None if self._rng is None else self._rng.permutation(rows)
        for start in range(0, rows, self.batch_size):
            if order is None:  # no shuffling: contiguous row slices, no copy
                stop = start + self.batch_size
                yield ([x[start:stop] for x in self.x], [y[start:stop] for y in self.y])
            else:
                indices = order[start:start + self.batch_size]
                yield ([self._gather(("x", i), x, indices) for i, x in enumerate(self.x)],
                       [self._gather(("y", i), y, indices) for i, y in enumerate(self.y)])


class _Stream:
    """Mini-batches from a re-iterable of ``(x_batch, y_batch)`` pairs, in its
    order, each checked as fit checks arrays. A pass that yields nothing is
    refused: that is how an iterator used up by the first epoch shows itself.
    The progress bar counts batches (of ``len(source)`` when it has one)."""
    unit = "batch"

    def __init__(self, model, source, losses_, where):
        if isinstance(source, np.ndarray) or not hasattr(source, "__iter__") \
                or isinstance(source, (str, bytes, dict)):
            raise TypeError(f"{where}: y is missing: pass targets y with array inputs x, or x as a "
                            f"re-iterable of (x_batch, y_batch) pairs; got x of type {type(source).__name__}")
        self.model, self.source, self.losses, self.where = model, source, losses_, where
        try:
            self.total = len(source)
        except TypeError:
            self.total = None

    def progress(self, rows):
        return 1

    def epoch(self, epoch):
        """``(inputs, targets)`` lists per batch."""
        where, iterator = self.where, iter(self.source)
        index = -1
        for index, pair in enumerate(iterator):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise TypeError(f"{where}: without y, x must yield (x_batch, y_batch) pairs; "
                                f"batch {index} is {type(pair).__name__}"
                                f"{f' of length {len(pair)}' if isinstance(pair, (tuple, list)) else ''}")
            xs, ys = _check_data(self.model, *pair, self.losses, where,
                                 f"x_batch {index}", f"y_batch {index}")
            if xs[0].shape[0] == 0:
                raise ValueError(f"{where}: x_batch {index} has no samples (shape {xs[0].shape})")
            if epoch == 0 and index == 0:
                self.model.input_shape = [x.shape[1:] for x in xs] if len(xs) > 1 else xs[0].shape[1:]
            yield xs, ys
        if index >= 0:
            return
        if epoch == 0:
            raise ValueError(f"{where}: x yielded no (x_batch, y_batch) pairs")
        used_up = TypeError if iterator is self.source else ValueError
        raise used_up(f"{where}: x yielded no batches in epoch {epoch + 1}: a generator or other "
                      "iterator is used up by one pass; for several epochs pass a list of "
                      "(x_batch, y_batch) pairs or an object whose __iter__ starts a new pass")


def _reseed_dropout(model, seeds):
    for (_, layer), seed in zip(((name, layer) for name, layer in model.named_layers()
                                  if hasattr(layer, "reseed")), seeds):
        layer.reseed(np.random.default_rng(seed))


class _Objective:
    """The weighted sum of one loss per output, and its gradients."""

    def __init__(self, losses_, weights):
        self.losses, self.weights = losses_, weights

    def __call__(self, preds, targets):
        """``(total, [value per output])`` for a batch."""
        values = [loss(pred, target) for loss, pred, target in zip(self.losses, preds, targets)]
        weights = self.weights or [1.0] * len(values)
        return sum(weight * value for weight, value in zip(weights, values)), values

    def backward(self):
        """d(total)/d(each output): the losses' buffers, scaled in place by their weights."""
        grads = [loss.backward() for loss in self.losses]
        if self.weights is not None:
            for grad, weight in zip(grads, self.weights):
                if weight != 1.0:
                    scale(grad, weight)
        return grads


def fit(model, x, y=None, *, loss, optimizer, epochs=1, batch_size=32, shuffle=True,
        validation_data=None, seed=None, callbacks=(), verbose=True, comm=None, loss_weights=None,
        scheduler=None, scheduler_interval="epoch", clip_grad_norm=None):
    """``Sequential.fit`` and ``Model.fit``. Without ``y``, ``x`` is a
    re-iterable of ``(x_batch, y_batch)`` pairs (a list, or an object whose
    ``__iter__`` starts a new pass), trained on in its order (``batch_size``
    and ``shuffle`` do not apply) for data that does not fit in memory. With a
    ``comm``, every rank runs this on its own shard through ``DataParallel``,
    and an exception anywhere in it (argument checks included) aborts the
    whole job rather than leaving ranks waiting. ``clip_grad_norm`` clips the
    gradient (the all-reduced one with a ``comm``) before every optimizer
    step; ``scheduler`` steps after every epoch or batch (``scheduler_interval``)."""
    data_parallel = None
    guard = contextlib.nullcontext()
    where = f"{type(model).__name__}.fit"
    if comm is not None:
        data_parallel = _hooks.get("data_parallel", f"{where}(comm=...)")
        guard = data_parallel.guard(comm, where)
    with guard:
        extras = _StepExtras(model, optimizer, scheduler, scheduler_interval, clip_grad_norm, where)
        return _fit(model, x, y, loss, optimizer, epochs, batch_size, shuffle, validation_data,
                    seed, callbacks, verbose, comm, data_parallel, loss_weights, where, extras)


def _output_names(model):
    """History's names per output: none with one output, the producing layers' otherwise."""
    if _outputs(model) == 1:
        return [""]
    return [f"{tensor.call.callee.name if tensor.call else tensor.name}_" for tensor in model.outputs]


class _StepExtras:
    """What fit does around the optimizer step: gradient clipping, the
    learning-rate schedule and the ``on_batch_end`` callbacks."""

    def __init__(self, model, optimizer, scheduler, interval, max_norm, where):
        if scheduler is not None:
            if not isinstance(scheduler, LRScheduler):
                raise TypeError(f"{where}: scheduler must be a pynn.optim.lr_scheduler schedule, "
                                f"got {type(scheduler).__name__}")
            if scheduler.optimizer is not optimizer:
                raise ValueError(f"{where}: scheduler drives another optimizer; build it with this one")
        if interval not in ("epoch", "batch"):
            raise ValueError(f"{where}: scheduler_interval must be 'epoch' or 'batch', got {interval!r:.60}")
        self.plateau = isinstance(scheduler, ReduceLROnPlateau)
        if self.plateau and interval == "batch":
            raise ValueError(f"{where}: a ReduceLROnPlateau steps once per epoch with the "
                             f"validation loss; use scheduler_interval='epoch'")
        if max_norm is not None:
            max_norm = as_real(max_norm, where, "clip_grad_norm")
            if not max_norm >= 0.0:
                raise ValueError(f"{where}: clip_grad_norm must be >= 0 or None, got {max_norm}")
        self.model, self.scheduler, self.max_norm = model, scheduler, max_norm
        self.per_batch = scheduler if interval == "batch" else None
        self.per_epoch = scheduler if interval == "epoch" else None
        self.batch_callbacks = []

    def listen(self, callbacks):
        """Keep the callbacks that override ``on_batch_end``: calling the others would cost time for nothing."""
        self.batch_callbacks = [callback for callback in callbacks
                                if type(callback).on_batch_end is not Callback.on_batch_end]

    def clip(self):
        if self.max_norm is not None:
            clip_grad_norm_(self.model, self.max_norm)

    def after_batch(self, batch, loss):
        if self.per_batch is not None:
            self.per_batch.step()
        for callback in self.batch_callbacks:
            callback.on_batch_end(batch, {"loss": loss})

    def after_epoch(self, logs, parallel):
        """Step a per-epoch schedule; a ReduceLROnPlateau with ``val_loss`` (its
        mean over the ranks with a ``comm``), else ``loss``."""
        if self.per_epoch is None:
            return
        if not self.plateau:
            self.per_epoch.step()
            return
        metric = logs.get("val_loss", logs["loss"])
        if parallel is not None and "val_loss" in logs:
            metric = parallel.sum_over_ranks(metric)[0] / parallel.size
        self.per_epoch.step(metric)


def _fit(model, x, y, loss, optimizer, epochs, batch_size, shuffle, validation_data, seed,
         callbacks, verbose, comm, data_parallel, loss_weights, where, extras):
    objective = _Objective(*_check_losses(model, loss, loss_weights, where))
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
    if y is None:
        if comm is not None:
            raise ValueError(f"{where}: comm needs arrays x and y to shard; without y, x is an "
                             "iterable of batches, which fit cannot share among ranks")
        batches = _Stream(model, x, objective.losses, where)
    else:
        xs, ys = _check_data(model, x, y, objective.losses, where, "x", "y")
        if xs[0].shape[0] == 0:
            raise ValueError(f"{where}: x has no samples (shape {xs[0].shape})")
        model.input_shape = [x.shape[1:] for x in xs] if len(xs) > 1 else xs[0].shape[1:]
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise TypeError(f"{where}: validation_data must be a pair (x_val, y_val), "
                            f"got {type(validation_data).__name__}")
        validation_data = _check_data(model, *validation_data, objective.losses, where,
                                      "validation_data[0]", "validation_data[1]")

    if seed is not None:
        seed = as_count(seed, where, "seed", minimum=0)
    parallel = None
    if comm is not None:  # each rank trains on its own shard; see pynn.distributed
        parallel = data_parallel(model, optimizer, comm)
        parallel.plan_epoch(xs[0].shape[0], batch_size, where)
        verbose = verbose and parallel.rank == 0
    shuffle_seed, dropout_seed = np.random.SeedSequence(seed).spawn(2)
    if seed is not None:
        _reseed_dropout(model, dropout_seed.spawn(len(list(model.named_layers()))))
    names = _output_names(model)
    if y is not None:
        batches = _Batches(xs, ys, batch_size, _BATCH_BUFFERS.setdefault(model, {}),
                           np.random.default_rng(shuffle_seed) if shuffle else None)
    many_outputs = len(objective.losses) > 1
    history = History()
    everyone = [history] + callbacks
    extras.listen(everyone)
    for callback in everyone:
        callback.set_model(model)
        callback.on_train_begin()
    if verbose:
        from tqdm.auto import tqdm

    for epoch in range(epochs):
        bar = tqdm(total=batches.total, desc=f"Epoch {epoch + 1}/{epochs}", unit=batches.unit,
                   leave=True) if verbose else None
        shown = time.monotonic()
        tally = _Tally(objective.losses)
        for step, (x_batch, y_batch) in enumerate(batches.epoch(epoch)):
            preds = model.forward(x_batch if len(x_batch) > 1 else x_batch[0], training=True)
            preds = preds if many_outputs else [preds]
            rows = len(x_batch[0])
            total, values = objective(preds, y_batch)
            tally.add(total, values, preds, y_batch, rows)
            dys = objective.backward()
            if parallel is None:
                model.backward(dys if many_outputs else dys[0], input_grad=False)
                extras.clip()
                optimizer.step()
            else:
                parallel.step(dys if many_outputs else dys[0], parallel.share(step, rows),
                              clip_grad_norm=extras.max_norm)
            extras.after_batch(step, total)
            if bar is not None:
                bar.update(batches.progress(rows))
                if time.monotonic() - shown >= _POSTFIX_INTERVAL:
                    shown = time.monotonic()
                    bar.set_postfix(loss=f"{tally.sums[0] / tally.rows:.4f}", refresh=False)
        seen = tally.rows
        if parallel is not None:
            *totals, seen = parallel.sum_over_ranks(*tally.sums.tolist(), seen)
            tally.sums = np.array(totals)
        logs = tally.logs(seen, names)
        if validation_data is not None:
            scores = _evaluate(model, *validation_data, objective, 256)
            logs.update({f"val_{name}": value for name, value in scores.items()})
        if bar is not None:
            bar.set_postfix({name: f"{value:.4f}" for name, value in logs.items()})
            bar.close()
        extras.after_epoch(logs, parallel)
        stops = [bool(callback.on_epoch_end(epoch, logs)) for callback in everyone]
        stop = any(stops)
        if parallel is not None:  # the same decision on every rank
            stop = parallel.any_rank(stop)
        if stop:
            break
    for callback in everyone:
        callback.on_train_end()
    return history


class _Tally:
    """Sums over the batches of an epoch: the weighted total loss, and per
    output its loss and its accuracy counts (classification losses)."""

    def __init__(self, losses_):
        self.accuracies = [_Accuracy(loss) if _is_classification(loss) else None for loss in losses_]
        self.sums = np.zeros(1 + 3 * len(losses_))  # total; per output: loss, correct, counted
        self.rows = 0

    def add(self, total, values, preds, targets, rows):
        self.rows += rows
        self.sums[0] += total * rows
        for index, (value, accuracy) in enumerate(zip(values, self.accuracies)):
            self.sums[1 + 3 * index] += value * rows
            if accuracy is not None:
                hits, counted = accuracy.count(preds[index], targets[index])
                self.sums[2 + 3 * index] += hits
                self.sums[3 + 3 * index] += counted

    def logs(self, samples, names):
        """``loss`` (the weighted total), and per output its loss and accuracy
        (named ``<layer>_loss`` with several outputs)."""
        logs = {"loss": self.sums[0] / samples}
        for index, (name, accuracy) in enumerate(zip(names, self.accuracies)):
            if name:
                logs[f"{name}loss"] = self.sums[1 + 3 * index] / samples
            if accuracy is not None:
                logs[f"{name}accuracy"] = self.sums[2 + 3 * index] / self.sums[3 + 3 * index]
        return logs


def evaluate(model, x, y, *, loss, batch_size=256, loss_weights=None):
    """Mean loss (and accuracy for classification) over ``(x, y)`` in inference mode."""
    where = f"{type(model).__name__}.evaluate"
    objective = _Objective(*_check_losses(model, loss, loss_weights, where))
    batch_size = as_count(batch_size, where, "batch_size")
    xs, ys = _check_data(model, x, y, objective.losses, where, "x", "y")
    return _evaluate(model, xs, ys, objective, batch_size)


def _evaluate(model, xs, ys, objective, batch_size):
    samples = xs[0].shape[0]
    if samples == 0:
        raise ValueError(f"{type(model).__name__}.evaluate: x has no samples (shape {xs[0].shape})")
    tally = _Tally(objective.losses)
    for start in range(0, samples, batch_size):
        x_batch = [x[start:start + batch_size] for x in xs]
        y_batch = [y[start:start + batch_size] for y in ys]
        preds = model.predict(x_batch if len(xs) > 1 else x_batch[0])
        preds = preds if len(ys) > 1 else [preds]
        total, values = objective(preds, y_batch)
        tally.add(total, values, preds, y_batch, len(x_batch[0]))
    return tally.logs(samples, _output_names(model))


_hooks.install("fit", fit)
_hooks.install("evaluate", evaluate)
