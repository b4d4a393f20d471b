"""Sentence embeddings from a sentence-transformers folder of a BERT-family
encoder (extra ``text``: the ``tokenizers`` library tokenises).

``SentenceEncoder.load(folder)`` reads ``config.json``, ``model.safetensors``,
``tokenizer.json``, ``sentence_bert_config.json`` (``max_seq_length`` sets
truncation) and ``1_Pooling/config.json`` (mean pooling), and builds the
encoder as a pynn ``Model``: token ids and attention mask (int64 [N, T], T
variable) in, token states [N, T, hidden] out. ``encode`` pads each batch
to its longest sentence, pools the states over the mask and L2-normalises,
as sentence-transformers does. Every file is untrusted input: sizes are
bounded and every tensor's name, dtype and shape checked before use."""
import json
import os

import numpy as np

from pynn._checks import as_real
from pynn.architecture import ModelFormatError
from pynn.layers import (
    Embedding, LayerNorm, MeanPooling, PaddingMask, PositionalEmbedding, TransformerEncoderLayer,
)
from pynn.layers.symbolic import Input
from pynn.model import Model

# Bounds on what a config may claim, far above any BERT-family release.
_LIMITS = {"vocab_size": 1 << 20, "hidden_size": 1 << 13, "num_hidden_layers": 128,
           "num_attention_heads": 256, "intermediate_size": 1 << 16,
           "max_position_embeddings": 1 << 14, "type_vocab_size": 1 << 10}
_CONFIG_BYTES = 1 << 20


def _read_json(folder, name):
    path = os.path.join(folder, name)
    try:
        with open(path, "rb") as file:
            data = file.read(_CONFIG_BYTES + 1)
    except OSError as error:
        raise ModelFormatError(f"SentenceEncoder.load: cannot read {path}: {error}") from None
    if len(data) > _CONFIG_BYTES:
        raise ModelFormatError(f"SentenceEncoder.load: {path} is larger than {_CONFIG_BYTES} bytes")
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as error:
        raise ModelFormatError(f"SentenceEncoder.load: {path} is not JSON: {error}") from None
    if not isinstance(value, dict):
        raise ModelFormatError(f"SentenceEncoder.load: {path} must hold a JSON object")
    return value


def _size(config, key, path):
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _LIMITS[key]:
        raise ModelFormatError(f"SentenceEncoder.load: {path}: {key} must be an integer from 1 to "
                               f"{_LIMITS[key]}, got {value!r:.40}")
    return value


