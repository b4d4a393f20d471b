"""The benchmark harness behind ``python -m pynn bench`` and ``benchmarks/``.

A suite is a module ``pynn.bench.<suite>`` with ``cases(quick, threads)``
returning a list of :class:`Case`: the same work done by pynn and by each peer
that imports here (numpy always; PyTorch and ONNX Runtime when installed) on
the same inputs. The harness pins every library to the same thread count,
checks pynn's result against a float64 reference (``Case.check``, see
``pynn.bench._checks``), warms up, times each runner and reports the
peer/pynn time ratio (> 1 means pynn is faster).

Given several kernel paths (``--isa avx512,avx2``), the first is the run's
path and pynn's runner is also timed on each other one, as a column
``pynn[<path>]`` beside the peers: the same process, inputs and turns, only
the kernel table differs."""
import contextlib
import dataclasses
import importlib
import json
import os
import pkgutil
import platform
import time

import numpy as np

_ORDER = ("gemm", "ops", "train", "infer", "conv", "graph", "text", "onnx", "capi")


def available_suites():
    """Suite modules in this package, in a reading order (private modules,
    such as the references in _checks, are not suites)."""
    found = {module.name for module in pkgutil.iter_modules(__path__)
             if not module.name.startswith("_")}
    return tuple(name for name in _ORDER if name in found) + tuple(sorted(found - set(_ORDER)))


@dataclasses.dataclass
class Case:
    suite: str
    name: str
    runners: dict          # peer name -> zero-argument callable; "pynn" first
    work: float = None     # per call: FLOP (unit "GFLOP/s") or samples (unit "samples/s")
    unit: str = None
    # zero-argument callable running pynn's work once and raising
    # AssertionError when its result is wrong; every case has one
    check: object = None
    # calls of the work each runner makes per invocation (a loop kept out
    # of the harness's timing overhead); times are reported per call
    repeats: int = 1
    # whether pynn's runner follows the kernel path chosen in Python, so that
    # ``--isa`` can time it on other paths (the C API's library picks its
    # path once, when it is first used)
    follows_path: bool = True


def verify(case):
    """Run the case's check of pynn's result, before it is timed."""
    if case.check is None:
        raise ValueError(f"bench: case {case.suite}: {case.name!r} has no check of its result")
    try:
        case.check()
    except AssertionError as error:
        raise AssertionError(f"bench {case.suite}: {case.name}: pynn's result is wrong: "
                             f"{error}") from None


def optional_import(name):
    """The module if it imports here, else None (peers are optional)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def fit_epochs(model, x, y, loss, optimizer, batch):
    """A runner: one epoch of ``model.fit`` per call, reshuffled by a new seed each time."""
    seeds = iter(range(1 << 30))
    return lambda: model.fit(x, y, loss=loss, optimizer=optimizer, batch_size=batch,
                             seed=next(seeds), verbose=False)


def torch_epochs(torch, module, x, y, batch, loss, optimizer, inputs=None):
    """A runner: one shuffled epoch of PyTorch training per call. ``inputs``
    maps a batch's indices to the module's arguments (default: the rows of x)."""
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
    inputs = inputs or (lambda indices: (x_t[indices],))
    generator = torch.Generator().manual_seed(0)

    def epoch():
        order = torch.randperm(len(y_t), generator=generator)
        for start in range(0, len(y_t), batch):
            indices = order[start:start + batch]
            optimizer.zero_grad()
            loss(module(*inputs(indices)), y_t[indices]).backward()
            optimizer.step()
    return epoch


@contextlib.contextmanager
def pinned_threads(count):
    """Run pynn, numpy's BLAS and PyTorch on ``count`` threads."""
    import pynn

    before = pynn.get_num_threads()
    pynn.set_num_threads(count)
    torch = optional_import("torch")
    torch_before = torch.get_num_threads() if torch else None
    if torch:
        torch.set_num_threads(count)
    threadpoolctl = optional_import("threadpoolctl")
    limits = threadpoolctl.threadpool_limits(count) if threadpoolctl else contextlib.nullcontext()
    try:
        with limits:
            yield
    finally:
        pynn.set_num_threads(before)
        if torch:
            torch.set_num_threads(torch_before)


