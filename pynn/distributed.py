"""Scaling out on the engines clusters already run: batch scoring on Dask,
synchronous data-parallel training over MPI (extras ``dask`` and ``mpi``).

pynn adds only glue. Models and optimizers travel by value as the bytes the
model file holds (``Sequential.__reduce__``, ``Optimizer.__reduce__``, both
implemented in ``pynn.io``): no code is pickled, and unpickling goes through
pynn's own checked loader.

Data-parallel training (``DataParallel``, ``Sequential.fit(comm=...)``): every
rank holds the same weights (rank 0's, broadcast at start), computes the
gradient of its own shard of each global batch into one contiguous float32
arena that every trainable layer's ``grads`` are views of, and one in-place
``Allreduce`` per step sums the arenas. Each rank scales its loss gradient by
its share of the global batch (n_rank / n_global) first, so the sum is the
gradient of the global batch's mean loss, and the optimizer step that follows
is the same on every rank. A rank that raises aborts the whole job
(``comm.Abort``) after printing its traceback: the others would otherwise wait
in a collective forever. ``fit(comm=...)`` reaches ``DataParallel`` through
the ``data_parallel`` hook (``pynn._hooks``), installed here."""
import contextlib
import math
import sys
import threading

import numpy as np

from pynn import _hooks, config, io
from pynn._checks import as_count, as_float32
from pynn._kernels import core as kernels
from pynn.optim import Optimizer, clip_grad_norm_
from pynn.model import Model
from pynn.sequential import Sequential

# Optimizer serialisation is file-format code and lives in pynn.io; these names
# stay here because optimizers pickled by earlier versions refer to them.
OPTIMIZER_FORMAT = io.OPTIMIZER_FORMAT
optimizer_to_bytes = io.optimizer_to_bytes
optimizer_from_bytes = io.optimizer_from_bytes
# Gradient slots in the arena start on 64-byte boundaries (whole SIMD rows).
_ARENA_ALIGN = 16
# Rows per chunk when dask_predict chunks a numpy array: at most this many
# bytes of input per chunk, and at least two chunks per worker.
_CHUNK_BYTES = 32 << 20


def _require(module, extra):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise ImportError(f"pynn.distributed needs {module}: pip install 'pynn-runtime[{extra}]'") from None


# -- Dask: batch scoring --------------------------------------------------------
_PREDICT_LOCK = threading.Lock()


def _predict_block(block, model, batch_size):
    """One chunk on a worker: one predict at a time per worker process, on as
    many pynn threads as the worker has threads, so cores are never shared
    between a worker's tasks and pynn's own threads."""
    from distributed import get_worker

    with _PREDICT_LOCK:
        threads = get_worker().state.nthreads
        if config.get_num_threads() != threads:
            config.set_num_threads(threads)
        return model.predict(block, batch_size=batch_size)


