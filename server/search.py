"""Top-k inner-product search over the model's FAISS index, with rows excluded (watched,
disliked) and rows required (business filters) applied inside the search, never after it:
exactly k results come back whenever k rows pass.

Three ways to search, chosen per call by what is measured to be fastest:

* no filter and few exclusions: search k + |excluded| and drop the excluded (cheapest);
* a filter, or many exclusions: one FAISS ID selector (a bitmap of the rows that pass);
* a filter that passes few rows: score those rows directly (gather, one matrix-vector
  product, partial sort), which beats scanning the whole index through a selector.

Diversity re-ranks a larger candidate set by maximal marginal relevance.
"""

from __future__ import annotations

import threading
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from server.rows import Rows

Scores = npt.NDArray[np.float32]
Mask = npt.NDArray[np.bool_]

# Excluding up to 1% of the catalogue (within these bounds): search k + that many and filter;
# more: a FAISS bitmap selector, whose cost does not grow with them but slows the scan ~1.2x.
# Crossovers measured here: ~150 at 9.7k movies, ~700 at 62k, beyond 2,000 at 1M. An HNSW
# index always takes the selector: over-fetching would force its search depth up to k + that
# many (62k trained model, efSearch 256, same recall: p99 1,027 vs 1,407 us).
OVERFETCH_MIN, OVERFETCH_MAX = 128, 2_000
# A filter passing at most this share of the catalogue is scored directly: at 10% direct
# scoring took 17 vs 18 us through the selector (2,982 movies x 257) and 90 vs 282 us
# (62,423 x 64); at 20% the selector won (24 vs 41, 259 vs 557). benchmarks/bench_service.py
DIRECT_SHARE = 0.1
DIVERSITY_CANDIDATES = 4  # MMR re-ranks k * this many of the best (at least k + 40)
BLAS_MIN_QUERIES = 8  # from this many queries in one call, FAISS's BLAS path is faster
_blas_threshold = threading.Lock()


