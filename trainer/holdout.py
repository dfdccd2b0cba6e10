"""A validation holdout carved from the training data itself (EVALUATION.md's protocol: a random
20% of each user's ratings; never a test file), and the served model's scores on it.

The scorer ranks exactly as the server does (trainer.export.served_tables: the normalised mean
of the liked movies' rows, a 1 appended, inner product with the index rows, every watched
movie excluded) but for all held-out users in one matrix product, so it can run after every
epoch: 600 users and 3.6k movies score in ~0.05 s.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from movierec.artifacts import MeanAggregation
from trainer.config import TrainConfig
from trainer.corpus import Corpus, build_corpus
from trainer.embeddings import Embeddings
from trainer.evaluate import Scores, relevant_sets, score
from trainer.export import served_tables
from trainer.movielens import MovieLens
from trainer.split import holdout_split
from trainer.train import train

log = logging.getLogger(__name__)

HOLDOUT_SEED = 100  # the validation splits of benchmarks/ablation.py use 100, 101, ...
MAX_EPOCHS = 100  # early stopping's limit; the curves measured peak between 5 and 50
PATIENCE = 10  # epochs without a better score before early stopping gives up
# Bias weights early stopping compares when popularity is auto, and the relative NDCG@10 gain
# over 1 that one must show to be kept (below it, the ranking stays as trained).
POPULARITY = (1.0, 1.5, 2.0, 3.0)
POPULARITY_GAIN = 0.02


def carve(data: MovieLens, seed: int = HOLDOUT_SEED) -> tuple[MovieLens, pd.DataFrame]:
    """(what to train on, held-out ratings to score on), from the training data alone."""
    fit, held = holdout_split(data.ratings, seed=seed)
    return MovieLens(fit.reset_index(drop=True), data.movies, data.layout), held


class HoldoutScorer:
    """Scores of trained tables on held-out ratings, as the server would rank (cbow and the
    pair objectives: a mean query; not ALS's fold-in)."""

    def __init__(
        self,
        corpus: Corpus,
        held: pd.DataFrame,
        config: TrainConfig,
        max_users: int = 3000,
        seed: int = 0,
    ) -> None:
        self.config = config
        self.relevant = relevant_sets(held)
        if len(self.relevant) > max_users:  # a sample is enough to compare settings
            keep = np.random.default_rng(seed).choice(sorted(self.relevant), max_users, False)
            self.relevant = {int(u): self.relevant[int(u)] for u in np.sort(keep)}
        self.catalogue = corpus.rated_movies
        self.movie_ids = np.array([m.movie_id for m in corpus.movies], dtype=np.int64)
        h = corpus.histories
        pos = np.searchsorted(h.user_ids, list(self.relevant))
        known = (pos < len(h.user_ids)) & (h.user_ids[np.minimum(pos, len(h.user_ids) - 1)]
                                           == list(self.relevant))  # fmt: skip
        self.users = np.array(list(self.relevant), dtype=np.int64)[known]
        starts, ends = h.indptr[pos[known]], h.indptr[pos[known] + 1]
        self.seen_user, self.seen_row = _expand(starts, ends, h.rows)
        liked = h.ratings[_expand(starts, ends, np.arange(len(h.rows)))[1]] >= config.like_threshold
        # the query aggregates the liked movies, or every watched one when none is liked
        any_liked = np.bincount(self.seen_user, liked, len(self.users)) > 0
        used = liked | ~any_liked[self.seen_user]
        self.query_user, self.query_row = self.seen_user[used], self.seen_row[used]

    def __call__(self, embeddings: Embeddings) -> Scores:
        return self.each(embeddings, (1.0,))[0]

    def each(self, embeddings: Embeddings, popularity: Sequence[float]) -> list[Scores]:
        """Scores with the index's bias column (cbow's popularity prior) weighted by each of
        ``popularity`` in turn; the rest of the ranking is computed once."""
        vectors, indexed, aggregation = served_tables(embeddings, self.config)
        append_one = isinstance(aggregation, MeanAggregation) and aggregation.append_one
        bias = indexed[:, -1] if append_one else np.zeros(len(indexed), np.float32)
        items = indexed[:, :-1] if append_one else indexed
        ranked: list[dict[int, list[int]]] = [{} for _ in popularity]
        n = len(indexed)
        for lo in range(0, len(self.users), 1024):  # bounded memory on large catalogues
            users = self.users[lo : lo + 1024]
            history = np.zeros((len(users), n), np.float32)
            mine = (self.query_user >= lo) & (self.query_user < lo + len(users))
            history[self.query_user[mine] - lo, self.query_row[mine]] = 1.0
            query = history @ vectors  # the sum; normalised, as the mean would be
            query /= np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
            personal = query @ items.T
            mine = (self.seen_user >= lo) & (self.seen_user < lo + len(users))
            personal[self.seen_user[mine] - lo, self.seen_row[mine]] = -np.inf
            for weight, found in zip(popularity, ranked, strict=True):
                s = personal + weight * bias
                top = np.argpartition(-s, min(20, n - 1), axis=1)[:, :20]
                order = np.argsort(-np.take_along_axis(s, top, 1), axis=1, kind="stable")
                for user, rows in zip(users, np.take_along_axis(top, order, 1), strict=True):
                    found[int(user)] = self.movie_ids[rows].tolist()
        return [
            score(lambda u, f=found: f.get(u, []), self.relevant, self.catalogue)  # type: ignore[misc]
            for found in ranked
        ]


def _expand(
    starts: npt.NDArray[np.int64], ends: npt.NDArray[np.int64], values: npt.NDArray[np.generic]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.generic]]:
    """(owner, value) for every entry of the ranges [starts[i], ends[i]) of ``values``."""
    lengths = ends - starts
    owner = np.repeat(np.arange(len(starts), dtype=np.int64), lengths)
    entry = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return owner, values[np.repeat(starts, lengths) + entry]


