"""The default model against EASE and ALS on data of many shapes, each anchor computed on the
same shape (EVALUATION.md's protocol on every one).

    python benchmarks/shapes.py                      # every shape, test figures
    python benchmarks/shapes.py --shapes dense1600,gen1m --validation --set dim=512

Shapes are carved from ml-latest-small (../shared/data/ml-latest-small, and the fixed split in
../shared/eval/ml-latest-small) and from the built-in generator at other sizes:

    shared      the fixed split everyone reports (610 users, 9k movies, 1.7% dense)
    seed1/2     the same ratings re-split with other seeds
    time        each user's last 20% in time held out, not a random 20%
    dense1000   the 1,000 most-rated movies and their ratings (8% dense)
    dense1600   the 1,600 most-rated (6% dense; the shape of ml-100k's catalogue)
    tail        every movie but the 1,000 most-rated (0.6% dense)
    heavy       the 2,000 most-rated movies, users with 100+ of them (222 users, 14% dense)
    gen100k     generated: 940 users, 1,680 movies, ~94k ratings (ml-100k's shape)
    gen1m       generated: 3,000 users, 3,700 movies, ~490k ratings (half of ml-1m)
    gensparse   generated: 2,000 users, 6,000 movies, ~40k ratings
    gen100k7, gen1m8, gen100k9   the same sizes from other generator seeds

``--validation`` scores on a holdout carved from each shape's training part instead of its test
part (what to tune on). EASE's lambda and ALS's factors are chosen per shape on such a holdout
(a small grid) and then fitted on the whole training part. Anchors are cached in
``--cache`` (they do not change with movierec's settings).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from benchmarks.ablation import parse
from trainer.config import TrainConfig
from trainer.evaluate import Scores, relevant_sets, score
from trainer.movielens import MovieLens, load, read_ratings
from trainer.pipeline import holdout_scores
from trainer.sample import make_sample
from trainer.split import holdout_split

SHARED = Path(os.environ.get("MOVIEREC_SHARED", Path(__file__).resolve().parents[2] / "shared"))
LIKED = 3.5  # the anchors' implicit positives, as ANCHORS.md
EASE_LAMBDAS = (50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0)
ALS_FACTORS = (32, 64, 128)

Split = tuple[MovieLens, pd.DataFrame]  # (training data, held-out ratings)


def _movielens() -> MovieLens:
    return load(SHARED / "data" / "ml-latest-small")


def _split(data: MovieLens, ratings: pd.DataFrame, seed: int = 0) -> Split:
    fit, held = holdout_split(ratings, seed=seed)
    return MovieLens(fit.reset_index(drop=True), data.movies, data.layout), held


def _shared() -> Split:
    split = SHARED / "eval" / "ml-latest-small"
    return load(split / "train"), read_ratings(split / "test.csv")


def _seed(seed: int) -> Callable[[], Split]:
    return lambda: _split(data := _movielens(), data.ratings, seed)


def _time() -> Split:
    """Each user's latest 20% (at least one; users with 5+ ratings) held out."""
    data = _movielens()
    r = data.ratings.sort_values(["user_id", "timestamp", "movie_id"], kind="stable")
    size = r.groupby("user_id")["user_id"].transform("size").to_numpy()
    left = size - 1 - r.groupby("user_id").cumcount().to_numpy()
    held = left < np.where(size >= 5, np.maximum(1, np.round(size * 0.2)), 0)
    return MovieLens(r[~held].reset_index(drop=True), data.movies, data.layout), r[held]


def _most_rated(top: int, keep_top: bool) -> Callable[[], Split]:
    def carve() -> Split:
        data = _movielens()
        head = data.ratings["movie_id"].value_counts().index[:top]
        inside = data.ratings["movie_id"].isin(head)
        return _split(data, data.ratings[inside if keep_top else ~inside].reset_index(drop=True))

    return carve


