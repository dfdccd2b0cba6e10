"""Recommendation quality under docs/EVALUATION.md, scored through the server's core.

    movierec evaluate --artifacts ART --test ../shared/eval/ml-latest-small/test.csv
    movierec evaluate --split ../shared/eval/ml-latest-small --out DIR   # train, score, report

A held-out movie is relevant when rated >= 4.0; evaluated users have at least one relevant
held-out movie; each gets exactly what the server would answer from their training history
(watched movies excluded). Metrics: Recall@10, Recall@20 (hits / min(K, |relevant|)), NDCG@10
(binary gains, ideal DCG over min(10, |relevant|) hits), HitRate@10, Coverage@10 (distinct
movies in any top 10 / movies in the training data). A popularity baseline (most rated
unseen movies) is scored the same way for reference.

Beyond the protocol, for the report (``trainer.report``): recall by popularity decile of the
held-out movie, to show how well a model finds the long tail (``recall_by_decile``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from server.recommender import Reason, Recommender, Request

RELEVANT_RATING = 4.0
METRICS = ("recall@10", "recall@20", "ndcg@10", "hitrate@10", "coverage@10")
DECILES = 10


@dataclass(frozen=True)
class Scores:
    recall_10: float
    recall_20: float
    ndcg_10: float
    hitrate_10: float
    coverage_10: float
    users: int

    def as_dict(self) -> dict[str, float]:
        return dict(
            zip(
                METRICS,
                (self.recall_10, self.recall_20, self.ndcg_10, self.hitrate_10, self.coverage_10),
                strict=True,
            )
        )


def recall_at(ranked: list[int], relevant: set[int], k: int) -> float:
    return len(set(ranked[:k]) & relevant) / min(k, len(relevant))


def ndcg_at(ranked: list[int], relevant: set[int], k: int) -> float:
    dcg = sum(1.0 / np.log2(i + 2) for i, m in enumerate(ranked[:k]) if m in relevant)
    ideal = sum(1.0 / np.log2(i + 2) for i in range(min(k, len(relevant))))
    return float(dcg / ideal)


def score(
    rank: Callable[[int], list[int]], relevant: dict[int, set[int]], catalogue_size: int
) -> Scores:
    """Score a ranking function (user id -> top-20 movie ids) against relevant sets."""
    r10, r20, ndcg, hits, shown = [], [], [], [], set()
    for user, rel in relevant.items():
        ranked = rank(user)
        r10.append(recall_at(ranked, rel, 10))
        r20.append(recall_at(ranked, rel, 20))
        ndcg.append(ndcg_at(ranked, rel, 10))
        hits.append(bool(set(ranked[:10]) & rel))
        shown.update(ranked[:10])
    return Scores(
        float(np.mean(r10)),
        float(np.mean(r20)),
        float(np.mean(ndcg)),
        float(np.mean(hits)),
        len(shown) / catalogue_size,
        len(relevant),
    )


@dataclass(frozen=True)
class DecileRecall:
    """Recall@k of held-out liked movies by the popularity decile of the movie.

    The catalogue's movies are sorted by their number of training ratings (ties by movie id)
    and cut into ten equal parts: decile 1 is the least rated tenth, decile 10 the most rated.
    A held-out liked (user, movie) pair is found when the movie is in that user's top k, and a
    decile's recall is found pairs / pairs, pooled over users (so it is not Recall@K's
    per-user average with its min(K, |relevant|) denominator). Held-out movies without a
    catalogue row (too few training ratings to be indexed) are counted apart, in
    ``unindexed``: no ranking over the catalogue can find them.
    """

    k: int
    fewest: list[int]  # per decile: fewest training ratings of its movies (0 when empty)
    most: list[int]  # per decile: most training ratings of its movies
    relevant: list[int]  # per decile: held-out liked (user, movie) pairs
    hits: list[int]  # per decile: of those, found in the user's top k
    unindexed: int  # held-out liked pairs whose movie has no catalogue row

    @property
    def recall(self) -> list[float]:
        """hits / relevant per decile; NaN for a decile without held-out liked movies."""
        return [h / r if r else float("nan") for h, r in zip(self.hits, self.relevant, strict=True)]


def recall_by_decile(
    ranked: Mapping[int, Sequence[int]],
    relevant: Mapping[int, set[int]],
    counts: Mapping[int, int],
    k: int = 10,
) -> DecileRecall:
    """Recall@k per popularity decile (see DecileRecall).

    ``ranked``: each evaluated user's ranking (movie ids, best first); ``relevant``: their
    held-out liked movies; ``counts``: training ratings of every catalogue movie, by id.
    """
    ids = sorted(counts, key=lambda m: (counts[m], m))
    decile_of = {m: i * DECILES // len(ids) for i, m in enumerate(ids)}
    fewest, most = [0] * DECILES, [0] * DECILES
    for d in range(DECILES):
        members = [counts[m] for m in ids if decile_of[m] == d]
        if members:
            fewest[d], most[d] = min(members), max(members)
    pairs, hits, unindexed = [0] * DECILES, [0] * DECILES, 0
    for user, rel in relevant.items():
        top = set(ranked.get(user, [])[:k])
        for movie in rel:
            decile = decile_of.get(movie)
            if decile is None:
                unindexed += 1
                continue
            pairs[decile] += 1
            hits[decile] += movie in top
    return DecileRecall(k, fewest, most, pairs, hits, unindexed)


def relevant_sets(test: pd.DataFrame) -> dict[int, set[int]]:
    liked = test[test["rating"] >= RELEVANT_RATING]
    return {int(str(u)): set(g.tolist()) for u, g in liked.groupby("user_id")["movie_id"]}


@dataclass(frozen=True)
class Evaluation:
    """What ``evaluate_in_full`` measured, per system ("model", "popularity")."""

    scores: dict[str, Scores]
    deciles: dict[str, DecileRecall]


def evaluate(recommender: Recommender, test: pd.DataFrame) -> dict[str, Scores]:
    """Scores of the model and of the popularity baseline on a held-out ratings table."""
    return evaluate_in_full(recommender, test).scores


def evaluate_in_full(recommender: Recommender, test: pd.DataFrame, k: int = 10) -> Evaluation:
    """Scores, and recall@k by popularity decile, of the model and the popularity baseline.
    Each user is ranked once per system; both measures read the same rankings."""
    relevant = relevant_sets(test)
    catalogue = int(
        recommender.artifacts.manifest["settings"].get("source_movies", recommender.num_movies)
    )

    def model(user: int) -> list[int]:
        items = recommender.recommend(Request(user=user, k=20)).items
        # a user without a usable training history gets popular movies, not the model's
        return [s.movie.movie_id for s in items if s.reason == Reason.PERSONAL]  # type: ignore[misc]

    rows = recommender.artifacts.histories.rows
    per_row = np.bincount(rows, minlength=recommender.num_movies)
    counts = dict(zip(recommender.artifacts.movie_ids.tolist(), per_row.tolist(), strict=True))
    scores, deciles = {}, {}
    for name, rank in (("model", model), ("popularity", _popularity(recommender))):
        ranked = {user: rank(user) for user in relevant}
        scores[name] = score(ranked.__getitem__, relevant, catalogue)
        deciles[name] = recall_by_decile(ranked, relevant, counts, k)
    return Evaluation(scores, deciles)


def summary(
    manifest: Mapping[str, Any], evaluation: Evaluation, deciles: bool = False
) -> dict[str, Any]:
    """The figures as JSON (what ``movierec evaluate --json`` prints); ``deciles`` adds the
    recall by popularity decile (a report's metrics.json)."""
    out = {
        "model_version": manifest["model_version"],
        "train_seconds": manifest.get("settings", {}).get("train_seconds"),
        **{name: s.as_dict() for name, s in evaluation.scores.items()},
    }
    if deciles:
        out["deciles"] = {name: asdict(d) for name, d in evaluation.deciles.items()}
    return out


def _popularity(recommender: Recommender) -> Callable[[int], list[int]]:
    """Most-rated movies the user has not rated, from the same training histories."""
    histories = recommender.artifacts.histories
    counts = np.bincount(histories.rows, minlength=recommender.num_movies)
    order: npt.NDArray[np.int64] = np.argsort(-counts, kind="stable")
    ids = recommender.artifacts.movie_ids

    def rank(user: int) -> list[int]:
        found = histories.lookup(user)
        seen = set(found[0].tolist()) if found is not None else set()
        return [int(ids[r]) for r in _first_unseen(order, seen, 20)]

    return rank


def _first_unseen(order: Iterable[int], seen: set[int], k: int) -> list[int]:
    out = []
    for r in order:
        if r not in seen:
            out.append(int(r))
            if len(out) == k:
                break
    return out


def format_table(results: dict[str, Scores]) -> str:
    header = f"{'':12}" + "".join(f"{m:>13}" for m in METRICS)
    lines = [header]
    for name, s in results.items():
        lines.append(f"{name:12}" + "".join(f"{v:>13.4f}" for v in s.as_dict().values()))
    users = next(iter(results.values())).users
    lines.append(f"({users} evaluated users)")
    return "\n".join(lines)
