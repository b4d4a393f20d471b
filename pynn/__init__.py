"""pynn: a minimal deep-learning runtime for CPUs."""
try:
    from pynn._kernels import core as _kernels  # noqa: F401
except ImportError as error:  # pragma: no cover - only without a build
    raise ImportError(
        "pynn's compiled kernels are missing or broken; build them with "
        "`pip install -e .` from the source tree"
    ) from error

from pynn._version import __version__
from pynn.config import get_num_threads, set_num_threads, show_config
from pynn import ops
from pynn import init, layers, losses
from pynn import callbacks, optim
from pynn.sequential import Sequential
from pynn import baselines, datasets
from pynn.io import ModelFormatError, load, load_checkpoint, save_checkpoint

__all__ = ["__version__", "get_num_threads", "set_num_threads", "show_config", "ops",
           "baselines", "datasets", "ModelFormatError", "load", "save_checkpoint", "load_checkpoint"]
__all__ += ["Sequential", "optim", "callbacks"]
__all__ += ["init", "layers", "losses"]
