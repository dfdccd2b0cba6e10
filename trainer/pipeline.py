"""Load -> corpus -> train -> export: what ``movierec train`` runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from movierec.errors import UsageError
from trainer import distributed, movielens
from trainer.config import TrainConfig
from trainer.corpus import build_corpus
from trainer.export import export
from trainer.movielens import MovieLens
from trainer.train import train


def run_training(
    out: Path,
    config: TrainConfig,
    *,
    data: Path | None = None,
    ratings: Path | None = None,
    movies: Path | None = None,
    show_progress: bool = True,
    checkpoint: Path | None = None,
    resume: bool = False,
) -> dict[str, Any] | None:
    """Train on a MovieLens folder (or explicit files) and write artifacts to ``out``;
    returns the manifest. ``checkpoint``/``resume``: see ``trainer.train.train``. Started by
    torchrun, every rank reads the data and trains its share; rank 0 alone writes the
    artifact and returns its manifest, the others return None."""
    if config.objective == "als" and distributed.launched():
        raise UsageError("the als objective trains in one process (no --nproc-per-node)")
    dataset = movielens.load(data, ratings=ratings, movies=movies)
    source = str(data if data is not None else ratings)
    return train_and_export(out, dataset, config, source, show_progress, checkpoint, resume)


def train_and_export(
    out: Path,
    dataset: MovieLens,
    config: TrainConfig,
    source: str,
    show_progress: bool = True,
    checkpoint: Path | None = None,
    resume: bool = False,
) -> dict[str, Any] | None:
    """Train on loaded data and write artifacts to ``out``; returns the manifest (None on
    ranks other than 0)."""
    corpus = build_corpus(dataset, config.like_threshold, config.min_count)
    if config.objective == "als":
        from trainer.als import train_als

        embeddings = train_als(corpus, config, show_progress)
    else:
        embeddings = train(corpus, config, show_progress, checkpoint, resume)
        if distributed.rank() != 0:
            return None
    return export(Path(out), corpus, embeddings, config, source=source)
