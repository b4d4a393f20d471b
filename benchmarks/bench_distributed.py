"""pynn scaled out beside one process: Dask scoring and MPI training (pynn/bench/dist.py).

Run: pytest benchmarks/bench_distributed.py --benchmark-only  (PYNN_BENCH_QUICK=1 for a short run)"""
SUITE = "dist"


def test_suite(bench_case, run_case):
    run_case(bench_case)
