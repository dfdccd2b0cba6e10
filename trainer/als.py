"""Implicit-feedback ALS (Hu, Koren & Volinsky 2008) through the ``implicit`` library, exported
into the same artifact format as the embedding models.

The user-item matrix holds each liked rating's stars as its confidence weight (scaled by
``alpha``). Item factors go into the index as they are; a user's vector is not a mean but
ALS's own least-squares fold-in, which the server computes from the item factors (the
manifest's aggregation says so), so a new user needs no retraining here either.
"""

from __future__ import annotations

import time

import numpy as np

from trainer.config import TrainConfig
from trainer.corpus import Corpus
from trainer.embeddings import Embeddings


def train_als(corpus: Corpus, config: TrainConfig, show_progress: bool = True) -> Embeddings:
    try:
        from implicit.cpu.als import AlternatingLeastSquares
        from scipy.sparse import csr_matrix
        from threadpoolctl import threadpool_limits
    except ImportError as e:
        raise ImportError("the als objective needs 'implicit': pip install 'movierec[als]'") from e
    baskets = corpus.baskets
    users = np.repeat(np.arange(len(baskets.lengths)), baskets.lengths)
    matrix = csr_matrix(
        (baskets.ratings, (users, baskets.items)),
        shape=(len(baskets.lengths), len(corpus.movies)),
        dtype=np.float32,
    )
    start = time.perf_counter()
    # implicit parallelises over users itself; a threaded BLAS underneath only contends.
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=config.dim,
            regularization=config.regularization,
            alpha=config.alpha,
            iterations=config.epochs,
            random_state=config.seed,
            num_threads=config.threads,
        )
        model.fit(matrix, show_progress=show_progress)
    items = np.ascontiguousarray(model.item_factors, dtype=np.float32)
    return Embeddings(
        inp=items,
        out=items,
        bias=np.zeros(len(items), np.float32),
        seconds=time.perf_counter() - start,
    )
