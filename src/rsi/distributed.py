"""torch.distributed for sharding work across `torchrun` ranks; a no-op in one process.

Work is split by position (item i goes to rank i % world), every rank writes its own results, and
rank 0 assembles after a barrier, so results never depend on the number of processes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

T = TypeVar("T")


def world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) outside torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


_PEERS: list[Any] = []  # the gloo group of wait_for_peers, made by init while every rank is alive


def _peers() -> Any | None:
    """The gloo group :func:`init` made, or None in one process (nothing to wait for or compare)."""
    if not _PEERS or not dist.is_initialized() or dist.get_world_size() == 1:
        return None
    return _PEERS[0]


def init() -> None:
    """Join the process group when launched by torchrun: NCCL for CUDA tensors and gloo for CPU ones, so
    collectives work whatever ``model.device`` (a CPU run on a GPU machine included)."""
    _, size = world()
    if size > 1 and not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        _PEERS[:] = [dist.new_group(backend="gloo", timeout=timedelta(days=7))]


def wait_for_peers() -> None:
    """Wait until every rank has finished its share (no-op without a process group). The wait may last
    hours (ranks finish apart) but not for ever: a rank that died, on any node, closes its sockets and the
    wait fails within seconds (a host that lost power or its network sends no reset: then the group's
    timeout of a week ends it, or Ctrl-C). torch's launcher ends the workers of its own node only, so without this a
    rank 0 polling for a dead remote rank's files would wait for ever."""
    peers = _peers()
    if peers is None:
        return
    try:
        dist.barrier(group=peers)
    except RuntimeError as error:
        raise RuntimeError(
            f"rank {world()[0]}: another rank stopped before finishing its share ({str(error)[:160]}); "
            "its own node's command names its error; a rerun resumes from the finished chunks"
        ) from None


def main_alone(work: Callable[[], None]) -> None:
    """Run ``work`` on rank 0 alone (a stage's tail after rendering: measuring, writing), then keep every
    rank until it is done. Across nodes a node whose workers have all exited ends its launcher, and with
    it the rendezvous the other node's launcher still polls, which rank 0's launcher would take for rank
    0's death."""
    if is_main():
        work()
    wait_for_peers()


def finish() -> None:
    """Leave the process group after a stage's work: torch >= 2.4 prints a warning at exit when an NCCL
    group was not destroyed. (After a failure the launcher's report reads the stage's own error line,
    rsi.launch.last_error_line, whatever follows it.)"""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _PEERS.clear()


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of ``items``: every world-th item, starting at the rank."""
    rank, size = world()
    return list(items[rank::size])


def shard_batches(total: int, batch_size: int) -> list[np.ndarray]:
    """This rank's share of ``range(total)`` cut into batches of ``batch_size``: whole batches, batch b
    on rank b % world. Every batch holds the images it holds in one process, so per-image results (and
    per-batch sums) are the same floats whatever the number of ranks."""
    rank, size = world()
    batches = [np.arange(i, min(i + batch_size, total)) for i in range(0, total, batch_size)]
    return batches[rank::size]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def is_main() -> bool:
    return world()[0] == 0


class RanksDifferError(ValueError):
    """Ranks that must agree do not (a ValueError, so `rsi` prints it as one line)."""


def require_same(value: dict[str, str], what: str, fix: str) -> None:
    """Raise RanksDifferError on every rank unless every rank passes the same ``value`` (over the gloo
    group of :func:`init`; nothing to compare in one process)."""
    peers = _peers()
    if peers is None:
        return
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value, group=peers)
    differ = [rank for rank, theirs in enumerate(gathered) if theirs != gathered[0]]
    if differ:
        raise RanksDifferError(
            f"rank(s) {differ} run other {what} than rank 0 ({gathered[differ[0]]} against {gathered[0]}): {fix}"
        )


def from_main(value: T) -> T:
    """Rank 0's ``value`` on every rank (over the gloo group of :func:`init`; ``value`` in one process):
    for decisions only rank 0 may take, such as which outputs it could lock."""
    peers = _peers()
    if peers is None:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0, group=peers)
    return holder[0]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place (identity in one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
