"""Scale-out suite: what Dask and MPI cost beside one process (pynn/distributed.py).

- Scoring: ``predict`` of the 784-256-128-10 MLP over 1,000,000 rows (50,000
  with ``quick``) in this process, then through ``dask_predict`` on a
  LocalCluster of 1 worker x 2 threads and of 2 workers x 1 thread. The rows
  are persisted on the workers before timing, so a call is scheduling,
  scoring and gathering the predictions, not moving the input.
- Training: one epoch of SGD on 60,000 rows (6,000 with ``quick``), global
  batch 128, in this process (``fit``) and under ``mpiexec -n 1`` and ``-n 2``
  (per-rank batch 128 / n, one thread per rank). An MPI call is a whole job,
  process start and ``import pynn`` included: the overhead a user pays.

The training case runs at every thread count (``pynn`` is ``fit`` on that
many threads; the ranks always have one each), the scoring case only at the
machine's core count, which its clusters fill. On a 2-core machine the figure
to read is the overhead (peer/pynn above 1), not a speed-up."""
import atexit
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

from pynn.bench import Case, _checks, machine_info, optional_import
from pynn.bench.train import LR, MOMENTUM, SIZES, build_mlp

_TRAIN_SCRIPT = """
import sys, numpy as np, pynn
from mpi4py import MPI
from pynn.bench.dist import train_data
from pynn.bench.train import LR, MOMENTUM, build_mlp
comm = MPI.COMM_WORLD
pynn.set_num_threads(1)
rows, batch = int(sys.argv[1]), int(sys.argv[2])
x, y = train_data(rows)
model = build_mlp()
model.fit(x[comm.rank::comm.size], y[comm.rank::comm.size], loss=pynn.losses.CrossEntropyLoss(),
          optimizer=pynn.optim.SGD(model, lr=LR, momentum=MOMENTUM), batch_size=batch // comm.size,
          shuffle=False, verbose=False, comm=comm)
"""


def train_data(rows):
    rng = np.random.default_rng(0)
    return rng.random((rows, SIZES[0]), dtype=np.float32), rng.integers(0, SIZES[-1], rows)


def _scoring(rows, threads):
    distributed, da = optional_import("distributed"), optional_import("dask.array")
    model = build_mlp()
    chunk = 25_000
    x = np.random.default_rng(0).random((rows, SIZES[0]), dtype=np.float32)
    runners = {"pynn": lambda: model.predict(x, batch_size=chunk)}
    name = f"score {rows:,} rows"
    # two batches and a few rows more (smaller than the timed chunks, whose
    # float64 reference would take longer than the timing)
    check = lambda: _checks.predict(model, x[:1031], name, batch_size=512)  # noqa: E731
    if distributed is None or da is None:
        return [Case("dist", name, runners, work=rows, unit="samples/s", check=check)]
    from pynn.distributed import dask_predict

    for workers, per_worker in ((1, threads), (threads, 1)):
        cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=per_worker, processes=True,
                                           dashboard_address=None, worker_dashboard_address=None)
        client = distributed.Client(cluster, set_as_default=False)
        atexit.register(cluster.close)
        atexit.register(client.close)
        with client.as_current():
            # the input is made on the workers and kept there: a call moves predictions only
            lazy_x = da.random.default_rng(0).random((rows, SIZES[0]), dtype=np.float32,
                                                     chunks=(chunk, SIZES[0]))
            resident = client.persist(lazy_x)
            distributed.wait(resident)
            scores = dask_predict(model, resident)

        def score(client=client, scores=scores):
            with client.as_current():
                return scores.compute()
        runners[f"dask {workers}x{per_worker}"] = score
    return [Case("dist", name, runners, work=rows, unit="samples/s", check=check)]


def _training(rows, batch):
    x, y = train_data(rows)
    model = build_mlp()
    from pynn import losses, optim

    optimizer = optim.SGD(model, lr=LR, momentum=MOMENTUM)
    runners = {"pynn": lambda: model.fit(x, y, loss=losses.CrossEntropyLoss(), optimizer=optimizer,
                                         batch_size=batch, shuffle=False, verbose=False)}
    mpiexec = shutil.which("mpiexec")
    if optional_import("mpi4py") is not None and mpiexec is not None:
        folder = tempfile.mkdtemp(prefix="pynn-bench-dist-")
        atexit.register(shutil.rmtree, folder, True)
        script = os.path.join(folder, "train_rank.py")
        with open(script, "w") as file:
            file.write(_TRAIN_SCRIPT)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   PYNN_NUM_THREADS="1", OMP_NUM_THREADS="1")
        for ranks in (1, 2):
            command = [mpiexec, "-n", str(ranks), sys.executable, script, str(rows), str(batch)]
            runners[f"mpi {ranks} rank{'s' if ranks > 1 else ''}"] = (
                lambda command=command: subprocess.run(command, env=env, check=True, timeout=600))
    name = f"train 1 epoch of {rows:,} rows, global batch {batch}"
    return [Case("dist", name, runners, work=rows, unit="samples/s",
                 check=lambda: _checks.first_sgd_step(build_mlp, x[:batch], y[:batch], LR, MOMENTUM,
                                                      name))]


def cases(quick, threads):
    found = _training(6_000 if quick else 60_000, 128)
    if threads == machine_info()["cores"] > 1:  # the clusters fill the machine
        found += _scoring(50_000 if quick else 1_000_000, threads)
    return found
