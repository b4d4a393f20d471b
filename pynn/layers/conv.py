"""Convolution and pooling layers over NCHW images (contract in base.py).

The private bases here serve the 1-D layers too (pynn/layers/conv1d.py):
their kernels are the 2-D ones, which see [N, C, L] signals as one-row
images [N, C, 1, L] (pynn.ops.conv.planar)."""
import math

import numpy as np

from pynn import init
from pynn._checks import as_count, as_float32, empty_float32
from pynn._kernels import core as kernels
from pynn.layers.base import Layer
from pynn.ops.conv import (_flag, adaptive_output_shape, adaptive_output_size,
                           check_pool_padding, conv_output_shape, planar, planar_geometry,
                           planar_window, pool_geometry, pool_output_shape, sizes)


class _Convolution(Layer):
    """y = weight ⋆ x + bias over ``rank`` spatial axes; weight [out_channels,
    in_channels / groups, *kernel_size].

    ``activation`` (None or "relu") fuses a following ReLU into the GEMM's
    epilogue, as ``Linear.activation``: backward then expects dL/d(relu output)."""
    rank = 2

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                 bias, name):
        super().__init__(name=name)
        where, rank = type(self).__name__, self.rank
        self.in_channels = as_count(in_channels, where, "in_channels")
        self.out_channels = as_count(out_channels, where, "out_channels")
        self.kernel_size = sizes(kernel_size, rank, where, "kernel_size", 1)
        self.stride = sizes(stride, rank, where, "stride", 1)
        self.padding = sizes(padding, rank, where, "padding", 0)
        self.dilation = sizes(dilation, rank, where, "dilation", 1)
        self.groups = as_count(groups, where, "groups")
        for argument, channels in (("in_channels", self.in_channels),
                                   ("out_channels", self.out_channels)):
            if channels % self.groups:
                raise ValueError(f"{where}: groups={self.groups} must divide {argument}={channels}")
        _flag(bias, where, "bias")
        self.activation = None
        weight = empty_float32((self.out_channels, self.in_channels // self.groups)
                               + self.kernel_size, where, "weight")
        # PyTorch's default: kaiming_uniform(a=√5), i.e. U(±1/√fan_in), for both tensors
        init.kaiming_uniform_(weight, a=math.sqrt(5))
        self.params["weight"] = weight
        self.grads["weight"] = np.zeros_like(weight)
        if bias:
            bound = 1.0 / math.sqrt(weight[0].size)
            self.params["bias"] = init.uniform_(np.empty(self.out_channels, np.float32),
                                                -bound, bound)
            self.grads["bias"] = np.zeros(self.out_channels, dtype=np.float32)
        self._geometry = planar_geometry(rank, self.stride, self.padding, self.dilation) + (
            self.groups,)
        self._x = self._y = None

    def config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding), "dilation": list(self.dilation),
                "groups": self.groups, "bias": "bias" in self.params}

    def output_shape(self, input_shape):
        return conv_output_shape(type(self).__name__, input_shape, self.in_channels,
                                 self.out_channels, self.kernel_size, self.stride, self.padding,
                                 self.dilation, self.groups)

    def check_input(self, x):
        x = as_float32(x, type(self).__name__, "x")
        self.output_shape(x.shape)
        return x

    def infer(self, x, out):
        # no workspace: the kernel allocates its own scratch, so threads never share one
        kernels.conv2d_forward(planar(x), planar(self.params["weight"]), self.params.get("bias"),
                               planar(out), *self._geometry, self.activation == "relu")
        return out

    def kernel_step(self, input_shape):
        weight = planar(self.params["weight"])  # a Conv1d's as a one-row kernel
        return ("conv", (weight, self.params.get("bias"), self.activation == "relu", *self._geometry),
                ((self.params, "weight"), (self.params, "bias")))

    def _scratch(self, x):
        size = kernels.conv2d_workspace_size(planar(x).shape, planar(self.params["weight"]).shape,
                                             *self._geometry)
        return self.workspace("unfolded", (size,))

    def _forward_training(self, x, out):
        """As ``infer``, with the unfolded input in a layer-owned workspace."""
        self._x = x
        kernels.conv2d_forward(planar(x), planar(self.params["weight"]), self.params.get("bias"),
                               planar(out), *self._geometry, self.activation == "relu",
                               self._scratch(x))
        self._y = out
        return out

    def backward(self, dy, input_grad=True):
        """dZ = dY (masked by y > 0 with a fused ReLU),  dW_g = Σ_n dZ_g X̂_gᵀ,
        db = Σ_n,spatial dZ,  dX = col2im(W_gᵀ dZ_g)."""
        x, y = self._kept("_x"), self._kept("_y")
        dy = self._checked_dy(dy, y.shape)
        if self.activation == "relu":
            dy = kernels.elementwise("relu_backward", dy, y, self.workspace("dz", y.shape))
        trainable = self.trainable
        dweight = self.grads["weight"] if trainable else None
        dbias = self.grads.get("bias") if trainable else None
        dx = self.workspace("dx", x.shape) if input_grad else None
        if dx is not None or dweight is not None or dbias is not None:
            kernels.conv2d_backward(planar(dy), planar(x), planar(self.params["weight"]),
                                    None if dx is None else planar(dx),
                                    None if dweight is None else planar(dweight), dbias,
                                    *self._geometry, self._scratch(x))
        return dx


