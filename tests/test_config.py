"""ISA detection and forcing, threads API, show_config."""
import os
import subprocess
import sys

import pytest

import pynn
from pynn._kernels import core as kernels


def run_python(code, **env):
    environment = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=environment, timeout=120)


def cpuinfo_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


@pytest.mark.skipif(cpuinfo_flags() is None, reason="needs /proc/cpuinfo (Linux)")
def test_detection_agrees_with_proc_cpuinfo():
    flags = cpuinfo_flags()
    supported = kernels.supported_isas()
    assert "generic" in supported
    if "x86_64" in os.uname().machine:
        assert ("avx2" in supported) == ({"avx2", "fma"} <= flags)
        # an emulating build (setup.py's PYNN_EMULATE_AVX512) runs AVX-512 on AVX2
        emulated = "-DPYNN_EMULATE_AVX512" in kernels.build_info()["flags"]
        assert ("avx512" in supported) == ("avx512f" in flags or (emulated and "avx2" in supported))
    else:
        assert supported == ("generic",)


def test_default_is_best_path():
    result = run_python("from pynn._kernels import core as kernels; import pynn; print(kernels.chosen_isa())",
                        PYNN_ISA="")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == kernels.best_isa() == kernels.supported_isas()[-1]


@pytest.mark.parametrize("isa", kernels.supported_isas())
def test_each_supported_path_can_be_forced(isa):
    result = run_python("import pynn; from pynn._kernels import core as kernels; print(kernels.chosen_isa())",
                        PYNN_ISA=isa.upper())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == isa


@pytest.mark.parametrize("value", ["avx1024", "sse", "native"])
def test_unknown_isa_is_refused_at_import(value):
    result = run_python("import pynn", PYNN_ISA=value)
    assert result.returncode != 0
    assert "PYNN_ISA" in result.stderr and "generic" in result.stderr


def test_unsupported_isa_is_refused_at_import():
    missing = [name for name in kernels.ISA_NAMES if name not in kernels.supported_isas()]
    if not missing:
        pytest.skip("this CPU supports every path")
    result = run_python("import pynn", PYNN_ISA=missing[0])
    assert result.returncode != 0 and "not available" in result.stderr


def test_threads_round_trip(set_threads):
    pynn.set_num_threads(1)
    assert pynn.get_num_threads() == 1
    pynn.set_num_threads(3)
    assert pynn.get_num_threads() == 3


@pytest.mark.parametrize("bad,error", [(0, ValueError), (-2, ValueError), (2.0, TypeError),
                                       ("2", TypeError), (True, TypeError), (None, TypeError),
                                       (10**6, ValueError)])
def test_bad_thread_counts_are_refused(bad, error):
    before = pynn.get_num_threads()
    with pytest.raises(error, match="set_num_threads"):
        pynn.set_num_threads(bad)
    assert pynn.get_num_threads() == before


def test_thread_count_from_environment():
    result = run_python("import pynn; print(pynn.get_num_threads())", PYNN_NUM_THREADS="1")
    assert result.stdout.strip() == "1"
    result = run_python("import pynn", PYNN_NUM_THREADS="many")
    assert result.returncode != 0 and "PYNN_NUM_THREADS" in result.stderr


def test_default_threads_are_usable_cores():
    environment = {k: v for k, v in os.environ.items() if k != "PYNN_NUM_THREADS"}
    result = subprocess.run([sys.executable, "-c", "import pynn; print(pynn.get_num_threads())"],
                            capture_output=True, text=True, env=environment, timeout=120)
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert int(result.stdout) == expected


def test_show_config_and_info_command(capsys):
    pynn.show_config()
    text = capsys.readouterr().out
    for word in ("pynn", "compiler", "openmp", "isa chosen", "threads", "caches", "L2",
                 kernels.chosen_isa()):
        assert word in text
    result = subprocess.run([sys.executable, "-m", "pynn", "info"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "isa compiled" in result.stdout


def test_cache_sizes_are_plausible_and_in_config():
    caches = kernels.cache_sizes()
    assert set(caches) == {"l1d", "l2", "l3", "l2_sharing", "l3_sharing"}
    assert 4 << 10 <= caches["l1d"] <= caches["l2"] <= 1 << 30
    assert caches["l3"] == 0 or caches["l2"] <= caches["l3"] <= 1 << 34
    assert caches["l2_sharing"] >= 1 and caches["l3_sharing"] >= 1
    assert pynn.config.config()["caches"] == caches
