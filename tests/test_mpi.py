"""Data-parallel training over MPI: in-process on COMM_SELF, and two ranks
under ``mpiexec -n 2`` against single-process training on the global batch."""
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

MPI = pytest.importorskip("mpi4py.MPI")

import pynn  # noqa: E402
from pynn.distributed import DataParallel  # noqa: E402
from pynn.layers import Linear  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, RANK_BATCH, FEATURES, CLASSES = 20, 64, 11, 5

# Shared by the test and the ranks: the model, the data, the optimizer.
COMMON = textwrap.dedent(f"""
    import numpy as np
    import pynn
    from pynn.layers import Add, Linear, ReLU

    def build(seed=0, graph=False):
        rng = np.random.default_rng(seed)
        if graph:  # a residual graph with the Sequential's keys and one more layer
            x = pynn.Input(({FEATURES},))
            h = ReLU()(Linear({FEATURES}, 23, name="0")(x))
            h = ReLU()(Add()([Linear(23, 17, name="2")(h), Linear({FEATURES}, 17, name="skip")(x)]))
            model = pynn.Model(x, Linear(17, {CLASSES}, name="4")(h))
        else:
            model = pynn.Sequential(Linear({FEATURES}, 23), ReLU(), Linear(23, 17), ReLU(),
                                    Linear(17, {CLASSES}))
        for _, param in model.named_parameters():
            param[...] = rng.standard_normal(param.shape) * 0.5
        return model

    def data(rows):
        rng = np.random.default_rng(42)
        return (rng.standard_normal((rows, {FEATURES})).astype(np.float32),
                rng.integers(0, {CLASSES}, rows))

    def optimizer(kind, model):
        kind = kind.split("+")[0]  # "sgd+graph": SGD for the graph model
        if kind == "sgd":
            return pynn.optim.SGD(model, lr=0.05, momentum=0.9, weight_decay=1e-3)
        return pynn.optim.Adam(model, lr=1e-2)
""")
exec(COMMON)  # noqa: S102  (build, data, optimizer for the single-process reference)

RANK_SCRIPT = COMMON + textwrap.dedent("""
    import sys
    from mpi4py import MPI

    pynn.set_num_threads(1)
    kind, out = sys.argv[1], sys.argv[5]
    freeze, rows0, rows1 = map(int, sys.argv[2:5])
    comm = MPI.COMM_WORLD
    model = build(seed=comm.rank, graph="graph" in kind)  # rank 1 starts elsewhere: rank 0's weights must reach it
    if freeze:
        model.freeze(freeze)
    x, y = data(rows0 + rows1)
    shard = slice(0, rows0) if comm.rank == 0 else slice(rows0, rows0 + rows1)
    history = model.fit(x[shard], y[shard], loss=pynn.losses.CrossEntropyLoss(),
                        optimizer=optimizer(kind, model), epochs=2, batch_size=64, shuffle=False,
                        verbose=False, comm=comm, clip_grad_norm=0.5 if "clip" in kind else None)
    np.savez(out + f".{comm.rank}.npz", loss=history.history["loss"], **model.state_dict())
""")


def mpiexec():
    path = shutil.which("mpiexec")
    if path is None:
        pytest.skip("no mpiexec on PATH (pip install mpich)")
    return path


def run_ranks(tmp_path, script, *args, timeout=120):
    """``mpiexec -n 2 python script args``; the whole process group is killed on timeout."""
    file = tmp_path / "rank.py"
    file.write_text(script)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYNN_NUM_THREADS="1", OMP_NUM_THREADS="1")
    process = subprocess.Popen([mpiexec(), "-n", "2", sys.executable, str(file), *map(str, args)],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"mpiexec -n 2 did not finish within {timeout} s (a hang)")
    return process.returncode, out, err


def single_process(kind, freeze, rows0, rows1):
    """The same training in one process on batch 128: global batch k holds
    rank 0's k-th batch of 64 rows, then rank 1's."""
    x, y = data(rows0 + rows1)
    order = [index for k in range(0, max(rows0, rows1), 64)
             for start, stop in ((0, rows0), (rows0, rows0 + rows1))
             for index in range(start + k, min(start + k + 64, stop))]
    model = build(seed=0, graph="graph" in kind)
    if freeze:
        model.freeze(freeze)
    model.fit(x[order], y[order], loss=pynn.losses.CrossEntropyLoss(), optimizer=optimizer(kind, model),
              epochs=2, batch_size=128, shuffle=False, verbose=False,
              clip_grad_norm=0.5 if "clip" in kind else None)
    return model