class Conv2d(_Convolution):
    """Convolution over NCHW images; weight [out_channels, in_channels / groups, kh, kw]."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, name=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, name)


class _Pool(Layer):
    """Shared by the window pools: geometry, validation, the training buffers."""
    rank = 2

    def __init__(self, kernel_size, stride, padding, dilation, ceil_mode, name=None):
        super().__init__(name=name)
        where = type(self).__name__
        self.kernel_size, self.stride, self.padding, self.dilation = pool_geometry(
            where, kernel_size, stride, padding, dilation, self.rank)
        self.ceil_mode = _flag(ceil_mode, where, "ceil_mode")
        check_pool_padding(where, self.kernel_size, self.padding)
        self._window = planar_window(self.kernel_size, self.stride, self.padding, self.dilation)
        self._x = None

    def output_shape(self, input_shape):
        return pool_output_shape(type(self).__name__, input_shape, self.kernel_size, self.stride,
                                 self.padding, self.dilation, self.ceil_mode)

    def check_input(self, x):
        x = as_float32(x, type(self).__name__, "x")
        self.output_shape(x.shape)
        return x

    def _pool_step(self, kind, input_shape, count_include_pad):
        """The plan's pooling step, on ``input_shape`` seen as [N, C, H, W]."""
        shape = tuple(input_shape)
        lead = (1,) * (4 - len(shape))
        out_hw = lead + tuple(self.output_shape(shape)[2:])
        window = self._window if kind == "max_pool" else self._window[:3] + ((1, 1),)
        return kind, (shape[:2] + lead + shape[2:], out_hw, window, count_include_pad), ()

    def _gradient_arguments(self, dy):
        x = self._kept("_x")
        return self._checked_dy(dy, self.output_shape(x.shape)), x, self.workspace("dx", x.shape)


class _MaxPool(_Pool):
    """The maximum of each window; backward routes dy to the first maximum."""

    def config(self):
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding), "dilation": list(self.dilation),
                "ceil_mode": self.ceil_mode}

    def kernel_step(self, input_shape):
        return self._pool_step("max_pool", input_shape, False)

    def infer(self, x, out):
        kernels.max_pool2d_forward(planar(x), planar(out), *self._window)
        return out

    def _forward_training(self, x, out):
        """As ``infer``, also writing each window's arg-max for backward."""
        self._x = x
        self._argmax = self.workspace("argmax", out.shape, np.int64)
        kernels.max_pool2d_forward(planar(x), planar(out), *self._window, planar(self._argmax))
        return out

    def backward(self, dy, input_grad=True):
        """dx[argmax of each window] += dy, from the arg-maxima the forward saved."""
        dy, x, dx = self._gradient_arguments(dy)
        if not input_grad:
            return None
        kernels.max_pool2d_scatter(planar(dy), planar(self._argmax), planar(dx), *self._window)
        return dx


