"""The examples that need no external data run as written, and every example
answers a wrong command line with its usage, not a traceback."""
import glob
import os
import subprocess
import sys

import numpy as np
import pytest

import pynn
from pynn import demo, layers
from pynn.io import read_tensors, save_tensors

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "examples")
# The subprocess imports the same pynn as these tests, installed or built in place.
ENVIRONMENT = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(pynn.__file__)))


def run_example(name, *args, cwd, stdin=None, returncode=0):
    result = subprocess.run([sys.executable, os.path.join(EXAMPLES, name), *args], cwd=cwd,
                            input=stdin, env=ENVIRONMENT, capture_output=True, text=True, timeout=300)
    assert result.returncode == returncode, result.stderr
    if returncode:
        assert "Traceback" not in result.stderr, result.stderr
        return result.stderr
    return result.stdout


ALL_EXAMPLES = sorted(os.path.basename(path) for path in glob.glob(os.path.join(EXAMPLES, "*.py")))
# examples with a required argument, so that running them bare is a mistake
NEED_ARGUMENTS = {"embed_inference.py", "mnist_cnn.py", "mnist_mlp.py"}


@pytest.mark.parametrize("name", ALL_EXAMPLES)
def test_a_wrong_command_line_prints_usage(name, tmp_path):
    positional = ["somewhere"] if name in NEED_ARGUMENTS else []
    message = run_example(name, *positional, "--no-such-option", cwd=tmp_path, returncode=2)
    assert message.startswith(f"usage: {name}") and "unrecognized arguments" in message
    if name in NEED_ARGUMENTS:
        message = run_example(name, cwd=tmp_path, returncode=2)
        assert message.startswith(f"usage: {name}") and "required" in message
    if name != "embed_inference.py":
        option = {"dask_predict.py": "--rows", "semantic_search.py": "--top"}.get(name, "--epochs")
        message = run_example(name, *positional, option, "0", cwd=tmp_path, returncode=2)
        assert "must be a positive integer, got 0" in message


def test_every_example_is_listed_for_its_usage_test():
    assert len(ALL_EXAMPLES) >= 7 and NEED_ARGUMENTS <= set(ALL_EXAMPLES)


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


def demo_rows(count=30):
    _, _, x_test, y_test = demo.digits_split()
    return x_test[:count], y_test[:count], "\n".join(",".join(f"{v:.6f}" for v in row)
                                                     for row in x_test[:count])


@pytest.mark.parametrize("name", ["MLP 64-128-10", "CNN"])
def test_embed_inference_answers_from_the_demos_best_model(name, tmp_path):
    """The demo saves whichever model wins; both kinds must work from CSV rows."""
    x_train, y_train, x_test, y_test = demo.digits_split()
    model, shape, lr = demo.build_models()[name]
    model.fit(shape(x_train), y_train, loss=pynn.losses.CrossEntropyLoss(),
              optimizer=pynn.optim.Adam(model, lr=lr), epochs=2, seed=0, verbose=False)
    results = {name: {"model": model, "shape": shape, "accuracy": 1.0}}
    saved_name, path = demo.save_and_reload(results, x_test, str(tmp_path))
    assert saved_name == name
    x, _, rows = demo_rows()
    out = run_example("embed_inference.py", path, cwd=tmp_path, stdin=rows)
    expected = np.argmax(model.predict(shape(x)), axis=1)
    assert [int(v) for v in out.split()] == expected.tolist()


def test_embed_inference_after_the_demo_command(tmp_path):
    """The README's two lines, whichever model the demo finds best."""
    subprocess.run([sys.executable, "-m", "pynn", "demo", "--out", str(tmp_path / "demo"),
                    "--epochs", "2", "--quiet"], check=True, env=ENVIRONMENT, cwd=tmp_path,
                   capture_output=True, timeout=600)
    path = str(tmp_path / "demo" / "best_model.safetensors")
    x, y, rows = demo_rows(100)
    out = run_example("embed_inference.py", path, cwd=tmp_path, stdin=rows)
    model = pynn.load(path)
    expected = np.argmax(model.predict(x.reshape((len(x),) + model.input_shape)), axis=1)
    assert [int(v) for v in out.split()] == expected.tolist()
    assert np.mean(expected == y) > 0.5


def test_embed_inference_explains_what_it_cannot_do(tmp_path):
    model = pynn.Sequential(layers.Conv2d(1, 2, 3), layers.Flatten(), layers.Linear(2 * 6 * 6, 3))
    path = str(tmp_path / "cnn.safetensors")
    model.save(path)  # never fitted: the file records no input shape
    x, _, rows = demo_rows(5)
    message = run_example("embed_inference.py", path, cwd=tmp_path, stdin=rows, returncode=2)
    assert "does not record the model's input shape" in message and "--input-shape" in message
    out = run_example("embed_inference.py", path, "--input-shape", "1,8,8", cwd=tmp_path,
                      stdin=rows)
    assert [int(v) for v in out.split()] == np.argmax(
        model.predict(x.reshape(-1, 1, 8, 8)), axis=1).tolist()
    message = run_example("embed_inference.py", path, "--input-shape", "1,4,16", cwd=tmp_path,
                          stdin=rows, returncode=2)
    assert "the model refuses input shape (1, 4, 16)" in message
    message = run_example("embed_inference.py", path, "--input-shape", "1,8", cwd=tmp_path,
                          stdin=rows, returncode=2)
    assert "each row must hold 8 values" in message
    message = run_example("embed_inference.py", path, "--input-shape", "1,8,8", cwd=tmp_path,
                          stdin="1,2,x\n", returncode=2)
    assert "comma-separated numbers" in message
    message = run_example("embed_inference.py", str(tmp_path / "missing.safetensors"),
                          cwd=tmp_path, returncode=2)
    assert "cannot load the model" in message
    tensors, metadata = read_tensors(path)  # a file from before input shapes were recorded
    del metadata["input_shape"]
    save_tensors(path, tensors, metadata)
    message = run_example("embed_inference.py", path, cwd=tmp_path, stdin=rows, returncode=2)
    assert "--input-shape" in message


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


