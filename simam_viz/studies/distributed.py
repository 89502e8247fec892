"""Batch commands across processes and nodes with ``torchrun`` (torch.distributed).

``simam-viz figure`` and ``simam-viz evaluate`` run unchanged under
``torchrun --nproc_per_node N [--nnodes M ...]``: each process takes every N-th input
(its rank's shard), works on its own device (``cuda:LOCAL_RANK`` on GPU nodes, the CPU
otherwise), and rank 0 gathers what the others found and writes the one merged output
(summary line, CSV). Outside torchrun (no ``WORLD_SIZE`` in the environment) this is a
single shard of everything and nothing here touches torch.distributed.

The backend is gloo on CPU and nccl when every process has a GPU, as PyTorch recommends;
``gather`` uses ``all_gather_object`` (pickled Python objects), which both backends carry.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from simam_viz.errors import SimamVizError

__all__ = ["Shard", "sharded"]

LOG = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's place in the job: ``rank`` of ``world`` processes (1 outside torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def main(self) -> bool:
        """Rank 0 writes the merged outputs and prints the summary."""
        return self.rank == 0

    def take(self, items: Sequence[T]) -> list[T]:
        """Every ``world``-th item starting at ``rank``: shards differ in size by at most one,
        and each item belongs to exactly one rank (so each output is written once)."""
        return list(items[self.rank :: self.world])

    def device(self, requested: str) -> str:
        """The device this rank works on: with several ranks on a GPU node, ``auto`` and
        ``cuda`` mean this rank's own GPU (``cuda:LOCAL_RANK``), never a shared one."""
        if self.world > 1 and requested in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank % torch.cuda.device_count()}"
        return requested

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank (a list of one outside)."""
        if self.world == 1:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise SimamVizError(f"${name} must be an integer, got {raw!r}") from exc


@contextmanager
def sharded(device: str = "auto") -> Iterator[Shard]:
    """The shard of this process, with the process group up for the duration when the job
    has several processes (torchrun sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` and the
    rendezvous address); torn down on exit, errors included, so no rank hangs."""
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        yield Shard()
        return
    import torch.distributed as dist

    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    gpu = device != "cpu" and torch.cuda.is_available()
    backend = "nccl" if gpu and dist.is_nccl_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local % torch.cuda.device_count())
    dist.init_process_group(backend=backend)
    LOG.info("rank %d of %d (local %d) on %s", rank, world, local, backend)
    try:
        yield Shard(rank=rank, world=world, local_rank=local, backend=backend)
    finally:
        dist.destroy_process_group()
