"""The per-user random holdout of EVALUATION.md, for carving a validation split out of a
training file (tune on it; never on the test file)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def holdout_split(
    ratings: pd.DataFrame, fraction: float = 0.2, min_ratings: int = 5, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, held_out): for every user with at least ``min_ratings`` ratings, ``fraction``
    of them (at least one) chosen uniformly at random are held out; other users stay whole."""
    rng = np.random.default_rng(seed)
    order = ratings.assign(_r=rng.random(len(ratings))).sort_values(["user_id", "_r"])
    rank = order.groupby("user_id").cumcount().to_numpy()
    size = order.groupby("user_id")["user_id"].transform("size").to_numpy()
    quota = np.where(size >= min_ratings, np.maximum(1, np.round(size * fraction)), 0)
    held = rank < quota
    order = order.drop(columns="_r")
    return order[~held].sort_index(), order[held].sort_index()