def dask_predict(model, X, batch_size=None):
    """``model.predict`` over a row-chunked ``dask.array`` (a numpy array is
    chunked here), lazily, on the current ``distributed.Client``. The model is
    scattered once, to one worker, and tasks refer to it, never embed it: a
    worker receives a copy from another when a task there needs it and it has
    none (again if Dask's Active Memory Manager dropped its copy and a task
    moved back there), never one per task."""
    da = _require("dask.array", "dask")
    distributed = _require("distributed", "dask")
    where = "dask_predict"
    if not isinstance(model, (Sequential, Model)):
        raise TypeError(f"{where}: model must be a pynn Sequential or Model, got {type(model).__name__}")
    if isinstance(model, Model) and (model.takes_list or model.output_count > 1):
        raise TypeError(f"{where}: model must have one input and one output, got "
                        f"{len(model.inputs)} and {len(model.outputs)}")
    if batch_size is not None:
        batch_size = as_count(batch_size, where, "batch_size")
    try:
        client = distributed.default_client()
    except ValueError:
        raise ValueError(f"{where}: no distributed.Client is running; create one first "
                         f"(e.g. Client(LocalCluster()))") from None
    if not isinstance(X, da.Array):
        X = np.asarray(X)
        if X.ndim == 0:
            raise ValueError(f"{where}: X must have a row axis, got a scalar")
        workers = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
        row_bytes = max(1, X[:1].nbytes)
        rows = max(1, min(math.ceil(len(X) / (2 * workers)), _CHUNK_BYTES // row_bytes))
        X = da.from_array(X, chunks=(rows,) + X.shape[1:])
    if X.ndim == 0:
        raise ValueError(f"{where}: X must have a row axis, got a scalar")
    if X.dtype.kind not in "fiub":
        raise TypeError(f"{where}: X must hold numbers, got dtype {X.dtype}")
    out_shape = model.output_shape((1,) + X.shape[1:])  # checks the features, naming the layer
    X = X.rechunk({axis: -1 for axis in range(1, X.ndim)})
    extra = {}
    if X.ndim > len(out_shape):
        extra["drop_axis"] = list(range(len(out_shape), X.ndim))
    elif X.ndim < len(out_shape):
        extra["new_axis"] = list(range(X.ndim, len(out_shape)))
    # Not broadcast: Dask's Active Memory Manager (on by default) drops replicas
    # no task is waiting for yet, so a copy on every worker would be fetched
    # again anyway once the graph runs.
    scattered = client.scatter(model, hash=False)
    return X.map_blocks(_predict_block, scattered, batch_size, dtype=np.float32,
                        chunks=(X.chunks[0],) + tuple((n,) for n in out_shape[1:]),
                        meta=np.empty((0,) * len(out_shape), dtype=np.float32),
                        name="pynn-predict", **extra)


# -- MPI: data-parallel training ------------------------------------------------
@contextlib.contextmanager
def abort_on_error(comm, where):
    """Inside, an exception on any rank prints its traceback and aborts every
    rank (with more than one): the others may be waiting in a collective."""
    try:
        yield
    except BaseException:
        if comm.Get_size() > 1:
            import time
            import traceback

            sys.stderr.write(f"{where}: rank {comm.Get_rank()} of {comm.Get_size()} failed, "
                             f"aborting the job:\n{traceback.format_exc()}")
            sys.stderr.flush()
            # mpiexec stops forwarding output once a rank aborts; give it time
            # to pass this message on, which it otherwise sometimes loses.
            time.sleep(0.5)
            comm.Abort(1)
        raise


class DataParallel:
    """Synchronous data parallelism for ``model`` and its ``optimizer`` over an
    mpi4py communicator (``COMM_WORLD`` by default). Construction is collective:
    every rank checks it holds the same architecture and receives rank 0's
    weights. Then each step is ``step(dy)`` on every rank after its own forward
    and loss."""

    guard = staticmethod(abort_on_error)

    def __init__(self, model, optimizer, comm=None):
        self._mpi = _require("mpi4py.MPI", "mpi")
        comm = self._mpi.COMM_WORLD if comm is None else comm
        if not isinstance(comm, self._mpi.Comm):
            raise TypeError(f"DataParallel: comm must be an mpi4py communicator, got {type(comm).__name__}")
        self.comm, self.rank, self.size = comm, comm.Get_rank(), comm.Get_size()
        with abort_on_error(comm, "DataParallel"):
            if not isinstance(model, (Sequential, Model)):
                raise TypeError(f"DataParallel: model must be a pynn Sequential or Model, "
                                f"got {type(model).__name__}")
            if not isinstance(optimizer, Optimizer) or optimizer.model is not model:
                raise ValueError("DataParallel: optimizer must be a pynn.optim optimizer built for "
                                 "this model")
            self.model, self.optimizer = model, optimizer
            architectures = comm.allgather(io.architecture_json(model))
            for rank, architecture in enumerate(architectures):
                if architecture != architectures[0]:
                    raise ValueError(f"DataParallel: rank {rank}'s model differs from rank 0's: "
                                     f"{architecture:.200} vs {architectures[0]:.200}")
            for array in model.state_dict().values():
                comm.Bcast(array, root=0)
        self._trainable = None
        self._global_batches = None
        self._lay_out_arena()

    def _lay_out_arena(self):
        """Rebind every trainable gradient to a view of one float32 buffer, the
        one ``Allreduce`` sends; frozen layers keep their own and stay out."""
        owners = [layer for _, layer in self.model.parameter_owners()]
        self._trainable = [layer.trainable for layer in owners]
        slots, size = [], 0
        for layer in owners:
            if layer.trainable:
                for key, grad in layer.grads.items():
                    slots.append((layer, key, grad.shape, size))
                    size += -(-grad.size // _ARENA_ALIGN) * _ARENA_ALIGN
        self.arena = np.zeros(size, dtype=np.float32)
        for layer, key, shape, offset in slots:
            layer.grads[key] = self.arena[offset:offset + math.prod(shape)].reshape(shape)

    def step(self, dy, share=None, clip_grad_norm=None):
        """Back-propagate this rank's loss gradient ``dy`` scaled by ``share``
        (its rows / the global batch's; 1/size for equal shards), sum the
        gradients over ranks, clip the sum to the norm ``clip_grad_norm``
        (when given; the same on every rank), then run the optimizer step."""
        with abort_on_error(self.comm, "DataParallel.step"):
            share = 1.0 / self.size if share is None else share
            if [layer.trainable for _, layer in self.model.parameter_owners()] != self._trainable:
                self._lay_out_arena()  # frozen or unfrozen since the last step (as on every rank)
            if share != 1.0:
                many = isinstance(dy, (list, tuple))
                dys = [np.require(as_float32(item, "DataParallel.step", "dy"), requirements="W")
                       for item in (dy if many else [dy])]
                for item in dys:
                    kernels.scale(item, share)
                dy = dys if many else dys[0]
            self.model.backward(dy, input_grad=False)
            self.comm.Allreduce(self._mpi.IN_PLACE, self.arena, op=self._mpi.SUM)
            for _, layer in self.model.parameter_owners():
                layer.forget_touched_rows()  # other ranks' rows are in the sum now
            if clip_grad_norm is not None:
                clip_grad_norm_(self.model, clip_grad_norm)
            self.optimizer.step()

    # -- what fit needs beyond the step --------------------------------------
    def plan_epoch(self, samples, batch_size, where):
        """Agree on the global batches of an epoch: every rank must make as
        many batches of its own shard (else some would wait forever)."""
        counts = self.comm.allgather(samples)
        batches = [-(-count // batch_size) for count in counts]
        if len(set(batches)) != 1:
            raise ValueError(f"{where}: every rank must make the same number of batches of batch_size "
                             f"{batch_size}; the ranks hold {counts} samples, making {batches}")
        self._global_batches = [sum(min(batch_size, count - k * batch_size) for count in counts)
                                for k in range(batches[0])]

    def share(self, step, rows):
        return rows / self._global_batches[step]

    def sum_over_ranks(self, *values):
        totals = np.array(values, dtype=np.float64)
        self.comm.Allreduce(self._mpi.IN_PLACE, totals, op=self._mpi.SUM)
        return tuple(totals.tolist())

    def any_rank(self, flag):
        return bool(self.comm.allreduce(bool(flag), op=self._mpi.LOR))


_hooks.install("data_parallel", DataParallel)
