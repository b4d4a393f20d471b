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


def fake_suite(checks=None):
    a = np.ones((64, 64), np.float32)
    checks = [] if checks is None else checks

    def square_check():
        checks.append("square")
        np.testing.assert_array_equal(pynn.ops.matmul(a, a), np.full((64, 64), 64.0))

    def cases(quick, threads):
        return [bench.Case("fake", "square n=64", {"pynn": lambda: pynn.ops.matmul(a, a),
                                                   "numpy": lambda: a @ a},
                           work=2 * 64**3, unit="GFLOP/s", check=square_check),
                bench.Case("fake", "no work", {"pynn": lambda: None},
                           check=lambda: checks.append("no work"))]
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


def test_quick_timing_runs_fewer_rounds(monkeypatch):
    calls = []
    bench.time_calls({"slow": lambda: (calls.append(1), _busy_wait(0.02))}, budget=0.05, quick=True)
    # one warm-up, QUICK_SIZING_CALLS to size a round, then one call per round
    assert len(calls) == 1 + bench.QUICK_SIZING_CALLS + bench.QUICK_PASSES < 1 + 3 + bench.PASSES


def test_run_and_table(monkeypatch):
    checks = []
    monkeypatch.setattr(bench, "load_suite", lambda name: fake_suite(checks))
    records = bench.run("fake", [1], quick=True)
    assert checks == ["square", "no work"]  # every case checked, before it is timed
    assert [r["case"] for r in records] == ["square n=64", "no work"]
    assert set(records[0]["seconds"]) == {"pynn", "numpy"}
    text = bench.table(records)
    lines = text.splitlines()
    assert lines[0] == "| case | threads | pynn | pynn rate | numpy | numpy/pynn |"
    assert "GFLOP/s" in lines[2] and len(lines) == 4
    ratio = records[0]["seconds"]["numpy"] / records[0]["seconds"]["pynn"]
    assert f"{ratio:.2f}" in lines[2]


def test_a_wrong_result_fails_the_run_before_timing(monkeypatch):
    a = np.ones((3, 3), np.float32)
    timed = []

    def wrong():
        from pynn.bench import _checks

        _checks.product(a, a, "a @ a", result=np.full((3, 3), 3.0001, np.float32))
    case = bench.Case("fake", "wrong", {"pynn": lambda: timed.append(1)}, check=wrong)
    monkeypatch.setattr(bench, "load_suite", lambda name: types.SimpleNamespace(
        cases=lambda quick, threads: [case]))
    with pytest.raises(AssertionError, match=r"bench fake: wrong: pynn's result is wrong: a @ a: "
                                             r"9 of 9 values off"):
        bench.run("fake", [1], quick=True)
    assert timed == []


def test_other_kernel_paths_are_checked_and_timed_as_columns(monkeypatch):
    """``--isa``: each case is checked on every path, pynn's runner is timed
    on each with that path's kernels, and the chosen path is restored."""
    from pynn._kernels import core as kernels

    checks, seen = [], {}
    case = bench.Case("fake", "paths", {"pynn": lambda: seen.setdefault(kernels.chosen_isa(), 0),
                                        "numpy": lambda: seen.setdefault("numpy", kernels.chosen_isa())},
                      check=lambda: checks.append(kernels.chosen_isa()))
    monkeypatch.setattr(bench, "load_suite", lambda name: types.SimpleNamespace(
        cases=lambda quick, threads: [case]))
    before = kernels.chosen_isa()
    records = bench.run("fake", [1], quick=True, paths=["avx2", "generic"])
    assert checks == ["avx2", "generic"]
    assert list(records[0]["seconds"]) == ["pynn", "pynn[generic]", "numpy"]
    assert set(seen) == {"avx2", "generic", "numpy"} and seen["numpy"] == "avx2"
    assert kernels.chosen_isa() == before
    assert "| pynn[generic] | pynn[generic]/pynn |" in bench.table(records)


def test_a_runner_that_keeps_its_own_path_gets_no_path_columns(monkeypatch):
    from pynn._kernels import core as kernels

    checks = []
    case = bench.Case("fake", "C library", {"pynn": lambda: None},
                      check=lambda: checks.append(kernels.chosen_isa()), follows_path=False)
    monkeypatch.setattr(bench, "load_suite", lambda name: types.SimpleNamespace(
        cases=lambda quick, threads: [case]))
    records = bench.run("fake", [1], quick=True, paths=["avx2", "generic"])
    assert checks == ["avx2"] and list(records[0]["seconds"]) == ["pynn"]


@pytest.mark.parametrize("text, expected", [("all", None), ("generic", ["generic"]),
                                            (" AVX2 ,generic", ["avx2", "generic"])])
def test_isa_option_names_paths(text, expected):
    from pynn._kernels import core as kernels

    offered = [name for name in reversed(kernels.ISA_NAMES) if name in kernels.supported_isas()]
    assert bench.kernel_paths(text) == (offered if expected is None else expected)


@pytest.mark.parametrize("text, message", [("sse9", "'sse9' is not a kernel path"),
                                           ("generic,generic", "names a path twice"),
                                           (",", "expects paths")])
