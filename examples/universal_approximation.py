"""Universal approximation made concrete: one hidden layer fits a squiggly curve.

Fits y = sin(3x) + 0.3 sin(17x) on [-pi, pi] with growing hidden sizes and
prints the mean squared error of each; with matplotlib installed it also
writes universal_approximation.png beside the current directory.

    python examples/universal_approximation.py [--epochs 300] [--sizes 2 8 32 128]
"""
import argparse

import numpy as np

import pynn
from pynn import layers
from pynn.callbacks import Callback
from pynn.losses import MSELoss
from pynn.optim import Adam
from pynn.optim.lr_scheduler import CosineAnnealingLR


def target(x):
    return np.sin(3 * x) + 0.3 * np.sin(17 * x)


class Anneal(Callback):
    """Steps a learning-rate schedule once per epoch."""

    def __init__(self, schedule):
        self.schedule = schedule

    def on_epoch_end(self, epoch, logs):
        self.schedule.step()


def fit_curve(hidden, x, y, epochs, seed=0):
    model = pynn.Sequential(layers.Linear(1, hidden), layers.Tanh(), layers.Linear(hidden, 1))
    # Each tanh unit starts as a steep step placed at its own point of the
    # interval, so together they can already draw any curve; training bends them.
    rng = np.random.default_rng(seed)
    slopes = rng.choice([-1.0, 1.0], hidden) * rng.uniform(4.0, 16.0, hidden)
    model[0].params["weight"][:, 0] = slopes
    model[0].params["bias"][...] = -slopes * np.linspace(-np.pi, np.pi, hidden)
    optimizer = Adam(model, lr=0.01)
    schedule = CosineAnnealingLR(optimizer, T_max=epochs)
    model.fit(x, y, loss=MSELoss(), optimizer=optimizer, epochs=epochs, batch_size=64,
              seed=seed, callbacks=[Anneal(schedule)], verbose=False)
    prediction = model.predict(x)
    return prediction, float(np.mean((prediction - y) ** 2))


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=positive_int, default=300)
    parser.add_argument("--sizes", type=positive_int, nargs="+", default=[2, 8, 32, 128],
                        help="hidden layer sizes to fit, one model each")
    args = parser.parse_args()
    x = np.linspace(-np.pi, np.pi, 1000, dtype=np.float32).reshape(-1, 1)
    y = target(x).astype(np.float32)
    fits = {}
    for hidden in args.sizes:
        fits[hidden], mse = fit_curve(hidden, x, y, args.epochs)
        print(f"hidden units {hidden:>4}: mean squared error {mse:.2e}")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("install matplotlib to plot the fits")
        return
    plt.plot(x, y, "k", linewidth=3, label="target")
    for hidden, prediction in fits.items():
        plt.plot(x, prediction, label=f"{hidden} hidden units")
    plt.legend()
    plt.savefig("universal_approximation.png", dpi=100)
    print("wrote universal_approximation.png")


if __name__ == "__main__":
    main()
