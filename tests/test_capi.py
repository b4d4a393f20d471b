"""The C API (include/pynn.h, libpynn): the library built from the source tree
with make, without Python, runs models saved from Python to the same bits as
``predict`` on every kernel path and thread count, refuses damaged and
unsupported files with a message naming the problem, and is what
``python -m pynn config`` points a compiler at."""
import importlib.util
import os
import re
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

import pynn
from pynn.io import read_tensors, save_tensors
from pynn.layers import (GELU, AdaptiveAvgPool2d, Add, Affine, AvgPool1d, AvgPool2d, BatchNorm1d, BatchNorm2d,
                         Concatenate, Conv1d, Conv2d, Dot, Dropout, Flatten, GlobalAvgPool2d,
                         LayerNorm, LeakyReLU, Linear, LogSoftmax, MaxPool1d, MultiheadAttention, MaxPool2d, Multiply, Permute, PositionalEmbedding, ReLU,
                         Reshape, Sigmoid, Softmax, Tanh, TransformerEncoderLayer)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A test driver over the public API: "run" writes the outputs for a raw
# float32 input file, "shapes" prints the input and output shapes, "load"
# prints the error of a file that must not load, "concurrent" predicts from
# several threads at once and checks each against one call alone.
DRIVER = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "pynn.h"

static pynn_model *model;
static float *x, *expected;
static long long batch, in_size, out_size;

static long long volume(int (*shape_of)(const pynn_model *, int64_t *, int))
{
    int64_t shape[8];
    long long size = 1;
    const int rank = shape_of(model, shape, 8);
    for (int axis = 0; axis < rank; axis++)
        size *= shape[axis];
    return size;
}

static void *predict_many(void *unused)
{
    float *y = malloc(out_size * sizeof *y);
    char err[256];
    int same = 1;
    for (int k = 0; k < 20; k++)
        same &= !pynn_model_predict(model, x, batch, y, err, sizeof err)
                && !memcmp(y, expected, out_size * sizeof *y);
    free(y);
    return same ? NULL : (void *)1;
}