PASSES = 8
# --quick: fewer rounds, and fewer calls to size them; a call of a whole
# training epoch then runs 5 times per runner instead of 12
QUICK_PASSES, QUICK_SIZING_CALLS = 3, 1


def _calls_per_round(fn, budget, passes=PASSES, sizing_calls=3):
    """How many back-to-back calls of ``fn`` fill one round of ``budget``."""
    fn()
    start = time.perf_counter()
    calls = 0
    while calls < sizing_calls or time.perf_counter() - start < budget / 10:
        fn()
        calls += 1
    per_call = (time.perf_counter() - start) / calls
    return max(1, int(budget / passes / max(per_call, 1e-9)))


def time_calls(runners, budget, threads=1, quick=False, prepare=None):
    """Seconds per call of each of ``runners`` (name -> function), ``budget``
    seconds each, as the fastest of its rounds: slower rounds measure other
    processes, not the code. The runners take turns, one round each per pass,
    the order reversed every other pass, so that a shared host that slows
    down for a second or two slows them alike rather than one alone. On more
    than one thread each round waits a quarter of the budget first, so it
    does not share the cores with the previous runner's idle worker threads,
    which spin for a while after their work (OpenBLAS's, OpenMP's and ONNX
    Runtime's pools do). ``quick`` runs QUICK_PASSES rounds. ``prepare(name)``,
    when given, runs before a runner is sized and before each of its rounds,
    outside the timing."""
    passes, sizing_calls = (QUICK_PASSES, QUICK_SIZING_CALLS) if quick else (PASSES, 3)
    prepare = prepare or (lambda name: None)
    numbers = {}
    for name, fn in runners.items():
        prepare(name)
        numbers[name] = _calls_per_round(fn, budget, passes, sizing_calls)
    best = dict.fromkeys(runners, float("inf"))
    names = list(runners)
    for index in range(passes):
        for name in names if index % 2 == 0 else names[::-1]:
            fn, number = runners[name], numbers[name]
            prepare(name)
            if threads > 1:
                time.sleep(budget / 4)
            start = time.perf_counter()
            for _ in range(number):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / number)
    return best


def machine_info():
    import pynn
    from pynn._kernels import core as kernels

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "isa": kernels.chosen_isa(),
        "pynn": pynn.__version__,
        "numpy": np.__version__,
    }
    for peer in ("torch", "onnxruntime", "threadpoolctl"):
        module = optional_import(peer)
        info[peer] = module.__version__ if module else "not installed"
    return info


def load_suite(name):
    return importlib.import_module(f"pynn.bench.{name}")


def path_column(path):
    """The runner name of pynn on another kernel path than the run's."""
    return f"pynn[{path}]"


def kernel_paths(text):
    """The paths named by ``--isa``: a comma-separated list of paths this
    build and CPU offer, or "all" for every one of them, best first."""
    from pynn._kernels import core as kernels

    offered = [name for name in reversed(kernels.ISA_NAMES) if name in kernels.supported_isas()]
    if text.strip().lower() == "all":
        return offered
    paths = [name.strip().lower() for name in text.split(",") if name.strip()]
    if not paths:
        raise ValueError(f"bench: --isa expects paths such as {','.join(offered)} or all, got {text!r}")
    for name in paths:
        if name not in offered:
            raise ValueError(f"bench: --isa: {name!r} is not a kernel path this build and CPU offer; "
                             f"offered: {', '.join(offered)}")
    if len(set(paths)) != len(paths):
        raise ValueError(f"bench: --isa names a path twice: {text!r}")
    return paths


@contextlib.contextmanager
def kernel_path(path):
    """Run the kernels on ``path``, then return to the path chosen before."""
    from pynn._kernels import core as kernels

    before = kernels.chosen_isa()
    kernels.choose_isa(path)
    try:
        yield
    finally:
        kernels.choose_isa(before)


