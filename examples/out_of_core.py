"""Training from a file larger than memory allows: fit over a re-iterable batch reader.

    python examples/out_of_core.py [--cache-mb 4] [--epochs 3] [--batch-size 128]

The data: the bundled scikit-learn digits (8x8 images, pynn.datasets.load_digits),
split into training and test images first; the training images are augmented
(each copy shifted by up to one pixel and given a little noise) and written to
a numpy.memmap file in a temporary folder until the file is larger than the
cache. The reader keeps at most one cache-sized block of the file in memory:
each pass visits the blocks in a new random order, shuffles the rows within
each block and yields (x_batch, y_batch) pairs; ``model.fit(reader, ...)``
starts a new pass every epoch. The test images are never augmented.
"""
import argparse
import os
import tempfile

import numpy as np

import pynn
from pynn import layers
from pynn.losses import CrossEntropyLoss
from pynn.optim import Adam

FEATURES = 64  # one 8x8 digit


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
    return value


def augmented(images, rng):
    """Each image shifted by up to one pixel each way (zeros come in) plus noise, in [0, 1]."""
    squares = images.reshape(-1, 8, 8)
    padded = np.pad(squares, ((0, 0), (1, 1), (1, 1)))
    rows, cols = rng.integers(0, 3, len(images)), rng.integers(0, 3, len(images))
    shifted = np.stack([padded[i, r:r + 8, c:c + 8] for i, (r, c) in enumerate(zip(rows, cols))])
    noisy = shifted + rng.normal(0.0, 0.05, shifted.shape)
    return np.clip(noisy, 0.0, 1.0).reshape(len(images), FEATURES).astype(np.float32)


def write_memmap(folder, x, y, samples, rng, chunk=4096):
    """``samples`` augmented copies of (x, y) in two memmap files, written a chunk at a time."""
    images = np.memmap(os.path.join(folder, "images.f32"), dtype=np.float32, mode="w+",
                       shape=(samples, FEATURES))
    labels = np.memmap(os.path.join(folder, "labels.i64"), dtype=np.int64, mode="w+", shape=(samples,))
    for start in range(0, samples, chunk):
        picks = rng.integers(0, len(x), min(chunk, samples - start))
        images[start:start + len(picks)] = augmented(x[picks], rng)
        labels[start:start + len(picks)] = y[picks]
    images.flush()
    labels.flush()
    del images, labels
    return os.path.join(folder, "images.f32"), os.path.join(folder, "labels.i64")


class MemmapBatches:
    """(x_batch, y_batch) pairs from memmap files, holding one block of at
    most ``cache_bytes`` of images in memory at a time. Every ``iter()`` starts
    a new pass: blocks in a new random order, rows shuffled within each."""

    def __init__(self, images_path, labels_path, batch_size, cache_bytes, seed=0):
        self.labels = np.memmap(labels_path, dtype=np.int64, mode="r")
        self.images = np.memmap(images_path, dtype=np.float32, mode="r",
                                shape=(len(self.labels), FEATURES))
        self.batch_size = batch_size
        # whole batches per block, so every batch but the file's last is full
        per_block = max(1, cache_bytes // (FEATURES * 4) // batch_size) * batch_size
        self.blocks = [(start, min(start + per_block, len(self.labels)))
                       for start in range(0, len(self.labels), per_block)]
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        return sum(-(-(stop - start) // self.batch_size) for start, stop in self.blocks)

    def __iter__(self):
        for index in self.rng.permutation(len(self.blocks)):
            start, stop = self.blocks[index]
            order = self.rng.permutation(stop - start)
            block_x = np.asarray(self.images[start:stop])[order]  # the only rows in memory
            block_y = np.asarray(self.labels[start:stop])[order]
            for first in range(0, stop - start, self.batch_size):
                yield block_x[first:first + self.batch_size], block_y[first:first + self.batch_size]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-mb", type=positive_float, default=4.0,
                        help="memory for data, in MiB; the file is made larger than this")
    parser.add_argument("--epochs", type=positive_int, default=3)
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--threads", type=positive_int, default=None)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    if args.threads:
        pynn.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x, y = pynn.datasets.load_digits()
    order = rng.permutation(len(x))
    train, test = order[:1400], order[1400:]
    cache_bytes = int(args.cache_mb * 2 ** 20)
    samples = cache_bytes * 3 // 2 // (FEATURES * 4) + 1  # half as much again as the cache holds
    with tempfile.TemporaryDirectory() as folder:
        images_path, labels_path = write_memmap(folder, x[train], y[train], samples, rng)
        size = os.path.getsize(images_path)
        print(f"wrote {samples} augmented digits ({size / 2 ** 20:.1f} MiB) to a memmap file, "
              f"larger than the {args.cache_mb:g} MiB cache")
        reader = MemmapBatches(images_path, labels_path, args.batch_size, cache_bytes)
        model = pynn.Sequential(layers.Linear(FEATURES, 128), layers.ReLU(), layers.Linear(128, 10))
        model.fit(reader, loss=CrossEntropyLoss(), optimizer=Adam(model, lr=2e-3),
                  epochs=args.epochs, seed=0, verbose=not args.quiet)
        del reader  # its memmaps close before the folder goes
    accuracy = model.evaluate(x[test], y[test], loss=CrossEntropyLoss())["accuracy"]
    print(f"test accuracy {accuracy:.4f} on {len(test)} held-out digits")


if __name__ == "__main__":
    main()