class Searcher:
    def __init__(self, index: faiss.Index, vectors: npt.NDArray[np.float32]) -> None:
        """``vectors`` (one row per movie) say how alike two results are, for diversity."""
        self.index = index
        self.n = int(index.ntotal)
        hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
        self._ef_search: int | None = int(hnsw.efSearch) if hnsw is not None else None
        overfetch = min(max(OVERFETCH_MIN, self.n // 100), OVERFETCH_MAX)
        self._overfetch = 0 if hnsw is not None else overfetch
        self._vectors = vectors

    def search(
        self, query: npt.NDArray[np.float32], k: int, excluded: Rows, allowed: Mask | None
    ) -> tuple[Rows, Scores]:
        """Rows and scores of the k best for one query (1, d): never an ``excluded`` row
        (sorted, unique), only ``allowed`` rows when a mask is given."""
        if allowed is None and len(excluded) <= self._overfetch:
            return self._overfetch_search(query, k, excluded)
        if allowed is None and self._ef_search is not None:
            # A graph walk checks a few thousand rows: an id set of the excluded costs their
            # number to build, where a catalogue-sized bitmap cost ~0.3 ms a call at 1M movies
            k = min(k, self.n - len(excluded))
            if k == 0:
                return np.zeros(0, np.int64), np.zeros(0, np.float32)
            batch = faiss.IDSelectorBatch(excluded)
            found = self._select(query, k, faiss.IDSelectorNot(batch))
            if found is not None:
                return found
            allowed = np.ones(self.n, bool)  # the walk came back short: score what passes
        mask = np.ones(self.n, bool) if allowed is None else allowed.copy()
        mask[excluded] = False
        passing = int(np.count_nonzero(mask))
        k = min(k, passing)
        if k == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        if passing <= DIRECT_SHARE * self.n:
            return self._score_directly(query, k, np.flatnonzero(mask))
        bitmap = np.packbits(mask, bitorder="little")  # FAISS reads bit i of byte i >> 3
        # FAISS keeps a raw pointer to bitmap, referenced here until the search is done.
        selector = faiss.IDSelectorBitmap(self.n, faiss.swig_ptr(bitmap))
        found = self._select(query, k, selector)
        if found is None:  # an HNSW walk can miss rows a selective filter leaves far apart
            return self._score_directly(query, k, np.flatnonzero(mask))
        return found

    def _select(
        self, query: npt.NDArray[np.float32], k: int, selector: faiss.IDSelector
    ) -> tuple[Rows, Scores] | None:
        """The k best rows the selector passes; None when the index found fewer (a graph
        walk can, where the passing rows lie far apart)."""
        scores, ids = self.index.search(query, k, params=self._params(k, selector))
        found = ids[0] >= 0
        if int(np.count_nonzero(found)) < k:
            return None
        return ids[0][found], scores[0][found]

    def search_many(
        self, queries: npt.NDArray[np.float32], ks: list[int], excluded: list[Rows]
    ) -> list[tuple[Rows, Scores]]:
        """``search`` for many queries (m, d) without filters, sharing one FAISS call where
        that is faster: the rows that can over-fetch go together, through FAISS's BLAS path
        when there are enough of them (32 queries: 2.0 -> 1.0 ms at 9.7k movies, 8.7 -> 4.0
        ms at 62k, against one search each; measured)."""
        together = [i for i, e in enumerate(excluded) if len(e) <= self._overfetch]
        out: list[tuple[Rows, Scores] | None] = [None] * len(ks)
        if together:
            fetch = min(self.n, max(ks[i] + len(excluded[i]) for i in together))
            scores, ids = self._search_rows(queries[together], fetch)
            for j, i in enumerate(together):
                out[i] = self._drop_excluded(ids[j], scores[j], min(ks[i], self.n), excluded[i])
        for i, found in enumerate(out):
            if found is None:
                out[i] = self.search(queries[i : i + 1], ks[i], excluded[i], None)
        return out  # type: ignore[return-value]

    def _search_rows(
        self, queries: npt.NDArray[np.float32], k: int
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        if len(queries) < BLAS_MIN_QUERIES:
            scores, ids = self.index.search(queries, k, params=self._params(k))
            return scores, ids
        # FAISS takes its BLAS path above a process-wide query-count threshold (128,000 by
        # default in 1.15); lowered for the call, as lowering it for good slows single
        # queries 3-4x. A single search elsewhere meanwhile is slower, never wrong.
        with _blas_threshold:
            previous = faiss.cvar.distance_compute_blas_threshold
            faiss.cvar.distance_compute_blas_threshold = BLAS_MIN_QUERIES
            try:
                scores, ids = self.index.search(queries, k, params=self._params(k))
            finally:
                faiss.cvar.distance_compute_blas_threshold = previous
        return scores, ids

    def diversify(
        self, query: npt.NDArray[np.float32], k: int, excluded: Rows, allowed: Mask | None,
        diversity: float,
    ) -> tuple[Rows, Scores]:  # fmt: skip
        """The k best re-ranked by maximal marginal relevance: each pick maximises
        (1 - diversity) * relevance - diversity * (cosine to the closest pick so far), with
        relevance the score rescaled to [0, 1] over the candidates."""
        rows, scores = self.search(query, max(k * DIVERSITY_CANDIDATES, k + 40), excluded, allowed)
        if len(rows) <= 1:
            return rows[:k], scores[:k]
        spread = float(scores[0] - scores[-1]) or 1.0
        relevance = (scores - scores[-1]) / spread
        unit = self._vectors[rows]  # normalised here: only the candidates' rows are needed
        unit = unit / np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
        closest = np.full(len(rows), -np.inf)
        picked: list[int] = []
        available = np.ones(len(rows), bool)
        for _ in range(min(k, len(rows))):
            gain = (1 - diversity) * relevance - diversity * np.maximum(closest, 0.0)
            gain[~available] = -np.inf
            best = int(np.argmax(gain))
            picked.append(best)
            available[best] = False
            closest = np.maximum(closest, unit @ unit[best])
        return rows[picked], scores[picked]

    def _overfetch_search(
        self, query: npt.NDArray[np.float32], k: int, excluded: Rows
    ) -> tuple[Rows, Scores]:
        k = min(k, self.n - len(excluded))
        if k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        fetch = k + len(excluded)  # the excluded can take at most that many of the best
        scores, ids = self.index.search(query, fetch, params=self._params(fetch))
        return self._drop_excluded(ids[0], scores[0], k, excluded)

    @staticmethod
    def _drop_excluded(ids: Rows, scores: Scores, k: int, excluded: Rows) -> tuple[Rows, Scores]:
        keep = ids >= 0
        if len(excluded):
            pos = np.minimum(np.searchsorted(excluded, ids), len(excluded) - 1)
            keep &= excluded[pos] != ids
        return ids[keep][:k], scores[keep][:k]

    def _score_directly(
        self, query: npt.NDArray[np.float32], k: int, rows: Rows
    ) -> tuple[Rows, Scores]:
        scores = self.index.reconstruct_batch(rows) @ query[0]
        best = np.argpartition(-scores, k - 1)[:k] if k < len(rows) else np.arange(len(rows))
        best = best[np.lexsort((rows[best], -scores[best]))]  # by score, ties by row
        return rows[best], scores[best].astype(np.float32)

    def _params(self, k: int, selector: faiss.IDSelector | None = None) -> Any:
        """Search parameters: the selector, and for HNSW a search depth of at least k (its
        efSearch bounds how many results it can return)."""
        # faiss's Python wrapper takes these as keywords; its stubs do not know them
        if self._ef_search is not None:
            ef = max(self._ef_search, k)
            return faiss.SearchParametersHNSW(sel=selector, efSearch=ef)  # type: ignore[attr-defined]
        return faiss.SearchParameters(sel=selector) if selector is not None else None  # type: ignore[call-arg]
