"""The benchmark harness: timing, tables, the command line."""
import json
import subprocess
import sys
import time
import types

import numpy as np
import pytest

import pynn
from pynn import bench


def fake_suite():
    a = np.ones((64, 64), np.float32)

    def cases(quick, threads):
        return [bench.Case("fake", "square n=64", {"pynn": lambda: pynn.ops.matmul(a, a),
                                                   "numpy": lambda: a @ a},
                           work=2 * 64**3, unit="GFLOP/s"),
                bench.Case("fake", "no work", {"pynn": lambda: None})]
    return types.SimpleNamespace(cases=cases)


def _blocks(order):
    """The runs of equal names in ``order``, one entry each."""
    return [name for i, name in enumerate(order) if i == 0 or order[i - 1] != name]


def test_time_calls_takes_turns_and_reverses_every_other_pass(monkeypatch):
    order, pauses = [], []
    monkeypatch.setattr(bench.time, "sleep", lambda seconds: pauses.append(seconds))
    runners = {"fast": lambda: order.append("fast"),
               "slow": lambda: (order.append("slow"), _busy_wait(0.002))}
    seconds = bench.time_calls(runners, budget=0.05)
    assert set(seconds) == {"fast", "slow"}
    assert 0 < seconds["fast"] < 0.001 < 0.002 <= seconds["slow"] < 0.05
    # calibration of each, then per pass fast, slow or (reversed) slow, fast
    passes = [["fast", "slow"] if index % 2 == 0 else ["slow", "fast"]
              for index in range(bench.PASSES)]
    assert _blocks(order) == _blocks(["fast", "slow"] + sum(passes, []))
    assert pauses == []  # one thread: no worker threads to wait out

    bench.time_calls(runners, budget=0.05, threads=2)
    assert pauses == [0.05 / 4] * (2 * bench.PASSES)


def _busy_wait(seconds):
    """time.sleep without it: the test replaces time.sleep to count the pauses."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_run_and_table(monkeypatch):
    monkeypatch.setattr(bench, "load_suite", lambda name: fake_suite())
    records = bench.run("fake", [1], quick=True)
    assert [r["case"] for r in records] == ["square n=64", "no work"]
    assert set(records[0]["seconds"]) == {"pynn", "numpy"}
    text = bench.table(records)
    lines = text.splitlines()
    assert lines[0] == "| case | threads | pynn | pynn rate | numpy | numpy/pynn |"
    assert "GFLOP/s" in lines[2] and len(lines) == 4
    ratio = records[0]["seconds"]["numpy"] / records[0]["seconds"]["pynn"]
    assert f"{ratio:.2f}" in lines[2]


def test_pinned_threads_restores_the_setting():
    before = pynn.get_num_threads()
    with bench.pinned_threads(1):
        assert pynn.get_num_threads() == 1
    assert pynn.get_num_threads() == before


def test_unknown_suite_is_refused():
    result = subprocess.run([sys.executable, "-m", "pynn", "bench", "nosuch"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "unknown suite nosuch" in result.stderr


def test_main_writes_json(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bench, "load_suite", lambda name: fake_suite())
    monkeypatch.setattr(bench, "available_suites", lambda: ("fake",))
    path = tmp_path / "bench.json"
    assert bench.main(["fake"], threads=1, quick=True, json_path=str(path)) == 0
    out = capsys.readouterr().out
    assert "machine:" in out and "## fake" in out
    saved = json.loads(path.read_text())
    assert saved["results"][0]["threads"] == 1 and saved["machine"]["numpy"] == np.__version__


@pytest.mark.parametrize("argv", [["bench", "--threads", "0"], ["bench", "--threads", "x"]])
def test_bad_thread_option(argv):
    result = subprocess.run([sys.executable, "-m", "pynn", *argv], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and "--threads" in result.stderr