int main(int argc, char **argv)
{
    char err[1024];
    model = pynn_model_load(argv[2], err, sizeof err);
    if (!strcmp(argv[1], "load")) {
        printf("%s", model ? "loaded" : err);
        pynn_model_free(model);
        return model ? 1 : 0;
    }
    if (!model) { fprintf(stderr, "%s\n", err); return 2; }
    if (!strcmp(argv[1], "shapes")) {
        int64_t shape[8];
        int rank = pynn_model_input_shape(model, shape, 8);
        for (int axis = 0; axis < rank; axis++) printf("%lld ", (long long)shape[axis]);
        rank = pynn_model_output_shape(model, shape, 8);
        printf("| ");
        for (int axis = 0; axis < rank; axis++) printf("%lld ", (long long)shape[axis]);
        printf("| %d %s", pynn_model_input_shape(model, shape, 0), pynn_version());
        pynn_model_free(model);
        return 0;
    }
    pynn_set_num_threads(atoi(argv[3]));
    batch = atoll(argv[4]);
    in_size = batch * volume(pynn_model_input_shape);
    out_size = batch * volume(pynn_model_output_shape);
    x = malloc((in_size + 1) * sizeof *x);
    expected = malloc((out_size + 1) * sizeof *expected);
    FILE *file = fopen(argv[5], "rb");
    if (!file || fread(x, sizeof *x, in_size, file) != (size_t)in_size) return 3;
    fclose(file);
    if (pynn_model_predict(model, x, batch, expected, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 4;
    }
    if (!strcmp(argv[1], "concurrent")) {
        pthread_t threads[4];
        void *failed = NULL, *result;
        for (int t = 0; t < 4; t++) pthread_create(&threads[t], NULL, predict_many, NULL);
        for (int t = 0; t < 4; t++) {
            pthread_join(threads[t], &result);
            failed = failed ? failed : result;
        }
        if (failed) return 5;
    }
    file = fopen(argv[6], "wb");
    fwrite(expected, sizeof *expected, out_size, file);
    fclose(file);
    free(x);
    free(expected);
    pynn_model_free(model);
    return 0;
}
"""


def compile_program(source, output, include, library_dir, *flags):
    subprocess.run(["cc", "-O2", "-Wall", "-Werror", *flags, f"-I{include}", source, f"-L{library_dir}",
                    "-lpynn", f"-Wl,-rpath,{library_dir}", "-lpthread", "-o", output],
                   check=True, capture_output=True, text=True)
    return output


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """libpynn built by make from the source tree, and the driver and the
    example linked against it."""
    folder = tmp_path_factory.mktemp("libpynn")
    # an extension built with the AVX-512 paths emulated on AVX2 is matched by
    # a library built the same way, so their bits can be compared
    emulated = "-DPYNN_EMULATE_AVX512" in pynn.config.config()["flags"]
    extra = ([f"EXTRA_CFLAGS=-DPYNN_EMULATE_AVX512 -include {os.path.join(ROOT, 'tools', 'avx512_emulation.h')} "
              "-Wno-psabi"] if emulated else [])
    result = subprocess.run(["make", "-C", os.path.join(ROOT, "csrc"), f"BUILD={folder}", "-j2", *extra],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert not warnings, warnings
    assert (folder / "libpynn.so").exists() and (folder / "libpynn.a").exists()
    include = os.path.join(ROOT, "include")
    driver = folder / "driver.c"
    driver.write_text(DRIVER)
    return {"driver": compile_program(str(driver), str(folder / "driver"), include, str(folder)),
            "fuzz": compile_program(os.path.join(ROOT, "csrc", "fuzz", "fuzz_model_load.c"),
                                    str(folder / "fuzz"), include, str(folder), "-DPYNN_FUZZ_MAIN"),
            "predict": compile_program(os.path.join(ROOT, "examples", "c", "predict.c"),
                                       str(folder / "predict"), include, str(folder))}


def run_driver(built, mode, path, *args, isa=None, returncode=0):
    environment = dict(os.environ)
    if isa is not None:
        environment["PYNN_ISA"] = isa
    result = subprocess.run([built["driver"], mode, str(path), *map(str, args)], capture_output=True,
                            text=True, env=environment, timeout=300)
    assert result.returncode == returncode, result.stdout + result.stderr
    return result.stdout


def randomised_batchnorms(model, seed=0):
    """Running statistics and affine parameters away from their initial values."""
    rng = np.random.default_rng(seed)
    for _, layer in model.named_layers():
        if isinstance(layer, (BatchNorm1d, BatchNorm2d)):
            count = layer.num_features
            layer.buffers["running_mean"][:] = rng.standard_normal(count)
            layer.buffers["running_var"][:] = rng.random(count) + 0.5
            layer.params["weight"][:] = rng.standard_normal(count)
            layer.params["bias"][:] = rng.standard_normal(count)
    return model


def mlp():
    return randomised_batchnorms(pynn.Sequential(
        Linear(20, 64), ReLU(), Dropout(0.2), Linear(64, 32), Tanh(), BatchNorm1d(32),
        Linear(32, 16), LeakyReLU(0.1), Linear(16, 5), Softmax()))


def cnn():
    model = randomised_batchnorms(pynn.Sequential(
        Conv2d(3, 8, 3, padding=1), BatchNorm2d(8), ReLU(), MaxPool2d(2),
        Conv2d(8, 16, 3, stride=1, padding=1, groups=2), ReLU(), BatchNorm2d(16),
        AvgPool2d(2, ceil_mode=True), Conv2d(16, 8, 1), GELU(), Flatten(), Linear(8 * 3 * 3, 10)))
    model.input_shape = (3, 10, 10)
    return model


def graph():
    x = pynn.Input((3, 8, 8))
    stem = ReLU()(BatchNorm2d(8, name="stem.bn")(Conv2d(3, 8, 3, padding=1, name="stem.conv")(x)))
    branch = ReLU()(Conv2d(8, 8, 3, padding=1, name="block.conv")(stem))
    residual = ReLU()(Add()([branch, stem]))
    squeezed = Linear(8, 8, name="excite")(GlobalAvgPool2d()(residual))
    scaled = Multiply()([residual, Sigmoid()(Reshape((8, 1, 1))(squeezed))])
    joined = Concatenate(axis=1)([scaled, stem])
    pooled = GlobalAvgPool2d()(joined)
    hidden = Reshape((4, 4))(pooled)
    out = Linear(16, 4, name="head")(Flatten()(hidden))
    return randomised_batchnorms(pynn.Model(x, Softmax()(out)))


def signal():
    model = randomised_batchnorms(pynn.Sequential(
        Conv1d(2, 6, 3, padding=1), ReLU(), MaxPool1d(2),
        Conv1d(6, 6, 3, dilation=2, padding=2, groups=3),
        BatchNorm1d(6), AvgPool1d(3, stride=2, padding=1, count_include_pad=False), LayerNorm(4),
        Permute((0, 2, 1)), Flatten(), Linear(24, 3)))
    model.input_shape = (2, 16)
    return model


def two_towers():
    x = pynn.Input((3, 9, 9))
    pooled = AdaptiveAvgPool2d((3, None))(Conv2d(3, 4, 3, name="conv")(x))
    user = Linear(84, 8, name="user")(Flatten()(pooled))
    item = Linear(243, 8, name="item")(Flatten()(x))
    normed = LayerNorm(8, elementwise_affine=False, name="norm")(item)
    return pynn.Model(x, Concatenate(axis=-1)([Dot()([user, normed]), user]))


def wide():
    """Enough work per row that small batches run as one team of threads (csrc/plan.c)."""
    return pynn.Sequential(Linear(128, 512), ReLU(), Linear(512, 256), GELU(), Linear(256, 10))


def nested():
    """A Sequential and a Model called as layers inside a Model, each run by its own plan."""
    block = pynn.Sequential(Conv2d(4, 4, 3, padding=1), BatchNorm2d(4), ReLU(), name="block")
    features = pynn.Input((16,))
    head_hidden = ReLU()(Linear(16, 12, name="hidden")(features))
    head = pynn.Model(features, Linear(12, 3, name="logits")(head_hidden), name="head")
    x = pynn.Input((2, 6, 6))
    h = Conv2d(2, 4, 3, name="stem")(x)
    h = ReLU()(block(h))
    h = AdaptiveAvgPool2d(2)(block(h))
    return randomised_batchnorms(pynn.Model(x, Softmax()(head(Flatten()(h)))))


def resnet():
    """examples/resnet_digits.py's network: convolutions without bias, BatchNorms folded."""
    spec = importlib.util.spec_from_file_location(
        "resnet_digits", os.path.join(ROOT, "examples", "resnet_digits.py"))
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return randomised_batchnorms(example.small_resnet(8))


def scaled():
    """Affine constants broadcast right-aligned (the second one adding an axis), and LogSoftmax."""
    rng = np.random.default_rng(4)
    model = pynn.Sequential(Affine((3, 1, 1)), Affine((2, 1, 1, 5), shift=False), Flatten(),
                            Linear(120, 6), Affine((6,), scale=False), Reshape((2, 3)), LogSoftmax(axis=1),
                            Flatten(), Affine(()), LogSoftmax())
    for layer in model.layers:
        for buffer in layer.buffers.values():
            buffer[...] = rng.standard_normal(buffer.shape)
    model.input_shape = (3, 4, 5)
    return model


def randomised(model, seed=5):
    """Every parameter drawn afresh, biases included (PyTorch's start them at zero)."""
    rng = np.random.default_rng(seed)
    for _, layer in model.named_layers():
        for key, param in layer.params.items():
            param[...] = rng.standard_normal(param.shape) * (0.3 if param.ndim > 1 else 0.5)
    return model


def encoder():
    """Learned positions, self-attention, transformer encoder layers post-norm with ReLU and
    pre-norm with GELU, then a classifier over the flattened tokens."""
    x = pynn.Input((6, 16))
    h = PositionalEmbedding(8, 16, name="positions")(x)
    h = MultiheadAttention(16, 4, name="attention")(h)
    h = TransformerEncoderLayer(16, 2, dim_feedforward=24, name="post")(h)
    h = TransformerEncoderLayer(16, 4, dim_feedforward=32, activation="gelu", layer_norm_eps=1e-6,
                                norm_first=True, name="pre")(h)
    return randomised(pynn.Model(x, Linear(96, 3, name="head")(Flatten()(h))))


def attention_without_bias():
    model = randomised(pynn.Sequential(MultiheadAttention(8, 2, bias=False), ReLU(),
                                       TransformerEncoderLayer(8, 1, dim_feedforward=8, norm_first=True),
                                       LogSoftmax()))
    model.input_shape = (5, 8)
    return model


MODELS = {"mlp": (mlp, (20,)), "wide": (wide, (128,)), "cnn": (cnn, (3, 10, 10)),
          "graph": (graph, (3, 8, 8)), "resnet": (resnet, (1, 8, 8)), "signal": (signal, (2, 16)),
          "nested": (nested, (2, 6, 6)), "two_towers": (two_towers, (3, 9, 9)),
          "scaled": (scaled, (3, 4, 5)), "encoder": (encoder, (6, 16)),
          "attention_without_bias": (attention_without_bias, (5, 8))}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_predict_gives_python_predicts_bits(built, name, threads, isa, set_threads, tmp_path):
    build, shape = MODELS[name]
    model = build()
    path = tmp_path / "model.safetensors"
    model.save(path)
    set_threads(threads)
    for batch in (0, 1, 5, 64):
        x = np.random.default_rng(batch).standard_normal((batch,) + shape).astype(np.float32)
        x.tofile(tmp_path / "x.bin")
        run_driver(built, "run", path, threads, batch, tmp_path / "x.bin", tmp_path / "y.bin", isa=isa)
        expected = model.predict(x)
        got = np.fromfile(tmp_path / "y.bin", dtype=np.float32).reshape(expected.shape)
        np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32),
                                      err_msg=f"{name}, batch {batch}, {threads} threads, {isa}")


