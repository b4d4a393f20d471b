"""tools/performance_doc.py: docs/performance.md and the README's headline
table, generated from ``python -m pynn bench --json`` output."""
import importlib.util
import json
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "performance_doc", os.path.join(ROOT, "tools", "performance_doc.py"))
performance_doc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(performance_doc)

MACHINE = {"cpu": "Test CPU 9000", "cores": 2, "isa": "avx2", "pynn": "0.1.0", "numpy": "2.4.6",
           "torch": "2.13.0+cpu", "onnxruntime": "not installed", "threadpoolctl": "3.8.0"}
CONFIG = {"pynn": "0.1.0", "python": "3.11.7", "numpy": "2.4.6", "platform": "Linux x86_64",
          "compiler": "gcc 12.2.0", "flags": "-O3", "openmp": True,
          "isa_compiled": ["generic", "avx2", "avx512"], "isa_supported": ["generic", "avx2"],
          "isa_chosen": "avx2", "num_threads": 2}


def record(suite, case, threads, pynn, work=None, unit=None, **peers):
    return {"suite": suite, "case": case, "threads": threads,
            "seconds": {"pynn": pynn, **peers}, "work": work, "unit": unit}


def sample_results():
    """Every suite the headline draws on, more cases than it may show."""
    found = []
    for threads in (1, 2):
        found += [
            record("gemm", "square 16", threads, 1e-6, 8192.0, "GFLOP/s", numpy=2e-6, torch=3e-6),
            record("gemm", "square 512", threads, 2e-3, 2.0 * 512 ** 3, "GFLOP/s",
                   numpy=2.2e-3, torch=1.8e-3),
            record("gemm", "32x784->256 dW=dyᵀx", threads, 1e-4, 1.2e7, "GFLOP/s", numpy=1.5e-4),
            record("ops", "relu 1e6", threads, 1e-4, 1e6, "elements/s", numpy=4e-4, torch=0.5e-4),
            record("train", "784-256-128-10 batch 32", threads, 0.08, 4096, "samples/s",
                   numpy=0.12, torch=0.2),
            record("train", "784-256-128-10 batch 512", threads, 0.04, 4096, "samples/s",
                   numpy=0.05, torch=0.06),
            record("infer", "784-256-128-10 batch 1 (latency)", threads, 1.25e-5, 1, "samples/s",
                   numpy=3e-5, torch=8e-5, onnxruntime=3.5e-5),
            record("infer", "784-256-128-10 batch 256 (throughput)", threads, 8e-4, 256,
                   "samples/s", numpy=9e-4, torch=1e-3, onnxruntime=8.4e-4),
            record("conv", "LeNet-5 training batch 64", threads, 0.12, 2048, "samples/s", torch=0.3),
            record("conv", "conv 3x3 64->64 56x56 batch 8 forward", threads, 0.02, 1.8e9,
                   "GFLOP/s", torch=0.015),
            record("conv", "conv 3x3 64->64 56x56 batch 8 forward+backward", threads, 0.05,
                   5.5e9, "GFLOP/s", torch=0.06),
        ]
    found.append(record("threads", "2 streams of predict", 1, 0.02, 4096, "samples/s",
                        **{"pynn serial": 0.03}))
    return found


def write_json(path, results=None, machine=MACHINE, **extra):
    data = {"machine": machine, "config": CONFIG,
            "results": sample_results() if results is None else results, **extra}
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


README = ("# project\n\nSome text.\n\n" + performance_doc.BEGIN + "\nold table\n"
          + performance_doc.END + "\n\n## After\n\nMore text.\n")


