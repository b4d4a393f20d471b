"""Convolution and pooling layers over [N, C, L] signals (contract in base.py):
the 2-D layers' code, on views of the signals as one-row images."""
from pynn.layers.conv import _AvgPool, _Convolution, _MaxPool


class Conv1d(_Convolution):
    """Convolution over [N, C, L]; weight [out_channels, in_channels / groups, kernel_size].
    ``activation`` fuses a following ReLU, as in Conv2d."""
    rank = 1

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, name=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, name)


class MaxPool1d(_MaxPool):
    """The maximum of each window of an [N, C, L] signal."""
    rank = 1

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, name=None):
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode, name=name)


class AvgPool1d(_AvgPool):
    """The mean of each window of an [N, C, L] signal."""
    rank = 1

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, name=None):
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad, name=name)
