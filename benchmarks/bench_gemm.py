"""GEMM beside numpy and PyTorch: squares and an MLP's products (pynn/bench/gemm.py).

Run: pytest benchmarks/bench_gemm.py --benchmark-only  (PYNN_BENCH_QUICK=1 for a short run)"""
SUITE = "gemm"


def test_suite(bench_case, run_case):
    run_case(bench_case)
