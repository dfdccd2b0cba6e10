"""Settings chosen on a validation holdout carved from the training data itself."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

from trainer.config import TrainConfig
from trainer.evaluate import Scores, evaluate
from trainer.movielens import MovieLens
from trainer.pipeline import train_and_export


def holdout_scores(fit: MovieLens, held: pd.DataFrame, config: TrainConfig) -> tuple[Scores, float]:
    """Train on ``fit``, score the served model on ``held`` (EVALUATION.md); with the
    training seconds."""
    from server.app import load_recommender

    with tempfile.TemporaryDirectory() as tmp:
        manifest = train_and_export(Path(tmp) / "a", fit, config, "validation", False)
        assert manifest is not None  # one process
        scores = evaluate(load_recommender(Path(tmp) / "a"), held)["model"]
    return scores, float(manifest["settings"]["train_seconds"])
