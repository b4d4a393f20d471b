"""A small CNN trained on the bundled 8x8 digits reaches >= 97% held-out accuracy."""
import numpy as np

import pynn
from pynn import Sequential, init, losses, optim
from pynn.datasets import load_digits
from pynn.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU


def test_small_cnn_learns_the_digits():
    x, y = load_digits()
    x = x.reshape(-1, 1, 8, 8)
    order = np.random.default_rng(0).permutation(len(x))
    test, train = order[:360], order[360:]
    init.manual_seed(0)
    model = Sequential(Conv2d(1, 16, 3, padding=1), ReLU(), MaxPool2d(2),
                       Conv2d(16, 32, 3, padding=1), ReLU(), MaxPool2d(2),
                       Flatten(), Linear(32 * 2 * 2, 10))
    threads = pynn.get_num_threads()
    pynn.set_num_threads(1)  # batches of 32 tiny images: threads only add start-up cost
    try:
        model.fit(x[train], y[train], loss=losses.CrossEntropyLoss(),
                  optimizer=optim.Adam(model, lr=0.003), epochs=20, batch_size=32, seed=0,
                  verbose=False)
    finally:
        pynn.set_num_threads(threads)
    accuracy = float(np.mean(model.predict(x[test]).argmax(axis=1) == y[test]))
    assert accuracy >= 0.97, f"test accuracy {accuracy:.3f}"
