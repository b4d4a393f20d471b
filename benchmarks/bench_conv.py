"""pynn beside PyTorch on convolutional work (pynn/bench/conv.py): LeNet-5
training and inference, a ResNet-like 3x3 convolution, MobileNetV2's depthwise
3x3 convolutions.

Run: pytest benchmarks/bench_conv.py --benchmark-only  (PYNN_BENCH_QUICK=1 for a short run)"""
SUITE = "conv"


def test_suite(bench_case, run_case):
    run_case(bench_case)
