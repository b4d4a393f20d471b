"""dask_predict on a real two-process LocalCluster."""
import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import pynn  # noqa: E402
from pynn.distributed import dask_predict  # noqa: E402
from pynn.layers import Add, Conv2d, Flatten, Linear, ReLU  # noqa: E402


def mlp(features=37, seed=0):
    rng = np.random.default_rng(seed)
    model = pynn.Sequential(Linear(features, 29), ReLU(), Linear(29, 3))
    for _, param in model.named_parameters():
        param[...] = rng.standard_normal(param.shape)
    return model


AMM_INTERVAL = 0.05  # seconds; the default 2 s lets a lost replica go unseen


@pytest.fixture(scope="module")
def client():
    # the Active Memory Manager (on by default) drops replicas no task is
    # waiting for; running it often makes a model that relies on them fail here
    amm = {"distributed.scheduler.active-memory-manager.interval": f"{AMM_INTERVAL}s"}
    with dask.config.set(amm):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=None, worker_dashboard_address=None)
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def count_model_loads(client):
    """Wrap every worker's model loader (what unpickling a model calls) in a
    counter; returns a function reading the counts and one undoing the wrap."""
    def install(dask_worker):
        import pynn.io

        loader = dask_worker.pynn_loader = pynn.io.model_from_bytes
        dask_worker.pynn_model_loads = 0

        def counting(data):
            dask_worker.pynn_model_loads += 1
            return loader(data)
        # a worker re-pickles the model to copy it to another: keep the name resolvable
        counting.__module__, counting.__qualname__ = "pynn.io", "model_from_bytes"
        pynn.io.model_from_bytes = counting

    def undo(dask_worker):
        import pynn.io

        pynn.io.model_from_bytes = dask_worker.pynn_loader

    client.run(install)
    return (lambda: client.run(lambda dask_worker: dask_worker.pynn_model_loads)), (lambda: client.run(undo))


def test_matches_predict_on_the_whole_array(client):
    model = mlp()
    x = np.random.default_rng(1).standard_normal((1009, 37)).astype(np.float32)
    lazy = dask_predict(model, da.from_array(x, chunks=101))
    assert isinstance(lazy, da.Array)
    assert lazy.shape == (1009, 3) and lazy.dtype == np.float32
    assert lazy.chunks[0] == da.from_array(x, chunks=101).chunks[0]
    out = lazy.compute()
    assert out.dtype == np.float32 and out.tobytes() == model.predict(x).tobytes()


def test_a_graph_model_matches_its_predict(client):
    x = pynn.Input((37,))
    h = ReLU()(Linear(37, 29, name="hidden")(x))
    model = pynn.Model(x, Add()([Linear(29, 3, name="out")(h), Linear(37, 3, name="skip")(x)]))
    X = np.random.default_rng(5).standard_normal((1000, 37)).astype(np.float32)
    np.testing.assert_array_equal(dask_predict(model, X).compute(), model.predict(X))


def test_numpy_input_is_chunked_and_batch_size_is_passed(client):
    model = mlp()
    x = np.random.default_rng(2).standard_normal((257, 37)).astype(np.float32)
    lazy = dask_predict(model, x, batch_size=7)
    assert lazy.numblocks[0] >= 2
    # each chunk predicted in batches of 7, exactly: a few-row batch takes a
    # different GEMM path than a whole chunk, so the rounding tells them apart
    bounds = np.cumsum((0,) + lazy.chunks[0])
    expected = np.concatenate([model.predict(x[start:stop], batch_size=7)
                               for start, stop in zip(bounds[:-1], bounds[1:])])
    np.testing.assert_array_equal(lazy.compute(), expected)


def test_images_drop_their_feature_axes(client):
    model = pynn.Sequential(Conv2d(1, 2, 3), ReLU(), Flatten(), Linear(2 * 5 * 5, 4))
    x = np.random.default_rng(3).standard_normal((23, 1, 7, 7)).astype(np.float32)
    lazy = dask_predict(model, da.from_array(x, chunks=(5, 1, 4, 7)))  # feature axes chunked too
    assert lazy.shape == (23, 4) and lazy.chunks[1] == (4,)
    np.testing.assert_array_equal(lazy.compute(), model.predict(x))


