"""Recommendation quality under ../shared/EVALUATION.md, scored through the server's core.

    movierec evaluate --artifacts ART --test ../shared/eval/ml-latest-small/test.csv
    movierec evaluate --split ../shared/eval/ml-latest-small --out ART   # train, then score

A held-out movie is relevant when rated >= 4.0; evaluated users have at least one relevant
held-out movie; each gets exactly what the server would answer from their training history
(watched movies excluded). Metrics: Recall@10, Recall@20 (hits / min(K, |relevant|)), NDCG@10
(binary gains, ideal DCG over min(10, |relevant|) hits), HitRate@10, Coverage@10 (distinct
movies in any top 10 / movies in the training data). A popularity baseline (most rated
unseen movies) is scored the same way for reference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from server.recommender import Reason, Recommender, Request

RELEVANT_RATING = 4.0
METRICS = ("recall@10", "recall@20", "ndcg@10", "hitrate@10", "coverage@10")


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


def relevant_sets(test: pd.DataFrame) -> dict[int, set[int]]:
    liked = test[test["rating"] >= RELEVANT_RATING]
    return {int(str(u)): set(g.tolist()) for u, g in liked.groupby("user_id")["movie_id"]}


def evaluate(recommender: Recommender, test: pd.DataFrame) -> dict[str, Scores]:
    """Scores of the model and of the popularity baseline on a held-out ratings table."""
    relevant = relevant_sets(test)
    catalogue = int(
        recommender.artifacts.manifest["settings"].get("source_movies", recommender.num_movies)
    )

    def model(user: int) -> list[int]:
        items = recommender.recommend(Request(user=user, k=20)).items
        # a user without a usable training history gets popular movies, not the model's
        return [s.movie.movie_id for s in items if s.reason == Reason.PERSONAL]  # type: ignore[misc]

    return {
        "model": score(model, relevant, catalogue),
        "popularity": score(_popularity(recommender), relevant, catalogue),
    }


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