@dataclass(frozen=True)
class Stopped:
    """What early stopping found on the holdout."""

    epochs: int  # the best number of epochs
    popularity: float  # the bias weight chosen at that epoch (1 unless asked to choose)
    curve: list[list[Scores]]  # after each epoch, one entry per popularity candidate
    candidates: tuple[float, ...]
    seconds: float  # training and scoring on the holdout

    @property
    def scores(self) -> Scores:
        """The chosen epoch's and popularity's scores (not smoothed)."""
        return self.curve[self.epochs - 1][self.candidates.index(self.popularity)]

    @property
    def ndcg(self) -> float:
        """The chosen epoch's NDCG@10 averaged with its neighbours', as it was chosen."""
        column = self.candidates.index(self.popularity)
        return float(_smooth([row[column].ndcg_10 for row in self.curve])[self.epochs - 1])

    def record(self) -> dict[str, Any]:
        at_best = {
            f"{p:g}": round(float(_smooth([r[i].ndcg_10 for r in self.curve])[self.epochs - 1]), 4)
            for i, p in enumerate(self.candidates)
        }
        return {
            "ndcg_curve": [round(row[0].ndcg_10, 4) for row in self.curve],
            "popularity_at_best": at_best,
            "holdout_seconds": round(self.seconds, 1),
        }


def stop_early(
    data: MovieLens,
    config: TrainConfig,
    max_epochs: int = MAX_EPOCHS,
    patience: int = PATIENCE,
    show_progress: bool = False,
) -> Stopped:
    """Early stopping: train on a holdout's training part, score the served model after every
    epoch, and stop once the score has not improved for ``patience`` epochs. The best epoch
    count is the one with the highest NDCG@10 averaged over its neighbours (one epoch's
    figure moves by ~0.005 at random). When ``config.popularity`` is auto, the bias weights of
    POPULARITY are scored too and one above 1 is kept only if it beats 1 by POPULARITY_GAIN."""
    start = time.perf_counter()
    fit, held = carve(data, HOLDOUT_SEED + config.seed)
    corpus = build_corpus(fit, config.like_threshold, config.min_count)
    candidates = POPULARITY if config.popularity == 0 else (1.0,)
    scorer = HoldoutScorer(
        corpus, held, dataclasses.replace(config, popularity=config.popularity or 1.0)
    )
    curve: list[list[Scores]] = []

    def after_epoch(embeddings: Embeddings) -> bool:
        curve.append(scorer.each(embeddings, candidates))
        return len(curve) - 1 - _best([row[0].ndcg_10 for row in curve]) >= patience

    train(
        corpus,
        dataclasses.replace(config, epochs=max_epochs, popularity=config.popularity or 1.0),
        show_progress,
        after_epoch=after_epoch,
    )
    best = _best([row[0].ndcg_10 for row in curve])
    at_best = [_smooth([row[i].ndcg_10 for row in curve])[best] for i in range(len(candidates))]
    popularity = config.popularity or 1.0
    if config.popularity == 0:
        pick = int(np.argmax(at_best))
        if at_best[pick] >= at_best[0] * (1 + POPULARITY_GAIN):
            popularity = candidates[pick]
    log.info("holdout NDCG@10 peaked after %d of %d epochs, at %.4f (popularity %g)", best + 1,
             len(curve), at_best[candidates.index(popularity)], popularity)  # fmt: skip
    return Stopped(best + 1, popularity, curve, candidates, time.perf_counter() - start)


def _smooth(curve: list[float], half: int = 2) -> npt.NDArray[np.float64]:
    """Each point's mean with its neighbours (``half`` either side)."""
    return np.array([np.mean(curve[max(0, i - half) : i + half + 1]) for i in range(len(curve))])


def _best(curve: list[float]) -> int:
    return int(np.argmax(_smooth(curve)))
