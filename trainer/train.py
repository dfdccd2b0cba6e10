"""Train movie embeddings from what the same users watched; read top to bottom.

    movierec train --data ../shared/data/ml-latest-small --out artifacts/mls

The knobs are TrainConfig's fields (trainer/config.py).
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm

from trainer.config import TrainConfig
from trainer.corpus import Corpus
from trainer.model import ItemEmbeddings
from trainer.pairs import Baskets, iter_pair_chunks, keep_probabilities, sample_contexts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Embeddings:
    """What training produces, as numpy (torch stays inside the trainer)."""

    inp: npt.NDArray[np.float32]  # (movies, dim): W_in, aggregated into user vectors
    out: npt.NDArray[np.float32]  # (movies, dim): output vectors
    bias: npt.NDArray[np.float32]  # (movies,): output bias, a movie's popularity prior
    seconds: float
    losses: tuple[float, ...] = ()  # mean training loss of each epoch, first to last


def train(
    corpus: Corpus,
    config: TrainConfig,
    show_progress: bool = True,
    checkpoint: Path | None = None,
    resume: bool = False,
) -> Embeddings:
    """Train; with ``checkpoint`` the model, optimiser and random states are saved there after
    every epoch, and ``resume`` continues from that file with the same result as a run that
    was never interrupted."""
    _reuse_freed_memory()
    torch.manual_seed(config.seed)
    # Parallel scatter-adds otherwise sum in thread order: ~1e-6 apart between two runs.
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(config.threads or os.cpu_count() or 1)
    rng = np.random.default_rng(config.seed)
    n = len(corpus.movies)
    counts = corpus.baskets.item_counts(n)
    features = None
    if config.side_info and config.objective == "cbow":
        f = corpus.features
        features = (torch.from_numpy(f.indptr), torch.from_numpy(f.indices), len(f.names))
    model = ItemEmbeddings(n, config.dim, features)
    # fused: one kernel over all parameters, 5.6x faster than the default at 60k x 256
    optimizer = torch.optim.Adam(model.parameters(), config.lr, fused=True)
    epoch_steps, units, unit = _objective(corpus, config, model, optimizer, counts, rng)
    losses: list[float] = []  # per epoch
    if resume and checkpoint is not None and checkpoint.exists():
        losses = _restore(checkpoint, config, model, optimizer, rng)
        log.info("resuming from %s after epoch %d", checkpoint, len(losses))
    first_epoch = len(losses)
    log.info(
        "training %s: %d movies, %d users, %d liked ratings, %d %ss/epoch, dim %d",
        config.objective, n, len(corpus.baskets.lengths), len(corpus.baskets.items), units,
        unit, config.dim,
    )  # fmt: skip
    start = time.perf_counter()
    total, seen = 0.0, 0
    with tqdm(total=config.epochs * units, initial=first_epoch * units, unit=unit,
              unit_scale=True, disable=not show_progress,
              desc=f"train {config.objective}") as bar:  # fmt: skip
        for epoch in range(first_epoch, config.epochs):
            total, seen = 0.0, 0
            for loss, done in epoch_steps():
                total, seen = total + loss * done, seen + done
                bar.update(done)
                bar.set_postfix(epoch=epoch + 1, loss=f"{total / seen:.4f}")
            losses.append(total / max(seen, 1))
            log.debug("epoch %d/%d: loss %.4f", epoch + 1, config.epochs, losses[-1])
            if checkpoint is not None:
                _save(checkpoint, config, model, optimizer, rng, losses)
    seconds = time.perf_counter() - start
    log.info("trained in %.1fs, final loss %.4f", seconds, total / max(seen, 1))
    inp, out, bias = (t.detach().numpy().copy() for t in model.item_tables())
    return Embeddings(inp=inp, out=out, bias=bias, seconds=seconds, losses=tuple(losses))


def _reuse_freed_memory() -> None:
    """Keep freed memory in the process for the next step instead of handing it back to the
    kernel. Every step frees and allocates tensors of hundreds of MB; glibc maps each afresh
    and the kernel zero-fills every page (a 25M-rating run spent 40% of its time there;
    1.5x faster per step at ml-25m's size without)."""
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 2**31 - 1)


Steps = Iterator[tuple[float, int]]  # (mean loss, units done) per optimiser step


