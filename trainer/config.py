"""Every training knob in one commented block. Each field is a ``movierec train`` flag (its
comment is the flag's help) and is stored in the artifact's manifest, so every artifact says
how it was made. No torch here: the CLI reads this to build its parser.

Fields in ``AUTO`` default to "auto" (0; ease -1, as 0 means "none"): ``trainer.defaults.resolve``
chooses them from the data's shape before training (a value given explicitly is kept), and the
manifest records the choice and its reason."""

from __future__ import annotations

import dataclasses
import inspect
import re
from dataclasses import dataclass
from typing import Any

OBJECTIVES = ("cbow", "sgns", "softmax", "als")
DEVICES = ("auto", "cpu", "cuda")
# field -> the value that means "chosen from the data" (defaults.py, holdout.py)
AUTO = {"dim": 0, "epochs": 0, "keep": 0, "lr": 0, "popularity": 0, "ease": -1}


@dataclass(frozen=True)
class TrainConfig:
    objective: str = "cbow"  # "cbow" (baskets), "sgns"/"softmax" (pairs), "als" (implicit ALS)
    dim: int = 0  # embedding size (the notebook's hidden layer); 0: auto
    epochs: int = 0  # passes over the users (cbow) or the re-sampled pairs; 0: auto
    keep: float = 0.0  # cbow: share of a user's liked movies drawn as context per step; 0: auto
    users_per_step: int = 0  # cbow: users per optimiser step; 0: a fiftieth of all users, >= 64
    softmax_samples: int = 2048  # cbow: over 5x this many movies, score a sample this big
    rating_weight: float = 0.5  # cbow: a target weighs 1 + rating_weight * (stars - 4)
    popularity: float = 0.0  # cbow: weight of the popularity prior (bias) in the index; 0: auto
    ease: float = -1.0  # cbow: weight of a low-rank EASE part in the index (ease.py); -1: auto
    ease_lambda: float = 0.0  # cbow: EASE's L2 strength; 0: chosen on the holdout with ease
    ease_debias: float = -1.0  # cbow: EASE's popularity correction (ease.debias); -1: auto
    partners: int = 10  # partners drawn per liked movie per epoch, instead of all n^2 pairs
    window: int = 0  # 0: partners from the whole history; k: within k of it in time order
    like_threshold: float = 3.5  # ratings >= this are "watched and liked" (pairs and queries)
    min_count: int = 3  # movies with fewer liked ratings get no row (0, with side_info: all)
    side_info: bool = True  # cbow: genres and decade feed each movie's vectors (cold start)
    negatives: int = 10  # sgns: negative movies per pair
    ns_exponent: float = 0.75  # sgns, sampled cbow: samples ~ count^ns_exponent (0 uniform)
    subsample: float = 0.0  # word2vec subsampling of frequent movies (e.g. 1e-3); 0 = off
    lr: float = 0.0  # Adam learning rate; 0: auto
    weight_decay: float = 0.1  # cbow: AdamW's decoupled weight decay (0: plain Adam)
    regularization: float = 0.01  # als: L2 regularisation of the factors
    alpha: float = 1.0  # als: confidence per star of a liked rating
    batch_size: int = 4096  # sgns: pairs per step; softmax: 1/16 of it as movies per step
    index: str = "flat"  # "flat": exact; "fp16": half the bytes scanned; "hnsw": graph (~1M)
    hnsw_m: int = 64  # hnsw: graph neighbours per movie
    ef_construction: int = 200  # hnsw: search depth while building (graph quality vs time)
    ef_search: int = 512  # hnsw: search depth (recall vs latency), stored in the index
    seed: int = 0  # seeds sampling and initialisation: same seed, same artifact
    threads: int = 0  # torch threads per process; 0: the CPUs it may use (affinity, quota)
    device: str = "auto"  # "cpu", "cuda" (one GPU per process), "auto": cuda when there is one

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}")
        for name in ("partners", "negatives", "batch_size", "softmax_samples", "hnsw_m",
                     "ef_construction", "ef_search"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name, auto in AUTO.items():
            value = getattr(self, name)
            if value < 0 and value != auto:
                least = "more" if auto == 0 else "0 or more"
                raise ValueError(f"{name} must be {auto} (auto) or {least}, got {value}")
        if self.users_per_step < 0:
            raise ValueError(f"users_per_step must be 0 (auto) or more, got {self.users_per_step}")
        if min(self.min_count, self.window, self.subsample, self.weight_decay) < 0:
            raise ValueError("min_count, window, subsample and weight_decay must not be negative")
        if self.ease_lambda < 0:
            raise ValueError(f"ease_lambda must be 0 (auto) or more, got {self.ease_lambda}")
        if not (self.ease_debias == -1 or 0 <= self.ease_debias <= 1):
            raise ValueError(f"ease_debias must be -1 (auto) or in [0, 1], got {self.ease_debias}")
        if self.ease > 0 and self.objective != "cbow":
            raise ValueError("ease blends EASE into cbow's index: cbow only")
        if self.min_count == 0 and not (self.side_info and self.objective == "cbow"):
            raise ValueError("min_count 0 (unrated movies too) needs cbow with side_info")
        if self.index not in ("flat", "fp16", "hnsw"):
            raise ValueError(f"index must be flat, fp16 or hnsw, got {self.index!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.threads < 0:
            raise ValueError(f"threads must be 0 (auto) or more, got {self.threads}")
        if not 0 <= self.keep <= 1:
            raise ValueError(f"keep must be in (0, 1], or 0 (auto), got {self.keep}")

    @property
    def unresolved(self) -> list[str]:
        """The AUTO fields still auto, for trainer.defaults.resolve to choose."""
        return [name for name, auto in AUTO.items() if getattr(self, name) == auto]


def options() -> list[tuple[str, type, Any, str]]:
    """(name, type, default, help) per TrainConfig field; the help is the field's comment."""
    comments = dict(re.findall(r"^    (\w+): .*?  # (.*)$", inspect.getsource(TrainConfig), re.M))
    return [
        (f.name, type(f.default), f.default, comments[f.name])
        for f in dataclasses.fields(TrainConfig)
    ]