def _accuracies(out):
    return {line.split(":")[0]: float(line.split("test accuracy ")[1].split(",")[0])
            for line in out.splitlines() if "test accuracy" in line}


def test_resnet_digits_trains_the_resnet_and_the_plain_cnn(tmp_path):
    out = run_example("resnet_digits.py", "--quick", "--threads", "1", cwd=tmp_path)
    accuracies = _accuracies(out)
    assert set(accuracies) == {"ResNet", "plain CNN"}
    assert accuracies["ResNet"] > 0.8 and accuracies["plain CNN"] > 0.5  # chance is 0.1
    assert "1000 training and 450 test images of 8x8" in out


def test_resnet_digits_reads_mnist_from_a_folder(tmp_path):
    rng = np.random.default_rng(1)
    for split, count in (("train", 200), ("t10k", 50)):
        labels = rng.integers(0, 10, count)
        images = rng.integers(0, 40, (count, 28, 28))
        for i, label in enumerate(labels):
            images[i, 2 * label:2 * label + 6, 4:24] = 250
        write_idx(tmp_path / f"{split}-images-idx3-ubyte", images, 0x803)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte", labels, 0x801)
    out = run_example("resnet_digits.py", "--mnist", str(tmp_path), "--epochs", "1",
                      "--threads", "1", cwd=tmp_path)
    assert "200 training and 50 test images of 28x28" in out
    assert set(_accuracies(out)) == {"ResNet", "plain CNN"}
    message = run_example("resnet_digits.py", "--mnist", str(tmp_path / "none"), cwd=tmp_path,
                          returncode=2)
    assert "cannot read MNIST" in message


def _rmses(out):
    return [float(line.split("test RMSE ")[1]) for line in out.splitlines() if "test RMSE" in line]


def test_collaborative_filtering_beats_the_biases_and_finds_the_clusters(tmp_path):
    out = run_example("collaborative_filtering.py", "--epochs", "8", "--item", "3", cwd=tmp_path)
    baseline, embeddings = _rmses(out)
    assert embeddings < 0.5 * baseline
    shared = int(out.splitlines()[-1].split()[0])
    assert shared >= 8 and "share its hidden cluster" in out  # 2.5 of 10 by chance


def test_collaborative_filtering_reads_a_ratings_file(tmp_path):
    rng = np.random.default_rng(2)
    users, items = rng.standard_normal((200, 2)), rng.standard_normal((60, 2))
    rows = ["user,item,rating"]
    for user in range(200):
        for item in rng.choice(60, 25, replace=False):
            rating = 3 + users[user] @ items[item] + 0.1 * rng.standard_normal()
            rows.append(f"u{user},film-{item},{rating:.3f}")
    path = tmp_path / "ratings.csv"
    path.write_text("\n".join(rows) + "\n")
    out = run_example("collaborative_filtering.py", "--ratings", str(path), "--epochs", "40",
                      "--dim", "4", cwd=tmp_path)
    assert "5,000 ratings of 60 items by 200 users" in out
    baseline, embeddings = _rmses(out)
    assert embeddings < 0.7 * baseline
    assert "items nearest to item film-0 by embedding cosine" in out
    assert sum(line.strip().startswith("item film-") for line in out.splitlines()) == 10
    message = run_example("collaborative_filtering.py", "--ratings", str(path), "--item", "film-99",
                          cwd=tmp_path, returncode=2)
    assert "no item has the id 'film-99'" in message
    path.write_text("user,item,rating\nu1,film-2,good\n")
    message = run_example("collaborative_filtering.py", "--ratings", str(path), cwd=tmp_path,
                          returncode=2)
    assert "cannot read ratings" in message and "line 2" in message


def test_out_of_core_trains_from_a_memmap_larger_than_its_cache(tmp_path):
    out = run_example("out_of_core.py", "--cache-mb", "1", "--epochs", "3", "--threads", "1",
                      cwd=tmp_path)
    written = out.splitlines()[0]
    assert written.startswith("wrote 6145 augmented digits (1.5 MiB) to a memmap file")
    assert "larger than the 1 MiB cache" in written
    accuracy = float(out.split("test accuracy ")[1].split()[0])
    assert accuracy > 0.7  # chance is 0.1
    assert os.listdir(tmp_path) == []  # the file lived in a temporary folder
    message = run_example("out_of_core.py", "--cache-mb", "0", cwd=tmp_path, returncode=2)
    assert "must be a positive number, got 0.0" in message
