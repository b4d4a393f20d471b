"""pynn beside its peers in training: samples/s of an MLP (pynn/bench/train.py).

Run: pytest benchmarks/bench_train.py --benchmark-only  (PYNN_BENCH_QUICK=1 for a short run)"""
SUITE = "train"


def test_suite(bench_case, run_case):
    run_case(bench_case)
