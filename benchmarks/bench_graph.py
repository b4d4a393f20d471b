"""pynn's graph models beside PyTorch eager and beside Sequential (pynn/bench/graph.py).

Run: pytest benchmarks/bench_graph.py --benchmark-only  (PYNN_BENCH_QUICK=1 for a short run)"""
SUITE = "graph"


def test_suite(bench_case, run_case):
    run_case(bench_case)
