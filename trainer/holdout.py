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
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from movierec.artifacts import MeanAggregation
from trainer import ease
from trainer.config import TrainConfig
from trainer.corpus import Corpus, build_corpus
from trainer.embeddings import Embeddings, LowRank
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
# The bias weights a blend is scored with (times a given --popularity): lower ones too, as the
# EASE part brings popularity of its own (generated ml-1m shape, test: Recall@20 0.218 -> 0.220,
# Coverage@10 0.357 -> 0.383 at the same NDCG@10).
BLEND_POPULARITY = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
# Among an EASE part's settings, holdout NDCG@10 within this share of the best counts as a tie
# (one holdout's figure moves by ~2% at random), and a tie goes to the wider Coverage@10; a blend
# must beat cbow alone by more than this to be kept. On six generated shapes 0.5% kept NDCG@10
# at or above EASE's on five, 1% on three (+0.01 coverage).
TOLERANCE = 0.005
# Where the best blend leads EASE alone on the holdout, the blend's settings may give up this
# share of that lead (at most COVERAGE_CAP of the best NDCG@10) for a wider Coverage@10: the
# lead over the strongest single model is what the default can spend on its catalogue, and where
# there is none accuracy decides alone. Measured over nine shapes (benchmarks/README.md), on test
# and on a validation holdout: coverage up on both (sparse generated shape 0.149 -> 0.177, ALS
# 0.156), and NDCG@10 and Recall@20 at or above EASE's on as many shapes as before, or more.
COVERAGE_SHARE = 0.5
COVERAGE_CAP = 0.03
# _blend's rule in words, for the manifest's reasons
BLEND_CHOICE = (
    f"the widest holdout coverage within {TOLERANCE:.1%} of the best NDCG@10, or within "
    f"{COVERAGE_SHARE:.0%} of its lead over EASE alone (at most {COVERAGE_CAP:.0%})"
)
# An EASE part's weights against cbow's unit rows (trainer/ease.py). Asked for a 2% gain over
# cbow alone, no ml-latest-small shape kept a blend, yet kept at any gain one raised test NDCG@10
# on all six tried (+0.002 to +0.007). Weights down to 1/16 were tried and left out: the holdout
# took them on six shapes, and test NDCG@10 fell on four (heavy users 0.422 -> 0.413).
EASE_WEIGHTS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


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

    def each(
        self, embeddings: Embeddings, popularity: Sequence[float], config: TrainConfig | None = None
    ) -> list[Scores]:
        """Scores with the index's bias column (cbow's popularity prior) weighted by each of
        ``popularity`` in turn; the rest of the ranking is computed once. ``config``: serve
        the tables with these settings instead of the scorer's (another EASE weight)."""
        vectors, indexed, aggregation = served_tables(embeddings, config or self.config)
        append_one = isinstance(aggregation, MeanAggregation) and aggregation.append_one
        bias = indexed[:, -1] if append_one else np.zeros(len(indexed), np.float32)
        items = indexed[:, :-1] if append_one else indexed
        return self.ranked(vectors, items, bias, popularity)

    def ranked(
        self,
        vectors: npt.NDArray[np.float32],
        items: npt.NDArray[np.float32],
        bias: npt.NDArray[np.float32],
        popularity: Sequence[float],
    ) -> list[Scores]:
        """Scores of the ranking by <normalised sum of the history's ``vectors``, ``items``>
        + weight * ``bias``, for each weight of ``popularity``."""
        ranked: list[dict[int, list[int]]] = [{} for _ in popularity]
        n = len(items)
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
class Blend:
    """What the holdout said of an EASE part beside cbow (trainer/ease.py)."""

    weight: float  # 0: cbow alone
    lam: float  # EASE's L2 strength found (0 when none was fitted)
    debias: float  # the popularity correction chosen with it (ease.DEBIAS)
    popularity: float  # its bias weight, a multiple of the given one (cbow's if none is kept)
    scores: Scores | None  # the blend's holdout scores (None: cbow alone)
    tried: dict[str, float]  # "lambda 120" / "debias 0.25" / "weight 0.5" -> holdout NDCG@10
    why: str


