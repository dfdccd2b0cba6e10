"""Load -> choose settings -> corpus -> train -> export: what ``movierec train`` runs."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from movierec.errors import UsageError
from trainer import distributed, ease
from trainer.config import TrainConfig
from trainer.corpus import Corpus, build_corpus
from trainer.dataset import Dataset, from_movielens, load_dataset, to_movielens
from trainer.defaults import Shape, resolve
from trainer.embeddings import Embeddings
from trainer.evaluate import Scores, evaluate
from trainer.export import export
from trainer.holdout import BLEND_CHOICE, POPULARITY_GAIN, stop_early
from trainer.interactions import Columns
from trainer.movielens import MovieLens
from trainer.train import train

log = logging.getLogger(__name__)


def run_training(
    out: Path,
    config: TrainConfig,
    *,
    data: Path | None = None,
    interactions: Path | None = None,
    items: Path | None = None,
    columns: Columns | None = None,
    show_progress: bool = True,
    checkpoint: Path | None = None,
    resume: bool = False,
    tune: float | None = None,
) -> dict[str, Any] | None:
    """Train on a MovieLens folder or an interactions file (with an optional items file;
    ``trainer.dataset``) and write artifacts to ``out``; returns the manifest.
    ``checkpoint``/``resume``: see ``trainer.train.train``. ``tune``: first search settings
    on a holdout for that many seconds (trainer/tune.py). Started by torchrun, every rank
    reads the data and trains its share; rank 0 alone writes the artifact and returns its
    manifest, the others return None."""
    if config.objective == "als" and distributed.launched():
        raise UsageError("the als objective trains in one process (no --nproc-per-node)")
    if tune is not None and distributed.launched():
        raise UsageError("--tune runs in one process (no --nproc-per-node): its time budget "
                         "would let ranks choose differently")  # fmt: skip
    dataset = load_dataset(data=data, interactions=interactions, items=items, columns=columns)
    source = str(data if data is not None else interactions)
    record = None
    if tune is not None:
        from trainer.tune import search

        config, record = search(to_movielens(dataset), config, tune, show_progress)
    return train_and_export(out, dataset, config, source, show_progress, checkpoint, resume, record)


def train_and_export(
    out: Path,
    dataset: Dataset | MovieLens,
    config: TrainConfig,
    source: str,
    show_progress: bool = True,
    checkpoint: Path | None = None,
    resume: bool = False,
    record: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Train on loaded data and write artifacts to ``out``; returns the manifest (None on
    ranks other than 0). Auto settings are chosen from the data first (trainer/defaults.py,
    early stopping on a holdout); the manifest's training section records them, and
    ``record`` too."""
    if isinstance(dataset, MovieLens):
        dataset = from_movielens(dataset)
    config, auto = resolve(config, _shape(dataset, config.like_threshold))
    if config.objective == "als":
        from trainer.als import train_als

        corpus = build_corpus(dataset, config.like_threshold, config.min_count)
        embeddings = train_als(corpus, config, show_progress)
    else:
        # one process group for the holdout run and the training (a group is joined once)
        with distributed.process_group(distributed.device(config.device)):
            if config.epochs == 0:  # auto: as many as a holdout carved from this data rewards
                config = _stop_early(dataset, config, auto, show_progress)
            corpus = build_corpus(dataset, config.like_threshold, config.min_count)
            embeddings = train(corpus, config, show_progress, checkpoint, resume)
        if distributed.rank() != 0:
            return None
        if config.ease > 0:
            embeddings, config = _with_ease(embeddings, corpus, config)
    return export(Path(out), corpus, embeddings, config, source, {"auto": auto, **(record or {})})


def _shape(dataset: Dataset, like_threshold: float) -> Shape:
    """Shape.of_ratings of the dataset (liked rows: every row of an implicit log), counted
    with bincounts rather than by sorting 25M ids."""
    x = dataset.interactions
    liked = slice(None) if x.ratings is None else x.ratings >= like_threshold
    users = np.count_nonzero(np.bincount(x.users[liked], minlength=len(x.user_ids)))
    items = np.bincount(x.items[liked], minlength=len(x.item_ids))
    return Shape(int(users), int(np.count_nonzero(items)), int(items.sum()))


def _stop_early(
    dataset: Dataset, config: TrainConfig, auto: dict[str, Any], show_progress: bool
) -> TrainConfig:
    """Epochs (and popularity, if auto) from early stopping on a holdout, recorded in
    ``auto``. (Only below ~3M liked ratings: the holdout works on a ratings table.)"""
    stopped = stop_early(to_movielens(dataset), config, show_progress=show_progress)
    config = dataclasses.replace(config, epochs=stopped.epochs)
    auto["chosen"]["epochs"] = {
        "value": stopped.epochs,
        "why": f"holdout NDCG@10 peaked at epoch {stopped.epochs} of {len(stopped.curve)}",
    }
    if config.popularity == 0:
        config = dataclasses.replace(config, popularity=stopped.popularity)
        why = (f"the bias weight with the best holdout NDCG@10 at that epoch, if "
               f"{POPULARITY_GAIN:.0%} above weight 1")  # fmt: skip
        if stopped.ease:
            why = f"chosen with the EASE part's weight: {BLEND_CHOICE}"
        auto["chosen"]["popularity"] = {"value": stopped.popularity, "why": why}
    if config.ease < 0:
        config = dataclasses.replace(config, ease=stopped.ease)
        auto["chosen"]["ease"] = {"value": stopped.ease, "why": stopped.blend.why if
                                  stopped.blend else "not weighed"}  # fmt: skip
    if config.ease > 0 and config.ease_lambda == 0:
        config = dataclasses.replace(config, ease_lambda=stopped.ease_lambda)
    if config.ease > 0 and config.ease_debias < 0:
        config = dataclasses.replace(config, ease_debias=stopped.ease_debias)
    auto["holdout"] = stopped.record()
    return config


def _with_ease(
    embeddings: Embeddings, corpus: Corpus, config: TrainConfig
) -> tuple[Embeddings, TrainConfig]:
    """The embeddings with EASE's low-rank weights over the whole corpus (trainer/ease.py), and
    the config with the lambda and popularity correction they were fitted with (without a
    holdout run: ease.DEFAULT_STEP's lambda, no correction)."""
    rows = len(corpus.movies)
    if rows > ease.MAX_ROWS:
        raise UsageError(f"--ease needs at most {ease.MAX_ROWS:,} movies with a row, not {rows:,}")
    lam = config.ease_lambda or ease.lambdas(corpus.baskets, rows)[ease.DEFAULT_STEP]
    config = dataclasses.replace(config, ease_lambda=lam, ease_debias=max(config.ease_debias, 0.0))
    start = time.perf_counter()
    g = ease.gram(corpus.baskets, rows)
    factors = ease.debias(ease.fit(g, lam, config.seed), g, config.ease_debias)
    seconds = embeddings.seconds + time.perf_counter() - start
    return dataclasses.replace(embeddings, ease=factors, seconds=seconds), config


def holdout_scores(fit: MovieLens, held: pd.DataFrame, config: TrainConfig) -> tuple[Scores, float]:
    """Train on ``fit`` as ``movierec train`` would, score the served model on ``held``
    (EVALUATION.md); with the seconds training took (early stopping's holdout run included)."""
    from server.app import load_recommender

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train_and_export(Path(tmp) / "a", fit, config, "validation", False)
        seconds = time.perf_counter() - start
        scores = evaluate(load_recommender(Path(tmp) / "a"), held)["model"]
    return scores, seconds
