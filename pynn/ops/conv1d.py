"""Convolution and pooling over [N, C, L] float32 signals (PyTorch's semantics).

Geometry arguments take an int or a one-element tuple. Each op validates its
arguments, then runs the 2-D kernel (pynn.ops.conv) on views of the signals
as one-row images [N, C, 1, L] with (1, k) windows: no copy, no arithmetic
of its own."""
from pynn.ops.conv import (avg_pool, avg_pool_backward, convolution, convolution_backward,
                           max_pool, max_pool_backward)


def conv1d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, out=None):
    """y[n, o] = Σ_c weight[o, c] ⋆ x[n, g(o) c] + bias[o] (cross-correlation, as PyTorch).

    x [N, C, L], weight [OC, C / groups, K] → y [N, OC, OL]."""
    return convolution("conv1d", 1, x, weight, bias, stride, padding, dilation, groups, out)


def conv1d_backward(dy, x, weight, stride=1, padding=0, dilation=1, groups=1):
    """dW_g = Σ_n dY_g X̂_gᵀ,  db = Σ_{n,l} dY,  dX = col2im(W_gᵀ dY_g)
    → (dx, dweight, dbias)."""
    return convolution_backward("conv1d_backward", 1, dy, x, weight, stride, padding, dilation,
                                groups)


def max_pool1d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, out=None):
    """The maximum of each window (padding counts as -inf)."""
    return max_pool("max_pool1d", 1, x, kernel_size, stride, padding, dilation, ceil_mode, out)


def max_pool1d_backward(dy, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                        out=None):
    """dx[argmax of each window] += dy (the first maximum, as PyTorch on CPU)."""
    return max_pool_backward("max_pool1d_backward", 1, dy, x, kernel_size, stride, padding,
                             dilation, ceil_mode, out)


def avg_pool1d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               out=None):
    """The mean of each window; the divisor counts padding when count_include_pad."""
    return avg_pool("avg_pool1d", 1, x, kernel_size, stride, padding, ceil_mode,
                    count_include_pad, out)


def avg_pool1d_backward(dy, x, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True, out=None):
    """dx[window] += dy / divisor."""
    return avg_pool_backward("avg_pool1d_backward", 1, dy, x, kernel_size, stride, padding,
                             ceil_mode, count_include_pad, out)
