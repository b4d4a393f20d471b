"""Safety under threads and over long runs: concurrent predict equals serial
predict, every kernel team gives the cores back, and neither inference nor
training grows the process's memory."""
import os
import threading

import numpy as np
import pytest

import pynn
from pynn import layers, ops
from pynn._kernels import runtime
from pynn.losses import CrossEntropyLoss
from pynn.optim import SGD


def mlp():
    pynn.init.manual_seed(0)
    return pynn.Sequential(layers.Linear(64, 128), layers.ReLU(), layers.Linear(128, 64),
                           layers.Tanh(), layers.Linear(64, 10), layers.Softmax())


def cnn():
    pynn.init.manual_seed(0)
    return pynn.Sequential(layers.Conv2d(1, 8, 3, padding=1), layers.ReLU(), layers.MaxPool2d(2),
                           layers.Conv2d(8, 16, 3), layers.ReLU(), layers.GlobalAvgPool2d(),
                           layers.Linear(16, 10))


@pytest.mark.parametrize("build,shape", [(mlp, (64,)), (cnn, (1, 8, 8))])
@pytest.mark.parametrize("kernel_threads", [1, 2])
def test_eight_threads_predicting_match_serial(build, shape, kernel_threads, set_threads):
    model = build()
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((batch,) + shape).astype(np.float32) for batch in (1, 2, 7, 33)]
    set_threads(kernel_threads)
    expected = [model.predict(x) for x in inputs]
    mismatches = []
    start = threading.Barrier(8)

    def worker(offset):
        start.wait()
        for round_ in range(40):
            index = (offset + round_) % len(inputs)
            if not np.array_equal(model.predict(inputs[index]), expected[index]):
                mismatches.append((offset, index))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not mismatches


def resident_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


linux_only = pytest.mark.skipif(
    not os.path.exists("/proc/self/statm") or "asan" in os.environ.get("LD_PRELOAD", ""),
    reason="reads /proc/self/statm; AddressSanitizer's quarantine holds freed memory")


@linux_only
def test_100k_predict_calls_do_not_grow_memory():
    model = mlp()
    x = np.random.default_rng(2).standard_normal((4, 64)).astype(np.float32)
    for _ in range(1000):
        model.predict(x)
    before = resident_bytes()
    for _ in range(100_000):
        model.predict(x)
    assert resident_bytes() - before < 2 * 2**20


@linux_only
def test_10k_training_steps_do_not_grow_memory():
    model = pynn.Sequential(layers.Linear(64, 32), layers.ReLU(),
                            layers.Dropout(0.2, seed=0),
                            layers.Linear(32, 10))
    loss = CrossEntropyLoss()
    optimizer = SGD(model, lr=0.01, momentum=0.9)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 64)).astype(np.float32)
    y = rng.integers(0, 10, 16)

    def step():
        loss(model.forward(x, training=True), y)
        model.backward(loss.backward())
        optimizer.step()

    for _ in range(500):
        step()
    before = resident_bytes()
    for _ in range(10_000):
        step()
    assert resident_bytes() - before < 2 * 2**20


needs_openmp = pytest.mark.skipif(not runtime.build_info()["openmp"],
                                  reason="built without OpenMP: no kernel teams")


def _team_calls():
    """Calls each big enough to start a team on two threads, by kernel."""
    rng = np.random.default_rng(2)
    square = rng.standard_normal((256, 256), dtype=np.float32)
    wide = rng.standard_normal((1, 4096), dtype=np.float32)
    tall = rng.standard_normal((4096, 64), dtype=np.float32)
    floats = rng.standard_normal(1 << 20, dtype=np.float32)
    logits = rng.standard_normal((512, 1000), dtype=np.float32)
    pynn.init.manual_seed(0)
    batch_one = pynn.Sequential(layers.Linear(784, 256), layers.ReLU(), layers.Linear(256, 10))
    image = rng.standard_normal((1, 784), dtype=np.float32)
    return {
        "gemm": lambda: ops.matmul(square, square),
        "gemv": lambda: ops.matmul(wide, tall),
        "map": lambda: ops.tanh(floats),
        "softmax": lambda: ops.softmax(logits),
        "softmax backward": lambda: ops.softmax_backward(logits, ops.softmax(logits)),
        "plan": lambda: batch_one.predict(image),
    }


@needs_openmp
@pytest.mark.parametrize("kind", list(_team_calls()))
def test_every_kernel_team_releases_the_cores(kind, set_threads):
    call = _team_calls()[kind]
    set_threads(2)
    call()
    call()
    assert not runtime.team_running()


@needs_openmp
def test_a_running_team_is_seen_by_other_threads(set_threads):
    # A long two-thread GEMM holds the cores; a call from another Python thread
    # meanwhile runs alone (and gives the same result, checked above).
    rng = np.random.default_rng(3)
    a = rng.standard_normal((1536, 1536), dtype=np.float32)
    set_threads(2)
    seen = []
    worker = threading.Thread(target=lambda: [ops.matmul(a, a) for _ in range(4)])
    worker.start()
    while worker.is_alive():
        seen.append(runtime.team_running())
    worker.join()
    assert any(seen)
    assert not runtime.team_running()
