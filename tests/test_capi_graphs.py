"""The C API's general call (pynn_model_run): models with several inputs and
outputs, int64 indices and bool masks, and axes of any length run to the same
bits as Python's ``predict`` on every kernel path and thread count; inputs that
do not fit are refused with a message naming the input (an out-of-range index
its value), never a crash."""
import os
import subprocess

import numpy as np
import pytest

import pynn
from pynn.bench.graph import build_recommender
from pynn.layers import (Add, Embedding, Flatten, LayerNorm, Linear, MeanPooling, MultiheadAttention, PaddingMask,
                         PositionalEmbedding, ReLU, Softmax, TransformerEncoderLayer)
from tests.test_capi import ROOT, built, compile_program, randomised  # noqa: F401 (built: the library fixture)

DTYPES = {np.dtype(np.float32): 0, np.dtype(np.int64): 1, np.dtype(np.bool_): 2}

# "run MODEL THREADS COUNT [DTYPE RANK DIMS... FILE]... OUT": the outputs for
# those inputs, run twice (the second on the kept plan, the same bits), written
# one after another to OUT, their shapes printed; "concurrent" (the same
# arguments) then checks that threads running those inputs and their first
# sample alone, in turn, each get the bits of one call alone; "info MODEL":
# the inputs and outputs pynn_model_*_info give, and what pynn_model_predict
# says.
DRIVER = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "pynn.h"

static pynn_model *model;
static int count, outs;
static pynn_tensor inputs[8], firsts[8], outputs[8], first_outputs[8];

/* outputs shaped as `like`, freshly allocated */
static void allocate(const pynn_tensor *like, pynn_tensor *made)
{
    for (int i = 0; i < outs; i++) {
        size_t size = 1;
        made[i] = like[i];
        for (int axis = 0; axis < like[i].rank; axis++) size *= like[i].shape[axis];
        made[i].data = malloc(size * sizeof(float) + 1);
    }
}

static int same(const pynn_tensor *a, const pynn_tensor *b)
{
    for (int i = 0; i < outs; i++) {
        size_t size = 1;
        for (int axis = 0; axis < a[i].rank; axis++) size *= a[i].shape[axis];
        if (memcmp(a[i].data, b[i].data, size * sizeof(float))) return 0;
    }
    return 1;
}

static void *alternate(void *unused)
{
    pynn_tensor mine[8], mine_first[8];
    char err[512];
    int fine = 1;
    allocate(outputs, mine);
    allocate(first_outputs, mine_first);
    for (int k = 0; k < 10; k++)
        fine &= !pynn_model_run(model, inputs, count, mine, outs, err, sizeof err) && same(mine, outputs)
                && !pynn_model_run(model, firsts, count, mine_first, outs, err, sizeof err)
                && same(mine_first, first_outputs);
    for (int i = 0; i < outs; i++) { free(mine[i].data); free(mine_first[i].data); }
    return fine ? NULL : (void *)1;
}

static void *read_all(const char *path)
{
    FILE *file = fopen(path, "rb");
    if (!file) return NULL;
    fseek(file, 0, SEEK_END);
    const long size = ftell(file);
    fseek(file, 0, SEEK_SET);
    void *data = malloc(size + 1);
    if (fread(data, 1, size, file) != (size_t)size) return NULL;
    fclose(file);
    return data;
}

static void print_info(const char *what, int index, const char *name, pynn_dtype dtype, const int64_t *shape,
                       int rank)
{
    printf("%s %d %s %d", what, index, name ? name : "-", (int)dtype);
    for (int axis = 0; axis < rank; axis++) printf(" %lld", (long long)shape[axis]);
    printf("\n");
}

