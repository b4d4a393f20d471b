"""Data-parallel training over MPI: every rank trains on its own shard.

    mpiexec -n 2 python examples/train_mpi.py [--epochs 30] [--out digits_mlp.safetensors]

Each rank takes every size-th sample of the bundled digits; ``batch_size`` is
per rank, so n ranks of 32 train like one process with batches of 32 n. Rank
0's initial weights are broadcast, one Allreduce per step averages the
gradients, and only rank 0 prints and saves the model.
"""
import argparse
import sys

import pynn
from pynn import Sequential, optim
from pynn.layers import Linear, ReLU
from pynn.losses import CrossEntropyLoss


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=positive_int, default=30)
    parser.add_argument("--batch-size", type=positive_int, default=32, help="per rank")
    parser.add_argument("--out", default="digits_mlp.safetensors")
    args = parser.parse_args()
    try:
        from mpi4py import MPI
    except ImportError:
        sys.exit("train_mpi.py needs mpi4py and an MPI library: pip install 'pynn-runtime[mpi]'")
    comm = MPI.COMM_WORLD
    pynn.set_num_threads(1)  # one core per rank

    x, y = pynn.datasets.load_digits()
    x_train, y_train, x_test, y_test = x[:1500], y[:1500], x[1500:], y[1500:]
    model = Sequential(Linear(64, 128), ReLU(), Linear(128, 10))
    shard = slice(comm.rank, None, comm.size)
    model.fit(x_train[shard], y_train[shard], loss=CrossEntropyLoss(),
              optimizer=optim.Adam(model, lr=3e-3), epochs=args.epochs,
              batch_size=args.batch_size, seed=0, verbose=False, comm=comm)
    if comm.rank == 0:
        accuracy = (model.predict(x_test).argmax(axis=1) == y_test).mean()
        model.save(args.out)
        print(f"{comm.size} ranks x batch {args.batch_size}: held-out accuracy {accuracy:.4f}, "
              f"saved {args.out}")


if __name__ == "__main__":
    main()
