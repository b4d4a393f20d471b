"""The smallest program that answers predictions from a saved pynn model.

    python -m pynn demo                # writes pynn-demo/best_model.safetensors
    python examples/embed_inference.py pynn-demo/best_model.safetensors < rows.csv

Reads comma-separated feature rows from standard input and prints one
predicted class per row.
"""
import sys

import numpy as np

import pynn


def main():
    model = pynn.load(sys.argv[1])
    rows = np.loadtxt(sys.stdin, delimiter=",", dtype=np.float32, ndmin=2)
    for label in np.argmax(model.predict(rows), axis=1):
        print(label)


if __name__ == "__main__":
    main()