def _bert_config(folder):
    path = os.path.join(folder, "config.json")
    config = _read_json(folder, "config.json")
    if config.get("model_type", "bert") != "bert":
        raise ModelFormatError(f"SentenceEncoder.load: {path}: model_type {config.get('model_type')!r:.40} "
                               "is not supported; BERT encoders (model_type 'bert') are")
    sizes = {key: _size(config, key, path) for key in _LIMITS}
    if sizes["hidden_size"] % sizes["num_attention_heads"]:
        raise ModelFormatError(f"SentenceEncoder.load: {path}: hidden_size {sizes['hidden_size']} is "
                               f"not divisible by num_attention_heads {sizes['num_attention_heads']}")
    if config.get("hidden_act", "gelu") != "gelu":
        raise ModelFormatError(f"SentenceEncoder.load: {path}: hidden_act {config.get('hidden_act')!r:.40} "
                               "is not supported; 'gelu' (exact) is")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ModelFormatError(f"SentenceEncoder.load: {path}: only absolute position embeddings "
                               "are supported")
    eps = config.get("layer_norm_eps", 1e-12)
    dropout = config.get("hidden_dropout_prob", 0.1)
    for key, value, low, high in (("layer_norm_eps", eps, 0.0, 1.0), ("hidden_dropout_prob", dropout, 0.0, 1.0)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high:
            raise ModelFormatError(f"SentenceEncoder.load: {path}: {key} must be a number in "
                                   f"[{low}, {high}), got {value!r:.40}")
    sizes["layer_norm_eps"], sizes["dropout"] = float(eps), float(dropout)
    return sizes


def build_encoder(c):
    """The encoder ``Model`` for a BERT config (``_bert_config``'s dict), with
    state-dict keys as the layer names say."""
    ids = Input((None,), dtype="int64", name="input_ids")
    mask = Input((None,), dtype="int64", name="attention_mask")
    hidden = c["hidden_size"]
    x = Embedding(c["vocab_size"], hidden, name="embeddings.word_embeddings")(ids)
    # BERT adds a token-type embedding too; single sentences have type 0,
    # whose vector this table holds added to each position's
    x = PositionalEmbedding(c["max_position_embeddings"], hidden, name="embeddings.position_embeddings")(x)
    x = LayerNorm(hidden, eps=c["layer_norm_eps"], name="embeddings.LayerNorm")(x)
    bias = PaddingMask(name="padding_mask")(mask)
    for index in range(c["num_hidden_layers"]):
        x = TransformerEncoderLayer(hidden, c["num_attention_heads"], c["intermediate_size"],
                                    dropout=c["dropout"], activation="gelu",
                                    layer_norm_eps=c["layer_norm_eps"],
                                    name=f"encoder.layer.{index}")([x, bias])
    return Model([ids, mask], x, name="encoder")


def _bert_sources(c):
    """Per encoder state-dict key, the Hugging Face BERT tensors it is made of
    (several are concatenated or added) and each one's shape."""
    hidden, inner = c["hidden_size"], c["intermediate_size"]
    sources = {"embeddings.word_embeddings.weight": [("embeddings.word_embeddings.weight",
                                                      (c["vocab_size"], hidden))],
               "embeddings.position_embeddings.weight": [
                   ("embeddings.position_embeddings.weight", (c["max_position_embeddings"], hidden)),
                   ("embeddings.token_type_embeddings.weight", (c["type_vocab_size"], hidden))],
               "embeddings.LayerNorm.weight": [("embeddings.LayerNorm.weight", (hidden,))],
               "embeddings.LayerNorm.bias": [("embeddings.LayerNorm.bias", (hidden,))]}
    for index in range(c["num_hidden_layers"]):
        ours = theirs = f"encoder.layer.{index}."
        attention = theirs + "attention."
        for kind, shape in (("weight", (hidden, hidden)), ("bias", (hidden,))):
            sources[f"{ours}self_attn.in_proj_{kind}"] = [
                (f"{attention}self.{part}.{kind}", shape) for part in ("query", "key", "value")]
        for mine, source, rows, columns in (("self_attn.out_proj", attention + "output.dense", hidden, hidden),
                                            ("linear1", theirs + "intermediate.dense", inner, hidden),
                                            ("linear2", theirs + "output.dense", hidden, inner)):
            sources[f"{ours}{mine}.weight"] = [(f"{source}.weight", (rows, columns))]
            sources[f"{ours}{mine}.bias"] = [(f"{source}.bias", (rows,))]
        for mine, source in (("norm1", attention + "output.LayerNorm"), ("norm2", theirs + "output.LayerNorm")):
            for kind in ("weight", "bias"):
                sources[f"{ours}{mine}.{kind}"] = [(f"{source}.{kind}", (hidden,))]
    return sources


def _load_bert_weights(model, c, path):
    """Copy a Hugging Face BERT state dict from ``path`` into the encoder, one
    tensor at a time; every tensor's presence, dtype and shape is checked
    against config.json before any is read."""
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(path, framework="np") as file:
            declared = {key: (file.get_slice(key).get_dtype(), tuple(file.get_slice(key).get_shape()))
                        for key in file.keys()}
            prefix = "bert." if "bert.embeddings.word_embeddings.weight" in declared else ""
            sources = _bert_sources(c)
            for parts in sources.values():
                for name, shape in parts:
                    found = declared.get(prefix + name)
                    if found is None:
                        raise ModelFormatError(f"SentenceEncoder.load: {path} has no tensor {prefix + name!r}")
                    if found != ("F32", shape):
                        raise ModelFormatError(
                            f"SentenceEncoder.load: {path}: tensor {prefix + name!r} must be float32 (F32) "
                            f"of shape {shape} (config.json), got {found[0]} of shape {found[1]}")
            state = model.state_dict()
            for key, parts in sources.items():
                target = state[key]
                if key == "embeddings.position_embeddings.weight":
                    # BERT adds the token-type embedding too; single sentences have type 0
                    np.add(file.get_tensor(prefix + parts[0][0]), file.get_tensor(prefix + parts[1][0])[0],
                           out=target)
                    continue
                row = 0
                for name, shape in parts:  # the query, key and value projections stack
                    target[row:row + shape[0]] = file.get_tensor(prefix + name)
                    row += shape[0]
    except (SafetensorError, OSError) as error:
        raise ModelFormatError(f"SentenceEncoder.load: cannot read {path}: {error}") from None


class SentenceEncoder:
    """A sentence-transformers encoder on pynn: ``encode`` gives the embeddings
    sentence-transformers gives for the same folder; ``model`` is the encoder
    ``Model`` (``[input_ids, attention_mask]`` -> token states), which trains
    like any other."""

    def __init__(self, model, tokenizer, max_seq_length, pad_id):
        self.model, self.tokenizer = model, tokenizer
        self.max_seq_length, self.pad_id = max_seq_length, pad_id
        ids, mask = model.inputs
        self._pooled = Model([ids, mask], MeanPooling(name="pooling")([model([ids, mask]), mask]))

    @classmethod
    def load(cls, folder, dropout=None):
        """The encoder of a sentence-transformers ``folder``; ``dropout`` (the
        probability the encoder layers use in training) overrides the config's
        ``hidden_dropout_prob``."""
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ImportError("pynn.text needs the tokenizers library: pip install "
                              "'pynn-runtime[text]'") from None
        folder = os.fspath(folder)
        config = _bert_config(folder)
        if dropout is not None:
            config["dropout"] = as_real(dropout, "SentenceEncoder.load", "dropout")
            if not 0.0 <= config["dropout"] < 1.0:
                raise ValueError(f"SentenceEncoder.load: dropout must be in [0, 1), got {dropout!r:.40}")
        settings = _read_json(folder, "sentence_bert_config.json") if os.path.exists(
            os.path.join(folder, "sentence_bert_config.json")) else {}
        max_seq_length = settings.get("max_seq_length", config["max_position_embeddings"])
        if isinstance(max_seq_length, bool) or not isinstance(max_seq_length, int) \
                or not 2 <= max_seq_length <= config["max_position_embeddings"]:
            raise ModelFormatError(f"SentenceEncoder.load: max_seq_length must be an integer from 2 to "
                                   f"{config['max_position_embeddings']}, got {max_seq_length!r:.40}")
        pooling = _read_json(folder, os.path.join("1_Pooling", "config.json")) if os.path.exists(
            os.path.join(folder, "1_Pooling", "config.json")) else {"pooling_mode_mean_tokens": True}
        other_modes = [key for key, value in pooling.items()
                       if key.startswith("pooling_mode_") and key != "pooling_mode_mean_tokens" and value]
        if not pooling.get("pooling_mode_mean_tokens") or other_modes:
            raise ModelFormatError(f"SentenceEncoder.load: only mean pooling is supported, the folder "
                                   f"asks for {other_modes or 'no mean pooling'}")
        model = build_encoder(config)
        weights = os.path.join(folder, "model.safetensors")
        _load_bert_weights(model, config, weights)
        try:
            tokenizer = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        except Exception as error:  # the library raises its own exception type
            raise ModelFormatError(f"SentenceEncoder.load: cannot read tokenizer.json: {error}") from None
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_seq_length)
        pad_id = tokenizer.token_to_id("[PAD]")
        return cls(model, tokenizer, max_seq_length, 0 if pad_id is None else pad_id)

    def tokenize(self, sentences):
        """``(input_ids, attention_mask)``, int64 [n, longest], padded on the right."""
        return self._padded(self.tokenizer.encode_batch(sentences))

    def _padded(self, encodings):
        longest = max(len(encoding.ids) for encoding in encodings)
        ids = np.full((len(encodings), longest), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), longest), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            ids[row, :len(encoding.ids)] = encoding.ids
            mask[row, :len(encoding.ids)] = 1
        return ids, mask

    def encode(self, sentences, batch_size=32, normalize=True):
        """float32 [n, hidden]: each sentence's mean-pooled token states, L2
        normalised with ``normalize`` (what a folder with a Normalize module gives).
        Sentences run longest first in groups of at most ``batch_size``, each
        padded to its longest; a group is split where the padding that saves
        outweighs another call (``length_groups``)."""
        single = isinstance(sentences, str)
        if single:
            sentences = [sentences]
        if not isinstance(sentences, (list, tuple)) or not all(isinstance(s, str) for s in sentences):
            raise TypeError("SentenceEncoder.encode: sentences must be a string or a list of strings")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"SentenceEncoder.encode: batch_size must be a positive integer, "
                             f"got {batch_size!r:.40}")
        hidden = self.model.outputs[0].shape[-1]
        result = np.empty((len(sentences), hidden), dtype=np.float32)
        encodings = self.tokenizer.encode_batch(list(sentences)) if sentences else []
        order = sorted(range(len(encodings)), key=lambda index: -len(encodings[index].ids))
        lengths = [len(encodings[index].ids) for index in order]
        for start, stop in length_groups(lengths, batch_size):
            rows = order[start:stop]
            result[rows] = self._pooled.predict(list(self._padded([encodings[row] for row in rows])))
        if normalize:
            norms = np.sqrt(np.einsum("ij,ij->i", result, result))
            result /= np.maximum(norms, 1e-12)[:, None]
        return result[0] if single else result


# One more predict call costs about as much as this many more tokens in a
# call: the encoder's weights are read once per call, from memory when they
# outgrow the caches, and the call has a fixed overhead.
CALL_COST_TOKENS = 24


def length_groups(lengths, batch_size):
    """``[(start, stop), ...]``: contiguous groups of ``lengths`` (sorted
    longest first), at most ``batch_size`` each, padded to their first
    length, with the least total of CALL_COST_TOKENS per group plus padded
    tokens (a shortest-path over the cut points)."""
    cost = [0] + [None] * len(lengths)
    cut = [0] * (len(lengths) + 1)
    for stop in range(1, len(lengths) + 1):
        for start in range(max(0, stop - batch_size), stop):
            total = cost[start] + CALL_COST_TOKENS + (stop - start) * lengths[start]
            if cost[stop] is None or total < cost[stop]:
                cost[stop], cut[stop] = total, start
    groups, stop = [], len(lengths)
    while stop > 0:
        groups.append((cut[stop], stop))
        stop = cut[stop]
    return groups[::-1]
