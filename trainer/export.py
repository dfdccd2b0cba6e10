"""Turn trained embeddings into an artifact directory (torch stays on this side)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from movierec.artifacts import (
    Aggregation,
    AlsAggregation,
    MeanAggregation,
    build_index,
    write_artifacts,
)
from trainer.config import TrainConfig
from trainer.corpus import Corpus
from trainer.defaults import Shape, resolve
from trainer.embeddings import Embeddings


def normalize_rows(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def _mean_length(x: npt.NDArray[np.float32]) -> float:
    return float(np.linalg.norm(x, axis=1).mean()) if len(x) else 0.0


def served_tables(
    embeddings: Embeddings, config: TrainConfig
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], Aggregation]:
    """(rows a query aggregates, rows the index holds, how the server aggregates)."""
    aggregation: Aggregation
    if config.objective == "als":
        # Raw item factors: the server folds a user in by least squares over them.
        vectors = indexed = embeddings.inp
        aggregation = AlsAggregation(config.like_threshold, config.regularization,
                                     config.alpha, inline_stars=4.0)  # fmt: skip
    elif config.objective == "cbow":
        vectors, out = normalize_rows(embeddings.inp), embeddings.out
        if config.ease > 0 and embeddings.ease is not None:
            # [unit rows, weight * P] . [out, Q]: cbow's score plus weight * EASE's, with Q
            # scaled to cbow's output vectors (P's rows have mean length 1, as cbow's do)
            left, right = embeddings.ease.left, embeddings.ease.right
            scale = _mean_length(out) / max(_mean_length(right), 1e-12)
            vectors = np.hstack([vectors, config.ease * left]).astype(np.float32)
            out = np.hstack([out, scale * right])
        bias = config.popularity * embeddings.bias[:, None]
        indexed = np.hstack([out, bias]).astype(np.float32)
        aggregation = MeanAggregation(config.like_threshold, append_one=True)
    else:
        vectors = indexed = normalize_rows(embeddings.inp)
        aggregation = MeanAggregation(config.like_threshold, append_one=False)
    return vectors, indexed, aggregation


def export(
    out: Path,
    corpus: Corpus,
    embeddings: Embeddings,
    config: TrainConfig,
    source: str,
    record: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the artifact directory for the trained model.

    For the embedding models a user's query is the re-normalised mean of their liked movies'
    rows of ``vectors.npy`` (all rated ones if none is liked); what the index holds depends on
    the objective:

    * cbow: the output vectors with the output bias (times ``popularity``) as one extra
      dimension, and the query gets a constant 1 appended, so inner-product search ranks by
      exactly the trained score <query, out_j> + popularity * bias_j. With an EASE part
      (``config.ease`` > 0) each row of both tables continues with its low-rank factors.
    * sgns, softmax: the L2-normalised input vectors themselves, so similarities are cosines
      (the notebook's recipe).
    * als: the raw item factors, in ``vectors.npy`` and the index; the query is ALS's
      least-squares fold-in of the history, not a mean (aggregation "als").
    """
    if config.unresolved:  # trained directly, not through the pipeline: the same shape rules
        config, _ = resolve(config, Shape.of_baskets(corpus.baskets), early_stopping=False)
    vectors, indexed, aggregation = served_tables(embeddings, config)
    index = build_index(
        indexed, config.index, config.hnsw_m, config.ef_search, config.ef_construction
    )
    settings = {"source": source, "source_movies": corpus.rated_movies,
                "train_seconds": round(embeddings.seconds, 2), **asdict(config)}  # fmt: skip
    # with what the pipeline records: the settings chosen from the data and why, a search
    training = {"loss": [round(x, 6) for x in embeddings.losses],
                "world_size": embeddings.world_size, "device": embeddings.device,
                **(record or {}), "data": corpus.facts}  # fmt: skip
    return write_artifacts(out, movies=corpus.movies, vectors=vectors, index=index,
                           histories=corpus.histories, settings=settings,
                           aggregation=aggregation, training=training,
                           unindexed=corpus.unindexed)  # fmt: skip
