"""EASE's item-item model in low rank, folded into cbow's index (Steck 2019, "Embarrassingly
Shallow Autoencoders").

EASE scores movie j for a user as the sum over their liked movies i of B[i, j], where B is a
ridge regression of every movie's column on all the others (zero diagonal). Factored as
B ~ P Q' (rank RANK), that score is "sum of the history's rows of P, inner product with Q":
the served design itself (one aggregation, one inner-product search). Beside cbow's vectors the
query is [cbow part, weight * P part] and the index [cbow out, Q, bias], so a holdout can blend
the two by one weight (``trainer.holdout.stop_early`` chooses it, lambda and ``debias``'s beta).

Where a dataset's relevance is mostly a few broad tastes plus popularity (the generated shapes
of benchmarks/shapes.py) cbow stops learning after an epoch or two and EASE ranks better; on
ml-latest-small's dense shapes the blend adds a little, and elsewhere too little for the
holdout to keep it. B is dense (movies x movies) and costs a matrix inverse per
lambda: only catalogues up to MAX_ROWS rows.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from trainer.embeddings import LowRank
from trainer.pairs import Baskets

RANK = 128  # 256 scored the same on validation (gen ml-1m 0.138 / 0.139, dense 1,600 0.196 / 0.191)
MAX_ROWS = 8000  # an 8k x 8k inverse is ~10 s on 2 cores; the cost grows with the cube
# Lambdas tried, as multiples of the mean liked ratings per movie (the Gram matrix's scale):
# the best measured was 8x (ml-latest-small's training part) to 128x (generated ml-1m shape).
LAMBDA_STEPS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0)
DEFAULT_STEP = 3  # 8x: the lambda for an explicit --ease weight without a holdout run
# Popularity corrections tried at the chosen lambda: EASE's column j divided by movie j's liked
# count ^ beta. On ml-latest-small's shapes 0.25 kept EASE alone's NDCG@10 (+0.003 to -0.001)
# and raised its coverage ~1.7x (dense 1,600 core 0.22 -> 0.39); on generated data it cost
# NDCG@10 (ml-100k shape 0.160 -> 0.140): the holdout chooses.
DEBIAS = (0.0, 0.25, 0.5)


def gram(baskets: Baskets, rows: int) -> torch.Tensor:
    """X'X of the users x rows 0/1 matrix of liked movies (float64, dense)."""
    users = np.repeat(np.arange(len(baskets.lengths)), baskets.lengths)
    pairs = np.unique(users * rows + baskets.items)  # a movie liked twice by one user: once
    where = torch.from_numpy(np.stack([pairs // rows, pairs % rows]))
    ones = torch.ones(len(pairs), dtype=torch.float64)
    shape = (len(baskets.lengths), rows)
    x = torch.sparse_coo_tensor(where, ones, shape, is_coalesced=True, check_invariants=True)
    with warnings.catch_warnings():  # torch warns that sparse support is in beta
        warnings.simplefilter("ignore", UserWarning)
        product: torch.Tensor = torch.sparse.mm(x.t(), x).to_dense()
    return product


def lambdas(baskets: Baskets, rows: int) -> list[float]:
    """The regularisation strengths to try on a holdout, scaled to the data."""
    per_movie = max(len(baskets.items) / max(rows, 1), 1.0)
    return [round(per_movie * s, 1) for s in LAMBDA_STEPS]


def fit(g: torch.Tensor, lam: float, seed: int = 0) -> LowRank:
    """P Q' ~ B, EASE's weights for Gram matrix ``g`` and L2 strength ``lam``.
    P's rows have mean length 1 (so the weight blending it with cbow's unit rows means the
    same on any data); Q takes the scale."""
    n = g.shape[0]
    a = g.clone()
    a.diagonal().add_(lam)
    b = torch.linalg.inv(a)
    del a  # n x n float64 each (0.5 GB at MAX_ROWS): at most two held at once
    b.div_(-b.diagonal().clone())  # B = I - P diag(P)^-1: column j regresses j on the others
    b.diagonal().zero_()
    rank = min(RANK, n)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # svd_lowrank draws a random basis: same seed, same artifact
    try:
        u, s, v = torch.svd_lowrank(b, q=min(rank + 10, n), niter=6)
    finally:
        torch.random.set_rng_state(generator_state)
    root = s[:rank].sqrt()
    left, right = (u[:, :rank] * root).numpy(), (v[:, :rank] * root).numpy()
    scale = max(float(np.linalg.norm(left, axis=1).mean()), 1e-12)
    return LowRank((left / scale).astype(np.float32), (right * scale).astype(np.float32))


def debias(factors: LowRank, g: torch.Tensor, beta: float) -> LowRank:
    """``factors`` with column j of P Q' divided by movie j's liked count (the diagonal of
    Gram matrix ``g``) to the power ``beta``. (The scale of Q is free: served_tables matches it
    to cbow's output vectors.)"""
    if beta == 0:
        return factors
    counts = np.maximum(g.diagonal().numpy(), 1.0)
    return LowRank(factors.left, (factors.right * counts[:, None] ** -beta).astype(np.float32))
