"""Convolution and pooling over NCHW float32 images (PyTorch's semantics).

Each forward has its backward beside it. Geometry arguments take an int or an
``(h, w)`` pair; the shape helpers here are shared with pynn.layers.conv so a
layer validates once and calls one kernel. They also serve the 1-D ops
(pynn.ops.conv1d), whose [N, C, L] signals the kernels see as one-row images
[N, C, 1, L] (``planar``): ``rank`` is the number of spatial axes."""
import math
import sys

import numpy as np

from pynn._checks import as_count, as_float32, check_out
from pynn._kernels import core as kernels

# per rank: x's layout, the names of its spatial axes, and how to name them together
_LAYOUT = {1: ("3-D [N, C, L]", "L", "L"), 2: ("4-D [N, C, H, W]", "HW", "H and W")}


def sizes(value, rank, where, name, minimum):
    """An int, or a tuple or list of ``rank`` ints (an (h, w) pair in 2-D), each
    >= minimum, as a tuple of ``rank`` ints."""
    if isinstance(value, (tuple, list)):
        if len(value) != rank:
            form = "an (h, w) pair" if rank == 2 else f"a tuple of {rank}"
            raise ValueError(f"{where}: {name} must be an int or {form}, got {value!r}")
        return tuple(as_count(item, where, name, minimum) for item in value)
    return (as_count(value, where, name, minimum),) * rank


def planar(array):
    """A view of an [N, C, L] array as [N, C, 1, L]; a 4-D array as it is."""
    return array if array.ndim == 4 else array.reshape(array.shape[:2] + (1,) + array.shape[2:])


def planar_geometry(rank, stride, padding, dilation):
    """The 2-D kernels' (stride, padding, dilation) pairs for ``rank`` spatial axes."""
    lead = 2 - rank
    return (1,) * lead + stride, (0,) * lead + padding, (1,) * lead + dilation


def _shown(values):
    """A geometry tuple as messages show it: an int in 1-D, the tuple in 2-D."""
    return values[0] if len(values) == 1 else values


def _spatial_shape(where, input_shape, rank):
    input_shape = tuple(input_shape)
    layout, _, together = _LAYOUT[rank]
    if len(input_shape) != 2 + rank:
        raise ValueError(f"{where}: x must be {layout}, got shape {input_shape}")
    if 0 in input_shape[2:]:
        raise ValueError(f"{where}: x must have non-empty {together}, got shape {input_shape}")
    return input_shape


def _within_address_space(where, shape, arguments):
    if math.prod(shape) > sys.maxsize // 4:
        raise ValueError(f"{where}: the output would have shape {shape}, more than any "
                         f"address space holds ({arguments})")
    return shape