@dataclass(frozen=True)
class Stopped:
    """What early stopping found on the holdout."""

    epochs: int  # the best number of epochs
    popularity: float  # the bias weight chosen at that epoch (as given unless asked to choose)
    column: int  # cbow's popularity candidate chosen (its column of the curve)
    curve: list[list[Scores]]  # after each epoch, one entry per popularity candidate
    candidates: tuple[float, ...]
    seconds: float  # training and scoring on the holdout
    blend: Blend | None = None  # None: EASE was not considered (config.ease 0)

    @property
    def ease(self) -> float:
        return self.blend.weight if self.blend else 0.0

    @property
    def ease_lambda(self) -> float:
        return self.blend.lam if self.blend and self.blend.weight else 0.0

    @property
    def ease_debias(self) -> float:
        return self.blend.debias if self.blend and self.blend.weight else 0.0

    @property
    def scores(self) -> Scores:
        """The chosen settings' scores (not smoothed)."""
        if self.blend and self.blend.scores:
            return self.blend.scores
        return self.curve[self.epochs - 1][self.column]

    @property
    def ndcg(self) -> float:
        """The chosen epoch's NDCG@10 averaged with its neighbours', as it was chosen (with
        an EASE part: the blend's)."""
        if self.blend and self.blend.scores:
            return self.blend.scores.ndcg_10
        return float(_smooth([row[self.column].ndcg_10 for row in self.curve])[self.epochs - 1])

    def record(self) -> dict[str, Any]:
        at_best = {
            f"{p:g}": round(float(_smooth([r[i].ndcg_10 for r in self.curve])[self.epochs - 1]), 4)
            for i, p in enumerate(self.candidates)
        }
        record: dict[str, Any] = {
            "ndcg_curve": [round(row[0].ndcg_10, 4) for row in self.curve],
            "popularity_at_best": at_best,
            "holdout_seconds": round(self.seconds, 1),
        }
        if self.blend:
            record["ease"] = {"weight": self.blend.weight, "lambda": self.blend.lam,
                              "debias": self.blend.debias, "popularity": self.popularity,
                              "ndcg": self.blend.tried, "why": self.blend.why}  # fmt: skip
        return record


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
    POPULARITY are scored too and one above 1 is kept only if it beats 1 by POPULARITY_GAIN.
    Unless ``config.ease`` is 0, an EASE part is then weighed on the same holdout (_blend)."""
    start = time.perf_counter()
    fit, held = carve(data, HOLDOUT_SEED + config.seed)
    corpus = build_corpus(fit, config.like_threshold, config.min_count)
    candidates = POPULARITY if config.popularity == 0 else (1.0,)
    plain = dataclasses.replace(config, popularity=config.popularity or 1.0, ease=0.0)
    scorer = HoldoutScorer(corpus, held, plain)
    curve: list[list[Scores]] = []
    rows = len(corpus.movies)
    weigh_ease = config.ease != 0 and rows <= ease.MAX_ROWS
    # The best epoch is always among the last patience + 1 (a new epoch moves the smoothed
    # curve's last three points only), so the blend starts from its tables, not a retraining.
    recent: deque[Embeddings] = deque(maxlen=patience + 1 if weigh_ease else 0)

    def after_epoch(embeddings: Embeddings) -> bool:
        curve.append(scorer.each(embeddings, candidates))
        recent.append(embeddings)
        return len(curve) - 1 - _best([row[0].ndcg_10 for row in curve]) >= patience

    train(corpus, dataclasses.replace(plain, epochs=max_epochs), show_progress,
          after_epoch=after_epoch)  # fmt: skip
    best = _best([row[0].ndcg_10 for row in curve])
    at_best = [_smooth([row[i].ndcg_10 for row in curve])[best] for i in range(len(candidates))]
    column = 0
    if config.popularity == 0:
        pick = int(np.argmax(at_best))
        if at_best[pick] >= at_best[0] * (1 + POPULARITY_GAIN):
            column = pick
    log.info("holdout NDCG@10 peaked after %d of %d epochs, at %.4f (popularity %g)", best + 1,
             len(curve), at_best[column], candidates[column] * plain.popularity)  # fmt: skip
    blend = None
    if weigh_ease:
        trained = recent[best - len(curve)]  # deque indices count back from the last epoch
        blend = _blend(corpus, scorer, config, trained, candidates[column])
    elif config.ease != 0:
        blend = Blend(0.0, 0.0, 0.0, candidates[column], None, {},
                      f"{rows:,} movies: EASE's matrix is too large")  # fmt: skip
    popularity = (blend.popularity if blend else candidates[column]) * plain.popularity
    seconds = time.perf_counter() - start
    return Stopped(best + 1, popularity, column, curve, candidates, seconds, blend)


def _blend(
    corpus: Corpus,
    scorer: HoldoutScorer,
    config: TrainConfig,
    trained: Embeddings,
    popularity: float,
) -> Blend:
    """EASE's lambda (unless given) from EASE alone on the holdout and its popularity
    correction (unless given) at that lambda, then the weight (unless given) from cbow's
    ``trained`` tables at the chosen epoch (bias weight ``popularity``) plus the EASE part at
    each of EASE_WEIGHTS, with each bias weight of BLEND_POPULARITY (if popularity is auto). An
    auto weight is kept only if the blend beats cbow alone by more than TOLERANCE. Each choice
    is _pick's: the widest coverage among settings within TOLERANCE of the best NDCG@10, for
    the blend's weights down to _coverage_floor's."""
    rows = len(corpus.movies)
    g = ease.gram(corpus.baskets, rows)
    zero = np.zeros(rows, np.float32)
    tried: dict[str, float] = {}

    def alone(factors: LowRank) -> Scores:
        return scorer.ranked(factors.left, factors.right, zero, (0.0,))[0]

    lam = config.ease_lambda
    if lam:
        factors = ease.fit(g, lam, config.seed)
    else:  # lambdas in increasing order; stop two steps past the best, keep the best's factors
        best, since_best = -1.0, 0
        for step in ease.lambdas(corpus.baskets, rows):
            fitted = ease.fit(g, step, config.seed)
            ndcg = alone(fitted).ndcg_10
            tried[f"lambda {step:g}"] = round(ndcg, 4)
            since_best += 1
            if ndcg > best:
                best, lam, factors, since_best = ndcg, step, fitted, 0
            if since_best == 2:
                break
    betas = (config.ease_debias,) if config.ease_debias >= 0 else ease.DEBIAS
    each = [ease.debias(factors, g, beta) for beta in betas]
    scored = [alone(f) for f in each]
    tried.update((f"debias {b:g}", round(s.ndcg_10, 4)) for b, s in zip(betas, scored, strict=True))
    by_beta = [s.ndcg_10 for s in scored]
    chosen = _pick(by_beta, [s.coverage_10 for s in scored], max(by_beta) * (1 - TOLERANCE))
    debias, factors, ease_alone = betas[chosen], each[chosen], by_beta[chosen]
    blended = dataclasses.replace(trained, ease=factors)
    cbow = scorer.each(trained, (popularity,))[0]
    candidates = BLEND_POPULARITY if config.popularity == 0 else (1.0,)
    weights = (config.ease,) if config.ease > 0 else EASE_WEIGHTS
    results: list[tuple[float, int, Scores]] = []
    for weight in weights:
        served = dataclasses.replace(scorer.config, ease=weight)
        by_column = scorer.each(blended, candidates, served)
        results += [(weight, i, s) for i, s in enumerate(by_column)]
        tried[f"weight {weight:g}"] = round(max(s.ndcg_10 for s in by_column), 4)
    best_blend = max(r[2].ndcg_10 for r in results)
    if config.ease < 0:  # worth its dimensions only if better than a tie
        results = [r for r in results if r[2].ndcg_10 > cbow.ndcg_10 * (1 + TOLERANCE)]
    if not results:
        why = f"the best blend {best_blend:.4f} against cbow's {cbow.ndcg_10:.4f} on the holdout"
        return Blend(0.0, lam, debias, popularity, None, tried, why)
    by_blend = [r[2].ndcg_10 for r in results]
    floor = _coverage_floor(max(by_blend), ease_alone)
    weight, column, s = results[_pick(by_blend, [r[2].coverage_10 for r in results], floor)]
    why = (f"NDCG@10 {s.ndcg_10:.4f} on the holdout (best blend {max(by_blend):.4f}), cbow "
           f"alone {cbow.ndcg_10:.4f}, EASE alone {ease_alone:.4f}")  # fmt: skip
    log.info("EASE part kept: lambda %g, debias %g, weight %g (%s)", lam, debias, weight, why)
    return Blend(weight, lam, debias, candidates[column], s, tried, why)


def _coverage_floor(best: float, ease_alone: float) -> float:
    """The least holdout NDCG@10 a blend may have to be chosen for its coverage: within
    TOLERANCE of the ``best`` blend's, or lower by COVERAGE_SHARE of its lead over
    ``ease_alone``, but never more than COVERAGE_CAP below it."""
    lead = max(best - ease_alone, 0.0)
    return min(best * (1 - TOLERANCE), max(best - COVERAGE_SHARE * lead, best * (1 - COVERAGE_CAP)))


def _pick(ndcg: Sequence[float], coverage: Sequence[float], floor: float) -> int:
    """The index of the widest ``coverage`` among those whose ``ndcg`` is at least ``floor``
    (at most the best ``ndcg``; the first of equals)."""
    return max((i for i, x in enumerate(ndcg) if x >= floor), key=lambda i: coverage[i])


def _smooth(curve: list[float], half: int = 2) -> npt.NDArray[np.float64]:
    """Each point's mean with its neighbours (``half`` either side)."""
    return np.array([np.mean(curve[max(0, i - half) : i + half + 1]) for i in range(len(curve))])


def _best(curve: list[float]) -> int:
    return int(np.argmax(_smooth(curve)))