def test_a_model_of_views_copies_its_input(built, tmp_path):
    model = pynn.Sequential(Flatten(), Dropout(0.5))
    model.input_shape = (2, 3)
    model.save(tmp_path / "model.safetensors")
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    x.tofile(tmp_path / "x.bin")
    run_driver(built, "run", tmp_path / "model.safetensors", 1, 4, tmp_path / "x.bin",
               tmp_path / "y.bin")
    np.testing.assert_array_equal(np.fromfile(tmp_path / "y.bin", dtype=np.float32), x.ravel())


def test_concurrent_predicts_each_get_the_single_call_bits(built, tmp_path):
    model = cnn()
    model.save(tmp_path / "model.safetensors")
    x = np.random.default_rng(0).standard_normal((7, 3, 10, 10)).astype(np.float32)
    x.tofile(tmp_path / "x.bin")
    run_driver(built, "concurrent", tmp_path / "model.safetensors", 2, 7, tmp_path / "x.bin",
               tmp_path / "y.bin")


def test_shapes_and_version(built, tmp_path):
    model = cnn()
    model.save(tmp_path / "model.safetensors")
    shapes = run_driver(built, "shapes", tmp_path / "model.safetensors")
    assert shapes == f"3 10 10 | 10 | -1 {pynn.__version__}"
    pynn.Sequential(Linear(6, 2)).save(tmp_path / "linear.safetensors")  # no recorded shape: in_features
    assert run_driver(built, "shapes", tmp_path / "linear.safetensors").startswith("6 | 2 |")


