"""Turn trained embeddings into an artifact directory (torch stays on this side)."""

from __future__ import annotations

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
from trainer.embeddings import Embeddings


def normalize_rows(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def export(
    out: Path, corpus: Corpus, embeddings: Embeddings, config: TrainConfig, source: str
) -> dict[str, Any]:
    """Write the artifact directory for the trained model.

    For the embedding models a user's query is the re-normalised mean of their liked movies'
    rows of ``vectors.npy`` (all rated ones if none is liked); what the index holds depends on
    the objective:

    * cbow: the output vectors with the output bias as one extra dimension, and the query
      gets a constant 1 appended, so inner-product search ranks by exactly the trained
      score <query, out_j> + bias_j (a popularity prior included).
    * sgns, softmax: the L2-normalised input vectors themselves, so similarities are cosines
      (the notebook's recipe).
    * als: the raw item factors, in ``vectors.npy`` and the index; the query is ALS's
      least-squares fold-in of the history, not a mean (aggregation "als").
    """
    aggregation: Aggregation
    if config.objective == "als":
        # Raw item factors: the server folds a user in by least squares over them.
        vectors = indexed = embeddings.inp
        aggregation = AlsAggregation(config.like_threshold, config.regularization,
                                     config.alpha, inline_stars=4.0)  # fmt: skip
    elif config.objective == "cbow":
        vectors = normalize_rows(embeddings.inp)
        indexed = np.hstack([embeddings.out, embeddings.bias[:, None]]).astype(np.float32)
        aggregation = MeanAggregation(config.like_threshold, append_one=True)
    else:
        vectors = indexed = normalize_rows(embeddings.inp)
        aggregation = MeanAggregation(config.like_threshold, append_one=False)
    index = build_index(
        indexed, config.index, config.hnsw_m, config.ef_search, config.ef_construction
    )
    settings = {"source": source, "source_movies": corpus.rated_movies,
                "train_seconds": round(embeddings.seconds, 2), **asdict(config)}  # fmt: skip
    training = {"loss": [round(x, 6) for x in embeddings.losses],
                "world_size": embeddings.world_size, "device": embeddings.device}  # fmt: skip
    return write_artifacts(out, movies=corpus.movies, vectors=vectors, index=index,
                           histories=corpus.histories, settings=settings,
                           aggregation=aggregation, training=training)  # fmt: skip
