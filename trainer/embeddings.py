"""What training produces, as numpy: the one thing the trainer hands to ``export`` (and
``als`` makes too), so neither of those imports torch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class LowRank:
    """A movies x movies weight matrix as ``left @ right.T`` (trainer/ease.py)."""

    left: npt.NDArray[np.float32]  # (movies, rank): what a query aggregates
    right: npt.NDArray[np.float32]  # (movies, rank): what the index scores


@dataclass(frozen=True)
class Embeddings:
    inp: npt.NDArray[np.float32]  # (movies, dim): W_in, aggregated into user vectors
    out: npt.NDArray[np.float32]  # (movies, dim): output vectors
    bias: npt.NDArray[np.float32]  # (movies,): output bias, a movie's popularity prior
    seconds: float
    losses: tuple[float, ...] = ()  # mean training loss of each epoch, first to last
    world_size: int = 1  # training processes (DDP ranks) that shared each step
    device: str = "cpu"  # where the steps ran: "cpu" or "cuda"
    ease: LowRank | None = None  # cbow: EASE's item-item weights, blended in by config.ease
