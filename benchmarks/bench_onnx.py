"""Models imported from ONNX files run by pynn beside ONNX Runtime on the same file (pynn/bench/onnx.py).

Run: pytest benchmarks/bench_onnx.py --benchmark-only  (PYNN_BENCH_QUICK=1 for a short run)"""
SUITE = "onnx"


def test_suite(bench_case, run_case):
    run_case(bench_case)
