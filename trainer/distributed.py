"""Where training runs: the device, the thread count, and several processes through PyTorch
DDP when torchrun started this one.

    movierec train --nproc-per-node 2 --data DIR --out ARTIFACTS      # processes on this machine
    # several machines: the same command on each, node rank 0..N-1, one endpoint for all
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint HOST0:29500 --rdzv-id RUN -m trainer --data DIR --out ARTIFACTS

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT in
each process; ``process_group`` joins them (gloo on CPU, nccl on CUDA). Every process reads
the data; rank 0 alone writes checkpoints and the artifact.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from movierec.cpus import available_cpus
from movierec.errors import MovierecError, UsageError


def launched() -> bool:
    """Whether a launcher (torchrun) started this process as one rank of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank() -> int:
    """This process's rank: 0 in a single process (and on the rank that writes)."""
    return int(os.environ.get("RANK", "0")) if launched() else 0


def local_world_size() -> int:
    """Training processes on this machine (they share its CPUs)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if launched() else 1


def device(name: str) -> torch.device:
    """``auto``: CUDA when there is a GPU. Each local rank gets its own GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError("--device cuda: torch sees no CUDA GPU here (use cpu or auto)")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) if launched() else 0)


def threads(configured: int) -> int:
    """Intra-op threads for this process: ``configured``, or with 0 the CPUs this process
    may use (affinity, cgroup quota: not the host's cores) shared among this machine's ranks."""
    return configured or max(1, available_cpus() // local_world_size())


@contextmanager
def process_group(where: torch.device) -> Iterator[tuple[int, int]]:
    """Join the ranks torchrun started, for the ``with`` block; yields (rank, world size):
    (0, 1) in a single process, which joins nothing."""
    if not launched():
        yield 0, 1
        return
    if dist.is_initialized():  # joined by an enclosing block (early stopping, then training)
        yield dist.get_rank(), dist.get_world_size()
        return
    if where.type == "cuda":
        torch.cuda.set_device(where)
    dist.init_process_group("nccl" if where.type == "cuda" else "gloo")
    try:
        yield dist.get_rank(), dist.get_world_size()
    finally:
        dist.destroy_process_group()


def broadcast_file(path: Path, where: torch.device) -> bytes | None:
    """Rank 0's copy of ``path`` (None if it has none) on every rank, so that a checkpoint
    need only be on the first machine."""
    if not dist.is_initialized():
        return path.read_bytes() if path.exists() else None
    data = path.read_bytes() if dist.get_rank() == 0 and path.exists() else b""
    size = torch.tensor([len(data) if dist.get_rank() == 0 else 0], device=where)
    dist.broadcast(size, 0)
    if int(size) == 0:
        return None
    buffer = torch.zeros(int(size), dtype=torch.uint8, device=where)
    if dist.get_rank() == 0:
        buffer.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buffer, 0)
    return buffer.cpu().numpy().tobytes()


def load(data: bytes) -> dict[str, Any]:
    """A checkpoint's tensors and plain values (weights_only: nothing is unpickled)."""
    state: dict[str, Any] = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return state


def launch(nproc: int, argv: Sequence[str]) -> None:
    """Run ``movierec ARGV`` as ``nproc`` processes on this machine under torchrun's agent, on
    loopback with a free port; returns when all have finished, raises when one failed."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(
        ["--nnodes", "1", "--nproc-per-node", str(nproc), "--rdzv-backend", "c10d",
         "--rdzv-endpoint", "127.0.0.1:0", "--local-addr", "127.0.0.1",
         "--module", "movierec", *argv]
    )  # fmt: skip
    # Unset, torchrun sets 1 with a banner; each rank sets its own share (``threads``) anyway.
    unset = "OMP_NUM_THREADS" not in os.environ
    if unset:
        os.environ["OMP_NUM_THREADS"] = str(max(1, available_cpus() // nproc))
    try:
        run(args)  # type: ignore[no-untyped-call]
    except ChildFailedError as e:
        failed = ", ".join(f"rank {r} (exit code {f.exitcode})" for r, f in e.failures.items())
        raise MovierecError(f"training failed in {failed}; its error is above") from None
    finally:
        if unset:
            del os.environ["OMP_NUM_THREADS"]