@pytest.fixture
def readme(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(README, encoding="utf-8")
    return path


def generate(tmp_path, readme, *paths, **options):
    out = tmp_path / "docs" / "performance.md"
    performance_doc.generate([str(p) for p in paths], str(out), str(readme), **options)
    return out.read_text(encoding="utf-8"), readme.read_text(encoding="utf-8")


def headline_rows(text):
    block = text.split(performance_doc.BEGIN)[1].split(performance_doc.END)[0]
    return [line for line in block.splitlines() if line.startswith("| ") and "---" not in line][1:]


def test_every_case_appears_with_its_ratios(tmp_path, readme):
    source = write_json(tmp_path / "bench.json", date="2026-12-07", commit="abc1234")
    document, _ = generate(tmp_path, readme, source)
    for result in sample_results():
        assert f"| {result['case']} | {result['threads']} |" in document
    # the peer's time over pynn's, to two places: 2.2 ms / 2 ms, 1.8 / 2, 3e-5 / 1.25e-5
    assert "| square 512 | 1 | 2 ms | 134.2 GFLOP/s | 2.2 ms | 1.10 | 1.8 ms | 0.90 |" in document
    assert "| 784-256-128-10 batch 1 (latency) | 2 | 12.5 µs | 80,000 samples/s | 30 µs | 2.40 |" \
        in document
    assert "pynn serial/pynn" in document and "| 1.50 |" in document
    for fact in ("Test CPU 9000", "2 cores", "`avx2`", "2026-12-07", "abc1234",
                 "torch 2.13.0+cpu", "gcc 12.2.0", "the CPU offers generic, avx2"):
        assert fact in document, fact
    assert "onnxruntime not installed" in document  # versions as recorded, absent peers said so


def test_the_document_says_it_is_generated_and_how_to_regenerate(tmp_path, readme):
    document, _ = generate(tmp_path, readme, write_json(tmp_path / "bench.json"))
    assert document.startswith("<!-- Generated by tools/performance_doc.py")
    assert document.count(performance_doc.REGENERATE) == 2
    assert "\n" not in performance_doc.REGENERATE  # one line to copy


def test_cases_where_a_peer_is_faster_are_listed_lowest_first(tmp_path, readme):
    document, _ = generate(tmp_path, readme, write_json(tmp_path / "bench.json"))
    section = document.split("### Where pynn is behind in this run")[1].split("###")[0]
    rows = [line for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| suite |")]
    ratios = [float(line.rsplit("|", 2)[1]) for line in rows]
    # relu against torch 0.50, the 3x3 forward 0.75, square 512 against torch 0.90; each twice
    assert ratios == [0.5, 0.5, 0.75, 0.75, 0.9, 0.9]
    assert "6 of the comparisons" in section


def test_the_headline_shows_the_claims_in_at_most_eight_rows(tmp_path, readme):
    _, text = generate(tmp_path, readme, write_json(tmp_path / "bench.json"))
    rows = headline_rows(text)
    labels = [(row.split(" | ")[0][2:], row.split(" | ")[1]) for row in rows]
    assert labels == [
        ("MLP training, 784-256-128-10 batch 32", "2"),
        ("MLP training, 784-256-128-10 batch 512", "2"),
        ("MLP predict, 784-256-128-10 batch 1 (latency)", "1"),
        ("MLP predict, 784-256-128-10 batch 1 (latency)", "2"),
        ("MLP predict, 784-256-128-10 batch 256 (throughput)", "2"),
        ("GEMM square 512", "1"),
        ("GEMM square 512", "2"),
        ("conv 3x3 64->64 56x56 batch 8 forward+backward", "2"),
    ]
    header = text.split(performance_doc.BEGIN)[1].splitlines()
    assert "| work | threads | pynn | numpy/pynn | torch/pynn | onnxruntime/pynn |" in header
    assert "Test CPU 9000" in header[1] and "`avx2`" in header[1]
    # batch 1 on one thread: 12.5 us, 80,000 samples/s; numpy 2.40, torch 6.40, ORT 2.80
    assert rows[2].endswith("| 1 | 12.5 µs (80,000 samples/s) | 2.40 | 6.40 | 2.80 |")


def test_the_headline_adapts_to_a_quick_or_one_thread_run(tmp_path, readme):
    results = [r for r in sample_results() if r["threads"] == 1 and r["case"] != "square 512"]
    _, text = generate(tmp_path, readme, write_json(tmp_path / "bench.json", results=results))
    labels = [row.split(" | ")[0][2:] for row in headline_rows(text)]
    # one thread: no row twice; the largest square present stands in for 512
    assert labels == ["MLP training, 784-256-128-10 batch 32",
                      "MLP training, 784-256-128-10 batch 512",
                      "MLP predict, 784-256-128-10 batch 1 (latency)",
                      "MLP predict, 784-256-128-10 batch 256 (throughput)",
                      "GEMM square 16",
                      "conv 3x3 64->64 56x56 batch 8 forward+backward"]


def test_only_the_block_between_the_markers_changes(tmp_path, readme):
    source = write_json(tmp_path / "bench.json", date="2026-12-07", commit="abc1234")
    _, first = generate(tmp_path, readme, source)
    before, after = README.split(performance_doc.BEGIN)[0], README.split(performance_doc.END)[1]
    assert first.startswith(before + performance_doc.BEGIN + "\n")
    assert first.endswith(performance_doc.END + after)
    assert "old table" not in first
    document, second = generate(tmp_path, readme, source)
    assert second == first  # regenerating from the same JSON changes nothing
    assert document == generate(tmp_path, readme, source)[0]


def test_date_and_commit_come_from_the_json_or_the_options(tmp_path, readme):
    source = write_json(tmp_path / "bench.json")
    os.utime(source, (1764547200, 1764547200))  # 2025-12-01 00:00 UTC, when bench wrote it
    document, text = generate(tmp_path, readme, source, commit="feed123")
    assert "| date | 2025-12-01 |" in document and "| commit | feed123 |" in document
    assert "Measured on 2025-12-01 at commit feed123" in text
    document, _ = generate(tmp_path, readme, source, date="2026-01-02", commit="beef456")
    assert "| date | 2026-01-02 |" in document


def test_without_a_recorded_commit_the_checkout_is_named(tmp_path, readme, monkeypatch):
    answers = {"rev-parse": "abc1234", "status": ""}
    monkeypatch.setattr(performance_doc, "_git", lambda command, *rest: answers[command])
    source = write_json(tmp_path / "bench.json", date="2026-12-07")
    assert "| commit | abc1234 |" in generate(tmp_path, readme, source)[0]
    answers["status"] = " M csrc/gemm.c"
    document, text = generate(tmp_path, readme, source)
    assert "| commit | abc1234 with uncommitted changes to the code |" in document
    assert "at commit abc1234 with uncommitted changes to the code:" in text
    answers["rev-parse"] = None  # not a git checkout
    assert "| commit | unknown |" in generate(tmp_path, readme, source)[0]


def test_files_from_one_machine_merge_and_other_machines_get_their_own_run(tmp_path, readme):
    everything = sample_results()
    first = write_json(tmp_path / "a.json", results=everything[:10], date="2026-12-07")
    second = write_json(tmp_path / "b.json", results=everything[10:], date="2026-12-08")
    other = write_json(tmp_path / "c.json", results=everything[:3], date="2026-12-09",
                       machine=dict(MACHINE, cpu="Other CPU", isa="avx512"))
    document, text = generate(tmp_path, readme, first, second, other, commit="abc1234")
    assert "## Run 1: Test CPU 9000" in document and "## Run 2: Other CPU" in document
    assert "| date | 2026-12-07 to 2026-12-08 |" in document
    assert "| from | `a.json`, `b.json` |" in document
    assert "Test CPU 9000" in text and "Other CPU" not in text  # the headline is the first run's


def test_a_case_measured_twice_on_one_machine_is_refused(tmp_path, readme):
    first = write_json(tmp_path / "a.json")
    second = write_json(tmp_path / "b.json", results=sample_results()[:1])
    with pytest.raises(performance_doc.BenchFormatError, match=r"b\.json.*square 16.*already"):
        generate(tmp_path, readme, first, second)


def test_json_with_newer_fields_is_read(tmp_path, readme):
    source = write_json(tmp_path / "bench.json", command="bench all", date="2026-12-07")
    document, _ = generate(tmp_path, readme, source, commit="abc1234")
    assert "2026-12-07" in document and "| shapes |" not in document  # not recorded: not said
    document, text = generate(tmp_path, readme, write_json(tmp_path / "q.json", quick=True))
    assert "| shapes | the quick shapes (`--quick`) |" in document
    assert "; the quick shapes (`--quick`)." in text  # the README's headline says so too


def corrupt(data, path, value):
    """``data`` with the field at ``path`` (keys and indices) set to ``value``,
    or deleted when ``value`` is ``...``."""
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is Ellipsis:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


BAD = [
    (("machine",), Ellipsis, r"machine: expected an object, got null"),
    (("machine", "cpu"), 7, r"machine\.cpu: expected a non-empty string, got 7"),
    (("machine", "cores"), "two", r"machine\.cores: expected a positive integer, got two"),
    (("config",), [], r"config: expected an object, got \[\]"),
    (("results",), [], r"results: expected a non-empty list, got \[\]"),
    (("results", 0), "row", r"results\[0\]: expected an object, got row"),
    (("results", 3, "suite"), "", r"results\[3\]\.suite: expected a non-empty string"),
    (("results", 1, "threads"), 0, r"results\[1\]\.threads: expected a positive integer, got 0"),
    (("results", 1, "threads"), True, r"results\[1\]\.threads: expected a positive integer, got true"),
    (("results", 2, "seconds", "pynn"), Ellipsis,
     r"results\[2\]\.seconds: expected an object of runner -> seconds with a \"pynn\" entry"),
    (("results", 2, "seconds", "numpy"), -1.0,
     r"results\[2\]\.seconds\.numpy: expected a positive finite number of seconds, got -1\.0"),
    (("results", 2, "seconds", "numpy"), "fast",
     r"results\[2\]\.seconds\.numpy: expected a positive finite number of seconds, got fast"),
    (("results", 4, "work"), "lots", r"results\[4\]\.work: expected null or a non-negative number"),
    (("results", 4, "unit"), None, r"results\[4\]\.unit: expected a unit for the work given"),
    (("date",), 20261207, r"date: expected a string when present, got 20261207"),
    (("quick",), "yes", r"quick: expected true or false when present, got yes"),
]


@pytest.mark.parametrize("path, value, message", BAD, ids=[".".join(map(str, b[0])) for b in BAD])
def test_malformed_json_is_refused_naming_file_field_and_values(tmp_path, readme, path, value, message):
    data = {"machine": dict(MACHINE), "config": dict(CONFIG), "results": sample_results()}
    source = tmp_path / "bench.json"
    source.write_text(json.dumps(corrupt(data, path, value)), encoding="utf-8")
    with pytest.raises(performance_doc.BenchFormatError, match=re.escape(str(source)) + ".*" + message):
        generate(tmp_path, readme, source)
    assert readme.read_text(encoding="utf-8") == README  # nothing written


def test_text_that_is_not_json_is_refused_with_its_position(tmp_path, readme):
    source = tmp_path / "bench.json"
    source.write_text('{"machine": {"cpu": "x",\n  oops}', encoding="utf-8")
    with pytest.raises(performance_doc.BenchFormatError, match=r"not valid JSON \(line 2, column 3"):
        generate(tmp_path, readme, source)
    source.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(performance_doc.BenchFormatError, match="expected an object with machine"):
        generate(tmp_path, readme, source)


def test_the_command_reports_errors_with_status_2(tmp_path, readme, capsys):
    missing = tmp_path / "missing.json"
    status = performance_doc.main([str(missing), "--out", str(tmp_path / "p.md"),
                                   "--readme", str(readme)])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("performance_doc: error: ") and str(missing) in err
    source = write_json(tmp_path / "bench.json", commit="abc1234")
    nan = json.loads(open(source).read())
    nan["results"][0]["seconds"]["pynn"] = float("nan")
    (tmp_path / "nan.json").write_text(json.dumps(nan), encoding="utf-8")
    status = performance_doc.main([str(tmp_path / "nan.json"), "--out", str(tmp_path / "p.md"),
                                   "--readme", str(readme)])
    err = capsys.readouterr().err
    assert status == 2 and "results[0].seconds.pynn" in err and "NaN" in err
    assert not (tmp_path / "p.md").exists()
    status = performance_doc.main([source, "--out", str(tmp_path / "p.md"), "--readme", str(readme)])
    assert status == 0 and (tmp_path / "p.md").exists()


def test_a_readme_without_one_pair_of_markers_is_refused(tmp_path, readme):
    source = write_json(tmp_path / "bench.json")
    readme.write_text("# project\n\nno markers here\n", encoding="utf-8")
    with pytest.raises(performance_doc.BenchFormatError, match="found 0 and 0"):
        generate(tmp_path, readme, source)
    readme.write_text(README + README, encoding="utf-8")
    with pytest.raises(performance_doc.BenchFormatError, match="found 2 and 2"):
        generate(tmp_path, readme, source)


def test_the_committed_documents_are_the_generated_ones():
    """docs/performance.md and the README's headline are exactly what the
    generator makes of docs/bench.json: nobody edited a figure by hand."""
    source = os.path.join(ROOT, "docs", "bench.json")
    with open(os.path.join(ROOT, "docs", "performance.md"), encoding="utf-8") as f:
        committed = f.read()
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    date = re.search(r"^\| date \| (.+) \|$", committed, re.M).group(1)
    commit = re.search(r"^\| commit \| (.+) \|$", committed, re.M).group(1)
    all_runs = performance_doc.runs([source], date=date, commit=commit)
    assert committed == performance_doc.performance_markdown(all_runs)
    assert performance_doc.replace_headline(readme, performance_doc.headline_block(all_runs[0])) \
        == readme


def test_other_kernel_paths_get_their_own_columns_and_section(tmp_path, readme):
    """``bench --isa``: pynn on another path is a column beside pynn's, never
    a peer; the cases where it beats the run's path by over 3% are listed."""
    results = [record("ops", "relu 1e6", 1, 1e-4, 1e6, "elements/s", numpy=4e-4,
                      **{"pynn[generic]": 0.5e-4}),
               record("ops", "tanh 1e6", 1, 1e-4, 1e6, "elements/s", numpy=4e-4,
                      **{"pynn[generic]": 0.98e-4}),
               record("gemm", "square 512", 1, 2e-3, 2.0 * 512 ** 3, "GFLOP/s", numpy=2.2e-3,
                      **{"pynn[generic]": 8e-3})]
    document, text = generate(tmp_path, readme, write_json(tmp_path / "bench.json", results))
    assert "| case | threads | pynn | pynn rate | pynn[generic] | pynn[generic]/pynn | numpy |" \
        in document
    section = document.split("### Kernel paths side by side")[1].split("###")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ops")]
    assert rows == ["| ops | relu 1e6 | 1 | generic | 0.50 |"]  # tanh's 0.98 is within 3%
    assert "pynn[generic]" not in document.split("### Where pynn is behind")[1].split("###")[0]
    assert "generic" not in text.split(performance_doc.BEGIN)[1].split(performance_doc.END)[0]


def test_a_run_on_one_path_has_no_path_section(tmp_path, readme):
    document, _ = generate(tmp_path, readme, write_json(tmp_path / "bench.json"))
    assert "### Kernel paths side by side" not in document
