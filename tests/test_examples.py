"""The examples that need no external data run as written."""
import os
import subprocess
import sys

import numpy as np

import pynn
from pynn import layers

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "examples")
# The subprocess imports the same pynn as these tests, installed or built in place.
ENVIRONMENT = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(pynn.__file__)))


def run_example(name, *args, cwd, stdin=None):
    result = subprocess.run([sys.executable, os.path.join(EXAMPLES, name), *args], cwd=cwd,
                            input=stdin, env=ENVIRONMENT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_universal_approximation_improves_with_width(tmp_path):
    out = run_example("universal_approximation.py", "--epochs", "60", "--sizes", "2", "64",
                      cwd=tmp_path)
    errors = [float(line.split()[-1]) for line in out.splitlines() if "squared error" in line]
    assert len(errors) == 2 and errors[1] < errors[0] / 4


def test_finetune_reports_both_stages(tmp_path):
    out = run_example("finetune.py", cwd=tmp_path)
    accuracies = [float(line.split()[-1]) for line in out.splitlines() if "accuracy" in line]
    assert len(accuracies) == 2
    assert accuracies[0] > 0.9 and accuracies[1] > 0.5  # chance is 0.2 for five classes


def test_embed_inference_answers_from_a_saved_model(tmp_path):
    x, y = pynn.datasets.load_digits()
    model = pynn.Sequential(layers.Linear(64, 10))
    model.fit(x, y, loss=pynn.losses.CrossEntropyLoss(), optimizer=pynn.optim.Adam(model, lr=0.02),
              epochs=5, seed=0, verbose=False)
    path = tmp_path / "model.safetensors"
    model.save(str(path))
    rows = "\n".join(",".join(f"{v:.6f}" for v in row) for row in x[:20])
    out = run_example("embed_inference.py", str(path), cwd=tmp_path, stdin=rows)
    expected = np.argmax(model.predict(x[:20]), axis=1)
    assert [int(v) for v in out.split()] == expected.tolist()


def write_idx(path, array, magic):
    with open(path, "wb") as f:
        f.write(magic.to_bytes(4, "big"))
        for extent in array.shape:
            f.write(extent.to_bytes(4, "big"))
        f.write(array.astype(np.uint8).tobytes())


def test_mnist_examples_run_on_a_folder_of_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    for split, count in (("train", 300), ("t10k", 60)):
        labels = rng.integers(0, 10, count)
        images = rng.integers(0, 40, (count, 28, 28))
        for i, label in enumerate(labels):
            images[i, 2 * label:2 * label + 6, 4:24] = 250  # a bar whose height is the class
        write_idx(tmp_path / f"{split}-images-idx3-ubyte", images, 0x803)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte", labels, 0x801)
    for script in ("mnist_mlp.py", "mnist_cnn.py"):
        out = run_example(script, str(tmp_path), "--epochs", "1", "--threads", "1", cwd=tmp_path)
        assert out.startswith("epoch 1: test accuracy ")
