"""Train movie embeddings from co-watch pairs; read top to bottom.

    movierec train --data ../shared/data/ml-latest-small --out artifacts/mls

The knobs are TrainConfig's fields (trainer/config.py).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm

from trainer.config import TrainConfig
from trainer.corpus import Corpus
from trainer.model import ItemEmbeddings
from trainer.pairs import iter_pair_chunks, keep_probabilities

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Embeddings:
    """What training produces, as numpy (torch stays inside the trainer)."""

    inp: npt.NDArray[np.float32]  # (movies, dim): W_in, aggregated into user vectors
    out: npt.NDArray[np.float32]  # (movies, dim): output vectors
    bias: npt.NDArray[np.float32]  # (movies,): output bias, a movie's popularity prior
    seconds: float


def train(corpus: Corpus, config: TrainConfig, show_progress: bool = True) -> Embeddings:
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads or os.cpu_count() or 1)
    rng = np.random.default_rng(config.seed)
    n = len(corpus.movies)
    counts = corpus.baskets.item_counts(n)
    keep = keep_probabilities(counts, config.subsample) if config.subsample > 0 else None
    model = ItemEmbeddings(n, config.dim, sparse=config.objective == "sgns")
    if config.objective == "sgns":
        optimizer: torch.optim.Optimizer = torch.optim.SparseAdam(model.parameters(), config.lr)
        noise = torch.from_numpy(counts.astype(np.float64) ** config.ns_exponent)
        noise[counts == 0] = 0.0
    else:
        optimizer = torch.optim.Adam(model.parameters(), config.lr)
    pairs_per_epoch = int(len(corpus.baskets.items) * config.partners)
    log.info(
        "training %s: %d movies, %d liked ratings, ~%d pairs/epoch, dim %d",
        config.objective,
        n,
        len(corpus.baskets.items),
        pairs_per_epoch,
        config.dim,
    )
    start = time.perf_counter()
    with tqdm(
        total=config.epochs * pairs_per_epoch,
        unit="pair",
        unit_scale=True,
        disable=not show_progress,
        desc=f"train {config.objective}",
    ) as bar:
        for epoch in range(config.epochs):
            total, seen = 0.0, 0
            for movie1, movie2 in iter_pair_chunks(
                corpus.baskets, config.partners, rng, keep, config.window
            ):
                if config.objective == "sgns":
                    steps = _sgns_steps(model, optimizer, movie1, movie2, noise, config)
                else:
                    steps = _softmax_steps(model, optimizer, movie1, movie2, n, config, rng)
                for loss, pairs in steps:
                    total, seen = total + loss * pairs, seen + pairs
                    bar.update(pairs)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{total / seen:.4f}")
            log.info("epoch %d/%d: loss %.4f", epoch + 1, config.epochs, total / max(seen, 1))
    seconds = time.perf_counter() - start
    return Embeddings(
        inp=model.inp.weight.detach().numpy().copy(),
        out=model.out.weight.detach().numpy().copy(),
        bias=model.bias.weight.detach().numpy()[:, 0].copy(),
        seconds=seconds,
    )


def _sgns_steps(
    model: ItemEmbeddings,
    optimizer: torch.optim.Optimizer,
    movie1: npt.NDArray[np.int64],
    movie2: npt.NDArray[np.int64],
    noise: torch.Tensor,
    config: TrainConfig,
) -> list[tuple[float, int]]:
    m1, m2 = torch.from_numpy(movie1), torch.from_numpy(movie2)
    negatives = torch.multinomial(noise, len(m1) * config.negatives, replacement=True)
    negatives = negatives.view(len(m1), config.negatives)
    losses = []
    for s in range(0, len(m1), config.batch_size):
        batch = slice(s, s + config.batch_size)
        optimizer.zero_grad(set_to_none=True)
        loss = model.sgns_loss(m1[batch], m2[batch], negatives[batch])
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        losses.append((loss.item(), len(m1[batch])))
    return losses


def _softmax_steps(
    model: ItemEmbeddings,
    optimizer: torch.optim.Optimizer,
    movie1: npt.NDArray[np.int64],
    movie2: npt.NDArray[np.int64],
    n: int,
    config: TrainConfig,
    rng: np.random.Generator,
) -> list[tuple[float, int]]:
    """Batches of distinct movie1 in random order, each with the counts of its partners."""
    centers, inverse = np.unique(movie1, return_inverse=True)
    batch_order = rng.permutation(len(centers))
    rank = np.empty_like(batch_order)
    rank[batch_order] = np.arange(len(batch_order))
    key = rank[inverse]
    by_key = np.argsort(key, kind="stable")
    key, partner = key[by_key], movie2[by_key]
    per_step = max(1, config.batch_size // 16)
    bounds = np.searchsorted(key, np.arange(0, len(centers) + per_step, per_step))
    losses = []
    for b in range(len(bounds) - 1):
        lo, hi = bounds[b], bounds[b + 1]
        chosen = batch_order[b * per_step : (b + 1) * per_step]
        cells = (key[lo:hi] - b * per_step) * n + partner[lo:hi]
        targets = np.bincount(cells, minlength=len(chosen) * n).reshape(len(chosen), n)
        optimizer.zero_grad(set_to_none=True)
        loss = model.softmax_loss(
            torch.from_numpy(centers[chosen]), torch.from_numpy(targets.astype(np.float32))
        )
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        losses.append((loss.item(), int(hi - lo)))
    return losses
