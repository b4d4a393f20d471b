"""Concurrency: two Python threads calling predict with one kernel thread each.

If the kernels release the GIL, two threads finish two streams of work in
about the time one thread takes for one, so the serial/pynn ratio nears 2 on
two free cores; with the GIL held it would stay near 1."""
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from pynn.bench import Case, _checks

CALLS_PER_STREAM = 20


def _mlp():
    import pynn
    from pynn import layers

    pynn.init.manual_seed(0)
    return pynn.Sequential(layers.Linear(784, 256), layers.ReLU(), layers.Linear(256, 128),
                           layers.ReLU(), layers.Linear(128, 10))


def cases(quick, threads):
    if threads != 1:
        return []  # the point is one kernel thread per Python thread
    model = _mlp()
    batch = 32 if quick else 128
    x = np.random.default_rng(0).standard_normal((batch, 784)).astype(np.float32)
    pool = ThreadPoolExecutor(max_workers=2)

    def stream():
        for _ in range(CALLS_PER_STREAM):
            model.predict(x)

    def two_threads():
        for future in [pool.submit(stream), pool.submit(stream)]:
            future.result()

    def serial():
        stream()
        stream()

    name = f"2 streams of predict, batch {batch}, 2 Python threads"

    def check():
        # each thread's predictions, made while the other thread predicts too
        first, second = [pool.submit(lambda: [model.predict(x).copy() for _ in range(4)])
                         for _ in range(2)]
        for outputs in first.result() + second.result():
            _checks.predictions(model, x, outputs, name)
    return [Case("threads", name, {"pynn": two_threads, "pynn serial": serial},
                 work=2 * CALLS_PER_STREAM * batch, unit="samples/s", check=check)]
