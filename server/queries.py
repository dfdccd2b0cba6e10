"""From a history to a query vector: one class per aggregation an artifact can declare
(``movierec.artifacts.MeanAggregation``, ``AlsAggregation``).

A history is liked rows with weights and disliked rows. Every query is linear in the history
given the model: query = sum_i part_i (plus a constant 1 for a bias dimension), so each
result's score splits exactly into one share per history movie (``parts``), a disliked movie's
share negative. That is what explanations report.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from movierec.artifacts import Aggregation, AlsAggregation, MeanAggregation

Rows = npt.NDArray[np.int64]
Vector = npt.NDArray[np.float32]

# A disliked movie pulls the query away with half the weight of the liked ones together:
# q ~ mean(liked) - 0.5 mean(disliked), the direction of Qdrant's 2 * avg(pos) - avg(neg).
DISLIKE_WEIGHT = 0.5


@dataclass(frozen=True)
class History:
    """What a query is built from: liked rows with positive weights (1, or what the caller
    gave: stars, recency, ...) and the stars they were rated with (NaN: not rated), and
    disliked rows. Rows are unique and none is both liked and disliked."""

    liked: Rows
    weights: npt.NDArray[np.float64] | None  # None: every liked row weighs 1
    stars: npt.NDArray[np.float64]
    disliked: Rows

    @property
    def liked_weights(self) -> npt.NDArray[np.float64]:
        return np.ones(len(self.liked)) if self.weights is None else self.weights

    @property
    def rows(self) -> Rows:
        return np.concatenate([self.liked, self.disliked])

    def __len__(self) -> int:
        return len(self.liked) + len(self.disliked)


class MeanQuery:
    """The normalised weighted mean of the liked rows' vectors, minus half the mean of the
    disliked ones; with ``append_one``, followed by a 1 (the index's last dimension is a
    bias). With unit weights and no dislikes this is exactly what training optimised."""

    def __init__(self, vectors: Vector, aggregation: MeanAggregation) -> None:
        self._vectors = vectors
        self._append_one = aggregation.append_one

    def vector(self, history: History) -> Vector:
        if history.weights is None and not len(history.disliked):  # a plain mean: fewer steps
            total: Vector = np.add.reduce(np.take(self._vectors, history.liked, axis=0), axis=0)
        else:
            rows, coefficients = self._coefficients(history)
            total = coefficients @ np.take(self._vectors, rows, axis=0)
        total /= max(float(np.linalg.norm(total)), 1e-12)
        if self._append_one:
            total = np.append(total, np.float32(1.0))
        return total.reshape(1, -1)

    def parts(self, history: History) -> npt.NDArray[np.float64]:
        rows, coefficients = self._coefficients(history)
        parts: npt.NDArray[np.float64] = np.take(self._vectors, rows, axis=0).astype(np.float64)
        parts *= coefficients[:, None]
        parts /= max(float(np.linalg.norm(parts.sum(axis=0))), 1e-12)
        return parts

    @staticmethod
    def _coefficients(history: History) -> tuple[Rows, npt.NDArray[np.float32]]:
        weights = history.liked_weights
        liked = weights / weights.sum() if len(history.liked) else weights
        disliked = np.full(len(history.disliked), -DISLIKE_WEIGHT / max(len(history.disliked), 1))
        return history.rows, np.concatenate([liked, disliked]).astype(np.float32)


class AlsQuery:
    """ALS's least-squares fold-in over the item factors Y: x = A^-1 Y' C p with
    A = Y'Y + lambda I + sum (c_i - 1) y_i y_i', confidence c = alpha * stars * weight (an
    unrated movie counts ``inline_stars``), and preference p = 1 for liked movies,
    -DISLIKE_WEIGHT for disliked ones. Training's weights are the stars, so a training
    history folds in to what the user's own factors would be."""

    def __init__(self, vectors: Vector, aggregation: AlsAggregation) -> None:
        self._vectors = vectors
        y = vectors.astype(np.float64)
        self._gram = y.T @ y + aggregation.regularization * np.eye(y.shape[1])
        self._alpha = aggregation.alpha
        self._inline_stars = aggregation.inline_stars

    def vector(self, history: History) -> Vector:
        query: Vector = self.parts(history).sum(axis=0).astype(np.float32)
        return query.reshape(1, -1)

    def parts(self, history: History) -> npt.NDArray[np.float64]:
        y = np.take(self._vectors, history.rows, axis=0).astype(np.float64)
        stars = np.where(np.isnan(history.stars), self._inline_stars, history.stars)
        confidence = self._alpha * np.concatenate(
            [stars * history.liked_weights, np.full(len(history.disliked), self._inline_stars)]
        )
        preference = np.concatenate(
            [np.ones(len(history.liked)), np.full(len(history.disliked), -DISLIKE_WEIGHT)]
        )
        system = self._gram + (y.T * (confidence - 1)) @ y
        parts: npt.NDArray[np.float64] = np.linalg.solve(system, y.T).T.astype(np.float64)
        parts *= (confidence * preference)[:, None]
        return parts


Query = MeanQuery | AlsQuery


def query_for(vectors: Vector, aggregation: Aggregation) -> Query:
    """The query class an artifact's aggregation names."""
    if isinstance(aggregation, AlsAggregation):
        return AlsQuery(vectors, aggregation)
    return MeanQuery(vectors, aggregation)
