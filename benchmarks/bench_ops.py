"""Activations, softmax cross-entropy and linear beside numpy and PyTorch (pynn/bench/ops.py).

Run: pytest benchmarks/bench_ops.py --benchmark-only  (PYNN_BENCH_QUICK=1 for a short run)"""
SUITE = "ops"


def test_suite(bench_case, run_case):
    run_case(bench_case)
