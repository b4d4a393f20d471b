"""A LeNet-5-like CNN on MNIST (or Fashion-MNIST) from a folder you have.

    python examples/mnist_cnn.py /path/to/mnist [--epochs 3] [--threads 2]
"""
import argparse

from mnist_mlp import EpochReport, positive_int  # the script's folder is on sys.path

import pynn
from pynn import layers
from pynn.losses import CrossEntropyLoss
from pynn.optim import Adam


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="folder with the MNIST idx files or an npz")
    parser.add_argument("--epochs", type=positive_int, default=3)
    parser.add_argument("--threads", type=positive_int, default=None)
    args = parser.parse_args()
    if args.threads:
        pynn.set_num_threads(args.threads)
    try:
        (x_train, y_train), (x_test, y_test) = pynn.datasets.load_mnist(args.path)
    except (OSError, ValueError) as error:
        parser.error(f"cannot read MNIST from {args.path}: {error}")
    x_train = x_train.reshape(-1, 1, 28, 28)
    x_test = x_test.reshape(-1, 1, 28, 28)
    model = pynn.Sequential(
        layers.Conv2d(1, 6, 5, padding=2), layers.ReLU(), layers.MaxPool2d(2),
        layers.Conv2d(6, 16, 5), layers.ReLU(), layers.MaxPool2d(2),
        layers.Flatten(), layers.Linear(16 * 5 * 5, 120), layers.ReLU(),
        layers.Linear(120, 84), layers.ReLU(), layers.Linear(84, 10))
    model.fit(x_train, y_train, loss=CrossEntropyLoss(), optimizer=Adam(model, lr=1e-3),
              epochs=args.epochs, batch_size=64, validation_data=(x_test, y_test), seed=0,
              callbacks=[EpochReport()], verbose=False)


if __name__ == "__main__":
    main()
