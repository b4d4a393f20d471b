"""Collaborative filtering: user and item embeddings whose dot product, plus a
bias per user and per item, predicts a rating.

    python examples/collaborative_filtering.py [--epochs 20] [--ratings FILE] [--item ID]

Without --ratings the ratings come from a known model: every item belongs to
one of a few latent clusters (its hidden vector is its cluster's plus a
little noise), every user has a hidden vector, and a rating is their dot
product plus biases and noise; a fifth of the user-item pairs are observed.
With --ratings FILE, a CSV of "user,item,rating" rows (any ids, an optional
header line). Prints the test RMSE beside the global-mean-plus-biases
baseline, then the items nearest to one item by the cosine of their learned
embeddings; with generated data, whether they share its hidden cluster.
"""
import argparse
import csv

import numpy as np

import pynn
from pynn import layers
from pynn.losses import MSELoss
from pynn.optim import Adam


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def generate(users, items, clusters, seed):
    """(user ids, item ids, ratings, cluster of each item) from a known low-rank model."""
    rng = np.random.default_rng(seed)
    rank = clusters
    centres = 1.5 * np.eye(clusters, rank)  # one hidden direction per cluster
    cluster = rng.integers(0, clusters, items)
    item_vectors = centres[cluster] + 0.3 * rng.standard_normal((items, rank))
    user_vectors = rng.standard_normal((users, rank))
    user_bias, item_bias = 0.5 * rng.standard_normal(users), 0.5 * rng.standard_normal(items)
    pairs = rng.permutation(users * items)[:users * items // 5]
    user_ids, item_ids = pairs // items, pairs % items
    ratings = (3.0 + user_bias[user_ids] + item_bias[item_ids]
               + np.sum(user_vectors[user_ids] * item_vectors[item_ids], axis=1)
               + 0.3 * rng.standard_normal(len(pairs)))
    return user_ids, item_ids, ratings, cluster


def read_ratings(path):
    """(user ids, item ids, ratings, raw item ids) from a "user,item,rating" CSV;
    ids of any kind are numbered 0, 1, ... in sorted order."""
    users, items, ratings = [], [], []
    with open(path, newline="") as file:
        for number, row in enumerate(csv.reader(file), start=1):
            if not row or (number == 1 and not _is_number(row[-1])):
                continue  # a blank line, or the header
            if len(row) != 3 or not _is_number(row[2]):
                raise ValueError(f"line {number}: expected user,item,rating, got {','.join(row)!r:.80}")
            users.append(row[0].strip())
            items.append(row[1].strip())
            ratings.append(float(row[2]))
    if len(ratings) < 10:
        raise ValueError(f"found {len(ratings)} ratings; at least 10 are needed")
    _, user_ids = np.unique(users, return_inverse=True)
    item_names, item_ids = np.unique(items, return_inverse=True)
    return user_ids, item_ids, np.array(ratings), item_names


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def recommender(users, items, dim):
    """rating = user embedding · item embedding + user bias + item bias."""
    user, item = pynn.Input((), "int64", name="user"), pynn.Input((), "int64", name="item")
    item_embedding = layers.Embedding(items, dim, name="item_embedding")
    score = layers.Dot()([layers.Embedding(users, dim, name="user_embedding")(user),
                          item_embedding(item)])
    rating = layers.Add()([score, layers.Embedding(users, 1, name="user_bias")(user),
                           layers.Embedding(items, 1, name="item_bias")(item)])
    model = pynn.Model([user, item], rating, name="recommender")
    for _, weight in model.named_parameters():
        weight *= 0.1  # small starting scores: the N(0, 1) default makes dot products of size √dim
    return model


def bias_baseline(users, items, user_ids, item_ids, ratings, rounds=10, shrink=5.0):
    """Global mean plus user and item biases, fit in closed form by
    alternating shrunken means of the residuals."""
    mean = ratings.mean()
    user_bias, item_bias = np.zeros(users), np.zeros(items)
    for _ in range(rounds):
        residual = ratings - mean - item_bias[item_ids]
        user_bias = np.bincount(user_ids, residual, users) / (np.bincount(user_ids, None, users) + shrink)
        residual = ratings - mean - user_bias[user_ids]
        item_bias = np.bincount(item_ids, residual, items) / (np.bincount(item_ids, None, items) + shrink)
    return lambda u, i: mean + user_bias[u] + item_bias[i]


def rmse(predicted, ratings):
    return float(np.sqrt(np.mean((np.ravel(predicted) - ratings) ** 2)))


def nearest_items(model, item, count):
    """The ``count`` items whose embeddings have the largest cosine with ``item``'s."""
    vectors = model.get_layer("item_embedding").params["weight"].astype(np.float64)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-12
    cosine = vectors @ vectors[item]
    cosine[item] = -np.inf
    order = np.argsort(-cosine)[:count]
    return order, cosine[order]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratings", metavar="FILE", help='a CSV of "user,item,rating" rows')
    parser.add_argument("--epochs", type=positive_int, default=20)
    parser.add_argument("--dim", type=positive_int, default=8, help="embedding size")
    parser.add_argument("--users", type=positive_int, default=600, help="generated users")
    parser.add_argument("--items", type=positive_int, default=300, help="generated items")
    parser.add_argument("--clusters", type=positive_int, default=4, help="generated item clusters")
    parser.add_argument("--item", metavar="ID", default=None,
                        help="the item whose neighbours are shown: its id in the file, or the "
                             "generated item's number (default: the first)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.ratings:
        try:
            user_ids, item_ids, ratings, item_names = read_ratings(args.ratings)
        except (OSError, ValueError) as error:
            parser.error(f"cannot read ratings from {args.ratings}: {error}")
        cluster = None
    else:
        user_ids, item_ids, ratings, cluster = generate(args.users, args.items, args.clusters, args.seed)
        item_names = np.arange(args.items)
    users, items = int(user_ids.max()) + 1, len(item_names)
    names = [str(name) for name in item_names]
    if args.item is not None and args.item not in names:
        parser.error(f"--item: no item has the id {args.item!r}")
    query = names.index(args.item) if args.item is not None else 0
    order = np.random.default_rng(args.seed).permutation(len(ratings))
    cut = (4 * len(ratings)) // 5
    train, test = order[:cut], order[cut:]
    print(f"{len(ratings):,} ratings of {items:,} items by {users:,} users; "
          f"{len(train):,} to train, {len(test):,} to test")

    baseline = bias_baseline(users, items, user_ids[train], item_ids[train], ratings[train])
    baseline_rmse = rmse(baseline(user_ids[test], item_ids[test]), ratings[test])
    print(f"global mean + biases: test RMSE {baseline_rmse:.4f}")

    pynn.init.manual_seed(args.seed)
    model = recommender(users, items, args.dim)
    targets = ratings.astype(np.float32)[:, None]
    model.fit([user_ids[train], item_ids[train]], targets[train], loss=MSELoss(),
              optimizer=Adam(model, lr=0.01), epochs=args.epochs, batch_size=256, seed=args.seed,
              verbose=False)
    predicted = model.predict([user_ids[test], item_ids[test]])
    print(f"embeddings (dim {args.dim}) + biases: test RMSE {rmse(predicted, ratings[test]):.4f}")

    neighbours, cosines = nearest_items(model, query, 10)
    label = f" (cluster {cluster[query]})" if cluster is not None else ""
    print(f"items nearest to item {names[query]}{label} by embedding cosine:")
    for neighbour, cosine in zip(neighbours, cosines):
        extra = f"  cluster {cluster[neighbour]}" if cluster is not None else ""
        print(f"  item {names[neighbour]}  cosine {cosine:+.3f}{extra}")
    if cluster is not None:
        shared = int(np.sum(cluster[neighbours] == cluster[query]))
        print(f"{shared} of 10 nearest items share its hidden cluster "
              f"(1 in {args.clusters} would by chance)")


if __name__ == "__main__":
    main()