def conv_output_shape(where, input_shape, in_channels, out_channels, kernel, stride, padding,
                      dilation, groups):
    """[N, out_channels, *spatial] for an input of ``input_shape`` (as many spatial
    axes as ``kernel`` has), or a ValueError naming ``where`` and the numbers
    that do not fit."""
    rank = len(kernel)
    input_shape = _spatial_shape(where, input_shape, rank)
    if input_shape[1] != in_channels:
        raise ValueError(f"{where}: x must have in_channels={in_channels} channels (axis 1), "
                         f"got shape {input_shape}")
    size = []
    for axis, extent in enumerate(input_shape[2:]):
        padded = extent + 2 * padding[axis]
        reach = dilation[axis] * (kernel[axis] - 1) + 1
        if reach > padded:
            raise ValueError(f"{where}: the kernel ({'x'.join(map(str, kernel))}, dilation "
                             f"{'x'.join(map(str, dilation))}) spans {reach} along "
                             f"{_LAYOUT[rank][1][axis]}, more than the padded input's {padded} "
                             f"(x shape {input_shape}, padding {_shown(padding)})")
        size.append((padded - reach) // stride[axis] + 1)
    return _within_address_space(where, (input_shape[0], out_channels) + tuple(size),
                                 f"x shape {input_shape}, padding {_shown(padding)}")


def _conv_arguments(where, rank, x, weight, stride, padding, dilation, groups):
    """Validated x, weight, the kernels' planar geometry and the output shape."""
    weight = as_float32(weight, where, "weight", ndim=2 + rank)
    x = as_float32(x, where, "x")
    stride = sizes(stride, rank, where, "stride", 1)
    padding = sizes(padding, rank, where, "padding", 0)
    dilation = sizes(dilation, rank, where, "dilation", 1)
    out_channels = weight.shape[0]
    groups = as_count(groups, where, "groups")
    in_channels = weight.shape[1] * groups
    if out_channels % groups:
        raise ValueError(f"{where}: groups={groups} must divide out_channels={out_channels} "
                         f"(weight {weight.shape})")
    if 0 in weight.shape:
        raise ValueError(f"{where}: weight must not be empty, got shape {weight.shape}")
    shape = conv_output_shape(where, x.shape, in_channels, out_channels, weight.shape[2:],
                              stride, padding, dilation, groups)
    return x, weight, planar_geometry(rank, stride, padding, dilation) + (groups,), shape


def convolution(where, rank, x, weight, bias, stride, padding, dilation, groups, out):
    """conv1d and conv2d: validation, then the 2-D kernel on planar views."""
    x, weight, geometry, shape = _conv_arguments(where, rank, x, weight, stride, padding,
                                                 dilation, groups)
    if bias is not None:
        bias = as_float32(bias, where, "bias", ndim=1)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"{where}: bias must have shape ({weight.shape[0]},), "
                             f"got {bias.shape}")
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    else:
        check_out(out, shape, where, inputs=(x, weight) + ((bias,) if bias is not None else ()))
    kernels.conv2d_forward(planar(x), planar(weight), bias, planar(out), *geometry)
    return out


def convolution_backward(where, rank, dy, x, weight, stride, padding, dilation, groups):
    """conv1d_backward and conv2d_backward → (dx, dweight, dbias)."""
    x, weight, geometry, shape = _conv_arguments(where, rank, x, weight, stride, padding,
                                                 dilation, groups)
    dy = as_float32(dy, where, "dy")
    if dy.shape != shape:
        raise ValueError(f"{where}: dy must have the output's shape {shape}, got {dy.shape}")
    dx = np.empty(x.shape, dtype=np.float32)
    dweight = np.empty(weight.shape, dtype=np.float32)
    dbias = np.empty(weight.shape[0], dtype=np.float32)
    kernels.conv2d_backward(planar(dy), planar(x), planar(weight), planar(dx), planar(dweight),
                            dbias, *geometry)
    return dx, dweight, dbias


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, out=None):
    """y[n, o] = Σ_c weight[o, c] ⋆ x[n, g(o) c] + bias[o] (cross-correlation, as PyTorch).

    x [N, C, H, W], weight [OC, C / groups, KH, KW] → y [N, OC, OH, OW]."""
    return convolution("conv2d", 2, x, weight, bias, stride, padding, dilation, groups, out)


def conv2d_backward(dy, x, weight, stride=1, padding=0, dilation=1, groups=1):
    """dW_g = Σ_n dY_g X̂_gᵀ,  db = Σ_{n,h,w} dY,  dX = col2im(W_gᵀ dY_g) → (dx, dweight, dbias)."""
    return convolution_backward("conv2d_backward", 2, dy, x, weight, stride, padding, dilation,
                                groups)