def _heavy() -> Split:
    """Users with 100+ ratings among the 2,000 most-rated movies: saturated histories."""
    data = _movielens()
    head = data.ratings["movie_id"].value_counts().index[:2000]
    r = data.ratings[data.ratings["movie_id"].isin(head)]
    per_user = r.groupby("user_id")["user_id"].transform("size")
    return _split(data, r[per_user >= 100].reset_index(drop=True))


def _generated(seed: int, movies: int, users: int, mean: int) -> Callable[[], Split]:
    def carve() -> Split:
        s = make_sample(seed=seed, num_movies=movies, num_users=users, mean_ratings=mean)
        ratings = pd.DataFrame(s.ratings)
        from movierec.artifacts import Movie
        from trainer.movielens import parse_title

        catalogue = [Movie(i, t, g, parse_title(t)[1]) for i, t, g in s.movies]
        return _split(MovieLens(ratings, catalogue, "csv"), ratings)

    return carve


SHAPES: dict[str, Callable[[], Split]] = {
    "shared": _shared,
    "seed1": _seed(1),
    "seed2": _seed(2),
    "time": _time,
    "dense1000": _most_rated(1000, keep_top=True),
    "dense1600": _most_rated(1600, keep_top=True),
    "tail": _most_rated(1000, keep_top=False),
    "heavy": _heavy,
    "gen100k": _generated(1, 1680, 940, 115),
    "gen1m": _generated(2, 3700, 3000, 170),
    "gensparse": _generated(3, 6000, 2000, 25),
    "gen100k7": _generated(7, 1680, 940, 115),
    "gen1m8": _generated(8, 3700, 3000, 170),
    "gen100k9": _generated(9, 1680, 940, 115),
}


def validation(split: Split, seed: int = 100) -> Split:
    """A holdout carved from a split's training part (never its test part)."""
    data = split[0]
    return _split(data, data.ratings, seed)


# --- anchors: EASE and ALS on the same data, ranked exactly as EVALUATION.md asks ----------


