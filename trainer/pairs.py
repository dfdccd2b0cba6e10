"""Co-watch samples drawn from users' histories, vectorised and seeded: pairs
(movie1, movie2) for the pair objectives, and (context, targets) baskets for CBOW.

A user who watched n movies has n(n-1) ordered pairs; counting them all lets a few heavy
watchers shape every vector (and does not scale), so each epoch draws a fixed number of
partners per watched movie instead: ``partners`` uniform draws from the same user's other
movies. Everything is numpy; there is no Python loop over users or pairs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Baskets:
    """Each user's watched catalogue rows, in CSR form: user u watched
    ``items[indptr[u]:indptr[u + 1]]`` (time-ordered when the source had timestamps)."""

    indptr: IntArray
    items: IntArray
    ratings: npt.NDArray[np.float32]  # the stars of each entry

    @classmethod
    def from_lists(cls, lists: list[list[int]]) -> Baskets:
        """Baskets from plain lists (every entry rated 4 stars)."""
        lengths = np.array([len(x) for x in lists], dtype=np.int64)
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        items = np.concatenate([np.asarray(x, dtype=np.int64) for x in lists])
        return cls(indptr, items, np.full(len(items), 4.0, dtype=np.float32))

    @property
    def lengths(self) -> IntArray:
        return np.diff(self.indptr)

    def item_counts(self, num_items: int) -> IntArray:
        return np.bincount(self.items, minlength=num_items).astype(np.int64)


def keep_probabilities(counts: IntArray, threshold: float) -> npt.NDArray[np.float64]:
    """word2vec's subsampling: frequent movies are kept with probability
    sqrt(t/f) + t/f (f = share of all watches), so blockbusters stop dominating the pairs.
    ``threshold`` 0 keeps everything."""
    if threshold <= 0:
        return np.ones(len(counts))
    f = counts / max(counts.sum(), 1)
    with np.errstate(divide="ignore"):
        ratio = np.where(f > 0, threshold / f, 1.0)
    keep: npt.NDArray[np.float64] = np.minimum(1.0, np.sqrt(ratio) + ratio)
    return keep


def sample_pairs(
    baskets: Baskets,
    partners: int,
    rng: np.random.Generator,
    keep: npt.NDArray[np.float64] | None = None,
    window: int = 0,
    entries: slice = slice(None),
) -> tuple[IntArray, IntArray]:
    """One epoch's (movie1, movie2) pairs for the watched entries in ``entries``, shuffled.

    Each entry draws ``partners`` partners from the same user's other movies: uniformly from
    the whole history when ``window`` is 0, else from the ``window`` movies on either side in
    the user's (time-ordered) history. ``keep`` (per item) subsamples frequent movies first.
    """
    indptr, items = baskets.indptr, baskets.items
    entry = np.arange(len(items), dtype=np.int64)[entries]
    user = np.searchsorted(indptr, entry, side="right") - 1
    length = indptr[user + 1] - indptr[user]
    ok = length >= 2
    if keep is not None:
        ok &= rng.random(len(entry)) < keep[items[entry]]
    entry, user, length = entry[ok], user[ok], length[ok]
    pos = entry - indptr[user]
    entry = np.repeat(entry, partners)
    pos, user, length = (
        np.repeat(pos, partners),
        np.repeat(user, partners),
        np.repeat(length, partners),
    )
    lo, hi = np.zeros_like(pos), length - 1  # inclusive range of partner positions
    if window > 0:
        lo, hi = np.maximum(pos - window, 0), np.minimum(pos + window, hi)
    offset = lo + (rng.random(len(pos)) * (hi - lo)).astype(np.int64)
    partner = offset + (offset >= pos)  # skip the entry itself
    order = rng.permutation(len(entry))
    return items[entry[order]], items[indptr[user[order]] + partner[order]]


def iter_pair_chunks(
    baskets: Baskets,
    partners: int,
    rng: np.random.Generator,
    keep: npt.NDArray[np.float64] | None = None,
    window: int = 0,
    chunk_entries: int = 1_000_000,
) -> Iterator[tuple[IntArray, IntArray]]:
    """An epoch of pairs, streamed in chunks of watched entries taken in random order, so
    memory stays bounded on 25M-rating data."""
    n = len(baskets.items)
    starts = rng.permutation(np.arange(0, n, chunk_entries))
    for start in starts:
        yield sample_pairs(
            baskets,
            partners,
            rng,
            keep,
            window,
            slice(int(start), int(min(start + chunk_entries, n))),
        )


def sample_contexts(
    baskets: Baskets, users: IntArray, keep: float, rng: np.random.Generator
) -> tuple[IntArray, IntArray, IntArray, IntArray, npt.NDArray[np.float32]]:
    """CBOW over whole baskets: for each of ``users``, a random share ``keep`` of their
    movies (at least one) is the context, and every one of their movies is a target.

    Returns (context_items, context_user, target_items, target_user, target_ratings) with
    users numbered 0..len(users)-1 in the order given and entries grouped by user.
    """
    indptr, items = baskets.indptr, baskets.items
    lengths = indptr[users + 1] - indptr[users]
    owner = np.repeat(np.arange(len(users), dtype=np.int64), lengths)
    starts = np.repeat(indptr[users] - np.cumsum(lengths) + lengths, lengths)
    entries = np.arange(len(owner), dtype=np.int64) + starts
    chosen = rng.random(len(entries)) < keep
    empty = np.bincount(owner, weights=chosen, minlength=len(users)) == 0
    chosen |= empty[owner]  # a user whose draw kept nothing uses the whole basket
    return items[entries[chosen]], owner[chosen], items[entries], owner, baskets.ratings[entries]
