"""pytest-benchmark front end over the same cases as ``python -m pynn bench``.

A benchmark module sets ``SUITE = "<name>"`` and defines
``def test_suite(bench_case, benchmark)``; every (case, peer, thread count)
becomes one benchmark, grouped so pynn and its peers on the same inputs sit
together. The pynn benchmark of every case first checks pynn's result against
its float64 reference (``pynn.bench.verify``), so a wrong kernel fails the
run, ``--benchmark-disable`` included. ``PYNN_BENCH_QUICK=1`` selects the
quick shapes."""
import os

import pytest

from pynn import bench


def _thread_counts():
    cores = bench.machine_info()["cores"]
    return sorted({1, cores})


def pytest_generate_tests(metafunc):
    if "bench_case" not in metafunc.fixturenames:
        return
    suite = metafunc.module.SUITE
    quick = bool(os.environ.get("PYNN_BENCH_QUICK"))
    params = []
    for threads in _thread_counts():
        with bench.pinned_threads(threads):
            cases = bench.load_suite(suite).cases(quick=quick, threads=threads)
        for case in cases:
            for peer in case.runners:
                params.append(pytest.param((case, peer, threads),
                                           id=f"{case.name}-t{threads}-{peer}"))
    metafunc.parametrize("bench_case", params)


@pytest.fixture
def run_case(benchmark):
    def run(bench_case):
        case, peer, threads = bench_case
        benchmark.group = f"{case.suite}: {case.name} (threads={threads})"
        benchmark.extra_info.update(peer=peer, threads=threads, work=case.work, unit=case.unit,
                                    repeats=case.repeats)
        with bench.pinned_threads(threads):
            if peer == "pynn":
                bench.verify(case)
            benchmark(case.runners[peer])
    return run
