"""Convolution and pooling over NCHW float32 images (PyTorch's semantics).

Each forward has its backward beside it. Geometry arguments take an int or an
``(h, w)`` pair; the shape helpers here are shared with pynn.layers.conv so a
layer validates once and calls one kernel."""
import math
import sys

import numpy as np

from pynn._checks import as_count, as_float32, check_out
from pynn._kernels import core as kernels


def pair(value, where, name, minimum):
    """An int or an (h, w) pair of ints, each >= minimum, as a tuple."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{where}: {name} must be an int or an (h, w) pair, got {value!r}")
        return (as_count(value[0], where, name, minimum), as_count(value[1], where, name, minimum))
    number = as_count(value, where, name, minimum)
    return (number, number)


def conv_output_shape(where, input_shape, in_channels, out_channels, kernel, stride, padding,
                      dilation, groups):
    """[N, out_channels, OH, OW] for an input of ``input_shape``, or a ValueError
    naming ``where`` and the numbers that do not fit."""
    input_shape = tuple(input_shape)
    if len(input_shape) != 4:
        raise ValueError(f"{where}: x must be 4-D [N, C, H, W], got shape {input_shape}")
    if input_shape[1] != in_channels:
        raise ValueError(f"{where}: x must have in_channels={in_channels} channels (axis 1), "
                         f"got shape {input_shape}")
    if 0 in input_shape[2:]:
        raise ValueError(f"{where}: x must have non-empty H and W, got shape {input_shape}")
    size = []
    for axis, extent in enumerate(input_shape[2:]):
        padded = extent + 2 * padding[axis]
        reach = dilation[axis] * (kernel[axis] - 1) + 1
        if reach > padded:
            raise ValueError(f"{where}: the kernel ({kernel[0]}x{kernel[1]}, dilation "
                             f"{dilation[0]}x{dilation[1]}) spans {reach} along "
                             f"{'HW'[axis]}, more than the padded input's {padded} "
                             f"(x shape {input_shape}, padding {padding})")
        size.append((padded - reach) // stride[axis] + 1)
    shape = (input_shape[0], out_channels, size[0], size[1])
    if math.prod(shape) > sys.maxsize // 4:
        raise ValueError(f"{where}: the output would have shape {shape}, more than any "
                         f"address space holds (x shape {input_shape}, padding {padding})")
    return shape


def _conv_arguments(where, x, weight, stride, padding, dilation, groups):
    weight = as_float32(weight, where, "weight", ndim=4)
    x = as_float32(x, where, "x")
    stride = pair(stride, where, "stride", 1)
    padding = pair(padding, where, "padding", 0)
    dilation = pair(dilation, where, "dilation", 1)
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
    return x, weight, (stride, padding, dilation, groups), shape


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, out=None):
    """y[n, o] = Σ_c weight[o, c] ⋆ x[n, g(o) c] + bias[o] (cross-correlation, as PyTorch).

    x [N, C, H, W], weight [OC, C / groups, KH, KW] → y [N, OC, OH, OW]."""
    x, weight, geometry, shape = _conv_arguments("conv2d", x, weight, stride, padding,
                                                 dilation, groups)
    if bias is not None:
        bias = as_float32(bias, "conv2d", "bias", ndim=1)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"conv2d: bias must have shape ({weight.shape[0]},), got {bias.shape}")
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    else:
        check_out(out, shape, "conv2d", inputs=(x, weight) + ((bias,) if bias is not None else ()))
    return kernels.conv2d_forward(x, weight, bias, out, *geometry)


def conv2d_backward(dy, x, weight, stride=1, padding=0, dilation=1, groups=1):
    """dW_g = Σ_n dY_g X̂_gᵀ,  db = Σ_{n,h,w} dY,  dX = col2im(W_gᵀ dY_g) → (dx, dweight, dbias)."""
    x, weight, geometry, shape = _conv_arguments("conv2d_backward", x, weight, stride, padding,
                                                 dilation, groups)
    dy = as_float32(dy, "conv2d_backward", "dy")
    if dy.shape != shape:
        raise ValueError(f"conv2d_backward: dy must have the output's shape {shape}, got {dy.shape}")
    dx = np.empty(x.shape, dtype=np.float32)
    dweight = np.empty(weight.shape, dtype=np.float32)
    dbias = np.empty(weight.shape[0], dtype=np.float32)
    kernels.conv2d_backward(dy, x, weight, dx, dweight, dbias, *geometry)
    return dx, dweight, dbias


def pool_output_shape(where, input_shape, kernel, stride, padding, dilation, ceil_mode):
    """[N, C, OH, OW] as PyTorch computes it (with ceil_mode the last window
    must start inside the input or its left padding)."""
    input_shape = tuple(input_shape)
    if len(input_shape) != 4:
        raise ValueError(f"{where}: x must be 4-D [N, C, H, W], got shape {input_shape}")
    if 0 in input_shape[2:]:
        raise ValueError(f"{where}: x must have non-empty H and W, got shape {input_shape}")
    size = []
    for axis, extent in enumerate(input_shape[2:]):
        if padding[axis] > kernel[axis] // 2:
            raise ValueError(f"{where}: padding {padding} must be at most half the kernel "
                             f"size {kernel}")
        span = extent + 2 * padding[axis] - dilation[axis] * (kernel[axis] - 1) - 1
        count = (span + (stride[axis] - 1 if ceil_mode else 0)) // stride[axis] + 1
        if ceil_mode and (count - 1) * stride[axis] >= extent + padding[axis]:
            count -= 1
        if count < 1:
            raise ValueError(f"{where}: the window (kernel {kernel}, dilation {dilation}) "
                             f"does not fit the padded input (x shape {input_shape}, padding "
                             f"{padding})")
        size.append(count)
    return input_shape[:2] + (size[0], size[1])


def pool_geometry(where, kernel_size, stride, padding, dilation=1):
    kernel = pair(kernel_size, where, "kernel_size", 1)
    stride = kernel if stride is None else pair(stride, where, "stride", 1)
    return kernel, stride, pair(padding, where, "padding", 0), pair(dilation, where, "dilation", 1)


def _flag(value, where, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{where}: {name} must be True or False, got {type(value).__name__} "
                        f"{value!r}")
    return bool(value)


def _pool_arguments(where, x, kernel_size, stride, padding, dilation, ceil_mode):
    x = as_float32(x, where, "x")
    geometry = pool_geometry(where, kernel_size, stride, padding, dilation)
    shape = pool_output_shape(where, x.shape, *geometry, _flag(ceil_mode, where, "ceil_mode"))
    return x, geometry, shape


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


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, out=None):
    """The maximum of each window (padding counts as -inf)."""
    x, geometry, shape = _pool_arguments("max_pool2d", x, kernel_size, stride, padding, dilation,
                                         ceil_mode)
    return kernels.max_pool2d_forward(x, _pool_out("max_pool2d", out, shape, x), *geometry)


def max_pool2d_backward(dy, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                        out=None):
    """dx[argmax of each window] += dy (the first maximum, as PyTorch on CPU)."""
    where = "max_pool2d_backward"
    x, geometry, shape = _pool_arguments(where, x, kernel_size, stride, padding, dilation,
                                         ceil_mode)
    dy, dx = _pool_gradient(where, dy, x, shape, out)
    return kernels.max_pool2d_backward(dy, x, dx, *geometry)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               out=None):
    """The mean of each window; the divisor counts padding when count_include_pad."""
    x, geometry, shape = _pool_arguments("avg_pool2d", x, kernel_size, stride, padding, 1,
                                         ceil_mode)
    include = _flag(count_include_pad, "avg_pool2d", "count_include_pad")
    return kernels.avg_pool2d_forward(x, _pool_out("avg_pool2d", out, shape, x), *geometry[:3],
                                    include)


def avg_pool2d_backward(dy, x, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True, out=None):
    """dx[window] += dy / divisor."""
    where = "avg_pool2d_backward"
    x, geometry, shape = _pool_arguments(where, x, kernel_size, stride, padding, 1, ceil_mode)
    include = _flag(count_include_pad, where, "count_include_pad")
    dy, dx = _pool_gradient(where, dy, x, shape, out)
    return kernels.avg_pool2d_backward(dy, dx, *geometry[:3], include)


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
