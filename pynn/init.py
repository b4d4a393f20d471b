"""Weight initialisation, as ``torch.nn.init``.

Every function fills a float32 array in place and returns it, drawing from
the ``numpy.random.Generator`` it is given. Without one it draws from the
process-wide generator that layers use for their default initialisation
(PyTorch's global RNG); ``manual_seed`` reseeds it, so a seeded script builds
the same layers every run."""
import math

import numpy as np

# Made on first use: importing numpy.random costs more than the rest of pynn's
# Python, and a process that only loads a model and predicts never draws.
_generator = None


def manual_seed(seed):
    """Reseed the generator behind default initialisation (``torch.manual_seed``)."""
    global _generator
    _generator = np.random.default_rng(seed)


def default_generator():
    global _generator
    if _generator is None:
        _generator = np.random.default_rng()
    return _generator


def _target(tensor, where):
    if not isinstance(tensor, np.ndarray) or tensor.dtype != np.float32:
        shown = tensor.dtype if isinstance(tensor, np.ndarray) else type(tensor).__name__
        raise TypeError(f"{where}: tensor must be a float32 numpy array, got {shown}")
    if not tensor.flags.writeable:
        raise ValueError(f"{where}: tensor must be writable")
    return tensor


def _generator_for(generator, where):
    if generator is None:
        return default_generator()
    if not isinstance(generator, np.random.Generator):
        raise TypeError(f"{where}: generator must be a numpy.random.Generator, "
                        f"got {type(generator).__name__}")
    return generator


def _fans(tensor, where):
    """(fan_in, fan_out) as PyTorch: dims 1 and 0 times the receptive field."""
    if tensor.ndim < 2:
        raise ValueError(f"{where}: fan in and fan out need a tensor of at least 2 dimensions, "
                         f"got shape {tensor.shape}")
    receptive = math.prod(tensor.shape[2:])
    return tensor.shape[1] * receptive, tensor.shape[0] * receptive


def calculate_gain(nonlinearity, param=None):
    """The recommended gain for ``nonlinearity`` (torch.nn.init.calculate_gain)."""
    if nonlinearity in ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
                        "conv_transpose2d", "conv_transpose3d", "sigmoid"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3.0
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        if isinstance(slope, bool) or not isinstance(slope, (int, float)):
            raise ValueError(f"calculate_gain: negative slope {slope!r} is not a number")
        return math.sqrt(2.0 / (1.0 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4.0
    raise ValueError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}")


def uniform_(tensor, a=0.0, b=1.0, generator=None):
    """Fill with U(a, b)."""
    tensor = _target(tensor, "uniform_")
    tensor[...] = _generator_for(generator, "uniform_").uniform(a, b, tensor.shape)
    return tensor


def normal_(tensor, mean=0.0, std=1.0, generator=None):
    """Fill with N(mean, std²)."""
    tensor = _target(tensor, "normal_")
    tensor[...] = _generator_for(generator, "normal_").normal(mean, std, tensor.shape)
    return tensor


def zeros_(tensor):
    _target(tensor, "zeros_")[...] = 0.0
    return tensor


def _kaiming_std(tensor, a, mode, nonlinearity, where):
    fan_in, fan_out = _fans(tensor, where)
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f'{where}: mode must be "fan_in" or "fan_out", got {mode!r}')
    fan = fan_in if mode == "fan_in" else fan_out
    if fan == 0:
        raise ValueError(f"{where}: cannot initialise a tensor with a zero {mode} "
                         f"(shape {tensor.shape})")
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)


def kaiming_uniform_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """U(-bound, bound) with bound = gain · √(3 / fan) (He et al., 2015)."""
    tensor = _target(tensor, "kaiming_uniform_")
    bound = math.sqrt(3.0) * _kaiming_std(tensor, a, mode, nonlinearity, "kaiming_uniform_")
    return uniform_(tensor, -bound, bound, generator)


def kaiming_normal_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """N(0, std²) with std = gain / √fan."""
    tensor = _target(tensor, "kaiming_normal_")
    return normal_(tensor, 0.0, _kaiming_std(tensor, a, mode, nonlinearity, "kaiming_normal_"),
                   generator)


def _xavier_std(tensor, gain, where):
    fan_in, fan_out = _fans(tensor, where)
    if fan_in + fan_out == 0:
        raise ValueError(f"{where}: cannot initialise an empty tensor of shape {tensor.shape}")
    return gain * math.sqrt(2.0 / (fan_in + fan_out))


def xavier_uniform_(tensor, gain=1.0, generator=None):
    """U(-bound, bound) with bound = gain · √(6 / (fan_in + fan_out)) (Glorot & Bengio, 2010)."""
    tensor = _target(tensor, "xavier_uniform_")
    bound = math.sqrt(3.0) * _xavier_std(tensor, gain, "xavier_uniform_")
    return uniform_(tensor, -bound, bound, generator)


def xavier_normal_(tensor, gain=1.0, generator=None):
    """N(0, std²) with std = gain · √(2 / (fan_in + fan_out))."""
    tensor = _target(tensor, "xavier_normal_")
    return normal_(tensor, 0.0, _xavier_std(tensor, gain, "xavier_normal_"), generator)
