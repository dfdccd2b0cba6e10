"""Train movie embeddings from what the same users watched; read top to bottom.

    movierec train --data ../shared/data/ml-latest-small --out artifacts/mls
    movierec train --nproc-per-node 2 ...     # DDP: one process per share of each step
    movierec train --device cuda ...

The knobs are TrainConfig's fields (trainer/config.py); what each objective's steps train on
is in trainer/batches.py, the losses in trainer/model.py, processes and devices in
trainer/distributed.py.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from trainer import distributed
from trainer.batches import objective
from trainer.config import TrainConfig
from trainer.corpus import Corpus
from trainer.defaults import Shape, resolve
from trainer.embeddings import Embeddings
from trainer.model import ItemEmbeddings

log = logging.getLogger(__name__)


def train(
    corpus: Corpus,
    config: TrainConfig,
    show_progress: bool = True,
    checkpoint: Path | None = None,
    resume: bool = False,
    after_epoch: Callable[[Embeddings], bool] | None = None,
) -> Embeddings:
    """Train; with ``checkpoint`` the model, optimiser and random states are saved there after
    every epoch, and ``resume`` continues from that file with the same result as a run that
    was never interrupted. Started by torchrun, this process trains its share of every step
    with the other ranks (every rank returns the same embeddings). ``after_epoch`` sees the
    tables after each epoch and may stop training by returning True (early stopping on a
    holdout: trainer/holdout.py). Auto settings still 0 are chosen from the corpus here (the
    pipeline chooses them from the ratings before, and records why)."""
    if config.unresolved:
        config, _ = resolve(config, Shape.of_baskets(corpus.baskets), early_stopping=False)
    device = distributed.device(config.device)
    with distributed.process_group(device) as (rank, world):
        return _train(corpus, config, device, rank, world, show_progress, checkpoint, resume,
                      after_epoch)  # fmt: skip


def _train(
    corpus: Corpus,
    config: TrainConfig,
    device: torch.device,
    rank: int,
    world: int,
    show_progress: bool,
    checkpoint: Path | None,
    resume: bool,
    after_epoch: Callable[[Embeddings], bool] | None,
) -> Embeddings:
    _reuse_freed_memory()
    torch.manual_seed(config.seed)  # every rank starts from the same tables and draws the same
    _deterministic(device)
    torch.set_num_threads(distributed.threads(config.threads))
    rng = np.random.default_rng(config.seed)
    features = None
    if config.side_info and config.objective == "cbow":
        f = corpus.features
        features = (torch.from_numpy(f.indptr), torch.from_numpy(f.indices), len(f.names))
    model = ItemEmbeddings(len(corpus.movies), config.dim, features).to(device)
    # fused: one kernel over all parameters, 5.6x faster than the default at 60k x 256;
    # AdamW with weight_decay 0 is Adam
    decay = config.weight_decay if config.objective == "cbow" else 0.0
    optimizer = torch.optim.AdamW(model.parameters(), config.lr, weight_decay=decay, fused=True)
    steps = objective(corpus, config, device, rank, world)
    losses: list[float] = []  # per epoch
    saved = distributed.broadcast_file(checkpoint, device) if resume and checkpoint else None
    if saved is not None:
        losses = _restore(saved, checkpoint, config, model, optimizer, rng)
        log.info("resuming from %s after epoch %d", checkpoint, len(losses))
    # DDP all-reduces the gradients in backward; its buffers (side information) never change.
    ids = [device.index] if device.type == "cuda" else None
    ddp = model if world == 1 else DistributedDataParallel(model, ids, forward_sync_buffers=False)
    first_epoch = len(losses)
    log.info(
        "training %s: %d movies, %d users, %d liked ratings, %d %ss/epoch, dim %d; "
        "on %s, %d process(es) x %d thread(s)",
        config.objective, len(corpus.movies), len(corpus.baskets.lengths),
        len(corpus.baskets.items), steps.units, steps.unit, config.dim, device.type, world,
        torch.get_num_threads(),
    )  # fmt: skip
    start = time.perf_counter()
    total, seen = 0.0, 0
    with tqdm(total=config.epochs * steps.units, initial=first_epoch * steps.units,
              unit=steps.unit, unit_scale=True, disable=not show_progress or rank > 0,
              desc=f"train {config.objective}") as bar:  # fmt: skip
        for epoch in range(first_epoch, config.epochs):
            total, seen = 0.0, 0
            for batch in steps.epoch(rng):
                optimizer.zero_grad(set_to_none=True)
                loss: torch.Tensor = ddp(batch)  # this rank's share of the step's loss
                # DDP averages the ranks' gradients; the step's gradient is their sum.
                (loss * world).backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                step_loss = loss.detach()
                if world > 1:
                    dist.all_reduce(step_loss)  # the shares add up to the step's loss
                total, seen = total + step_loss.item() * batch.units, seen + batch.units
                bar.update(batch.units)
                bar.set_postfix(epoch=epoch + 1, loss=f"{total / seen:.4f}")
            losses.append(total / max(seen, 1))
            log.debug("epoch %d/%d: loss %.4f", epoch + 1, config.epochs, losses[-1])
            if checkpoint is not None and rank == 0:
                _save(checkpoint, config, model, optimizer, rng, losses)
            if after_epoch is not None and after_epoch(_tables(model, start, losses, world)):
                break  # every rank has the same tables, so every rank stops here
    embeddings = _tables(model, start, losses, world)
    log.info("trained in %.1fs, final loss %.4f", embeddings.seconds, total / max(seen, 1))
    return embeddings


def _tables(model: ItemEmbeddings, start: float, losses: list[float], world: int) -> Embeddings:
    inp, out, bias = (t.detach().cpu().numpy().copy() for t in model.item_tables())
    device = next(model.parameters()).device.type
    return Embeddings(inp=inp, out=out, bias=bias, seconds=time.perf_counter() - start,
                      losses=tuple(losses), world_size=world, device=device)  # fmt: skip


def _deterministic(device: torch.device) -> None:
    """Same seed, same bytes. On CPU, parallel scatter-adds otherwise sum in thread order
    (~1e-6 apart between two runs). On CUDA, cuBLAS needs a fixed workspace to be
    reproducible (read when cuBLAS starts, so set before the first matrix product), and an
    op without a deterministic kernel warns rather than stopping a long run."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")


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
    """Everything the next epoch depends on, written to a temporary file and renamed. The
    random states are every rank's: they all draw the same."""
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
    saved: bytes,
    path: Path | None,
    config: TrainConfig,
    model: ItemEmbeddings,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
) -> list[float]:
    """Load a checkpoint written by ``_save`` (tensors and plain values only: weights_only,
    nothing is unpickled); returns the loss of each epoch it had done."""
    state = distributed.load(saved)
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