def test_bad_isa_option_is_refused(text, message):
    with pytest.raises(ValueError, match=message):
        bench.kernel_paths(text)
    result = subprocess.run([sys.executable, "-m", "pynn", "bench", "gemm", "--isa", text],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and message.split("'")[-1] in result.stderr


def test_times_are_per_call_of_a_repeating_runner(monkeypatch):
    case = bench.Case("fake", "ten calls", {"pynn": lambda: None}, check=lambda: None, repeats=10)
    monkeypatch.setattr(bench, "load_suite", lambda name: types.SimpleNamespace(
        cases=lambda quick, threads: [case]))
    monkeypatch.setattr(bench, "time_calls", lambda runners, *args, **kwargs: {"pynn": 0.5})
    assert bench.run("fake", [1], quick=True)[0]["seconds"] == {"pynn": 0.05}


def test_capi_suite_checks_c_against_python_bits():
    """The C API suite's cases (a compiler and the built library are here)
    pass their bit-for-bit check, and a wrong C output fails it."""
    from pynn.bench import capi

    with bench.pinned_threads(1):
        cases = capi.cases(quick=True, threads=1)
        assert [case.name.split(" batch")[0] for case in cases] == ["MLP 784-256-128-10", "LeNet-5 1x28x28"]
        for case in cases:
            assert case.repeats == capi.QUICK_REPEATS and {"pynn", "python predict"} <= set(case.runners)
            bench.verify(case)
        model = pynn.Sequential(pynn.layers.Linear(3, 2))
        x = np.ones((1, 3), np.float32)
        check = capi._check_bits(lambda: model.predict(x) + np.float32(1e-6), model, x, "shifted")
        with pytest.raises(AssertionError, match="shifted: the C API's output differs"):
            check()


def test_capi_suite_has_no_cases_without_a_compiler(monkeypatch):
    from pynn.bench import capi

    monkeypatch.setattr(capi, "_helper", None)
    monkeypatch.setattr(capi, "_compiler", lambda: None)
    assert capi.cases(quick=True, threads=1) == []


def test_capi_notes_list_library_sizes():
    from pynn.bench import capi

    lines = capi.notes()
    assert lines[1] == "Shared library sizes, stripped:"
    assert any(line.startswith("- libpynn.so: ") and line.endswith(" MiB") for line in lines)


def test_a_case_without_a_check_is_refused():
    with pytest.raises(ValueError, match="case fake: 'unchecked' has no check"):
        bench.verify(bench.Case("fake", "unchecked", {"pynn": lambda: None}))


@pytest.mark.parametrize("suite", ["gemm", "ops", "train", "infer", "conv", "threads"])
def test_every_case_checks_pynn_against_float64(suite, monkeypatch):
    """Each real case of the suite has a check, and pynn passes it."""
    with bench.pinned_threads(1):
        cases = bench.load_suite(suite).cases(quick=True, threads=1)
        assert cases
        for case in cases:
            bench.verify(case)


def test_checks_catch_a_wrong_network_output():
    from pynn.bench import _checks, train

    model = train.build_mlp()
    x = train.dataset(16)[0]
    _checks.predict(model, x, "mlp")
    wrong = model.predict(x).copy()
    wrong[3, 7] += 0.05 * np.abs(wrong).max()
    with pytest.raises(AssertionError, match=r"mlp: 1 of 160 values off .* at \(3, 7\)"):
        _checks.predictions(model, x, wrong, "mlp")


def test_checks_catch_a_wrong_training_step(monkeypatch):
    """A step 1% too long (as a wrong gradient kernel would make it) fails."""
    from pynn import optim
    from pynn.bench import _checks, train

    x, y = train.dataset(32)
    _checks.first_sgd_step(train.build_mlp, x, y, 0.01, 0.9, "mlp")

    class LongStep(optim.SGD):
        def __init__(self, model, lr, **keywords):
            super().__init__(model, lr=lr * 1.01, **keywords)
    monkeypatch.setattr(optim, "SGD", LongStep)
    with pytest.raises(AssertionError, match="mlp: layer 4 .Linear. weight gradient"):
        _checks.first_sgd_step(train.build_mlp, x, y, 0.01, 0.9, "mlp")


def test_checks_catch_a_step_that_skips_clipping(monkeypatch):
    from pynn import training
    from pynn.bench import _checks, train

    x, y = train.dataset(train.ADAM_BATCH)
    for max_norm in (None, train.MAX_NORM):
        _checks.first_adam_step(train.build_mlp, x, y, train.MAX_LR, max_norm, "mlp")
    monkeypatch.setattr(training, "clip_grad_norm_", lambda model, max_norm: 0.0)
    with pytest.raises(AssertionError, match="mlp: layer .* step"):
        _checks.first_adam_step(train.build_mlp, x, y, train.MAX_LR, train.MAX_NORM, "mlp")


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
    assert saved["machine"]["paths"] == [saved["machine"]["isa"]]


@pytest.mark.parametrize("argv", [["bench", "--threads", "0"], ["bench", "--threads", "x"]])
def test_bad_thread_option(argv):
    result = subprocess.run([sys.executable, "-m", "pynn", *argv], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and "--threads" in result.stderr
