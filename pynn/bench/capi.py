"""C API suite: the batch-1 latency of ``pynn_model_predict`` (include/pynn.h)
on the 784-256-128-10 MLP and on LeNet-5 (the infer and conv suites'
networks), saved with ``model.save`` and loaded by the installed libpynn,
beside Python's ``predict`` and ONNX Runtime's session on the same model
exported with ``pynn.onnx.export``.

A small C helper, compiled here against the installed library with the flags
``python -m pynn config --cflags --libs`` prints, runs the calls in a C loop,
so the "pynn" figure is the C call's cost with no Python in it. Every runner
makes ``REPEATS`` calls per invocation and the table reports one call's time.
Each case first checks that the C output equals Python's ``predict`` bit for
bit. Without a C compiler or a built libpynn the suite has no cases.

``notes`` prints the stripped size of libpynn beside ONNX Runtime's shared
libraries."""
import ctypes
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import weakref

import numpy as np

from pynn.bench import Case, optional_import
from pynn.bench.conv import build_lenet
from pynn.bench.train import build_mlp

REPEATS, QUICK_REPEATS = 200, 20

HELPER = r"""
#include <stddef.h>
#include <stdint.h>
#include "pynn.h"

/* `calls` predictions of x on `threads` threads, back to back: 0, or -1 with the message */
int pynn_bench_predict_loop(pynn_model *m, const float *x, int64_t batch, float *y, int64_t calls,
                            int threads, char *err, size_t err_len)
{
    pynn_set_num_threads(threads);
    for (int64_t i = 0; i < calls; i++)
        if (pynn_model_predict(m, x, batch, y, err, err_len))
            return -1;
    return 0;
}
"""

_helper = None  # the ctypes library once compiled in this process


def _compiler():
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _load_helper():
    """The compiled helper as a ctypes library (its pynn_model_* are libpynn's),
    or None. The library takes its kernel path from PYNN_ISA when first used:
    Python's chosen path, so that the two compute the same bits."""
    global _helper
    if _helper is not None:
        return _helper
    from pynn._kernels import core as kernels

    os.environ["PYNN_ISA"] = kernels.chosen_isa()
    compiler = _compiler()
    flags = subprocess.run([sys.executable, "-m", "pynn", "config", "--cflags", "--libs"],
                           capture_output=True, text=True)
    if compiler is None or flags.returncode != 0:
        return None
    with tempfile.TemporaryDirectory(prefix="pynn-bench-capi-") as folder:
        source, library = os.path.join(folder, "loop.c"), os.path.join(folder, "libloop.so")
        with open(source, "w") as file:
            file.write(HELPER)
        subprocess.run([compiler, "-O2", "-shared", "-fPIC", source, *flags.stdout.split(), "-o", library],
                       check=True, capture_output=True, text=True)
        helper = ctypes.CDLL(library)  # loaded: the file may go
    helper.pynn_model_load.restype = ctypes.c_void_p
    helper.pynn_model_load.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]
    helper.pynn_model_free.argtypes = [ctypes.c_void_p]
    helper.pynn_bench_predict_loop.restype = ctypes.c_int
    helper.pynn_bench_predict_loop.argtypes = [
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int,
        ctypes.c_char_p, ctypes.c_size_t]
    _helper = helper
    return helper


def _c_runner(helper, path, x, output_shape, threads, repeats):
    """(runner making `repeats` C calls, one call's output) for the model file at `path`."""
    err = ctypes.create_string_buffer(1024)
    model = helper.pynn_model_load(path.encode(), err, len(err))
    if not model:
        raise RuntimeError(f"bench capi: pynn_model_load: {err.value.decode()}")
    y = np.empty((len(x),) + tuple(output_shape), np.float32)
    x_pointer, y_pointer = x.ctypes.data, y.ctypes.data

    def predict(calls):
        if helper.pynn_bench_predict_loop(model, x_pointer, len(x), y_pointer, calls, threads, err, len(err)):
            raise RuntimeError(f"bench capi: pynn_model_predict: {err.value.decode()}")
        return y

    weakref.finalize(predict, helper.pynn_model_free, model)
    return (lambda: predict(repeats)), (lambda: predict(1).copy())


def _check_bits(c_output, model, x, what):
    def check():
        expected, actual = model.predict(x), c_output()
        assert actual.shape == expected.shape and np.array_equal(actual.view(np.uint32),
                                                                 expected.view(np.uint32)), (
            f"{what}: the C API's output differs from predict's by up to "
            f"{np.abs(actual.astype(np.float64) - expected).max():.3g}")
    return check


def _onnx_runner(ort, path, x, threads, repeats):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}

    def run():
        for _ in range(repeats):
            session.run(None, feed)
    return run


def cases(quick, threads):
    helper = _load_helper()
    if helper is None:
        return []
    onnx, ort = optional_import("onnx"), optional_import("onnxruntime")
    repeats = QUICK_REPEATS if quick else REPEATS
    lenet = build_lenet()
    lenet.input_shape = (1, 28, 28)
    rng = np.random.default_rng(0)
    found = []
    with tempfile.TemporaryDirectory(prefix="pynn-bench-capi-") as folder:  # files read at load
        for name, model, shape in (("MLP 784-256-128-10", build_mlp(), (784,)),
                                   ("LeNet-5 1x28x28", lenet, lenet.input_shape)):
            x = rng.random((1,) + tuple(shape), dtype=np.float32)
            path = os.path.join(folder, f"{len(found)}.safetensors")
            model.save(path)
            c_run, c_output = _c_runner(helper, path, x, model.predict(x).shape[1:], threads, repeats)

            def python_run(model=model, x=x):
                for _ in range(repeats):
                    model.predict(x)
            runners = {"pynn": c_run, "python predict": python_run}
            if onnx is not None and ort is not None:
                import pynn.onnx

                onnx_path = os.path.join(folder, f"{len(found)}.onnx")
                pynn.onnx.export(model, onnx_path)
                runners["onnxruntime"] = _onnx_runner(ort, onnx_path, x, threads, repeats)
            case = f"{name} batch 1 (C call latency)"
            found.append(Case("capi", case, runners, work=1, unit="samples/s", repeats=repeats,
                              check=_check_bits(c_output, model, x, case), follows_path=False))
    return found


def _stripped_size(path):
    """Bytes of `path` after `strip` (of a copy), or its size when strip is missing."""
    strip = shutil.which("strip")
    if strip is None:
        return os.path.getsize(path), False
    with tempfile.TemporaryDirectory() as folder:
        copy = os.path.join(folder, os.path.basename(path))
        shutil.copyfile(path, copy)
        stripped = subprocess.run([strip, copy], capture_output=True).returncode == 0
        return os.path.getsize(copy), stripped


def notes():
    """The stripped size of libpynn beside ONNX Runtime's shared libraries."""
    import pynn

    libraries = glob.glob(os.path.join(os.path.dirname(pynn.__file__), "lib", "libpynn.*"))
    ort = optional_import("onnxruntime")
    if ort is not None:
        libraries += sorted(glob.glob(os.path.join(os.path.dirname(ort.__file__), "capi", "*.so*")))
    if not libraries:
        return []
    lines = ["", "Shared library sizes, stripped:"]
    for path in libraries:
        size, stripped = _stripped_size(path)
        lines.append(f"- {os.path.basename(path)}: {size / 2 ** 20:.2f} MiB"
                     + ("" if stripped else " (not stripped)"))
    return lines
