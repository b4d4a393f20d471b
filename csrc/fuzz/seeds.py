"""The fuzz target's seed corpus: model files pynn saves, one per kind of
graph the C API runs: python - FOLDER < csrc/fuzz/seeds.py (from the source tree)."""
import sys

import pynn
from pynn import layers as L
from pynn.bench.graph import build_recommender


def models():
    mlp = pynn.Sequential(L.Linear(8, 16), L.ReLU(), L.Linear(16, 3), L.Softmax())
    cnn = pynn.Sequential(L.Conv2d(1, 4, 3, padding=1), L.BatchNorm2d(4), L.ReLU(), L.MaxPool2d(2),
                          L.Flatten(), L.Linear(64, 5))
    cnn.input_shape = (1, 8, 8)
    x = pynn.Input((3, 8, 8))
    y = L.Add()([L.Conv2d(3, 4, 3, padding=1)(x), L.Conv2d(3, 4, 1)(x)])
    graph = pynn.Model(x, L.Linear(4, 2)(L.GlobalAvgPool2d()(L.ReLU()(y))))
    tokens = pynn.Input((6, 8))
    encoder = pynn.Model(tokens, L.TransformerEncoderLayer(8, 2, 16)(L.PositionalEmbedding(6, 8)(tokens)))
    ids = pynn.Input((None,), dtype="int64", name="input_ids")
    mask = pynn.Input((None,), dtype="int64", name="attention_mask")
    states = L.PositionalEmbedding(8, 8)(L.Embedding(20, 8)(ids))
    states = L.TransformerEncoderLayer(8, 2, 16, activation="gelu")([states, L.PaddingMask()(mask)])
    text = pynn.Model([ids, mask], [L.MeanPooling()([states, mask]), states])
    x = pynn.Input((6,))
    towers = pynn.Model(x, [L.ReLU()(L.Linear(6, 4)(x)), L.Linear(6, 4)(x)], name="towers")
    query, memory = pynn.Input((3, 4)), pynn.Input((None, 4))
    padding = pynn.Input((None,), dtype="bool")
    features = pynn.Input((6,))
    left, right = towers(features)
    nested = pynn.Model(features, [L.Add()([left, right]), right])
    cross = pynn.Model([query, memory, padding], L.MultiheadAttention(4, 2)([query, memory, memory, padding]))
    return {"mlp": mlp, "cnn": cnn, "graph": graph, "encoder": encoder, "text": text,
            "recommender": build_recommender(10, 12, 4), "nested": nested, "cross": cross}


if __name__ == "__main__":
    for name, model in models().items():
        model.save(f"{sys.argv[1]}/{name}.safetensors")