def model_arrivals(client):
    """How many times a scattered model reached each worker from another one."""
    def count(dask_worker):
        return sum(any(str(key).startswith("Sequential-") for key in transfer["keys"])
                   for transfer in dask_worker.transfer_incoming_log)
    return client.run(count)


def test_the_model_is_scattered_once_and_travels_as_data_never_inside_tasks(client):
    """What dask_predict promises: one scatter, to one worker, when it is
    called; tasks refer to the model; every later load of it on a worker is a
    copy Dask moved there for a task, never a task unpickling its own. (A
    worker may receive it twice in one computation: the Active Memory Manager
    drops a copy once no task assigned to that worker waits for it, and work
    stealing can then move a task back there.)"""
    model = pynn.Sequential(Linear(300, 200), ReLU(), Linear(200, 10))  # 240 KiB of weights
    arrived_before = model_arrivals(client)
    loads, restore = count_model_loads(client)
    try:
        x = da.random.default_rng(4).standard_normal((4000, 300), chunks=250).astype(np.float32)
        lazy = dask_predict(model, x)
        graph_bytes = len(pickle.dumps(dict(lazy.__dask_graph__()), protocol=5))
        assert graph_bytes < len(pynn.io.model_to_bytes(model)) / 4, graph_bytes  # a reference, not the model
        scattered = loads()
        assert sorted(scattered.values()) == [0] * (len(scattered) - 1) + [1], scattered
        time.sleep(10 * AMM_INTERVAL)  # a graph may wait before it is computed
        with distributed.get_task_stream(client) as stream:
            result = lazy.compute()
        assert result.shape == (4000, 10) and np.isfinite(result).all()
        loaded = loads()
        arrived = {worker: count - arrived_before[worker]
                   for worker, count in model_arrivals(client).items()}
        ran = {task["worker"] for task in stream.data if "pynn-predict" in str(task["key"])}
        # each worker: the scatter's load, if it went there, and one per copy it received
        for worker in loaded:
            assert loaded[worker] == scattered[worker] + arrived[worker], (scattered, loaded, arrived)
            assert loaded[worker] >= (worker in ran), (loaded, ran)
    finally:
        restore()


def test_workers_predict_on_their_own_thread_count(client):
    model = mlp()
    dask_predict(model, np.ones((8, 37), np.float32)).compute()
    assert set(client.run(lambda: pynn.get_num_threads()).values()) == {1}


def test_bad_inputs_are_refused_by_name(client):
    model = mlp()
    with pytest.raises(ValueError, match="Linear"):
        dask_predict(model, da.ones((10, 36), chunks=5, dtype=np.float32))
    with pytest.raises(TypeError, match="dask_predict: model"):
        dask_predict("model", np.ones((2, 37), np.float32))
    with pytest.raises(ValueError, match="dask_predict: batch_size"):
        dask_predict(model, np.ones((2, 37), np.float32), batch_size=0)
    with pytest.raises(TypeError, match="dtype"):
        dask_predict(model, np.array([["a"] * 37]))


def test_without_a_client_the_error_says_what_to_do():
    code = ("import numpy as np, pynn\nfrom pynn.distributed import dask_predict\n"
            "from pynn.layers import Linear\n"
            "dask_predict(pynn.Sequential(Linear(2, 1)), np.ones((3, 2), np.float32))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "no distributed.Client is running" in run.stderr


def test_the_example_runs_as_written(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, os.path.join(root, "examples", "dask_predict.py"),
                          "--rows", "20000", "--chunk-rows", "5000"],
                         capture_output=True, text=True, timeout=180, cwd=tmp_path,
                         env=dict(os.environ, PYTHONPATH=root))
    assert run.returncode == 0, run.stderr
    assert "20000 rows in" in run.stdout and "on 2 workers" in run.stdout
