"""Settings that follow from the data's shape: every TrainConfig field in ``config.AUTO`` left at
0 is chosen here, once, before training; a value set explicitly is always kept.

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


# The constants the defaults were before they followed the data; the pair objectives and ALS
# keep them (no shape rule was measured for those).
FIXED: dict[str, Any] = {"dim": 256, "epochs": 30, "keep": 0.6, "lr": 0.005, "popularity": 1.0}


# Early stopping trains twice (on a holdout's training part, then on everything); past this
# many liked ratings the epochs follow a rule instead.
EARLY_STOPPING_MAX_LIKED = 3_000_000


def resolve(
    config: TrainConfig, shape: Shape, early_stopping: bool = True
) -> tuple[TrainConfig, dict[str, Any]]:
    """``config`` with every auto field chosen, and the record of the choices for the
    manifest: {"shape": ..., "chosen": {field: {"value": v, "why": "..."}}}. With
    ``early_stopping`` cbow's epochs may stay 0: a holdout decides them
    (trainer.holdout.best_epochs; the pipeline records its curve)."""
    if config.objective == "cbow":
        rules = _cbow(shape, early_stopping)
    else:
        rules = {k: (v, f"the fixed default for {config.objective}") for k, v in FIXED.items()}
    if config.epochs and rules.get("popularity", (None,))[0] == 0:  # no holdout run to ask
        rules["popularity"] = (FIXED["popularity"], "epochs were given: no holdout to choose it")
    chosen = {name: rules[name] for name in config.unresolved}
    record = {
        "shape": shape.as_dict(),
        "chosen": {name: {"value": value, "why": why} for name, (value, why) in chosen.items()},
    }
    return dataclasses.replace(config, **{k: v for k, (v, _) in chosen.items()}), record


def _cbow(shape: Shape, early_stopping: bool) -> dict[str, tuple[Any, str]]:
    """(value, reason) per auto field for the cbow objective."""
    rules: dict[str, tuple[Any, str]] = {
        name: (value, "placeholder") for name, value in FIXED.items()
    }
    if early_stopping and shape.liked <= EARLY_STOPPING_MAX_LIKED:
        rules["epochs"] = (0, "early stopping on a holdout")
        rules["popularity"] = (0, "chosen with the epochs on the holdout")
    return rules