def _save(
    path: Path,
    config: TrainConfig,
    model: ItemEmbeddings,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    losses: list[float],
) -> None:
    """Everything the next epoch depends on, written to a temporary file and renamed."""
    state = {
        "config": json.dumps(dataclasses.asdict(config), sort_keys=True),
        "losses": json.dumps(losses),  # one per epoch done
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "numpy_rng": json.dumps(rng.bit_generator.state),
        "torch_rng": torch.get_rng_state(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _restore(
    path: Path,
    config: TrainConfig,
    model: ItemEmbeddings,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
) -> list[float]:
    """Load a checkpoint written by ``_save`` (tensors and plain values only: weights_only,
    nothing is unpickled); returns the loss of each epoch it had done."""
    state = torch.load(path, weights_only=True)
    saved = json.loads(state["config"])
    if saved != dataclasses.asdict(config):
        changed = sorted(k for k in saved if saved[k] != getattr(config, k, None))
        raise ValueError(f"{path} was written with other settings ({', '.join(changed)}); "
                         "resume with the same settings or start afresh")  # fmt: skip
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    rng.bit_generator.state = json.loads(state["numpy_rng"])
    torch.set_rng_state(state["torch_rng"])
    return [float(x) for x in json.loads(state["losses"])]


def _objective(
    corpus: Corpus,
    config: TrainConfig,
    model: ItemEmbeddings,
    optimizer: torch.optim.Optimizer,
    counts: npt.NDArray[np.int64],
    rng: np.random.Generator,
) -> tuple[Callable[[], Steps], int, str]:
    """One epoch's steps for the configured objective, with the units a progress bar counts."""
    baskets = corpus.baskets
    if config.objective == "cbow":
        users = np.flatnonzero(baskets.lengths > 0)
        # Each step costs a pass of Adam over whole tables, so large data takes larger steps
        # (generated 1M ratings, 10k users: 100 -> 200 per step, NDCG@10 0.075 -> 0.076, -30% time).
        step = config.users_per_step or max(64, len(users) // 50)
        # Scoring every movie is cheaper up to ~5x the sample (measured), and exact.
        sampled = len(counts) > 5 * config.softmax_samples
        sampler = SoftmaxSampler(counts, config) if sampled else None

        def cbow_epoch() -> Steps:
            order = rng.permutation(users)
            for s in range(0, len(order), step):
                yield _cbow_step(model, optimizer, order[s : s + step], config, baskets, rng,
                                 sampler)  # fmt: skip

        return cbow_epoch, len(users), "user"

    keep = keep_probabilities(counts, config.subsample) if config.subsample > 0 else None
    noise = Noise(counts, config.ns_exponent)

    def pair_epoch() -> Steps:
        for movie1, movie2 in iter_pair_chunks(baskets, config.partners, rng, keep,
                                               config.window):  # fmt: skip
            if config.objective == "sgns":
                yield from _sgns_steps(model, optimizer, movie1, movie2, noise, config)
            else:
                yield from _softmax_steps(model, optimizer, movie1, movie2, len(counts), config,
                                          rng)  # fmt: skip

    return pair_epoch, int(len(baskets.items) * config.partners), "pair"


def _cbow_step(
    model: ItemEmbeddings,
    optimizer: torch.optim.Optimizer,
    users: npt.NDArray[np.int64],
    config: TrainConfig,
    baskets: Baskets,
    rng: np.random.Generator,
    sampler: SoftmaxSampler | None,
) -> tuple[float, int]:
    context, context_user, targets, target_user, stars = sample_contexts(
        baskets, users, config.keep, rng
    )
    # Loved movies count more than merely liked ones (relevance is >= 4 stars).
    weight = np.maximum(1.0 + config.rating_weight * (stars - 4.0), 0.05).astype(np.float32)
    optimizer.zero_grad(set_to_none=True)
    t = torch.from_numpy
    sample = None if sampler is None else (sampler.draw(), sampler.log_inclusion)
    loss = model.cbow_loss(t(context), t(context_user), t(targets), t(target_user), t(weight),
                           len(users), sample)  # fmt: skip
    loss.backward()  # type: ignore[no-untyped-call]
    optimizer.step()
    return loss.item(), len(users)


class Noise:
    """Movies drawn with replacement from count^exponent, by inverse CDF: the very draws
    torch.multinomial makes, without its 0.06-0.6 s per 6M draws (this: 0.03 s)."""

    def __init__(self, counts: npt.NDArray[np.int64], exponent: float) -> None:
        weight = torch.from_numpy(counts.astype(np.float64) ** exponent)
        self.probability = weight / weight.sum()
        self._cdf = torch.cumsum(weight, 0)
        self._cdf /= float(self._cdf[-1])

    def draw(self, n: int) -> torch.Tensor:
        uniform = torch.rand(n, dtype=torch.float64)
        return torch.searchsorted(self._cdf, uniform, right=True)  # first cdf above the draw


class SoftmaxSampler:
    """Distinct movies for a sampled softmax: ``softmax_samples`` noise draws, with each
    movie's log probability of being drawn at least once."""

    def __init__(self, counts: npt.NDArray[np.int64], config: TrainConfig) -> None:
        self.noise, self.draws = Noise(counts, config.ns_exponent), config.softmax_samples
        log_missed = self.draws * torch.log1p(-self.noise.probability)  # log P(in no draw)
        self.log_inclusion = (-torch.expm1(log_missed)).log().float()

    def draw(self) -> torch.Tensor:
        distinct: torch.Tensor = torch.unique(self.noise.draw(self.draws))
        return distinct


def _sgns_steps(
    model: ItemEmbeddings,
    optimizer: torch.optim.Optimizer,
    movie1: npt.NDArray[np.int64],
    movie2: npt.NDArray[np.int64],
    noise: Noise,
    config: TrainConfig,
) -> Steps:
    m1, m2 = torch.from_numpy(movie1), torch.from_numpy(movie2)
    negatives = noise.draw(len(m1) * config.negatives).view(len(m1), config.negatives)
    for s in range(0, len(m1), config.batch_size):
        batch = slice(s, s + config.batch_size)
        optimizer.zero_grad(set_to_none=True)
        loss = model.sgns_loss(m1[batch], m2[batch], negatives[batch])
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        yield loss.item(), len(m1[batch])


def _softmax_steps(
    model: ItemEmbeddings,
    optimizer: torch.optim.Optimizer,
    movie1: npt.NDArray[np.int64],
    movie2: npt.NDArray[np.int64],
    n: int,
    config: TrainConfig,
    rng: np.random.Generator,
) -> Steps:
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
        yield loss.item(), int(hi - lo)
