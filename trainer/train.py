"""Train movie embeddings from what the same users watched; read top to bottom.

    movierec train --data ../shared/data/ml-latest-small --out artifacts/mls

The knobs are TrainConfig's fields (trainer/config.py); what each objective's steps train on
is in trainer/batches.py, the losses in trainer/model.py.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from trainer.batches import objective
from trainer.config import TrainConfig
from trainer.corpus import Corpus
from trainer.embeddings import Embeddings
from trainer.model import ItemEmbeddings

log = logging.getLogger(__name__)


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
    features = None
    if config.side_info and config.objective == "cbow":
        f = corpus.features
        features = (torch.from_numpy(f.indptr), torch.from_numpy(f.indices), len(f.names))
    model = ItemEmbeddings(len(corpus.movies), config.dim, features)
    # fused: one kernel over all parameters, 5.6x faster than the default at 60k x 256
    optimizer = torch.optim.Adam(model.parameters(), config.lr, fused=True)
    steps = objective(corpus, config)
    losses: list[float] = []  # per epoch
    if resume and checkpoint is not None and checkpoint.exists():
        losses = _restore(checkpoint, config, model, optimizer, rng)
        log.info("resuming from %s after epoch %d", checkpoint, len(losses))
    first_epoch = len(losses)
    log.info(
        "training %s: %d movies, %d users, %d liked ratings, %d %ss/epoch, dim %d",
        config.objective, len(corpus.movies), len(corpus.baskets.lengths),
        len(corpus.baskets.items), steps.units, steps.unit, config.dim,
    )  # fmt: skip
    start = time.perf_counter()
    total, seen = 0.0, 0
    with tqdm(total=config.epochs * steps.units, initial=first_epoch * steps.units,
              unit=steps.unit, unit_scale=True, disable=not show_progress,
              desc=f"train {config.objective}") as bar:  # fmt: skip
        for epoch in range(first_epoch, config.epochs):
            total, seen = 0.0, 0
            for batch in steps.epoch(rng):
                optimizer.zero_grad(set_to_none=True)
                loss: torch.Tensor = model(batch)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                total, seen = total + loss.item() * batch.units, seen + batch.units
                bar.update(batch.units)
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
    settings = json.loads(state["config"])
    if settings != dataclasses.asdict(config):
        changed = sorted(k for k in settings if settings[k] != getattr(config, k, None))
        raise ValueError(f"{path} was written with other settings ({', '.join(changed)}); "
                         "resume with the same settings or start afresh")  # fmt: skip
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    rng.bit_generator.state = json.loads(state["numpy_rng"])
    torch.set_rng_state(state["torch_rng"])
    return [float(x) for x in json.loads(state["losses"])]
