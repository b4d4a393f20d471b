"""Two Python threads predicting at once beside the same work done serially,
one kernel thread each: evidence that the kernels release the GIL
(pynn/bench/threads.py).

Run: pytest benchmarks/bench_threads.py --benchmark-only"""
SUITE = "threads"


def test_suite(bench_case, run_case):
    run_case(bench_case)
