"""What ``import pynn`` costs beyond numpy, from ``python -X importtime``.

Each round starts 7 fresh interpreters that import pynn and reads, from
importtime's report, the cumulative microseconds of ``pynn`` less those of
``numpy`` (imported inside it); the figure is the median of the 7. They read
cached bytecode, as an installed wheel's (pip compiles it) is read: a first
interpreter writes it, whatever PYTHONDONTWRITEBYTECODE says. The target is
under 30 ms on the machines in ARCHITECTURE.md.

Run: pytest benchmarks/bench_startup.py --benchmark-only -s"""
import os
import statistics
import subprocess
import sys

PROCESSES = 7


def cumulative_microseconds(report, module):
    """The cumulative import time of ``module`` in an importtime report."""
    for line in report.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[2].strip() == module and parts[0].startswith("import time:"):
            return int(parts[1])
    raise ValueError(f"{module} is missing from the importtime report:\n{report}")


def import_cost_beyond_numpy():
    """Median over fresh processes of pynn's import time less numpy's, in ms."""
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-c", "import pynn"], env=environment, check=True)
    costs = []
    for _ in range(PROCESSES):
        result = subprocess.run([sys.executable, "-X", "importtime", "-c", "import pynn"],
                                env=environment, capture_output=True, text=True, check=True)
        pynn_us = cumulative_microseconds(result.stderr, "pynn")
        numpy_us = cumulative_microseconds(result.stderr, "numpy")
        costs.append((pynn_us - numpy_us) / 1000)
    return statistics.median(costs)


def test_import_cost_beyond_numpy(benchmark):
    cost = benchmark.pedantic(import_cost_beyond_numpy, rounds=1, iterations=1)
    benchmark.extra_info["import_ms_beyond_numpy"] = cost
    print(f"\nimport pynn beyond numpy: median of {PROCESSES} processes {cost:.1f} ms")
    assert cost > 0
