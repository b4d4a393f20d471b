"""An MLP on MNIST (or Fashion-MNIST) from a folder you have.

    python examples/mnist_mlp.py /path/to/mnist [--epochs 5] [--threads 2]

The folder holds the four standard idx files (gzipped or not) or one npz with
x_train/y_train/x_test/y_test; nothing is downloaded.
"""
import argparse
import time

import pynn
from pynn import layers
from pynn.callbacks import Callback
from pynn.losses import CrossEntropyLoss
from pynn.optim import SGD


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


class EpochReport(Callback):
    """Prints each epoch's validation accuracy and duration."""

    def __init__(self):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs):
        now = time.perf_counter()
        print(f"epoch {epoch + 1}: test accuracy {logs['val_accuracy']:.4f}, "
              f"{now - self.started:.1f} s")
        self.started = now


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="folder with the MNIST idx files or an npz")
    parser.add_argument("--epochs", type=positive_int, default=5)
    parser.add_argument("--threads", type=positive_int, default=None)
    args = parser.parse_args()
    if args.threads:
        pynn.set_num_threads(args.threads)
    try:
        (x_train, y_train), (x_test, y_test) = pynn.datasets.load_mnist(args.path)
    except (OSError, ValueError) as error:
        parser.error(f"cannot read MNIST from {args.path}: {error}")
    x_train = x_train.reshape(len(x_train), -1)
    x_test = x_test.reshape(len(x_test), -1)
    model = pynn.Sequential(layers.Linear(784, 256), layers.ReLU(),
                            layers.Linear(256, 128), layers.ReLU(), layers.Linear(128, 10))
    model.fit(x_train, y_train, loss=CrossEntropyLoss(),
              optimizer=SGD(model, lr=0.05, momentum=0.9), epochs=args.epochs,
              batch_size=128, validation_data=(x_test, y_test), seed=0,
              callbacks=[EpochReport()], verbose=False)


if __name__ == "__main__":
    main()
