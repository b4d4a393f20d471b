"""A small ResNet (a pynn.Model with residual blocks) against the demo's plain CNN.

    python examples/resnet_digits.py [--epochs 15] [--mnist FOLDER] [--quick]

Trains both on the bundled 8x8 digits (or on MNIST from a folder you have,
read by pynn.datasets.load_mnist; nothing is downloaded) and prints each
one's test accuracy and training time.
"""
import argparse
import time

import numpy as np

import pynn
from pynn import layers
from pynn.demo import digits_split
from pynn.losses import CrossEntropyLoss
from pynn.optim import Adam


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def residual_block(x, channels, width, stride, name):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the input (through a 1x1 conv and BN
    where the shape changes), then ReLU."""
    y = layers.Conv2d(channels, width, 3, stride=stride, padding=1, bias=False, name=f"{name}.conv1")(x)
    y = layers.ReLU()(layers.BatchNorm2d(width, name=f"{name}.bn1")(y))
    y = layers.Conv2d(width, width, 3, padding=1, bias=False, name=f"{name}.conv2")(y)
    y = layers.BatchNorm2d(width, name=f"{name}.bn2")(y)
    if stride != 1 or channels != width:
        x = layers.Conv2d(channels, width, 1, stride=stride, bias=False, name=f"{name}.shortcut.0")(x)
        x = layers.BatchNorm2d(width, name=f"{name}.shortcut.1")(x)
    return layers.ReLU()(layers.Add()([y, x]))


def small_resnet(side):
    """A stem and two residual stages (16 channels, then 32 at half the size)."""
    image = pynn.Input((1, side, side), name="image")
    h = layers.Conv2d(1, 16, 3, padding=1, bias=False, name="conv1")(image)
    h = layers.ReLU()(layers.BatchNorm2d(16, name="bn1")(h))
    h = residual_block(h, 16, 16, 1, "layer1")
    h = residual_block(h, 16, 32, 2, "layer2")
    logits = layers.Linear(32, 10, name="fc")(layers.GlobalAvgPool2d()(h))
    return pynn.Model(image, logits, name="resnet")


def plain_cnn(side):
    """The CNN of ``python -m pynn demo``, its last layer sized for ``side``."""
    return pynn.Sequential(layers.Conv2d(1, 16, 3, padding=1), layers.ReLU(), layers.MaxPool2d(2),
                           layers.Conv2d(16, 32, 3, padding=1), layers.ReLU(), layers.MaxPool2d(2),
                           layers.Flatten(), layers.Linear(32 * (side // 4) ** 2, 10))


def load(args, parser):
    """(x_train, y_train, x_test, y_test) as [N, 1, side, side] images."""
    if args.mnist is None:
        x_train, y_train, x_test, y_test = digits_split()
        side = 8
    else:
        try:
            (x_train, y_train), (x_test, y_test) = pynn.datasets.load_mnist(args.mnist)
        except (OSError, ValueError) as error:
            parser.error(f"cannot read MNIST from {args.mnist}: {error}")
        side = 28
    if args.quick:  # a slice, so that a run takes seconds
        x_train, y_train, x_test, y_test = x_train[:1000], y_train[:1000], x_test[:500], y_test[:500]
    shape = (-1, 1, side, side)
    return x_train.reshape(shape), y_train, x_test.reshape(shape), y_test, side


def train(model, data, epochs, seed):
    x_train, y_train, x_test, y_test = data
    start = time.perf_counter()
    model.fit(x_train, y_train, loss=CrossEntropyLoss(), optimizer=Adam(model, lr=0.003),
              epochs=epochs, batch_size=32, seed=seed, verbose=False)
    seconds = time.perf_counter() - start
    accuracy = float(np.mean(np.argmax(model.predict(x_test, batch_size=256), axis=1) == y_test))
    return accuracy, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help="training epochs of each model (default 15, 3 with --quick)")
    parser.add_argument("--mnist", metavar="FOLDER", default=None,
                        help="train on MNIST from this folder instead of the bundled digits")
    parser.add_argument("--quick", action="store_true", help="a slice of the data and few epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=positive_int, default=None)
    args = parser.parse_args()
    if args.threads:
        pynn.set_num_threads(args.threads)
    epochs = args.epochs or (3 if args.quick else 15)
    *data, side = load(args, parser)
    pynn.init.manual_seed(args.seed)
    models = {"ResNet": small_resnet(side), "plain CNN": plain_cnn(side)}
    print(f"{len(data[0])} training and {len(data[2])} test images of {side}x{side}, "
          f"{epochs} epochs each")
    for name, model in models.items():
        count = sum(param.size for _, param in model.named_parameters())
        accuracy, seconds = train(model, data, epochs, args.seed)
        print(f"{name}: test accuracy {accuracy:.4f}, {seconds:.1f} s training, {count:,} parameters")


if __name__ == "__main__":
    main()
