"""What each optimiser step trains on, per objective: the loop in ``trainer/train.py`` asks an
objective for an epoch of batches and the model (``trainer/model.py``) turns a batch into a
loss. Sampling is numpy and torch's CPU generator, seeded, so every device and every process
draws the same batches.

* ``cbow``: steps of users (a shuffled epoch cut into ``users_per_step``), each a
  ``CbowBatch`` of contexts and weighted targets, with a shared sample of movies when the
  catalogue is too large to score every movie.
* ``sgns``: minibatches of ``batch_size`` co-watch pairs, each with ``negatives`` noise movies.
* ``softmax``: minibatches of distinct movie1, each with the counts of its partners.

With several processes (DDP) every rank draws the whole step, the same on each, and trains on
its own share of it (``shard``): a contiguous block of the step's users, pairs or movies. The
share's loss is divided by the whole step's total (weight, pairs), so the ranks' losses add
up to the one-process loss and their summed gradients are its gradient.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, Self

import numpy as np
import numpy.typing as npt
import torch

from trainer.config import TrainConfig
from trainer.corpus import Corpus
from trainer.pairs import iter_pair_chunks, keep_probabilities, sample_contexts

Tensor = torch.Tensor


def _to(t: Tensor | None, device: torch.device) -> Tensor | None:
    return None if t is None else t.to(device)


def _block(size: int, rank: int, world: int) -> slice:
    """Rank ``rank``'s contiguous share of ``size`` things split as evenly as can be."""
    return slice(rank * size // world, (rank + 1) * size // world)


@dataclass(frozen=True)
class CbowBatch:
    """A step of users 0..num_users-1; entries grouped by user (see ``sample_contexts``)."""

    context: Tensor  # movies whose normalised mean input vector is each user's query
    context_user: Tensor
    targets: Tensor  # every movie each user liked
    target_user: Tensor
    weight: Tensor  # each target's weight, from its stars
    num_users: int
    sample: tuple[Tensor, Tensor] | None  # sampled softmax: (movies, every movie's log P(drawn))
    units: int  # users in the whole step (the progress bar's and the epoch loss's count)
    total_weight: Tensor | None = None  # a share's: the whole step's weight, the loss divisor

    def shard(self, rank: int, world: int) -> Self:
        users = _block(self.num_users, rank, world)
        bounds = torch.tensor([users.start, users.stop])
        c0, c1 = torch.searchsorted(self.context_user, bounds).tolist()
        t0, t1 = torch.searchsorted(self.target_user, bounds).tolist()
        return dataclasses.replace(
            self,
            context=self.context[c0:c1],
            context_user=self.context_user[c0:c1] - users.start,
            targets=self.targets[t0:t1],
            target_user=self.target_user[t0:t1] - users.start,
            weight=self.weight[t0:t1],
            num_users=users.stop - users.start,
            total_weight=self.weight.sum(),
        )

    def to(self, device: torch.device) -> Self:
        sample = None
        if self.sample is not None:
            sample = (self.sample[0].to(device), self.sample[1].to(device))
        return dataclasses.replace(
            self,
            context=self.context.to(device),
            context_user=self.context_user.to(device),
            targets=self.targets.to(device),
            target_user=self.target_user.to(device),
            weight=self.weight.to(device),
            sample=sample,
            total_weight=_to(self.total_weight, device),
        )


@dataclass(frozen=True)
class PairBatch:
    """sgns: co-watch pairs (movie1 -> movie2), each with its noise movies."""

    centers: Tensor  # movie1
    contexts: Tensor  # movie2
    negatives: Tensor  # (pairs, negatives)
    units: int  # pairs in the whole step
    total_pairs: int | None = None  # a share's: the whole step's pairs, the loss divisor

    def shard(self, rank: int, world: int) -> Self:
        rows = _block(len(self.centers), rank, world)
        return dataclasses.replace(
            self,
            centers=self.centers[rows],
            contexts=self.contexts[rows],
            negatives=self.negatives[rows],
            total_pairs=len(self.centers),
        )

    def to(self, device: torch.device) -> Self:
        return dataclasses.replace(
            self,
            centers=self.centers.to(device),
            contexts=self.contexts.to(device),
            negatives=self.negatives.to(device),
        )


@dataclass(frozen=True)
class PartnerCountBatch:
    """softmax: distinct movie1, each with how often each movie was drawn as its partner."""

    centers: Tensor  # (movies in the batch,)
    partner_counts: Tensor  # (movies in the batch, catalogue), float
    units: int  # pairs in the whole step
    total_pairs: Tensor | None = None  # a share's: the whole step's pairs (>= 1), the divisor

    def shard(self, rank: int, world: int) -> Self:
        rows = _block(len(self.centers), rank, world)
        return dataclasses.replace(
            self,
            centers=self.centers[rows],
            partner_counts=self.partner_counts[rows],
            total_pairs=self.partner_counts.sum().clamp(min=1.0),
        )

    def to(self, device: torch.device) -> Self:
        return dataclasses.replace(
            self,
            centers=self.centers.to(device),
            partner_counts=self.partner_counts.to(device),
            total_pairs=_to(self.total_pairs, device),
        )


Batch = CbowBatch | PairBatch | PartnerCountBatch


class Objective(Protocol):
    unit: str  # what an epoch counts: "user" or "pair"
    units: int  # how many per epoch

    def epoch(self, rng: np.random.Generator) -> Iterator[Batch]:
        """One epoch's batches, this rank's share of each, on the device."""
        ...


def objective(
    corpus: Corpus, config: TrainConfig, device: torch.device, rank: int = 0, world: int = 1
) -> Objective:
    if config.objective == "cbow":
        return Cbow(corpus, config, device, rank, world)
    return Pairs(corpus, config, device, rank, world)


class _Sharded:
    """This rank's share of a batch, moved to the device."""

    def __init__(self, device: torch.device, rank: int, world: int) -> None:
        self.device, self.rank, self.world = device, rank, world

    def _ready(self, batch: Batch) -> Batch:
        if self.world > 1:
            batch = batch.shard(self.rank, self.world)
        return batch.to(self.device)


class Cbow(_Sharded):
    unit = "user"

    def __init__(
        self, corpus: Corpus, config: TrainConfig, device: torch.device, rank: int, world: int
    ) -> None:
        super().__init__(device, rank, world)
        self.baskets, self.config = corpus.baskets, config
        counts = self.baskets.item_counts(len(corpus.movies))
        self.users = np.flatnonzero(self.baskets.lengths > 0)
        self.units = len(self.users)
        # Each step costs a pass of Adam over whole tables, so large data takes larger steps
        # (generated 1M ratings, 10k users: 100 -> 200 per step, NDCG@10 0.075 -> 0.076, -30% time).
        self.step = config.users_per_step or max(64, len(self.users) // 50)
        # Scoring every movie is cheaper up to ~5x the sample (measured), and exact.
        sampled = len(counts) > 5 * config.softmax_samples
        self.sampler = SoftmaxSampler(counts, config) if sampled else None

    def epoch(self, rng: np.random.Generator) -> Iterator[Batch]:
        order = rng.permutation(self.users)
        for s in range(0, len(order), self.step):
            users = order[s : s + self.step]
            context, context_user, targets, target_user, stars = sample_contexts(
                self.baskets, users, self.config.keep, rng
            )
            # Loved movies count more than merely liked ones (relevance is >= 4 stars).
            weight = np.maximum(1.0 + self.config.rating_weight * (stars - 4.0), 0.05)
            sampler = self.sampler
            sample = None if sampler is None else (sampler.draw(), sampler.log_inclusion)
            t = torch.from_numpy
            yield self._ready(CbowBatch(t(context), t(context_user), t(targets), t(target_user),
                                        t(weight.astype(np.float32)), len(users), sample,
                                        units=len(users)))  # fmt: skip


class Pairs(_Sharded):
    """sgns and softmax: each epoch re-draws ``partners`` partners per liked movie, in
    chunks (``iter_pair_chunks``), and cuts each chunk into minibatches."""

    unit = "pair"

    def __init__(
        self, corpus: Corpus, config: TrainConfig, device: torch.device, rank: int, world: int
    ) -> None:
        super().__init__(device, rank, world)
        self.baskets, self.config = corpus.baskets, config
        self.num_items = len(corpus.movies)
        counts = self.baskets.item_counts(self.num_items)
        self.keep = keep_probabilities(counts, config.subsample) if config.subsample > 0 else None
        self.noise = Noise(counts, config.ns_exponent)
        self.units = int(len(self.baskets.items) * config.partners)

    def epoch(self, rng: np.random.Generator) -> Iterator[Batch]:
        c = self.config
        for movie1, movie2 in iter_pair_chunks(self.baskets, c.partners, rng, self.keep,
                                               c.window):  # fmt: skip
            if c.objective == "sgns":
                yield from map(self._ready, self._sgns(movie1, movie2))
            else:
                yield from map(self._ready, self._softmax(movie1, movie2, rng))

    def _sgns(self, movie1: npt.NDArray[np.int64], movie2: npt.NDArray[np.int64]
              ) -> Iterator[PairBatch]:  # fmt: skip
        k, size = self.config.negatives, self.config.batch_size
        m1, m2 = torch.from_numpy(movie1), torch.from_numpy(movie2)
        negatives = self.noise.draw(len(m1) * k).view(len(m1), k)
        for s in range(0, len(m1), size):
            batch = slice(s, s + size)
            yield PairBatch(m1[batch], m2[batch], negatives[batch], len(m1[batch]))

    def _softmax(
        self, movie1: npt.NDArray[np.int64], movie2: npt.NDArray[np.int64],
        rng: np.random.Generator,
    ) -> Iterator[PartnerCountBatch]:  # fmt: skip
        """Batches of distinct movie1 in random order, each with the counts of its partners."""
        n = self.num_items
        centers, inverse = np.unique(movie1, return_inverse=True)
        batch_order = rng.permutation(len(centers))
        place = np.empty_like(batch_order)
        place[batch_order] = np.arange(len(batch_order))
        key = place[inverse]
        by_key = np.argsort(key, kind="stable")
        key, partner = key[by_key], movie2[by_key]
        per_step = max(1, self.config.batch_size // 16)
        bounds = np.searchsorted(key, np.arange(0, len(centers) + per_step, per_step))
        for b in range(len(bounds) - 1):
            lo, hi = bounds[b], bounds[b + 1]
            chosen = batch_order[b * per_step : (b + 1) * per_step]
            cells = (key[lo:hi] - b * per_step) * n + partner[lo:hi]
            targets = np.bincount(cells, minlength=len(chosen) * n).reshape(len(chosen), n)
            yield PartnerCountBatch(torch.from_numpy(centers[chosen]),
                                    torch.from_numpy(targets.astype(np.float32)),
                                    int(hi - lo))  # fmt: skip


class Noise:
    """Movies drawn with replacement from count^exponent, by inverse CDF: the very draws
    torch.multinomial makes, without its 0.06-0.6 s per 6M draws (this: 0.03 s)."""

    def __init__(self, counts: npt.NDArray[np.int64], exponent: float) -> None:
        weight = torch.from_numpy(counts.astype(np.float64) ** exponent)
        self.probability = weight / weight.sum()
        self._cdf = torch.cumsum(weight, 0)
        self._cdf /= float(self._cdf[-1])

    def draw(self, n: int) -> Tensor:
        uniform = torch.rand(n, dtype=torch.float64)
        return torch.searchsorted(self._cdf, uniform, right=True)  # first cdf above the draw


class SoftmaxSampler:
    """Distinct movies for a sampled softmax: ``softmax_samples`` noise draws, with each
    movie's log probability of being drawn at least once."""

    def __init__(self, counts: npt.NDArray[np.int64], config: TrainConfig) -> None:
        self.noise, self.draws = Noise(counts, config.ns_exponent), config.softmax_samples
        log_missed = self.draws * torch.log1p(-self.noise.probability)  # log P(in no draw)
        self.log_inclusion = (-torch.expm1(log_missed)).log().float()

    def draw(self) -> Tensor:
        distinct: Tensor = torch.unique(self.noise.draw(self.draws))
        return distinct