def check_pool_padding(where, kernel, padding):
    """Padding beyond half the kernel is refused, as PyTorch refuses it."""
    if any(pad > size // 2 for size, pad in zip(kernel, padding)):
        raise ValueError(f"{where}: padding {_shown(padding)} must be at most half the kernel "
                         f"size {_shown(kernel)}")


def pool_output_shape(where, input_shape, kernel, stride, padding, dilation, ceil_mode):
    """[N, C, *spatial] as PyTorch computes it (with ceil_mode the last window
    must start inside the input or its left padding)."""
    rank = len(kernel)
    input_shape = _spatial_shape(where, input_shape, rank)
    size = []
    check_pool_padding(where, kernel, padding)
    for axis, extent in enumerate(input_shape[2:]):
        span = extent + 2 * padding[axis] - dilation[axis] * (kernel[axis] - 1) - 1
        count = (span + (stride[axis] - 1 if ceil_mode else 0)) // stride[axis] + 1
        if ceil_mode and (count - 1) * stride[axis] >= extent + padding[axis]:
            count -= 1
        if count < 1:
            raise ValueError(f"{where}: the window (kernel {_shown(kernel)}, dilation "
                             f"{_shown(dilation)}) does not fit the padded input (x shape "
                             f"{input_shape}, padding {_shown(padding)})")
        size.append(count)
    return input_shape[:2] + tuple(size)


def pool_geometry(where, kernel_size, stride, padding, dilation=1, rank=2):
    """(kernel, stride, padding, dilation), each a tuple of ``rank`` ints."""
    kernel = sizes(kernel_size, rank, where, "kernel_size", 1)
    stride = kernel if stride is None else sizes(stride, rank, where, "stride", 1)
    return (kernel, stride, sizes(padding, rank, where, "padding", 0),
            sizes(dilation, rank, where, "dilation", 1))


def planar_window(kernel, stride, padding, dilation):
    """The 2-D pooling kernels' (kernel, stride, padding, dilation) pairs."""
    rank = len(kernel)
    return ((1,) * (2 - rank) + kernel,) + planar_geometry(rank, stride, padding, dilation)


def _flag(value, where, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{where}: {name} must be True or False, got {type(value).__name__} "
                        f"{value!r}")
    return bool(value)


def _pool_arguments(where, rank, x, kernel_size, stride, padding, dilation, ceil_mode):
    """Validated x, the kernels' planar window and the output shape."""
    x = as_float32(x, where, "x")
    geometry = pool_geometry(where, kernel_size, stride, padding, dilation, rank)
    shape = pool_output_shape(where, x.shape, *geometry, _flag(ceil_mode, where, "ceil_mode"))
    return x, planar_window(*geometry), shape


def _pool_gradient(where, dy, x, shape, out):
    dy = as_float32(dy, where, "dy")
    if dy.shape != shape:
        raise ValueError(f"{where}: dy must have the output's shape {shape}, got {dy.shape}")
    if out is None:
        return dy, np.empty(x.shape, dtype=np.float32)
    return dy, check_out(out, x.shape, where, inputs=(dy, x))


def _pool_out(where, out, shape, x):
    if out is None:
        return np.empty(shape, dtype=np.float32)
    return check_out(out, shape, where, inputs=(x,))


def max_pool(where, rank, x, kernel_size, stride, padding, dilation, ceil_mode, out):
    """max_pool1d and max_pool2d: validation, then the 2-D kernel on planar views."""
    x, window, shape = _pool_arguments(where, rank, x, kernel_size, stride, padding, dilation,
                                       ceil_mode)
    out = _pool_out(where, out, shape, x)
    kernels.max_pool2d_forward(planar(x), planar(out), *window)
    return out


def max_pool_backward(where, rank, dy, x, kernel_size, stride, padding, dilation, ceil_mode, out):
    x, window, shape = _pool_arguments(where, rank, x, kernel_size, stride, padding, dilation,
                                       ceil_mode)
    dy, dx = _pool_gradient(where, dy, x, shape, out)
    kernels.max_pool2d_backward(planar(dy), planar(x), planar(dx), *window)
    return dx


def avg_pool(where, rank, x, kernel_size, stride, padding, ceil_mode, count_include_pad, out):
    """avg_pool1d and avg_pool2d: validation, then the 2-D kernel on planar views."""
    x, window, shape = _pool_arguments(where, rank, x, kernel_size, stride, padding, 1, ceil_mode)
    include = _flag(count_include_pad, where, "count_include_pad")
    out = _pool_out(where, out, shape, x)
    kernels.avg_pool2d_forward(planar(x), planar(out), *window[:3], include)
    return out


def avg_pool_backward(where, rank, dy, x, kernel_size, stride, padding, ceil_mode,
                      count_include_pad, out):
    x, window, shape = _pool_arguments(where, rank, x, kernel_size, stride, padding, 1, ceil_mode)
    include = _flag(count_include_pad, where, "count_include_pad")
    dy, dx = _pool_gradient(where, dy, x, shape, out)
    kernels.avg_pool2d_backward(planar(dy), planar(dx), *window[:3], include)
    return dx


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, out=None):
    """The maximum of each window (padding counts as -inf)."""
    return max_pool("max_pool2d", 2, x, kernel_size, stride, padding, dilation, ceil_mode, out)