int main(int argc, char **argv)
{
    char err[1024];
    model = pynn_model_load(argv[2], err, sizeof err);
    if (!model) { fprintf(stderr, "%s\n", err); return 2; }
    if (!strcmp(argv[1], "info")) {
        int64_t shape[8];
        const char *name;
        pynn_dtype dtype;
        for (int i = 0; i < pynn_model_input_count(model); i++)
            print_info("input", i, name, dtype, shape,
                       pynn_model_input_info(model, i, &name, &dtype, shape, 8));
        for (int i = 0; i < pynn_model_output_count(model); i++)
            print_info("output", i, name, dtype, shape,
                       pynn_model_output_info(model, i, &name, &dtype, shape, 8));
        printf("beyond %d %d\n", pynn_model_input_info(model, 99, NULL, NULL, shape, 8),
               pynn_model_output_info(model, -1, NULL, NULL, shape, 8));
        float x[64] = {0}, y[64];
        printf("predict %d %s\n", pynn_model_predict(model, x, 1, y, err, sizeof err), err);
        pynn_model_free(model);
        return 0;
    }
    pynn_set_num_threads(atoi(argv[3]));
    count = atoi(argv[4]);
    int at = 5;
    for (int i = 0; i < count; i++) {
        inputs[i].dtype = (pynn_dtype)atoi(argv[at++]);
        inputs[i].rank = atoi(argv[at++]);
        for (int axis = 0; axis < inputs[i].rank; axis++) inputs[i].shape[axis] = atoll(argv[at++]);
        inputs[i].data = read_all(argv[at++]);
    }
    outs = pynn_model_output_count(model);
    if (pynn_model_output_shapes(model, inputs, count, outputs, outs, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 3;
    }
    size_t sizes[8];
    for (int i = 0; i < outs; i++) {
        sizes[i] = 1;
        for (int axis = 0; axis < outputs[i].rank; axis++) sizes[i] *= outputs[i].shape[axis];
        outputs[i].data = malloc(sizes[i] * sizeof(float) + 1);
    }
    if (pynn_model_run(model, inputs, count, outputs, outs, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 4;
    }
    for (int i = 0; i < outs; i++) {
        float *again = malloc(sizes[i] * sizeof(float) + 1);
        pynn_tensor first = outputs[i];
        outputs[i].data = again;
        if (pynn_model_run(model, inputs, count, outputs, outs, err, sizeof err)
            || memcmp(again, first.data, sizes[i] * sizeof(float))) return 5;
        outputs[i].data = first.data;
        free(again);
    }
    if (!strcmp(argv[1], "concurrent")) {
        for (int i = 0; i < count; i++) {
            firsts[i] = inputs[i];
            firsts[i].shape[0] = 1;
        }
        if (pynn_model_output_shapes(model, firsts, count, first_outputs, outs, err, sizeof err)) return 6;
        allocate(first_outputs, first_outputs);
        if (pynn_model_run(model, firsts, count, first_outputs, outs, err, sizeof err)) return 6;
        pthread_t threads[4];
        void *failed = NULL, *result;
        for (int t = 0; t < 4; t++) pthread_create(&threads[t], NULL, alternate, NULL);
        for (int t = 0; t < 4; t++) {
            pthread_join(threads[t], &result);
            failed = failed ? failed : result;
        }
        if (failed) return 7;
    }
    FILE *file = fopen(argv[at], "wb");
    for (int i = 0; i < outs; i++) {
        fwrite(outputs[i].data, sizeof(float), sizes[i], file);
        for (int axis = 0; axis < outputs[i].rank; axis++) printf("%lld ", (long long)outputs[i].shape[axis]);
        printf(";");
        free(outputs[i].data);
    }
    fclose(file);
    for (int i = 0; i < count; i++) free(inputs[i].data);
    pynn_model_free(model);
    return 0;
}
"""


@pytest.fixture(scope="module")
def driver(built, tmp_path_factory):  # noqa: F811 (the fixture imported above)
    folder = tmp_path_factory.mktemp("graphs")
    source = folder / "graphs.c"
    source.write_text(DRIVER)
    library = os.path.dirname(built["driver"])
    return compile_program(str(source), str(folder / "graphs"), os.path.join(ROOT, "include"), library)


def run(driver, path, inputs, tmp_path, threads=1, isa=None, returncode=0, mode="run"):
    """The driver's outputs for ``inputs`` (arrays, or (array, dtype code) to
    declare another dtype), or its message when ``returncode`` is not 0."""
    arguments = [driver, mode, str(path), str(threads), str(len(inputs))]
    for index, given in enumerate(inputs):
        array, code = given if isinstance(given, tuple) else (given, DTYPES[given.dtype])
        file = tmp_path / f"x{index}.bin"
        np.ascontiguousarray(array).tofile(file)
        arguments += [str(code), str(array.ndim), *map(str, array.shape), str(file)]
    arguments.append(str(tmp_path / "y.bin"))
    environment = dict(os.environ)
    if isa is not None:
        environment["PYNN_ISA"] = isa
    result = subprocess.run(arguments, capture_output=True, text=True, env=environment, timeout=300)
    assert result.returncode == returncode, result.stdout + result.stderr
    if returncode:
        return result.stderr
    data, outputs = np.fromfile(tmp_path / "y.bin", dtype=np.float32), []
    for text in result.stdout.split(";")[:-1]:
        shape = tuple(int(extent) for extent in text.split())
        outputs.append(data[:int(np.prod(shape))].reshape(shape))
        data = data[int(np.prod(shape)):]
    return outputs


def info(driver, path):
    result = subprocess.run([driver, "info", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.splitlines()


# -- the models ---------------------------------------------------------------------
def recommender():
    model = build_recommender(50, 40, 8, seed=3)
    rng = np.random.default_rng(0)
    return model, lambda batch, length: [rng.integers(0, 50, batch), rng.integers(0, 40, batch)]


def two_outputs():
    x = pynn.Input((12,), name="features")
    trunk = ReLU()(Linear(12, 16, name="trunk")(x))
    probabilities = Softmax()(Linear(16, 3, name="classes")(trunk))
    score = Add()([Linear(16, 1, name="score")(trunk), Linear(12, 1, name="skip")(x)])
    model = randomised(pynn.Model(x, [probabilities, score, trunk]))
    rng = np.random.default_rng(1)
    return model, lambda batch, length: [rng.standard_normal((batch, 12)).astype(np.float32)]


def token_batch(rng, batch, length, vocabulary, holes):
    """ids and an attention mask padded at the end (and, with ``holes``, with
    a padded token inside a sequence, which the kernel takes as a full mask)."""
    ids = rng.integers(0, vocabulary, (batch, length))
    mask = np.ones((batch, length), dtype=np.int64)
    for row in range(batch):
        mask[row, max(1, length - row % 3):] = 0
    if holes:
        mask[0, length // 2] = 0
    return [ids, mask]


def text():
    """The encoder pynn/text.py builds for a BERT config, with its pooling."""
    ids = pynn.Input((None,), dtype="int64", name="input_ids")
    mask = pynn.Input((None,), dtype="int64", name="attention_mask")
    x = Embedding(30, 16, padding_idx=0, name="embeddings.word_embeddings")(ids)
    x = PositionalEmbedding(12, 16, name="embeddings.position_embeddings")(x)
    x = LayerNorm(16, eps=1e-12, name="embeddings.LayerNorm")(x)
    bias = PaddingMask(name="padding_mask")(mask)
    for index in range(2):
        x = TransformerEncoderLayer(16, 2, 24, dropout=0.1, activation="gelu", layer_norm_eps=1e-12,
                                    name=f"encoder.layer.{index}")([x, bias])
    model = randomised(pynn.Model([ids, mask], MeanPooling(name="pooling")([x, mask])))
    rng = np.random.default_rng(2)
    return model, lambda batch, length: token_batch(rng, batch, length, 30, length > 6)


def cross():
    """Cross-attention under a bool key mask, attention over one tensor read as
    query, key and value, self-attention under the bool mask, and an encoder
    layer under a float mask."""
    query = pynn.Input((4, 8), name="query")
    memory = pynn.Input((None, 8), name="memory")
    padding = pynn.Input((None,), dtype="bool", name="padding")
    scores = pynn.Input((None,), name="scores")
    attended = MultiheadAttention(8, 2, name="cross")([query, memory, memory, padding])
    same = MultiheadAttention(8, 4, bias=False, name="same")([memory, memory, memory])
    masked = MultiheadAttention(8, 2, name="masked")([memory, padding])
    encoded = TransformerEncoderLayer(8, 2, 16, norm_first=True, name="encoded")([memory, scores])
    model = randomised(pynn.Model([query, memory, padding, scores], [attended, same, masked, encoded]))
    rng = np.random.default_rng(3)

    def inputs(batch, length):
        padded = np.zeros((batch, length), dtype=bool)
        padded[:, length - 1:] = batch > 2
        padded[0, 0] = length > 6  # not at the end: the mask itself
        added = rng.standard_normal((batch, length)).astype(np.float32)
        return [rng.standard_normal((batch, 4, 8)).astype(np.float32),
                rng.standard_normal((batch, length, 8)).astype(np.float32), padded, added]
    return model, inputs


def nested():
    """A nested model of two outputs, one of two inputs, and an output that a
    layer also reads."""
    x = pynn.Input((6,), name="x")
    h = Linear(6, 8, name="inner_linear")(x)
    towers = pynn.Model(x, [ReLU()(h), Linear(8, 4, name="inner_head")(h)], name="towers")
    u, v = pynn.Input((8,)), pynn.Input((8,))
    joiner = pynn.Model([u, v], Add()([u, v]), name="joiner")
    features = pynn.Input((6,), name="features")
    a, b = towers(features)
    joined = joiner([a, Linear(4, 8, name="lift")(b)])
    model = randomised(pynn.Model(features, [joined, b, ReLU()(joined)]))
    rng = np.random.default_rng(4)
    return model, lambda batch, length: [rng.standard_normal((batch, 6)).astype(np.float32)]


def tokens():
    """A Sequential over token ids."""
    model = randomised(pynn.Sequential(Embedding(20, 6), PositionalEmbedding(8, 6),
                                       TransformerEncoderLayer(6, 2, 12), Flatten()))
    model.input_shape = (5,)
    rng = np.random.default_rng(5)
    return model, lambda batch, length: [rng.integers(0, 20, (batch, 5))]


MODELS = {"recommender": recommender, "two_outputs": two_outputs, "text": text, "cross": cross,
          "nested": nested, "tokens": tokens}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_run_gives_python_predicts_bits(driver, name, threads, isa, set_threads, tmp_path):
    model, make_inputs = MODELS[name]()
    path = tmp_path / "model.safetensors"
    model.save(path)
    set_threads(threads)
    for batch, length in ((1, 5), (7, 9), (3, 5)):
        inputs = make_inputs(batch, length)
        expected = model.predict(inputs if len(inputs) > 1 else inputs[0])
        expected = expected if isinstance(expected, list) else [expected]
        got = run(driver, path, inputs, tmp_path, threads, isa)
        assert len(got) == len(expected)
        for position, (mine, theirs) in enumerate(zip(got, expected)):
            assert mine.shape == theirs.shape
            np.testing.assert_array_equal(mine.view(np.uint32), theirs.view(np.uint32),
                                          err_msg=f"{name} output {position}, batch {batch}, length {length}, "
                                                  f"{threads} threads, {isa}")


@pytest.mark.parametrize("name", ["text", "nested"])
def test_concurrent_runs_of_two_shapes_each_get_the_single_call_bits(driver, name, set_threads, tmp_path):
    model, make_inputs = MODELS[name]()
    set_threads(2)
    model.save(tmp_path / "model.safetensors")
    inputs = make_inputs(6, 7)
    got = run(driver, tmp_path / "model.safetensors", inputs, tmp_path, threads=2, mode="concurrent")
    expected = model.predict(inputs if len(inputs) > 1 else inputs[0])
    for mine, theirs in zip(got, expected if isinstance(expected, list) else [expected]):
        np.testing.assert_array_equal(mine.view(np.uint32), theirs.view(np.uint32))


def test_no_samples_give_empty_outputs(driver, tmp_path):
    model, make_inputs = text()
    model.save(tmp_path / "model.safetensors")
    got = run(driver, tmp_path / "model.safetensors", make_inputs(0, 4), tmp_path)
    assert [output.shape for output in got] == [(0, 16)]


def test_the_inputs_and_outputs_are_described(driver, tmp_path):
    text()[0].save(tmp_path / "text.safetensors")
    build_recommender(5, 4, 2).save(tmp_path / "recommender.safetensors")
    assert info(driver, tmp_path / "text.safetensors") == [
        "input 0 input_ids 1 -1", "input 1 attention_mask 1 -1", "output 0 pooling 0 16",
        "beyond -1 -1",
        "predict -1 pynn_model_predict: " + str(tmp_path / "text.safetensors") + ": the model takes 2 inputs "
        "(the first int64 with a variable axis) and gives 1 outputs; run it with pynn_model_run"]
    lines = info(driver, tmp_path / "recommender.safetensors")
    assert lines[:3] == ["input 0 user 1", "input 1 item 1", "output 0 add_1 0 1"]
    layer = TransformerEncoderLayer(8, 2, 16)
    x = pynn.Input((None, 8))
    pynn.Model(x, layer(x)).save(tmp_path / "variable.safetensors")
    assert info(driver, tmp_path / "variable.safetensors")[1] == "output 0 transformer_encoder_layer_1 0 -1 8"


def test_inputs_that_do_not_fit_are_refused_naming_the_input(driver, tmp_path):
    path = tmp_path / "model.safetensors"
    build_recommender(50, 40, 8).save(path)
    users, items = np.arange(4), np.arange(4)
    message = run(driver, path, [(users.astype(np.float32), 0), items], tmp_path, returncode=3)
    assert "input 0 ('user') must be int64, got float32" in message
    message = run(driver, path, [users], tmp_path, returncode=3)
    assert "the model takes 2 inputs, got 1" in message
    message = run(driver, path, [users, np.arange(3)], tmp_path, returncode=3)
    assert "input 1 ('item') has 3 samples, input 0 has 4" in message
    message = run(driver, path, [users, items.reshape(4, 1)], tmp_path, returncode=3)
    assert "input 1 ('item') must have shape (batch), got (4, 1)" in message
    message = run(driver, path, [users, np.array([0, 1, 40, 2])], tmp_path, returncode=4)
    assert "layer 'item_embedding' (Embedding): index 40 is out of range for 40 embeddings" in message
    message = run(driver, path, [np.array([-3, 0, 1, 2]), items], tmp_path, returncode=4)
    assert "index -3 is out of range" in message


def test_sequences_of_different_lengths_are_refused_by_the_layer(driver, tmp_path):
    model, make_inputs = text()
    model.save(tmp_path / "model.safetensors")
    ids, _ = make_inputs(2, 5)
    _, mask = make_inputs(2, 6)
    message = run(driver, tmp_path / "model.safetensors", [ids, mask], tmp_path, returncode=3)
    assert "layer 'encoder.layer.0' (TransformerEncoderLayer) refuses input shape (2, 5, 16) and (2, 6)" in message
    ids, mask = make_inputs(2, 13)  # beyond the 12 positions
    message = run(driver, tmp_path / "model.safetensors", [ids, mask], tmp_path, returncode=3)
    assert "PositionalEmbedding" in message and "max_length" in message
