"""``python -m pynn demo``: the main job on the bundled digits.

Trains a linear baseline, an MLP and a small CNN on a fixed 75/25 split,
prints test accuracy, training time and throughput, saves the best model,
reloads it and checks that its predictions are identical, and plots the
training curves when matplotlib is installed."""
import os
import time

import numpy as np

import pynn
from pynn import layers
from pynn.losses import CrossEntropyLoss
from pynn.optim import Adam

SPLIT_SEED = 0


def digits_split():
    """The bundled digits, split 75/25 by a fixed permutation."""
    x, y = pynn.datasets.load_digits()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    cut = (3 * len(x)) // 4
    train, test = order[:cut], order[cut:]
    return x[train], y[train], x[test], y[test]


def build_models():
    """name -> (model, reshape for its input, learning rate)."""
    as_images = lambda x: x.reshape(-1, 1, 8, 8)  # noqa: E731
    as_rows = lambda x: x  # noqa: E731
    return {
        "linear baseline": (pynn.Sequential(layers.Linear(64, 10)), as_rows, 0.02),
        "MLP 64-128-10": (pynn.Sequential(layers.Linear(64, 128), layers.ReLU(),
                                          layers.Linear(128, 10)), as_rows, 0.005),
        "CNN": (pynn.Sequential(layers.Conv2d(1, 16, 3, padding=1), layers.ReLU(),
                                layers.MaxPool2d(2),
                                layers.Conv2d(16, 32, 3, padding=1), layers.ReLU(),
                                layers.MaxPool2d(2), layers.Flatten(), layers.Linear(32 * 2 * 2, 10)),
                as_images, 0.003),
    }


def train_all(epochs, seed, quiet):
    x_train, y_train, x_test, y_test = digits_split()
    pynn.init.manual_seed(seed)
    results = {}
    for name, (model, shape, lr) in build_models().items():
        if not quiet:
            print(f"training {name}")
        start = time.perf_counter()
        history = model.fit(shape(x_train), y_train, loss=CrossEntropyLoss(),
                            optimizer=Adam(model, lr=lr), epochs=epochs, batch_size=32,
                            validation_data=(shape(x_test), y_test), seed=seed,
                            verbose=not quiet)
        seconds = time.perf_counter() - start
        accuracy = float(np.mean(np.argmax(model.predict(shape(x_test)), axis=1) == y_test))
        results[name] = {"model": model, "shape": shape, "history": history.history,
                         "accuracy": accuracy, "seconds": seconds,
                         "samples_per_second": epochs * len(x_train) / seconds}
    return results, x_test


def print_table(results):
    print(f"\n{'model':<18}{'test accuracy':>15}{'train time':>13}{'samples/s':>13}")
    for name, result in results.items():
        print(f"{name:<18}{result['accuracy']:>15.4f}{result['seconds']:>12.2f}s"
              f"{result['samples_per_second']:>13,.0f}")


def save_and_reload(results, x_test, out_dir):
    """Save the most accurate model, load it back, demand identical predictions."""
    name = max(results, key=lambda key: results[key]["accuracy"])
    best = results[name]
    path = os.path.join(out_dir, "best_model.safetensors")
    best["model"].save(path)
    reloaded = pynn.load(path)
    inputs = best["shape"](x_test)
    if not np.array_equal(reloaded.predict(inputs), best["model"].predict(inputs)):
        raise RuntimeError(f"the model reloaded from {path} predicts differently")
    return name, path


def plot_curves(results, out_dir):
    """training_curves.png when matplotlib is installed; None otherwise."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for name, result in results.items():
        history = result["history"]
        epochs = np.arange(1, len(history["loss"]) + 1)
        line, = loss_axis.plot(epochs, history["loss"], label=f"{name} train")
        loss_axis.plot(epochs, history["val_loss"], "--", color=line.get_color(),
                       label=f"{name} test")
        accuracy_axis.plot(epochs, history["val_accuracy"], color=line.get_color(), label=name)
    loss_axis.set(xlabel="epoch", ylabel="cross-entropy", title="loss", yscale="log")
    accuracy_axis.set(xlabel="epoch", ylabel="test accuracy", title="accuracy")
    loss_axis.legend(fontsize=7)
    accuracy_axis.legend(fontsize=7)
    figure.tight_layout()
    path = os.path.join(out_dir, "training_curves.png")
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def run(epochs=30, seed=0, threads=None, out_dir="pynn-demo", quiet=False):
    if threads is not None:
        pynn.set_num_threads(threads)
    os.makedirs(out_dir, exist_ok=True)
    results, x_test = train_all(epochs, seed, quiet)
    print_table(results)
    name, path = save_and_reload(results, x_test, out_dir)
    print(f"\nsaved the best model ({name}) to {path}; reloaded, predictions identical")
    plot = plot_curves(results, out_dir)
    if plot:
        print(f"training curves: {plot}")
    else:
        print("training curves need matplotlib: pip install 'pynn-runtime[plot]'")
    return results
