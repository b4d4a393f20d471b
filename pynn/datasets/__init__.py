"""Data sets: the bundled digits, and MNIST read from the user's own files.

Nothing here downloads anything."""
from importlib import resources

import numpy as np

from pynn.datasets.mnist import load_mnist

__all__ = ["load_digits", "load_mnist"]


def load_digits():
    """The UCI "Optical Recognition of Handwritten Digits" data set.

    1797 images of 8x8 pixels, 10 classes (Alpaydin & Kaynak, 1998; UCI
    Machine Learning Repository, CC BY 4.0), shipped inside the package as
    uint8 pixel counts 0..16.

    Returns ``(x, y)``: ``x`` float32 ``[1797, 64]`` (row-major 8x8 images,
    the counts divided by 16, so in [0, 1]) and ``y`` int64 ``[1797]`` labels
    0..9. Each call returns fresh arrays."""
    with resources.files(__name__).joinpath("digits.npz").open("rb") as file:
        with np.load(file, allow_pickle=False) as archive:
            pixels = archive["pixels"]
            labels = archive["labels"]
    x = pixels.astype(np.float32)
    x /= 16.0  # exact: every count/16 is a float32
    return x, labels.astype(np.int64)
