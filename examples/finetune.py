"""Transfer learning: pretrain on digits 0-4, freeze the body, new head for 5-9.

    python examples/finetune.py [--epochs 20] [--seed 0]
"""
import argparse

import numpy as np

import pynn
from pynn import layers
from pynn.losses import CrossEntropyLoss
from pynn.optim import Adam


def split(x, y, seed=0):
    order = np.random.default_rng(seed).permutation(len(x))
    cut = (3 * len(x)) // 4
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x), axis=1) == y))


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=positive_int, default=20, help="epochs of each stage")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    x, y = pynn.datasets.load_digits()
    pynn.init.manual_seed(args.seed)
    first, second = y < 5, y >= 5
    xa, ya, xa_test, ya_test = split(x[first], y[first])
    xb, yb, xb_test, yb_test = split(x[second], y[second] - 5)

    model = pynn.Sequential(layers.Linear(64, 128), layers.ReLU(),
                            layers.Linear(128, 64), layers.ReLU(), layers.Linear(64, 5))
    model.fit(xa, ya, loss=CrossEntropyLoss(), optimizer=Adam(model, lr=0.005),
              epochs=args.epochs, seed=args.seed, verbose=False)
    print(f"pretrained on digits 0-4: test accuracy {accuracy(model, xa_test, ya_test):.3f}")

    # Keep the learned features, replace the head, train only the head.
    body = [model[i] for i in range(len(model) - 1)]
    transferred = pynn.Sequential(*body, layers.Linear(64, 5))
    transferred.freeze(len(body))
    transferred.fit(xb, yb, loss=CrossEntropyLoss(), optimizer=Adam(transferred, lr=0.01),
                    epochs=args.epochs, seed=args.seed, verbose=False)
    print(f"new head on digits 5-9 over frozen features: test accuracy "
          f"{accuracy(transferred, xb_test, yb_test):.3f}")


if __name__ == "__main__":
    main()
