"""Splitting a job's inputs into N shards, so that N jobs of a cluster's job array (SLURM, Kubernetes) or the
N processes of one torchrun together cover every input exactly once.

Shard I of N (1-based, as `--shard I/N` and SLURM's `--array=1-N` count) gets the I-th of N contiguous
blocks of the input list, each of len/N inputs give or take one. Every job must see the same list: the
caller sorts it (predict: by path) or takes it from a file every job reads alike (evaluate: the split's
stems in their stored order), so that concatenating the shards in order gives back the whole list.
This module imports no torch.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from catseg.errors import CatsegError

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Which of `count` equal parts of the inputs this job handles."""

    index: int  # 1..count
    count: int
    source: str = "--shard"  # or "torchrun" when read from RANK / WORLD_SIZE

    def __post_init__(self) -> None:
        if self.count < 1 or not 1 <= self.index <= self.count:
            raise CatsegError(f"--shard {self.index}/{self.count}: I/N needs 1 <= I <= N (1-based: 1/2 and 2/2 "
                              "are the two halves)")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @classmethod
    def parse(cls, text: str) -> Shard:
        """Return the Shard of a `--shard I/N` value such as '1/2'."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match:
            raise CatsegError(f"--shard {text!r}: write it as I/N, 1-based: 1/4 .. 4/4 (in a SLURM job array: "
                              "--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT with --array=1-N)")
        return cls(int(match.group(1)), int(match.group(2)))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Shard | None:
        """Return the shard of a process started by torchrun (RANK and WORLD_SIZE set, WORLD_SIZE > 1), else None."""
        env = os.environ if env is None else env
        try:
            rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        except (KeyError, ValueError):
            return None
        return cls(rank + 1, world, source="torchrun") if world > 1 else None

    def bounds(self, total: int) -> tuple[int, int]:
        """Return [start, end) of this shard's block among `total` inputs."""
        return (self.index - 1) * total // self.count, self.index * total // self.count

    def select(self, items: Sequence[T]) -> list[T]:
        """Return this shard's contiguous block of `items`; the blocks of shards 1..N concatenate to `items`."""
        start, end = self.bounds(len(items))
        return list(items[start:end])


def resolve_shard(text: str | None, env: Mapping[str, str] | None = None) -> Shard | None:
    """Return the shard asked for with --shard, else the torchrun rank's, else None (the whole input)."""
    if text:
        shard = Shard.parse(text)
        return shard if shard.count > 1 else None
    return Shard.from_env(env)


def use_local_gpu(env: Mapping[str, str] | None = None) -> None:
    """Make `cuda` mean this process's own GPU when torchrun started several on one machine (LOCAL_RANK)."""
    env = os.environ if env is None else env
    if "LOCAL_RANK" not in env:
        return
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() > 1:
        torch.cuda.set_device(int(env["LOCAL_RANK"]) % torch.cuda.device_count())