def test_the_example_prints_python_predicts_classes(built, tmp_path):
    model = mlp()
    model.save(tmp_path / "model.safetensors")
    x = np.random.default_rng(3).standard_normal((300, 20)).astype(np.float32)
    rows = "\n".join(",".join(repr(float(value)) for value in row) for row in x) + "\n"
    result = subprocess.run([built["predict"], str(tmp_path / "model.safetensors")], input=rows,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert [int(line) for line in result.stdout.split()] == model.predict(x).argmax(axis=1).tolist()
    bad = subprocess.run([built["predict"], str(tmp_path / "model.safetensors")], input="1,2,x\n",
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "line 1: expected 20 comma-separated numbers" in bad.stderr


# -- files that must not load ---------------------------------------------------------------
def saved_bytes(tmp_path):
    model = pynn.Sequential(Linear(4, 3), ReLU(), Linear(3, 2))
    model.save(tmp_path / "good.safetensors")
    return (tmp_path / "good.safetensors").read_bytes()


def header_of(data):
    length = struct.unpack("<Q", data[:8])[0]
    return data[8:8 + length].decode(), data[8 + length:]


def with_header(header, body):
    raw = header.encode()
    return struct.pack("<Q", len(raw)) + raw + body


def rewritten(tmp_path, change):
    """The good file with its tensors and metadata passed through ``change``."""
    tensors, metadata = read_tensors(tmp_path / "good.safetensors")
    change(tensors, metadata)
    save_tensors(tmp_path / "bad.safetensors", tensors, metadata)
    return (tmp_path / "bad.safetensors").read_bytes()


def architecture_replaced(old, new):
    def change(tensors, metadata):
        metadata["architecture"] = metadata["architecture"].replace(old, new)
    return change


BAD_FILES = {
    "truncated to 5 bytes": (lambda data, tmp: data[:5], "truncated: 5 bytes"),
    "cut in the data": (lambda data, tmp: data[:-3], "data_offsets outside"),
    "a header length beyond the file": (
        lambda data, tmp: struct.pack("<Q", 1 << 40) + data[8:], "bad header length 1099511627776"),
    "a header that is not JSON": (
        lambda data, tmp: with_header("{\"a\": [1, 2", header_of(data)[1]), "header is not valid JSON"),
    "a header that is not UTF-8": (
        lambda data, tmp: struct.pack("<Q", 2) + b"\xff\xfe", "header is not UTF-8"),
    "nesting 10000 deep": (
        lambda data, tmp: with_header("[" * 10000 + "]" * 10000, b""), "nested deeper than 64 levels"),
    "duplicate keys": (
        lambda data, tmp: with_header('{"a": 1, "a": 2}', b""), "duplicate key \"a\""),
    "a tensor of the wrong size": (
        lambda data, tmp: with_header(header_of(data)[0].replace('"shape":[3,4]', '"shape":[3,5]'),
                                      header_of(data)[1]),
        "tensor '0.weight' is F32 with 15 elements but its data_offsets span 48 bytes"),
    "a weight of the wrong shape": (
        lambda data, tmp: rewritten(
            tmp, lambda t, m: t.update({"0.weight": np.zeros((4, 3), np.float32)})),
        "layer 0 (Linear): tensor '0.weight' must be F32 of shape (3, 4), got F32 of shape (4, 3)"),
    "a missing weight": (
        lambda data, tmp: rewritten(tmp, lambda t, m: t.pop("2.bias")),
        "layer 2 (Linear): missing tensor '2.bias'"),
    "an extra tensor": (
        lambda data, tmp: rewritten(tmp, lambda t, m: t.update({"extra": np.zeros(2, np.float32)})),
        "the file holds 5 tensors, the architecture reads 4"),
    "an unknown layer type": (
        lambda data, tmp: rewritten(tmp, architecture_replaced('"ReLU"', '"Bogus"')),
        "layer 1: layer type 'Bogus' is not supported by the C API"),
    "an architecture that is not JSON": (
        lambda data, tmp: rewritten(tmp, architecture_replaced("[", "((")),
        "the architecture is not valid JSON"),
    "no architecture": (
        lambda data, tmp: rewritten(tmp, lambda t, m: m.pop("architecture")), "not a pynn model file"),
    "metadata that is not all strings (found by libFuzzer)": (
        lambda data, tmp: with_header(header_of(data)[0].replace('"__metadata__":{', '"__metadata__":{"n":1,'),
                                      header_of(data)[1]), "__metadata__ must map strings to strings"),
    "a bad argument": (
        lambda data, tmp: rewritten(tmp, architecture_replaced('"in_features": 4', '"in_features": -4')),
        "layer 0 (Linear): in_features must be an integer in"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_damaged_file_is_refused_with_a_message(built, case, tmp_path):
    damage, message = BAD_FILES[case]
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(damage(saved_bytes(tmp_path), tmp_path))
    error = run_driver(built, "load", path)
    assert error.startswith(f"{path}: ") and message in error, error


def mutated(data, rng):
    """``data`` with a few bytes changed, cut short, or a number of its header
    (the architecture's included) replaced by an extreme one."""
    kind = rng.integers(0, 3)
    if kind == 0:
        changed = bytearray(data)
        for _ in range(rng.integers(1, 8)):
            changed[rng.integers(0, len(changed))] = rng.integers(0, 256)
        return bytes(changed)
    if kind == 1:
        return data[:rng.integers(0, len(data))]
    header, body = header_of(data)
    numbers = list(re.finditer(r"-?\d+", header))
    found = numbers[rng.integers(0, len(numbers))]
    extreme = ["0", "-1", "4294967296", "9223372036854775807", "1e308", "null", "[]"][rng.integers(0, 7)]
    return with_header(header[:found.start()] + extreme + header[found.end():], body)


def test_thousands_of_damaged_files_never_crash_the_loader(built, tmp_path):
    rng = np.random.default_rng(0)
    seeds = []
    for name, (build, _) in sorted(MODELS.items()):
        build().save(tmp_path / f"{name}.safetensors")
        seeds.append((tmp_path / f"{name}.safetensors").read_bytes())
    paths = []
    for index in range(1500):
        path = tmp_path / f"damaged{index}.bin"
        path.write_bytes(mutated(seeds[index % len(seeds)], rng))
        paths.append(str(path))
    result = subprocess.run([built["fuzz"], *paths], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr


def test_a_layer_far_larger_than_the_file_is_refused(built, tmp_path):
    model = pynn.Sequential(AdaptiveAvgPool2d(2), Flatten())
    model.input_shape = (1, 4, 4)
    model.save(tmp_path / "pool.safetensors")
    tensors, metadata = read_tensors(tmp_path / "pool.safetensors")
    metadata["architecture"] = metadata["architecture"].replace('"output_size": 2',
                                                                '"output_size": 100000')
    save_tensors(tmp_path / "pool.safetensors", tensors, metadata)
    error = run_driver(built, "load", tmp_path / "pool.safetensors")
    assert "layer 0 (AdaptiveAvgPool2d) outputs 10000000000 values per sample" in error, error


def test_a_missing_file_is_named(built, tmp_path):
    error = run_driver(built, "load", tmp_path / "nowhere.safetensors")
    assert error == f"{tmp_path / 'nowhere.safetensors'}: cannot be opened"


def test_an_input_a_layer_refuses_names_the_layer_and_the_shape(built, tmp_path):
    model = pynn.Sequential(Flatten(), Linear(12, 2))
    model.input_shape = (3, 4)
    model.save(tmp_path / "model.safetensors")
    data = rewritten_input_shape(tmp_path / "model.safetensors", "[3, 5]")
    error = run_driver(built, "load", data)
    assert "layer 1 (Linear) refuses input shape (1, 15): the last axis must hold in_features" in error


def rewritten_input_shape(path, shape):
    tensors, metadata = read_tensors(path)
    metadata["input_shape"] = shape
    save_tensors(path, tensors, metadata)
    return path


# -- the library inside the package -------------------------------------------------------------
def test_config_flags_build_the_example_against_the_packaged_library(tmp_path):
    def flags(option):
        result = subprocess.run([sys.executable, "-m", "pynn", "config", option], capture_output=True,
                                text=True, env=dict(os.environ, PYTHONPATH=os.path.dirname(
                                    os.path.dirname(pynn.__file__))))
        assert result.returncode == 0, result.stderr
        return result.stdout.split()

    cflags, libs = flags("--cflags"), flags("--libs")
    include, library = cflags[0][2:], libs[0][2:]
    assert cflags == [f"-I{include}"] and os.path.isfile(os.path.join(include, "pynn.h"))
    assert libs == [f"-L{library}", "-lpynn", f"-Wl,-rpath,{library}"]
    program = tmp_path / "predict"
    subprocess.run(["cc", "-O2", *cflags, os.path.join(ROOT, "examples", "c", "predict.c"), *libs,
                    "-o", str(program)], check=True)
    model = mlp()
    model.save(tmp_path / "model.safetensors")
    x = np.random.default_rng(4).standard_normal((3, 20)).astype(np.float32)
    rows = "\n".join(",".join(repr(float(value)) for value in row) for row in x) + "\n"
    result = subprocess.run([str(program), str(tmp_path / "model.safetensors")], input=rows,
                            capture_output=True, text=True, check=True)
    assert [int(line) for line in result.stdout.split()] == model.predict(x).argmax(axis=1).tolist()


def test_the_rust_example_prints_python_predicts_classes(built, tmp_path):
    """examples/c/predict.rs, compiled where rustc is on the machine."""
    rustc = shutil.which("rustc")
    if rustc is None:
        pytest.skip("rustc is not installed")
    library = os.path.dirname(built["driver"])
    program = tmp_path / "predict_rs"
    compiled = subprocess.run([rustc, "-O", os.path.join(ROOT, "examples", "c", "predict.rs"), "-L", library,
                               "-l", "pynn", "-C", f"link-args=-Wl,-rpath,{library}", "-o", str(program)],
                              capture_output=True, text=True, timeout=600)
    assert compiled.returncode == 0, compiled.stderr
    model = mlp()
    model.save(tmp_path / "model.safetensors")
    x = np.random.default_rng(4).standard_normal((50, 20)).astype(np.float32)
    rows = "\n".join(",".join(repr(float(value)) for value in row) for row in x) + "\n"
    result = subprocess.run([str(program), str(tmp_path / "model.safetensors")], input=rows,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert [int(line) for line in result.stdout.split()] == model.predict(x).argmax(axis=1).tolist()


def test_a_layer_that_merges_the_batch_axis_is_refused(built, tmp_path):
    """Found by libFuzzer: a Flatten from axis 0 made the plan's shapes disagree with its buffers."""
    model = pynn.Sequential(pynn.layers.Flatten(), Linear(8, 3))
    model.input_shape = (2, 4)
    model.save(tmp_path / "flat.safetensors")
    tensors, metadata = read_tensors(tmp_path / "flat.safetensors")
    metadata["architecture"] = metadata["architecture"].replace('"start_dim": 1', '"start_dim": 0')
    save_tensors(tmp_path / "flat.safetensors", tensors, metadata)
    error = run_driver(built, "load", tmp_path / "flat.safetensors")
    assert "the output must keep the batch axis first" in error or "depends on the batch size" in error, error
