"""Safety under threads and over long runs: concurrent predict equals serial
predict, every kernel team gives the cores back, a call refused the team gives
the same bits, and neither inference nor training grows the process's memory."""
import multiprocessing
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import pynn
from pynn import layers, ops
from pynn._kernels import core as kernels
from pynn.losses import CrossEntropyLoss
from pynn.optim import SGD, Adam


def mlp():
    pynn.init.manual_seed(0)
    return pynn.Sequential(layers.Linear(64, 128), layers.ReLU(), layers.Linear(128, 64),
                           layers.Tanh(), layers.Linear(64, 10), layers.Softmax())


def batch_one_mlp():
    """Big enough at batch 1 for the plan's team of helper threads."""
    pynn.init.manual_seed(0)
    return pynn.Sequential(layers.Linear(784, 256), layers.ReLU(), layers.Linear(256, 128),
                           layers.ReLU(), layers.Linear(128, 10))


def cnn():
    pynn.init.manual_seed(0)
    return pynn.Sequential(layers.Conv2d(1, 8, 3, padding=1), layers.ReLU(), layers.MaxPool2d(2),
                           layers.Conv2d(8, 16, 3), layers.ReLU(), layers.GlobalAvgPool2d(),
                           layers.Linear(16, 10))


def lenet():
    """Its convolutions shared with the helper threads at batch 1."""
    pynn.init.manual_seed(0)
    return pynn.Sequential(layers.Conv2d(1, 6, 5, padding=2), layers.ReLU(), layers.MaxPool2d(2),
                           layers.Conv2d(6, 16, 5), layers.ReLU(), layers.MaxPool2d(2),
                           layers.Flatten(), layers.Linear(400, 120), layers.ReLU(),
                           layers.Linear(120, 84), layers.ReLU(), layers.Linear(84, 10))


@pytest.mark.parametrize("build,shape", [(mlp, (64,)), (cnn, (1, 8, 8)), (batch_one_mlp, (784,)),
                                         (lenet, (1, 28, 28))])
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


needs_openmp = pytest.mark.skipif(not kernels.build_info()["openmp"],
                                  reason="built without OpenMP: no kernel teams")


def _train_step(layer, x, dy):
    """A layer's training forward and backward: y, dx and its gradients."""
    y = layer.forward(x, training=True).copy()
    dx = layer.backward(dy).copy()
    return (y, dx) + tuple(grad.copy() for grad in layer.grads.values())


def _optimizer_step(optimizer):
    """One step of ``optimizer`` on a fresh 512 x 512 layer: its new parameters."""
    pynn.init.manual_seed(0)
    layer = layers.Linear(512, 512)
    rng = np.random.default_rng(4)
    for grad in layer.grads.values():
        grad[...] = rng.standard_normal(grad.shape)
    optimizer(pynn.Sequential(layer)).step()
    return tuple(param.copy() for param in layer.params.values())


