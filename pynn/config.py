"""Runtime configuration: the kernel path (ISA) and the thread count.

Defaults come from the environment at import: ``PYNN_ISA`` forces a path no
higher than the CPU offers, ``PYNN_NUM_THREADS`` sets the thread count (else
the number of cores this process may run on)."""
import operator
import os
import platform
import sys

import numpy

from pynn._kernels import core as kernels
from pynn._version import __version__

_MAX_THREADS = 1024


def _usable_cores():
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _thread_count(value, source):
    if isinstance(value, bool):
        raise TypeError(f"{source} must be an integer thread count, got bool {value!r}")
    try:
        count = operator.index(value)
    except TypeError:
        raise TypeError(
            f"{source} must be an integer thread count, got {type(value).__name__} {value!r}"
        ) from None
    if not 1 <= count <= _MAX_THREADS:
        raise ValueError(f"{source} must be between 1 and {_MAX_THREADS}, got {count}")
    return count


def set_num_threads(n):
    """Set how many threads the kernels may use (1 to 1024)."""
    kernels.set_threads(_thread_count(n, "set_num_threads: n"))


def get_num_threads():
    """The number of threads the kernels may use."""
    return kernels.get_threads()


def _threads_from_environment():
    raw = os.environ.get("PYNN_NUM_THREADS")
    if raw is None or raw.strip() == "":
        return _usable_cores()
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(
            f"PYNN_NUM_THREADS must be a positive integer, got {raw!r}"
        ) from None
    return _thread_count(value, "PYNN_NUM_THREADS")


def _isa_from_environment():
    requested = os.environ.get("PYNN_ISA", "").strip().lower()
    supported = kernels.supported_isas()
    if not requested:
        return kernels.best_isa()
    if requested not in kernels.ISA_NAMES:
        raise ValueError(
            f"PYNN_ISA={requested!r} is not a kernel path; "
            f"known paths: {', '.join(kernels.ISA_NAMES)}; this CPU offers: {', '.join(supported)}"
        )
    if requested not in supported:
        raise ValueError(
            f"PYNN_ISA={requested!r} is not available here "
            f"(compiled in: {', '.join(kernels.compiled_isas())}; "
            f"this CPU offers: {', '.join(supported)})"
        )
    return requested


def config():
    """The build and runtime facts that show_config prints, as a dict."""
    build = kernels.build_info()
    return {
        "pynn": __version__,
        "python": sys.version.split()[0],
        "numpy": numpy.__version__,
        "platform": f"{platform.system()} {platform.machine()}",
        "compiler": build["compiler"],
        "flags": build["flags"],
        "openmp": build["openmp"],
        "isa_compiled": kernels.compiled_isas(),
        "isa_supported": kernels.supported_isas(),
        "isa_chosen": kernels.chosen_isa(),
        "num_threads": get_num_threads(),
        "caches": kernels.cache_sizes(),
    }


def _describe_caches(caches):
    def size(nbytes):
        if nbytes >= 1 << 20 and nbytes % (1 << 20) == 0:
            return f"{nbytes >> 20} MiB"
        return f"{nbytes >> 10} KiB"

    def shared(level):
        count = caches[f"{level}_sharing"]
        return f" (shared by {count} logical CPUs)" if count > 1 else " (per logical CPU)"

    text = f"L1d {size(caches['l1d'])}, L2 {size(caches['l2'])}{shared('l2')}"
    if caches["l3"]:
        text += f", L3 {size(caches['l3'])}{shared('l3')}"
    return text


def show_config():
    """Print the version, build, kernel paths, thread count and data caches."""
    facts = config()
    openmp = "yes" if facts["openmp"] else "no (kernels run on one thread)"
    lines = [
        f"pynn {facts['pynn']}",
        f"  python        {facts['python']}",
        f"  numpy         {facts['numpy']}",
        f"  platform      {facts['platform']}",
        f"  compiler      {facts['compiler']}",
        f"  flags         {facts['flags']}",
        f"  openmp        {openmp}",
        f"  isa compiled  {', '.join(facts['isa_compiled'])}",
        f"  isa on cpu    {', '.join(facts['isa_supported'])}",
        f"  isa chosen    {facts['isa_chosen']}",
        f"  threads       {facts['num_threads']}",
        f"  caches        {_describe_caches(facts['caches'])}",
    ]
    print("\n".join(lines))


kernels.choose_isa(_isa_from_environment())
kernels.set_threads(_threads_from_environment())
