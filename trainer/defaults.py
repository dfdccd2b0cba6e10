"""Settings that follow from the data's shape: every TrainConfig field in ``config.AUTO`` left
auto is chosen here, once, before training; a value set explicitly is always kept.

    movierec train --data DIR --out ART             # dim, epochs, keep, lr chosen from DIR
    movierec train --data DIR --out ART --dim 128   # dim as given, the rest chosen

Each rule is a line or two with the measurement behind it (``benchmarks/shapes.py
--validation``: holdouts carved from the training part of each shape, never a test file). The
manifest's ``training.auto`` records the shape, each choice and its reason.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from trainer.config import TrainConfig
from trainer.pairs import Baskets


@dataclass(frozen=True)
class Shape:
    """The size of the liked-ratings matrix the model learns from."""

    users: int  # users with at least one liked rating
    movies: int  # movies with at least one liked rating
    liked: int  # liked ratings

    @classmethod
    def of(cls, users: npt.NDArray[np.int64], movies: npt.NDArray[np.int64]) -> Shape:
        """From the user and movie of each liked rating."""
        return cls(len(np.unique(users)), len(np.unique(movies)), len(users))

    @classmethod
    def of_ratings(cls, ratings: pd.DataFrame, like_threshold: float) -> Shape:
        liked = ratings[ratings["rating"].to_numpy() >= like_threshold]
        return cls.of(liked["user_id"].to_numpy(), liked["movie_id"].to_numpy())

    @classmethod
    def of_baskets(cls, baskets: Baskets) -> Shape:
        users = np.repeat(np.arange(len(baskets.lengths)), baskets.lengths)
        return cls.of(users, baskets.items)

    @property
    def per_user(self) -> float:
        return self.liked / max(self.users, 1)

    @property
    def per_movie(self) -> float:
        return self.liked / max(self.movies, 1)

    @property
    def density(self) -> float:
        return self.liked / max(self.users * self.movies, 1)

    def as_dict(self) -> dict[str, Any]:
        derived = {"per_user": round(self.per_user, 1), "per_movie": round(self.per_movie, 1),
                   "density": round(self.density, 5)}  # fmt: skip
        return {**dataclasses.asdict(self), **derived}


# What the auto fields were before they followed the data. The pair objectives and ALS keep
# them (no rule was measured for those); cbow's rules below start from them.
FIXED: dict[str, Any] = {"dim": 256, "epochs": 30, "keep": 0.6, "lr": 0.005, "popularity": 1.0,
                         "ease": 0.0}  # fmt: skip

# Early stopping trains twice (on a holdout's training part, then on everything) and scores
# the holdout after every epoch; past this many liked ratings the epochs follow the rule
# instead (25M generated ratings: 10 minutes per 30 epochs on 2 cores).
EARLY_STOPPING_MAX_LIKED = 3_000_000


def resolve(
    config: TrainConfig, shape: Shape, early_stopping: bool = True
) -> tuple[TrainConfig, dict[str, Any]]:
    """``config`` with every auto field chosen, and the record of the choices for the
    manifest: {"shape": ..., "chosen": {field: {"value": v, "why": "..."}}}. With
    ``early_stopping`` cbow's epochs and popularity may stay 0: a holdout carved from the
    data decides them (trainer.holdout.stop_early; the pipeline records its curve)."""
    if config.objective == "cbow":
        rules = _cbow(shape, early_stopping and config.epochs == 0)
    else:
        rules = {k: (v, f"the fixed default for {config.objective}") for k, v in FIXED.items()}
    chosen = {name: rules[name] for name in config.unresolved}
    record = {
        "shape": shape.as_dict(),
        "chosen": {name: {"value": value, "why": why} for name, (value, why) in chosen.items()},
    }
    return dataclasses.replace(config, **{k: v for k, (v, _) in chosen.items()}), record


def _cbow(shape: Shape, early_stopping: bool) -> dict[str, tuple[Any, str]]:
    """(value, reason) per auto field for cbow. Measured on validation holdouts of the shapes
    of benchmarks/shapes.py (README "Quality"): the amount of training is what the shapes
    disagree on. The same 30 epochs were 2-5x too many on generated data (NDCG@10 peaked at
    epoch 3-6 and fell by a quarter after) and about right on ml-latest-small's shapes, whose
    sizes are alike: no rule on the shape separates them, a holdout does. Once early stopping
    ends training, dim, lr and keep moved NDCG@10 by less than one holdout's noise (0.005)."""
    epochs: tuple[Any, str]
    popularity: tuple[Any, str]
    ease: tuple[Any, str]
    if shape.liked > EARLY_STOPPING_MAX_LIKED:
        why = f"{shape.liked:,} liked ratings: too many to train twice for early stopping"
        epochs, popularity, ease = (FIXED["epochs"], why), (1.0, why), (0.0, why)
    elif early_stopping:
        epochs = (0, f"{shape.liked:,} liked ratings: early stopping on a holdout")
        popularity = (0, "chosen on the holdout with the epochs")
        ease = (-1.0, "chosen on the holdout after the epochs")
    else:
        epochs = (FIXED["epochs"], "no holdout run")
        popularity = (1.0, "no holdout run (epochs given or trained directly): as trained")
        ease = (0.0, "no holdout run: cbow alone")
    return {
        "epochs": epochs,
        "popularity": popularity,
        "ease": ease,
        "dim": (256, "128 and 512 within noise of 256 on every shape; 128 cut coverage on "
                "sparse data (0.083 -> 0.070), 512 costs twice the time"),
        "lr": (0.005, "0.0025 within noise at 1.5-2x the epochs; 0.01 and 0.02 overshoot "
               "(dense core -0.016, -0.033 NDCG@10 at 30 epochs)"),
        "keep": (0.6, "0.4 and 0.8 within noise on every shape"),
    }  # fmt: skip