def run(suite, thread_counts, quick=False, progress=None, paths=None):
    """Check and time every case of ``suite`` at each thread count, pynn on
    each of ``paths`` (default: the chosen one); returns result records."""
    from pynn._kernels import core as kernels

    budget = 0.05 if quick else 0.4
    paths = paths or [kernels.chosen_isa()]
    path_of = {"pynn": paths[0], **{path_column(path): path for path in paths[1:]}}
    records = []
    for threads in thread_counts:
        with pinned_threads(threads), kernel_path(paths[0]):
            for case in load_suite(suite).cases(quick=quick, threads=threads):
                others = paths[1:] if case.follows_path else []
                for path in [paths[0], *others]:
                    with kernel_path(path):
                        verify(case)
                runners = dict(case.runners)
                pynn_runner = runners.pop("pynn")
                runners = {"pynn": pynn_runner,
                           **{path_column(path): pynn_runner for path in others}, **runners}
                timed = time_calls(runners, budget, threads, quick=quick,
                                   prepare=lambda name: kernels.choose_isa(path_of.get(name, paths[0])))
                times = {name: seconds / case.repeats for name, seconds in timed.items()}
                records.append({"suite": suite, "case": case.name, "threads": threads,
                                "seconds": times, "work": case.work, "unit": case.unit})
                if progress:
                    progress(f"  {suite}: {case.name} (threads={threads}) done")
    return records


def _duration(seconds):
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _rate(work, unit, seconds):
    if not work:
        return ""
    if unit == "GFLOP/s":
        return f"{work / seconds / 1e9:.1f} GFLOP/s"
    return f"{work / seconds:,.0f} {unit}"


def table(records):
    """A markdown table: pynn's time and rate, then each peer's time and peer/pynn ratio."""
    peers = []
    for record in records:
        peers += [peer for peer in record["seconds"] if peer != "pynn" and peer not in peers]
    columns = ["case", "threads", "pynn", "pynn rate"]
    for peer in peers:
        columns += [peer, f"{peer}/pynn"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for record in records:
        times = record["seconds"]
        mine = times["pynn"]
        row = [record["case"], str(record["threads"]), _duration(mine),
               _rate(record["work"], record["unit"], mine)]
        for peer in peers:
            if peer in times:
                row += [_duration(times[peer]), f"{times[peer] / mine:.2f}"]
            else:
                row += ["", ""]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def header(paths=None):
    info = machine_info()
    lines = [
        f"machine: {info['cpu']}, {info['cores']} cores, kernel path {info['isa']}",
        f"versions: pynn {info['pynn']}, numpy {info['numpy']}, torch {info['torch']}, "
        f"onnxruntime {info['onnxruntime']}, threadpoolctl {info['threadpoolctl']}",
        "peer/pynn is the peer's time over pynn's: above 1 means pynn is faster",
    ]
    if paths and len(paths) > 1:
        lines.append(f"{path_column('<path>')} is pynn on another kernel path: "
                     f"{', '.join(paths[1:])} beside {paths[0]}")
    return "\n".join(lines)


def main(suites, threads=None, quick=False, json_path=None, isa=None):
    """``python -m pynn bench``: run suites, print a table per suite, optionally
    save JSON. ``isa``: the ``--isa`` text naming the kernel paths to time
    (default: the chosen path alone)."""
    import sys

    import pynn
    from pynn._kernels import core as kernels

    known = available_suites()
    if not suites or "all" in suites:
        suites = known
    unknown = [name for name in suites if name not in known]
    if unknown:
        raise ValueError(f"bench: unknown suite {', '.join(unknown)}; available: all, {', '.join(known)}")
    paths = kernel_paths(isa) if isa else [kernels.chosen_isa()]
    cores = machine_info()["cores"]
    thread_counts = [threads] if threads else sorted({1, cores})
    results = []
    with kernel_path(paths[0]):
        print(header(paths))
        if optional_import("threadpoolctl") is None:
            print("note: threadpoolctl is not installed, so numpy's BLAS threads are not pinned")
        for suite in suites:
            records = run(suite, thread_counts, quick=quick, paths=paths,
                          progress=lambda text: print(text, file=sys.stderr))
            print(f"\n## {suite}\n\n{table(records)}", flush=True)
            notes = getattr(load_suite(suite), "notes", None)  # what a suite measures besides time
            for line in notes() if notes else ():
                print(line, flush=True)
            results += records
        if json_path:
            with open(json_path, "w") as f:
                json.dump({"machine": {**machine_info(), "paths": paths},
                           "config": pynn.config.config(), "results": results}, f, indent=1)
    return 0