def _matrices(data: MovieLens) -> tuple[Any_, Any_, npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(liked user x movie matrix, every-rating matrix, user ids, movie ids) as scipy CSR."""
    from scipy.sparse import csr_matrix

    r = data.ratings
    users, u = np.unique(r["user_id"].to_numpy(), return_inverse=True)
    movies, m = np.unique(r["movie_id"].to_numpy(), return_inverse=True)
    stars = r["rating"].to_numpy(np.float32)
    shape = (len(users), len(movies))
    liked = stars >= LIKED
    x = csr_matrix((stars[liked], (u[liked], m[liked])), shape=shape, dtype=np.float32)
    seen = csr_matrix((np.ones(len(r), np.float32), (u, m)), shape=shape)
    return x, seen, users, movies


Any_ = object  # scipy is untyped; benchmarks are not type-checked


def _ranker(
    scores_of: Callable[[npt.NDArray[np.int64]], npt.NDArray[np.float32]],
    seen: object,
    users: npt.NDArray[np.int64],
    movies: npt.NDArray[np.int64],
    relevant: dict[int, set[int]],
) -> Callable[[int], list[int]]:
    """Top 20 unseen movies per evaluated user, computed in one batch."""
    rows = {int(u): i for i, u in enumerate(users)}
    wanted = np.array([rows[u] for u in relevant if u in rows], dtype=np.int64)
    s = np.asarray(scores_of(wanted), dtype=np.float64)
    s[seen[wanted].nonzero()] = -np.inf  # type: ignore[index]
    top = np.argsort(-s, axis=1, kind="stable")[:, :20]
    ranked = {int(users[w]): movies[t].tolist() for w, t in zip(wanted, top, strict=True)}
    return lambda user: ranked.get(user, [])


def ease(data: MovieLens, held: pd.DataFrame, lam: float) -> Scores:
    x, seen, users, movies = _matrices(data)
    xb = (x > 0).astype(np.float64)
    gram = (xb.T @ xb).toarray()
    gram[np.diag_indices_from(gram)] += lam
    p = np.linalg.inv(gram)
    b = p / -np.diag(p)
    b[np.diag_indices_from(b)] = 0.0
    relevant = relevant_sets(held)
    rank = _ranker(lambda w: xb[w] @ b, seen, users, movies, relevant)
    return score(rank, relevant, len(movies))


def als(data: MovieLens, held: pd.DataFrame, factors: int) -> Scores:
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    x, seen, users, movies = _matrices(data)
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=factors, regularization=0.01, iterations=30,
                                        random_state=0, num_threads=1)  # fmt: skip
        model.fit(x, show_progress=False)
    uf, itf = model.user_factors, model.item_factors
    relevant = relevant_sets(held)
    rank = _ranker(lambda w: uf[w] @ itf.T, seen, users, movies, relevant)
    return score(rank, relevant, len(movies))


def anchors(name: str, split: Split, cache: Path, use_validation: bool) -> dict[str, object]:
    """EASE and ALS tuned on a holdout of the training part, scored on the wanted part."""
    key = f"{name}/{'validation' if use_validation else 'test'}"
    cached: dict[str, dict[str, object]] = json.loads(cache.read_text()) if cache.exists() else {}
    if key in cached:
        return cached[key]
    tuning = validation(split, seed=200)  # its own holdout: not the one movierec is scored on
    target = validation(split) if use_validation else split
    lam = max(EASE_LAMBDAS, key=lambda v: ease(*tuning, v).ndcg_10)
    factors = max(ALS_FACTORS, key=lambda f: als(*tuning, f).ndcg_10)
    start = time.perf_counter()
    e = ease(*target, lam)
    ease_s = time.perf_counter() - start
    a = als(*target, factors)
    result = {"ease": {**e.as_dict(), "lambda": lam, "seconds": round(ease_s, 1)},
              "als": {**a.as_dict(), "factors": factors}}  # fmt: skip
    cached[key] = result
    cache.write_text(json.dumps(cached, indent=1, sort_keys=True))
    return result


def describe(split: Split) -> str:
    r = split[0].ratings
    users, movies = r["user_id"].nunique(), r["movie_id"].nunique()
    return f"{users}u {movies}m {len(r)}r {len(r) / (users * movies):.1%}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated shape names")
    p.add_argument("--set", action="append", default=[], dest="variants",
                   help="settings of a movierec variant, e.g. dim=512,epochs=40")  # fmt: skip
    p.add_argument("--validation", action="store_true", help="score on a validation holdout")
    p.add_argument("--splits", type=int, default=1, help="with --validation: mean over holdouts")
    p.add_argument("--no-anchors", action="store_true", help="movierec only")
    p.add_argument("--cache", type=Path, default=Path("artifacts/shapes-anchors.json"))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    args.cache.parent.mkdir(parents=True, exist_ok=True)
    print(f"{'shape':10} {'variant':28} {'ndcg@10':>8} {'recall@20':>9} {'cov@10':>7} "
          f"{'train s':>7}  data")  # fmt: skip
    for name in args.shapes.split(","):
        whole = SHAPES[name]()
        splits = [validation(whole, 100 + i) for i in range(args.splits)]
        if not args.validation:
            splits = [whole]
        shape = describe(splits[0])
        if not args.no_anchors:
            found = anchors(name, SHAPES[name](), args.cache, args.validation)
            for method, s in found.items():
                extra = f"lambda {s['lambda']:g}" if method == "ease" else f"{s['factors']} f"
                print(f"{name:10} {method + ' (' + extra + ')':28} {s['ndcg@10']:8.4f} "
                      f"{s['recall@20']:9.4f} {s['coverage@10']:7.4f} {'':7}  {shape}",
                      flush=True)  # fmt: skip
        for variant in args.variants or [""]:
            overrides = {"threads": args.threads, **parse(variant)}
            config = TrainConfig(**overrides)  # type: ignore[arg-type]
            runs = [holdout_scores(*split, config) for split in splits]
            m = np.mean([(s.ndcg_10, s.recall_20, s.coverage_10, t) for s, t in runs], axis=0)
            print(f"{name:10} {variant or 'default':28} {m[0]:8.4f} {m[1]:9.4f} {m[2]:7.4f} "
                  f"{m[3]:7.1f}  {shape}", flush=True)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
