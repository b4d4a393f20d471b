"""pynn's sentence encoder beside sentence-transformers and ONNX Runtime (pynn/bench/text.py).

Run: pytest benchmarks/bench_text.py --benchmark-only  (PYNN_BENCH_QUICK=1 for a short run)"""
SUITE = "text"


def test_suite(bench_case, run_case):
    run_case(bench_case)
