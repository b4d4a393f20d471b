"""`python -m pynn demo` end to end, in a subprocess as a newcomer runs it."""
import os
import subprocess
import sys

import pynn

# The subprocess imports the same pynn as these tests, installed or built in place.
ENVIRONMENT = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(pynn.__file__)))


def test_demo_trains_saves_and_reloads(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "pynn", "demo", "--epochs", "1", "--quiet",
                             "--threads", "1", "--out", str(out)],
                            env=ENVIRONMENT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for name in ("linear baseline", "MLP 64-128-10", "CNN", "predictions identical"):
        assert name in result.stdout
    model_file = out / "best_model.safetensors"
    assert model_file.is_file()
    model = pynn.load(str(model_file))
    x, _ = pynn.datasets.load_digits()
    inputs = x if model[0].__class__.__name__ == "Linear" else x.reshape(-1, 1, 8, 8)
    assert model.predict(inputs).shape == (len(x), 10)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "pip install" in result.stdout
    else:
        assert (out / "training_curves.png").stat().st_size > 0


def test_demo_reports_failure_with_nonzero_exit(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = subprocess.run([sys.executable, "-m", "pynn", "demo", "--epochs", "1", "--quiet",
                             "--out", str(blocker / "sub")],
                            env=ENVIRONMENT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "pynn demo failed" in result.stderr


def test_demo_rejects_bad_options():
    result = subprocess.run([sys.executable, "-m", "pynn", "demo", "--epochs", "0"],
                            env=ENVIRONMENT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--epochs" in result.stderr
