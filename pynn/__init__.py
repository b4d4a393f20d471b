"""pynn: a minimal deep-learning runtime for CPUs."""
try:
    from pynn._kernels import core as _kernels  # noqa: F401
except ImportError as error:  # pragma: no cover - only without a build
    raise ImportError(
        "pynn's compiled kernels are missing or broken; build them with "
        "`pip install -e .` from the source tree"
    ) from error

# Bottom up, as the modules import one another (one direction, see
# tests/test_imports.py). io, training and distributed install the hooks
# through which Sequential.save/fit, pickling and fit(comm=...) reach them
# (pynn/_hooks.py), so they are imported here even where no name is taken.
from pynn._version import __version__
from pynn.config import get_num_threads, set_num_threads, show_config
from pynn import datasets
from pynn import ops
from pynn import init, layers, losses
from pynn.layers.symbolic import Input
from pynn.sequential import Sequential
from pynn.model import Model
from pynn import optim
from pynn import io
from pynn.io import ModelFormatError, load, load_checkpoint, save_checkpoint
from pynn import callbacks, training
from pynn import baselines
from pynn import distributed
from pynn import onnx  # imports the onnx package only when called

__all__ = ["__version__", "get_num_threads", "set_num_threads", "show_config", "ops",
           "baselines", "datasets", "ModelFormatError", "load", "save_checkpoint", "load_checkpoint"]
__all__ += ["Sequential", "Input", "Model", "optim", "callbacks"]
__all__ += ["init", "layers", "losses", "onnx"]
