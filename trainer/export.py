"""Turn trained embeddings into an artifact directory (torch stays on this side)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from movierec.artifacts import write_artifacts
from trainer.config import TrainConfig
from trainer.corpus import Corpus
from trainer.train import Embeddings


def normalize_rows(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def export(
    out: Path, corpus: Corpus, embeddings: Embeddings, config: TrainConfig, source: str
) -> dict[str, Any]:
    """Write L2-normalised W_in rows and an exact inner-product index over them; a user's
    query is the re-normalised mean of their liked movies' rows (all rated ones if none is
    liked), so similarities are cosines."""
    vectors = normalize_rows(embeddings.inp)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    settings = {
        "source": source,
        "source_movies": corpus.rated_movies,
        "train_seconds": round(embeddings.seconds, 2),
        **asdict(config),
    }
    aggregation = {"method": "mean", "like_threshold": config.like_threshold}
    return write_artifacts(
        out,
        movies=corpus.movies,
        vectors=vectors,
        index=index,
        histories=corpus.histories,
        settings=settings,
        aggregation=aggregation,
    )
