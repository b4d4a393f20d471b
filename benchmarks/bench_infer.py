"""pynn beside its peers in inference: predict latency and throughput (pynn/bench/infer.py).

Run: pytest benchmarks/bench_infer.py --benchmark-only  (PYNN_BENCH_QUICK=1 for a short run)"""
SUITE = "infer"


def test_suite(bench_case, run_case):
    run_case(bench_case)