@pytest.mark.parametrize("kind, freeze, rows0, rows1", [
    ("sgd", 0, 10 * 64, 10 * 64),  # 2 epochs x 10: 20 steps of 2 x 64 rows
    ("adam", 2, 10 * 64, 10 * 64),  # the first Linear frozen: left out of the reduction
    ("sgd", 0, 4 * 64 + 40, 4 * 64 + 7),  # each epoch ends on a global batch of 47 rows
    ("adam+graph", 0, 4 * 64 + 40, 4 * 64 + 7),  # a graph Model trains the same way
    ("sgd+clip", 0, 4 * 64 + 40, 4 * 64 + 7),  # the all-reduced gradient is clipped
])
def test_two_ranks_train_like_one_process_on_the_global_batch(tmp_path, kind, freeze, rows0, rows1):
    returncode, out, err = run_ranks(tmp_path, RANK_SCRIPT, kind, freeze, rows0, rows1, tmp_path / "w")
    assert returncode == 0, err
    rank0, rank1 = np.load(tmp_path / "w.0.npz"), np.load(tmp_path / "w.1.npz")
    reference = single_process(kind, freeze, rows0, rows1)
    start = build(seed=0, graph="graph" in kind).state_dict()
    for key, expected in reference.state_dict().items():
        assert rank0[key].tobytes() == rank1[key].tobytes(), f"{key} differs between ranks"
        np.testing.assert_allclose(rank0[key], expected, rtol=1e-4, atol=2e-5, err_msg=key)
        if key.startswith("0."):
            assert (rank0[key] == start[key]).all() == (freeze > 0), key
    assert np.array_equal(rank0["loss"], rank1["loss"])  # epoch logs are global


def test_a_failing_rank_fails_the_job_with_its_error(tmp_path):
    script = COMMON + textwrap.dedent("""
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
        model = build()
        x, y = data(128)
        if comm.rank == 1:
            y = y[:-1]  # one label short: fit refuses it on this rank only
        model.fit(x, y, loss=pynn.losses.CrossEntropyLoss(), optimizer=optimizer("sgd", model),
                  batch_size=64, verbose=False, comm=comm)
        print("finished", comm.rank)
    """)
    returncode, out, err = run_ranks(tmp_path, script, timeout=60)
    assert returncode != 0
    assert "rank 1 of 2 failed" in err and "same number of samples" in err, err
    assert "finished" not in out


def test_unequal_batch_counts_are_refused_on_every_rank(tmp_path):
    script = COMMON + textwrap.dedent("""
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
        model = build()
        x, y = data(200 if comm.rank == 0 else 100)
        model.fit(x, y, loss=pynn.losses.CrossEntropyLoss(), optimizer=optimizer("sgd", model),
                  batch_size=64, verbose=False, comm=comm)
    """)
    returncode, _, err = run_ranks(tmp_path, script, timeout=60)
    assert returncode != 0 and "the ranks hold [200, 100] samples, making [4, 2]" in err, err


# -- one process, COMM_SELF: the arena and the checks --------------------------
def test_gradients_live_in_one_arena_without_frozen_layers():
    model = build()
    model.freeze(1)
    parallel = DataParallel(model, optimizer("sgd", model), MPI.COMM_SELF)
    trainable = [grad for _, layer in model.parameter_owners() if layer.trainable
                 for grad in layer.grads.values()]
    assert all(grad.base is parallel.arena and grad.flags.c_contiguous for grad in trainable)
    assert model.layers[0].grads["weight"].base is not parallel.arena
    assert sum(grad.size for grad in trainable) <= parallel.arena.size < \
        sum(grad.size for grad in trainable) + 16 * len(trainable)
    model.unfreeze()
    x, y = data(8)
    loss = pynn.losses.CrossEntropyLoss()
    loss(model.forward(x, training=True), y)
    parallel.step(loss.backward())
    assert model.layers[0].grads["weight"].base is parallel.arena  # unfreezing re-lays the arena


@pytest.mark.parametrize("graph, extras", [(False, False), (True, False), (False, True)])
def test_comm_self_fit_is_bit_identical_to_plain_fit(graph, extras):
    x, y = data(300)
    results = []
    for comm in (None, MPI.COMM_SELF):
        model = build(graph=graph)
        adam = optimizer("adam", model)
        keywords = {}
        if extras:  # clipping, and a plateau schedule fed the ranks' mean validation loss
            keywords = dict(clip_grad_norm=0.3, validation_data=(x[:50], y[:50]),
                            scheduler=pynn.optim.lr_scheduler.ReduceLROnPlateau(adam, patience=0))
        model.fit(x, y, loss=pynn.losses.CrossEntropyLoss(), optimizer=adam,
                  epochs=3, batch_size=64, seed=3, verbose=False, comm=comm, **keywords)
        results.append(model.state_dict())
    for key in results[0]:
        assert results[0][key].tobytes() == results[1][key].tobytes(), key


def test_bad_arguments_are_refused_by_name():
    model = build()
    with pytest.raises(TypeError, match="DataParallel: comm must be an mpi4py communicator"):
        DataParallel(model, optimizer("sgd", model), comm="world")
    with pytest.raises(ValueError, match="DataParallel: optimizer"):
        DataParallel(model, optimizer("sgd", build()), MPI.COMM_SELF)
    with pytest.raises(TypeError, match="DataParallel: model"):
        DataParallel(Linear(2, 2), optimizer("sgd", model), MPI.COMM_SELF)


def test_the_example_runs_as_written(tmp_path):
    example = os.path.join(ROOT, "examples", "train_mpi.py")
    script = (f"import runpy, sys\nsys.argv = ['train_mpi.py', '--epochs', '5']\n"
              f"runpy.run_path({example!r}, run_name='__main__')\n")
    returncode, out, err = run_ranks(tmp_path, script)
    assert returncode == 0, err
    assert out.count("held-out accuracy") == 1 and "2 ranks x batch 32" in out  # rank 0 only
    saved = pynn.load(tmp_path / "digits_mlp.safetensors")
    assert saved.predict(np.zeros((1, 64), np.float32)).shape == (1, 10)