def max_pool2d_backward(dy, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                        out=None):
    """dx[argmax of each window] += dy (the first maximum, as PyTorch on CPU)."""
    return max_pool_backward("max_pool2d_backward", 2, dy, x, kernel_size, stride, padding,
                             dilation, ceil_mode, out)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               out=None):
    """The mean of each window; the divisor counts padding when count_include_pad."""
    return avg_pool("avg_pool2d", 2, x, kernel_size, stride, padding, ceil_mode,
                    count_include_pad, out)


def avg_pool2d_backward(dy, x, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True, out=None):
    """dx[window] += dy / divisor."""
    return avg_pool_backward("avg_pool2d_backward", 2, dy, x, kernel_size, stride, padding,
                             ceil_mode, count_include_pad, out)


def _global_shape(where, x):
    x = as_float32(x, where, "x", ndim=4)
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"{where}: x must have non-empty H and W, got shape {x.shape}")
    return x


def global_avg_pool2d(x, out=None):
    """[N, C, H, W] → [N, C]: the mean of every plane."""
    x = _global_shape("global_avg_pool2d", x)
    return kernels.global_avg_pool2d_forward(x, _pool_out("global_avg_pool2d", out, x.shape[:2], x))


def global_avg_pool2d_backward(dy, x, out=None):
    """dx[n, c, :, :] = dy[n, c] / (H W)."""
    where = "global_avg_pool2d_backward"
    x = _global_shape(where, x)
    dy, dx = _pool_gradient(where, dy, x, x.shape[:2], out)
    return kernels.global_avg_pool2d_backward(dy, dx)


def adaptive_output_size(output_size, where):
    """``output_size`` as an (h, w) pair of sizes >= 0, where None keeps the input's."""
    if isinstance(output_size, (tuple, list)):
        if len(output_size) != 2:
            raise ValueError(f"{where}: output_size must be an int or an (h, w) pair (None "
                             f"keeps that size), got {output_size!r}")
        return tuple(None if item is None else as_count(item, where, "output_size", 0)
                     for item in output_size)
    return (as_count(output_size, where, "output_size", 0),) * 2


def adaptive_output_shape(where, input_shape, output_size):
    """[N, C, OH, OW] of an adaptive pool to ``output_size`` (an adaptive_output_size pair)."""
    input_shape = _spatial_shape(where, input_shape, 2)
    size = tuple(extent if wanted is None else wanted
                 for wanted, extent in zip(output_size, input_shape[2:]))
    if max(size[0] * input_shape[2], size[1] * input_shape[3]) > sys.maxsize // 4:
        raise ValueError(f"{where}: output_size {size} is too large for x shape {input_shape}")
    return _within_address_space(where, input_shape[:2] + size,
                                 f"x shape {input_shape}, output_size {output_size}")


def _adaptive_arguments(where, x, output_size):
    x = as_float32(x, where, "x")
    return x, adaptive_output_shape(where, x.shape, adaptive_output_size(output_size, where))


def adaptive_avg_pool2d(x, output_size, out=None):
    """[N, C, H, W] → [N, C, OH, OW]: output row i averages input rows
    [⌊i H / OH⌋, ⌈(i + 1) H / OH⌉), likewise columns (PyTorch's windows); a
    1 x 1 output holds global_avg_pool2d's values."""
    x, shape = _adaptive_arguments("adaptive_avg_pool2d", x, output_size)
    return kernels.adaptive_avg_pool2d_forward(x, _pool_out("adaptive_avg_pool2d", out, shape, x))


def adaptive_avg_pool2d_backward(dy, x, output_size, out=None):
    """dx[window] += dy / (window size), over every adaptive window."""
    where = "adaptive_avg_pool2d_backward"
    x, shape = _adaptive_arguments(where, x, output_size)
    dy, dx = _pool_gradient(where, dy, x, shape, out)
    return kernels.adaptive_avg_pool2d_backward(dy, dx)
