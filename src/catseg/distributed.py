"""Training one model on several processes with PyTorch's own distributed runtime: torchrun starts the
processes, torch.distributed connects them (NCCL between GPUs, gloo between CPUs), DistributedDataParallel
averages the gradients.

    torchrun --nproc-per-node 4 -m catseg train DATA --out RUN ...        # 4 GPUs of one machine
    catseg train DATA --out RUN --nproc 4 ...                             # the same, torchrun started for you

Each process finds its RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous in the environment torchrun gives
it; `session` joins the group and `fit` runs as usual, with these rules keeping the ranks in step so that
none ever waits forever in a collective:

- what depends on files or on the clock is decided by rank 0 and broadcast: the run folder, the planner's
  settings, whether an epoch is validated, and under a time budget the schedule's progress and when to stop;
- every rank does the same number of steps: DistributedSampler deals each rank ceil(n / world) images per
  epoch (padding the last ones from the start of the shuffled list), reshuffled every epoch (set_epoch);
- validation is sharded (each rank scores its own contiguous block, nothing padded or counted twice) and the
  confusion counts, calibration bins, threshold histograms and loss are summed over the ranks;
- only rank 0 writes the run folder and logs below WARNING.

`--batch-size` is per process; the global batch is world size times it (config.json "train.distributed"
records both, with the backend). The learning rate is not scaled with it.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from catseg.errors import CatsegError
from catseg.hardware import Forward, resolve_device
from catseg.steps import Clock, StepContext

log = logging.getLogger(__name__)

T = TypeVar("T")

SYNC_BATCHNORM_BELOW = 16  # per-device batches smaller than this normalise over every GPU's batch (CUDA only)
TIMEOUT = datetime.timedelta(minutes=30)  # a collective waiting longer than this fails instead of hanging
# Tests set this to a folder: at the end of training every rank writes its weights there as rank<R>.safetensors,
# so that a test can compare the ranks' models with each other and with the run folder.
RANK_WEIGHTS_ENV = "CATSEG_RANK_WEIGHTS_DIR"


@dataclass
class Dist:
    """This process's place among the processes training one model (a single process: the defaults)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1  # processes on this machine
    backend: str | None = None  # "nccl" or "gloo"
    device: torch.device = torch.device("cpu")  # where the collectives' tensors live (NCCL: this GPU)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------------- collectives
    def broadcast(self, obj: T) -> T:
        """Return rank 0's `obj` on every rank (any picklable object)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.device if self.backend == "nccl" else None)
        return box[0]

    def agree(self, value: bool) -> bool:
        """Return rank 0's answer on every rank, for decisions taken from a local clock."""
        if not self.enabled:
            return value
        flag = torch.tensor([1.0 if value else 0.0], device=self.device)
        dist.broadcast(flag, src=0)
        return bool(flag.item())

    def sum(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Return the element-wise sums over the ranks of each array (int64 stays exact; floats in float64)."""
        if not self.enabled:
            return [np.asarray(a) for a in arrays]
        out = []
        for a in arrays:
            a = np.asarray(a)
            t = torch.from_numpy(a.astype(np.int64 if a.dtype.kind in "iub" else np.float64)).to(self.device)
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            out.append(t.cpu().numpy())
        return out

    def main_decides(self, decide: Callable[[], T]) -> T:
        """Return what `decide()` returns on rank 0, on every rank; only rank 0 runs it. When it fails there,
        every rank raises (a CatsegError with rank 0's message elsewhere), so none waits for the others."""
        if not self.enabled:
            return decide()
        result: Any = None
        failure: tuple[str, list[str]] | None = None
        error: BaseException | None = None
        if self.is_main:
            try:
                result = decide()
            except CatsegError as exc:
                error, failure = exc, (exc.message, exc.problems)
            except BaseException as exc:  # a bug: tell the others, then raise it here with its traceback
                error, failure = exc, (f"rank 0 failed: {type(exc).__name__}: {exc}", [])
        result, failure = self.broadcast((result, failure))
        if error is not None:
            raise error
        if failure is not None:
            raise CatsegError(*failure)
        return result

    # ------------------------------------------------------------------------- data
    def samples_per_rank(self, n: int) -> int:
        """Return the images each rank trains on per epoch (DistributedSampler pads n up to a multiple)."""
        return math.ceil(n / self.world)

    def stream(self, seed: int) -> int:
        """Return a seed of this rank's own random stream (`seed` itself in a single process)."""
        return seed * self.world + self.rank

    def sampler(self, dataset: Any, seed: int, epoch: int) -> torch.utils.data.Sampler | None:
        """Return this rank's share of the epoch's shuffled order (None in a single process: plain shuffle)."""
        if not self.enabled:
            return None
        sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=self.world, rank=self.rank, shuffle=True,
                                                      seed=seed)
        sampler.set_epoch(epoch)  # a new order every epoch, the same on every rank
        return sampler

    def select(self, items: Sequence[T]) -> list[T]:
        """Return this rank's contiguous block of `items` (blocks of all ranks: each item exactly once)."""
        if not self.enabled:
            return list(items)
        return list(items[self.rank * len(items) // self.world:(self.rank + 1) * len(items) // self.world])

    # ------------------------------------------------------------------------- model
    def place(self, device: torch.device) -> torch.device:
        """Return this process's own GPU for 'cuda' (LOCAL_RANK), else `device`."""
        return torch.device("cuda", self.local_rank) if self.enabled and device.type == "cuda" else device

    def uses_sync_batchnorm(self, device: torch.device, batch_size: int) -> bool:
        return self.enabled and device.type == "cuda" and batch_size < SYNC_BATCHNORM_BELOW

    def wrap(self, ctx: StepContext, batch_size: int) -> StepContext:
        """Return the context whose forward pass trains through DistributedDataParallel (`ctx` itself in a single
        process). ctx.model stays the plain module: validation, saving and loading use it. With small
        per-GPU batches BatchNorm becomes SyncBatchNorm, in place, keeping its parameters."""
        if not self.enabled:
            return ctx
        model = ctx.model
        if self.uses_sync_batchnorm(ctx.device, batch_size):
            model = ctx.forward.model = sync_batchnorm(model)
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        return replace(ctx, forward=Forward(ddp, ctx.device, ctx.forward.dtype, ctx.forward.channels_last))

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """Give every rank rank 0's buffers (BatchNorm running statistics), which DDP's forward broadcasts
        before each step but each rank's own batch then updates."""
        if not self.enabled:
            return
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for buf in model.buffers():
            by_dtype.setdefault(buf.dtype, []).append(buf)
        for bufs in by_dtype.values():
            flat = torch.cat([b.detach().reshape(-1) for b in bufs]).to(self.device)
            dist.broadcast(flat, src=0)
            offset = 0
            for b in bufs:
                b.data.copy_(flat[offset:offset + b.numel()].view(b.shape))
                offset += b.numel()

    def check_in_step(self, model: torch.nn.Module) -> None:
        """Raise a CatsegError unless every rank holds exactly the same weights; with CATSEG_RANK_WEIGHTS_DIR
        set, also write this rank's weights there."""
        if not self.enabled:
            return
        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        digests: list[Any] = [None] * self.world
        dist.all_gather_object(digests, digest.hexdigest())
        folder = os.environ.get(RANK_WEIGHTS_ENV)
        if folder:
            from catseg.models import save_weights

            save_weights(model, Path(folder) / f"rank{self.rank}.safetensors")
        if len(set(digests)) != 1:
            raise CatsegError(f"the {self.world} processes ended training with different weights "
                              f"({len(set(digests))} distinct); this is a bug in catseg's distributed training")

    def clock(self, clock: Clock) -> Clock:
        """Return a clock whose time-budget answers come from rank 0 (`clock` itself without a budget)."""
        return SharedClock(clock, self) if self.enabled and clock.deadline is not None else clock

    def record(self, device: torch.device, batch_size: int) -> dict[str, Any]:
        """Return config.json's train.distributed entry: how many processes trained, how, with which batch."""
        return {"world_size": self.world, "backend": self.backend, "nodes": max(1, self.world // self.local_world),
                "per_device_batch": batch_size, "global_batch": batch_size * self.world,
                "sync_batchnorm": self.uses_sync_batchnorm(device, batch_size)}


def sync_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Return `model` with every BatchNorm made a SyncBatchNorm that keeps its parameters and buffers (the same
    tensors: an optimizer made before still holds them) and its state-dict names, so the saved weights load into
    the plain model. timm's converter also turns timm's BatchNormAct2d (smp's tu-* encoders) into
    SyncBatchNormAct; torch's own would make it a plain SyncBatchNorm and silently drop the activation."""
    from timm.layers import convert_sync_batchnorm

    return convert_sync_batchnorm(model)


class SharedClock(Clock):
    """A time-budget clock whose progress and stop signal are rank 0's, broadcast once per step, so every rank
    uses the same learning rate and stops after the same step."""

    def __init__(self, clock: Clock, group: Dist) -> None:
        super().__init__(clock.loop_start, clock.deadline, clock.total_steps)
        self._group = group
        self._step: int | None = None
        self._answer = (0.0, False)

    def _at(self, step: int) -> tuple[float, bool]:
        if step != self._step:
            here = (Clock.progress(self, step), Clock.finished(self, step)) if self._group.is_main else (0.0, False)
            t = torch.tensor([here[0], float(here[1])], dtype=torch.float64, device=self._group.device)
            dist.broadcast(t, src=0)
            self._step, self._answer = step, (float(t[0]), bool(t[1]))
        return self._answer

    def progress(self, step: int) -> float:
        return self._at(step)[0]

    def finished(self, step: int) -> bool:
        return self._at(step)[1]


@contextlib.contextmanager
def session(device: str = "auto") -> Iterator[Dist]:
    """Yield this process's Dist: under torchrun (WORLD_SIZE > 1) the process group is joined here and left
    afterwards; a group the caller already started is used as it is; otherwise a single process."""
    if dist.is_available() and dist.is_initialized():
        yield _describe(dist.get_backend(), _device_for(dist.get_backend()))
        return
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield Dist()
        return
    if not dist.is_available():
        raise CatsegError("torchrun started several processes, but this PyTorch build has no torch.distributed")
    resolved = resolve_device(device)
    backend = "nccl" if resolved.type == "cuda" else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        if local_rank >= torch.cuda.device_count():
            raise CatsegError(f"LOCAL_RANK {local_rank}: this machine shows {torch.cuda.device_count()} GPUs; start at "
                              "most that many processes per machine (torchrun --nproc-per-node)")
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, timeout=TIMEOUT)
    group = _describe(backend, _device_for(backend))
    quiet = logging.getLogger("catseg")
    level = quiet.level
    if not group.is_main:
        quiet.setLevel(logging.WARNING)  # one log for the run: rank 0's
    log.info("distributed training: %d processes on %d machine(s), backend %s", group.world,
             max(1, group.world // group.local_world), backend)
    try:
        yield group
    finally:
        quiet.setLevel(level)
        dist.destroy_process_group()


def _device_for(backend: str) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


def _describe(backend: str, device: torch.device) -> Dist:
    world = dist.get_world_size()
    return Dist(rank=dist.get_rank(), world=world, local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                local_world=int(os.environ.get("LOCAL_WORLD_SIZE", str(world))), backend=str(backend), device=device)


def torchrun_command(argv: Sequence[str], nproc: int) -> list[str]:
    """Return the torchrun command line that runs `catseg ARGV` (without --nproc) in `nproc` processes of this
    machine (--standalone: a free local rendezvous port)."""
    import sys

    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "catseg",
            *rest]