class MaxPool2d(_MaxPool):
    """The maximum of each window of an NCHW image."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, name=None):
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode, name=name)


class _AvgPool(_Pool):
    """The mean of each window (the divisor counts padding when count_include_pad)."""

    def __init__(self, kernel_size, stride, padding, ceil_mode, count_include_pad, name=None):
        super().__init__(kernel_size, stride, padding, 1, ceil_mode, name=name)
        self.count_include_pad = _flag(count_include_pad, type(self).__name__,
                                       "count_include_pad")

    def config(self):
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding), "ceil_mode": self.ceil_mode,
                "count_include_pad": self.count_include_pad}

    def kernel_step(self, input_shape):
        return self._pool_step("avg_pool", input_shape, self.count_include_pad)

    def infer(self, x, out):
        kernels.avg_pool2d_forward(planar(x), planar(out), *self._window[:3],
                                   self.count_include_pad)
        return out

    def backward(self, dy, input_grad=True):
        dy, x, dx = self._gradient_arguments(dy)
        if not input_grad:
            return None
        kernels.avg_pool2d_backward(planar(dy), planar(dx), *self._window[:3],
                                    self.count_include_pad)
        return dx


class AvgPool2d(_AvgPool):
    """The mean of each window of an NCHW image."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, name=None):
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad, name=name)


class GlobalAvgPool2d(Layer):
    """[N, C, H, W] → [N, C], the mean of every plane (ready for a Linear)."""

    def __init__(self, name=None):
        super().__init__(name=name)
        self._input_shape = None

    def output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != 4 or 0 in input_shape[2:]:
            raise ValueError(f"GlobalAvgPool2d: x must be 4-D [N, C, H, W] with H, W >= 1, "
                             f"got shape {input_shape}")
        return input_shape[:2]

    def check_input(self, x):
        x = as_float32(x, "GlobalAvgPool2d", "x")
        self.output_shape(x.shape)
        return x

    def kernel_step(self, input_shape):
        planes, size = input_shape[0] * input_shape[1], input_shape[2] * input_shape[3]
        return ("mean", (planes, size), ()) if size else None

    def infer(self, x, out):
        return kernels.global_avg_pool2d_forward(x, out)

    def _forward_training(self, x, out):
        self._input_shape = x.shape
        return self.infer(x, out)

    def backward(self, dy, input_grad=True):
        shape = self._kept("_input_shape")
        dy = self._checked_dy(dy, shape[:2])
        if not input_grad:
            return None
        return kernels.global_avg_pool2d_backward(dy, self.workspace("dx", shape))


class AdaptiveAvgPool2d(Layer):
    """[N, C, H, W] → [N, C, OH, OW], the mean of each adaptive window
    (pynn.ops.adaptive_avg_pool2d). ``output_size`` is an int or an (h, w)
    pair; a None entry keeps the input's size along that axis."""

    def __init__(self, output_size, name=None):
        super().__init__(name=name)
        self._size = adaptive_output_size(output_size, "AdaptiveAvgPool2d")
        self.output_size = self._size if isinstance(output_size, (tuple, list)) else self._size[0]
        self._input_shape = None

    def config(self):
        size = self.output_size
        return {"output_size": list(size) if isinstance(size, tuple) else size}

    def output_shape(self, input_shape):
        return adaptive_output_shape("AdaptiveAvgPool2d", input_shape, self._size)

    def check_input(self, x):
        x = as_float32(x, "AdaptiveAvgPool2d", "x")
        self.output_shape(x.shape)
        return x

    def kernel_step(self, input_shape):
        planes, height, width = input_shape[0] * input_shape[1], input_shape[2], input_shape[3]
        out_h, out_w = self.output_shape(input_shape)[2:]
        return "adaptive_pool", (planes, height, width, out_h, out_w), ()

    def infer(self, x, out):
        return kernels.adaptive_avg_pool2d_forward(x, out)

    def _forward_training(self, x, out):
        self._input_shape = x.shape
        return self.infer(x, out)

    def backward(self, dy, input_grad=True):
        shape = self._kept("_input_shape")
        dy = self._checked_dy(dy, self.output_shape(shape))
        if not input_grad:
            return None
        return kernels.adaptive_avg_pool2d_backward(dy, self.workspace("dx", shape))
