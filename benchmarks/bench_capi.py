"""The C API's predict latency beside Python's predict and ONNX Runtime (pynn/bench/capi.py).

Run: pytest benchmarks/bench_capi.py --benchmark-only  (PYNN_BENCH_QUICK=1 for a short run)"""
SUITE = "capi"


def test_suite(bench_case, run_case):
    run_case(bench_case)
