"""Score a large array on a Dask cluster with a pynn model.

    python examples/dask_predict.py [--rows 10000000] [--workers 2] [--threads-per-worker 1]
                                    [--scheduler tcp://host:8786]

The 784-256-128-10 MLP scores a row-chunked dask.array generated on the
workers (10 million rows are 31 GB of float32: they never exist in one
place). The model is scattered once, and each worker fetches it when a task
there first needs it; each worker predicts on as many pynn threads as it has
Dask threads. Without --scheduler a
LocalCluster of processes is started and shut down here.
"""
import argparse
import contextlib
import sys
import time

import numpy as np

import pynn
from pynn.distributed import dask_predict
from pynn.layers import Linear, ReLU


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=positive_int, default=10_000_000)
    parser.add_argument("--chunk-rows", type=positive_int, default=50_000)
    parser.add_argument("--workers", type=positive_int, default=2)
    parser.add_argument("--threads-per-worker", type=positive_int, default=1)
    parser.add_argument("--scheduler", default=None, help="address of a running scheduler")
    args = parser.parse_args()
    try:
        import dask.array as da
        from distributed import Client, LocalCluster
    except ImportError:
        sys.exit("dask_predict.py needs Dask: pip install 'pynn-runtime[dask]'")

    model = pynn.Sequential(Linear(784, 256), ReLU(), Linear(256, 128), ReLU(), Linear(128, 10))
    with contextlib.ExitStack() as stack:
        if args.scheduler:
            client = stack.enter_context(Client(args.scheduler))
        else:
            cluster = stack.enter_context(LocalCluster(
                n_workers=args.workers, threads_per_worker=args.threads_per_worker, processes=True,
                dashboard_address=None, worker_dashboard_address=None))
            client = stack.enter_context(Client(cluster))
        x = da.random.default_rng(0).random((args.rows, 784), dtype=np.float32,
                                            chunks=(args.chunk_rows, 784))
        scores = dask_predict(model, x)
        classes = scores.argmax(axis=1)
        start = time.perf_counter()
        counts = np.bincount(classes.compute(), minlength=10)
        seconds = time.perf_counter() - start
        print(f"{args.rows} rows in {seconds:.1f} s ({args.rows / seconds:,.0f} rows/s) on "
              f"{len(client.scheduler_info(n_workers=-1)['workers'])} workers; "
              f"predicted classes: {counts.tolist()}")
        head = x[:1000].compute()
        # row-count-dependent GEMM blocking: equal to float32 rounding, not bit for bit
        np.testing.assert_allclose(scores[:1000].compute(), model.predict(head), rtol=1e-5, atol=1e-6)


if __name__ == "__main__":
    main()