def _team_calls():
    """Calls each big enough to start a team on two threads, by kernel; each
    returns its results, the same on every call."""
    rng = np.random.default_rng(2)

    def normal(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    square = normal(256, 256)
    thin = normal(2, 512)  # k = 2: C written row by row, 256 rows a thread
    wide = normal(1, 4096)
    tall = normal(4096, 64)
    floats = normal(1 << 20)
    logits = normal(512, 1000)
    pynn.init.manual_seed(0)
    batch_one = pynn.Sequential(layers.Linear(784, 256), layers.ReLU(), layers.Linear(256, 10))
    image = normal(1, 784)
    # direct: images to threads, 8 weight-gradient chunks summed by a team
    batch, weights, batch_dy = normal(64, 32, 16, 16), normal(64, 32, 3, 3), normal(64, 64, 16, 16)
    # direct: one gradient chunk of 8 images, the input gradient's images to threads
    chunk, chunk_kernels = normal(8, 16, 16, 16), normal(64, 16, 3, 3)
    # grouped, so unfolded: 8 images a chunk, its unfold, fold and unstage each start a team
    grouped, grouped_kernels = normal(8, 16, 16, 16), normal(64, 8, 3, 3)
    chunk_dy = normal(8, 64, 16, 16)
    grey, grey_kernels = normal(64, 1, 28, 28), normal(8, 1, 5, 5)
    planes, pooled, averages = normal(32, 16, 32, 32), normal(32, 16, 16, 16), normal(32, 16)
    adaptive_dy = normal(32, 16, 7, 5)
    signals, signal_kernels, signal_dy = normal(64, 32, 200), normal(48, 16, 5), normal(64, 48, 99)
    pool = layers.MaxPool2d(2)
    batchnorm = layers.BatchNorm2d(16)
    rows, relu_rows, weight = normal(512, 512), np.maximum(normal(512, 512), 0), normal(512, 512)
    targets = rng.integers(0, 1000, 512)
    pynn.init.manual_seed(0)
    embedding = layers.Embedding(1000, 256)
    indices = rng.integers(0, 1000, 1024)
    return {
        "gemm": lambda: ops.matmul(square, square),
        "gemv": lambda: ops.matmul(wide, tall),
        "rank update": lambda: ops.matmul(thin, thin, trans_a=True),
        "map": lambda: ops.tanh(floats),
        "softmax": lambda: ops.softmax(logits),
        "softmax backward": lambda: ops.softmax_backward(logits, ops.softmax(logits)),
        "plan": lambda: batch_one.predict(image),
        "conv2d": lambda: ops.conv2d(batch, weights, padding=1),
        "conv2d backward": lambda: ops.conv2d_backward(batch_dy, batch, weights, padding=1),
        "conv2d grouped": lambda: (
            ops.conv2d(grouped, grouped_kernels, padding=1, groups=2),
            *ops.conv2d_backward(chunk_dy, grouped, grouped_kernels, padding=1, groups=2)),
        "conv2d one chunk": lambda: (
            ops.conv2d(chunk, chunk_kernels, padding=1),
            *ops.conv2d_backward(chunk_dy, chunk, chunk_kernels, padding=1)),
        "conv2d one channel": lambda: ops.conv2d(grey, grey_kernels, padding=2),
        "max pool": lambda: _train_step(pool, planes, pooled),
        "max pool backward": lambda: ops.max_pool2d_backward(pooled, planes, 2),
        "avg pool": lambda: ops.avg_pool2d(planes, 2),
        "avg pool backward": lambda: ops.avg_pool2d_backward(pooled, planes, 2),
        "global avg pool": lambda: (ops.global_avg_pool2d(planes),
                                    ops.global_avg_pool2d_backward(averages, planes)),
        "adaptive avg pool": lambda: (
            ops.adaptive_avg_pool2d(planes, (7, 5)),
            ops.adaptive_avg_pool2d_backward(adaptive_dy, planes, (7, 5))),
        "conv1d": lambda: (ops.conv1d(signals, signal_kernels, stride=2, padding=1, groups=2),
                           *ops.conv1d_backward(signal_dy, signals, signal_kernels, stride=2,
                                                padding=1, groups=2)),
        "batchnorm": lambda: _train_step(batchnorm, planes, planes[::-1]),
        "batchnorm eval": lambda: batchnorm.forward(planes),
        "linear backward": lambda: ops.linear_backward(rows, rows, weight),
        "relu mask column sums": lambda: kernels.relu_mask_column_sums(
            rows, relu_rows, np.empty_like(rows), np.empty(512, np.float32)),
        "embedding": lambda: embedding.forward(indices),
        "cross entropy": lambda: ops.cross_entropy(logits, targets),
        "sgd": lambda: _optimizer_step(lambda model: SGD(model, lr=0.1, momentum=0.9)),
        "adam": lambda: _optimizer_step(lambda model: Adam(model, lr=0.1)),
    }


@needs_openmp
@pytest.mark.parametrize("kind", list(_team_calls()))
def test_every_kernel_team_releases_the_cores(kind, set_threads):
    call = _team_calls()[kind]
    set_threads(2)
    call()
    call()
    released = not kernels.team_running()
    kernels.hold_team(False)  # so a leak fails this kernel's test alone
    assert released


def _arrays(result):
    """A call's result as a flat list of arrays."""
    if isinstance(result, tuple):
        return [array for part in result for array in _arrays(part)]
    return [np.asarray(result)]


@needs_openmp
@pytest.mark.parametrize("kind", list(_team_calls()))
def test_a_call_refused_the_team_gives_the_same_bits(kind, set_threads):
    # While another call holds the team, a call runs its region on one thread:
    # a convolution its two chunk slots in turn, the rest their loops. Its bits
    # must not change, and the holder's flag must stay set.
    call = _team_calls()[kind]
    set_threads(2)
    with_team = _arrays(call())
    kernels.hold_team(True)
    try:
        alone = _arrays(call())
        assert kernels.team_running()
    finally:
        kernels.hold_team(False)
    assert [(a.shape, a.dtype, a.tobytes()) for a in alone] == \
           [(a.shape, a.dtype, a.tobytes()) for a in with_team]


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
        seen.append(kernels.team_running())
    worker.join()
    assert any(seen)
    assert not kernels.team_running()


# -- the helper threads that share a small batch's plan (csrc/helpers.c) --------

@needs_openmp
def test_helpers_grown_and_left_idle_give_the_same_bits(set_threads):
    # three threads start a second helper, two then leave it without a share
    model = batch_one_mlp()
    x = np.random.default_rng(5).standard_normal((1, 784), dtype=np.float32)
    set_threads(1)
    alone = model.predict(x)
    for threads in (2, 3, 2, 3):
        set_threads(threads)
        for _ in range(20):
            assert model.predict(x).tobytes() == alone.tobytes()


@pytest.fixture
def held_helpers():
    """Plan helpers that take no work, as when descheduled; released after."""
    kernels.hold_plan_helpers(True)
    yield
    kernels.hold_plan_helpers(False)


@needs_openmp
@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("rows", [1, 8])
def test_the_caller_runs_a_held_helpers_chunks(threads, rows, set_threads, held_helpers):
    # The caller claims chunks too, so a helper that never starts delays
    # nothing: the caller runs every chunk, and the bits are one thread's.
    model = batch_one_mlp()
    x = np.random.default_rng(5).standard_normal((rows, 784), dtype=np.float32)
    set_threads(1)
    alone = model.predict(x)
    set_threads(threads)
    for _ in range(5):
        assert model.predict(x).tobytes() == alone.tobytes()
        by_caller, total = kernels.last_team_run()
        assert total > 0 and by_caller == total


@needs_openmp
def test_a_helper_released_late_leaves_finished_runs_alone(set_threads):
    # Runs posted to a held helper end without it, their plans and buffers
    # freed; once released it finds them over and must touch none of them,
    # and later runs, shared again, keep one thread's bits.
    rng = np.random.default_rng(6)
    xs = [rng.standard_normal((1, 784), dtype=np.float32) for _ in range(4)]
    set_threads(1)
    model = batch_one_mlp()
    alone = [model.predict(x).tobytes() for x in xs]
    set_threads(2)
    kernels.hold_plan_helpers(True)
    try:
        for x, expected in zip(xs, alone):
            short_lived = batch_one_mlp()
            assert short_lived.predict(x).tobytes() == expected
            del short_lived
    finally:
        kernels.hold_plan_helpers(False)
    for _ in range(50):
        for x, expected in zip(xs, alone):
            assert model.predict(x).tobytes() == expected
            by_caller, total = kernels.last_team_run()
            assert 0 <= by_caller <= total


@needs_openmp
def test_sleeping_helpers_wake_for_the_next_predict():
    # A helper sleeps 0.2 ms after its last call. A post racing with its
    # sleep must still reach it: a lost wake-up hangs, so a child runs it.
    code = (
        "import time, numpy as np, pynn\n"
        "from pynn import layers\n"
        "pynn.init.manual_seed(0)\n"
        "model = pynn.Sequential(layers.Linear(784, 256), layers.ReLU(), layers.Linear(256, 128),\n"
        "                        layers.ReLU(), layers.Linear(128, 10))\n"
        "x = np.random.default_rng(5).standard_normal((1, 784), dtype=np.float32)\n"
        "pynn.set_num_threads(1)\n"
        "alone = model.predict(x)\n"
        "pynn.set_num_threads(2)\n"
        "for pause in [0.0002 * i for i in range(60)] + [0.02] * 5:\n"
        "    assert model.predict(x).tobytes() == alone.tobytes()\n"
        "    time.sleep(pause)\n"
        "print('woken')\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "woken"


def _predict_in_child(model, x, results):
    pynn.set_num_threads(2)
    results.put(model.predict(x).tobytes())


@needs_openmp
def test_a_forked_child_starts_its_own_helpers(set_threads):
    # the parent's helper threads do not exist in a forked child: waiting
    # for them would hang its first two-thread predict
    model = batch_one_mlp()
    x = np.random.default_rng(5).standard_normal((1, 784), dtype=np.float32)
    set_threads(2)
    expected = model.predict(x).tobytes()
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_predict_in_child, args=(model, x, results))
    child.start()
    try:
        assert results.get(timeout=60) == expected
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0


# -- one image's convolutions shared with the helper threads ---------------------

def _one_image_convolutions():
    """Batch-1 convolutions small enough for the helpers, large enough to share:
    one input channel (rows shared; its direct kernel is on the vector paths
    only, the generic path's GEMM runs it on one thread), six (channel blocks
    shared)."""
    rng = np.random.default_rng(8)
    grey, grey_kernels = rng.standard_normal((1, 1, 28, 28), dtype=np.float32), \
        rng.standard_normal((6, 1, 5, 5), dtype=np.float32)
    planes, plane_kernels = rng.standard_normal((1, 6, 14, 14), dtype=np.float32), \
        rng.standard_normal((16, 6, 5, 5), dtype=np.float32)
    bias = rng.standard_normal(16, dtype=np.float32)
    convolutions = {"six channels": lambda: ops.conv2d(planes, plane_kernels, bias)}
    if kernels.chosen_isa() != "generic":
        convolutions["one channel"] = lambda: ops.conv2d(grey, grey_kernels, bias[:6], padding=2)
    return convolutions


def _one_image_shares(kind, threads):
    """Threads sharing the convolution: its 28 rows among all, its 2 blocks of 8 channels."""
    return threads if kind == "one channel" else min(threads, 2)


@needs_openmp
@pytest.mark.parametrize("kind", list(_one_image_convolutions()))
@pytest.mark.parametrize("threads", [2, 3])
def test_one_image_convolution_shared_with_helpers_keeps_one_threads_bits(kind, threads,
                                                                          set_threads):
    call = _one_image_convolutions()[kind]
    set_threads(1)
    alone = call().tobytes()
    set_threads(threads)
    for _ in range(20):
        assert call().tobytes() == alone
        by_caller, total = kernels.last_team_run()
        assert total == _one_image_shares(kind, threads) and 0 <= by_caller <= total


@needs_openmp
@pytest.mark.parametrize("kind", list(_one_image_convolutions()))
def test_the_caller_runs_a_held_helpers_convolution_share(kind, set_threads, held_helpers):
    call = _one_image_convolutions()[kind]
    set_threads(1)
    alone = call().tobytes()
    set_threads(2)
    for _ in range(5):
        assert call().tobytes() == alone
        assert kernels.last_team_run() == (2, 2)


@needs_openmp
@pytest.mark.parametrize("rows", [1, 5, 16])
def test_lenet_small_batch_predict_keeps_one_threads_bits(rows, set_threads):
    model = lenet()
    x = np.random.default_rng(9).standard_normal((rows, 1, 28, 28), dtype=np.float32)
    set_threads(1)
    alone = model.predict(x).tobytes()
    for threads in (2, 3, 2):
        set_threads(threads)
        for _ in range(20):
            assert model.predict(x).tobytes() == alone
