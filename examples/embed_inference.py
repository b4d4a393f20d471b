"""The smallest program that answers predictions from a saved pynn model.

    python -m pynn demo                # writes pynn-demo/best_model.safetensors
    python examples/embed_inference.py pynn-demo/best_model.safetensors < rows.csv

Reads comma-separated rows from standard input, one sample per row, and prints
one predicted class per row. Each row is reshaped to the input shape the model
file records (64 values become a 1x8x8 image for the demo's CNN); for a file
that does not record one, pass it with --input-shape.
"""
import argparse
import math
import sys

import numpy as np

import pynn


def shape(text):
    """``1,8,8`` -> (1, 8, 8)."""
    try:
        extents = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes separated by commas, got {text!r}") from None
    if not extents or min(extents) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes, got {text!r}")
    return extents


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model file written by model.save, "
                                      "e.g. pynn-demo/best_model.safetensors")
    parser.add_argument("--input-shape", type=shape, default=None, metavar="SIZES",
                        help="one sample's shape, e.g. 1,8,8 (default: the one the file records)")
    args = parser.parse_args(argv)
    try:
        model = pynn.load(args.model)
    except (OSError, pynn.ModelFormatError) as error:
        parser.error(f"cannot load the model: {error}")
    input_shape = args.input_shape or model.input_shape
    if input_shape is None:
        parser.error(f"{args.model} does not record the model's input shape (it was saved "
                     "before any fit); pass one sample's shape with --input-shape, e.g. 1,8,8")
    try:
        rows = np.loadtxt(sys.stdin, delimiter=",", dtype=np.float32, ndmin=2)
    except ValueError as error:
        parser.error(f"standard input must hold comma-separated numbers: {error}")
    if rows.size == 0:
        return 0
    if rows.shape[1] != math.prod(input_shape):
        parser.error(f"each row must hold {math.prod(input_shape)} values (input shape "
                     f"{input_shape}), got {rows.shape[1]}")
    try:
        scores = model.predict(rows.reshape((len(rows),) + tuple(input_shape)))
    except ValueError as error:
        parser.error(f"the model refuses input shape {tuple(input_shape)}: {error}")
    for label in np.argmax(scores, axis=1):
        print(label)
    return 0


if __name__ == "__main__":
    sys.exit(main())
