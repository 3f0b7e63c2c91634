"""Where and in what precision the model runs: device choice, autocast, the forward pass, thread settings."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from catseg.errors import CatsegError

log = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    """Return the torch device for 'auto', 'cpu' or 'cuda'; 'cuda' without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CatsegError("--device cuda: no CUDA GPU is visible to PyTorch. Use --device cpu (or auto).")
    if name not in ("cpu", "cuda"):
        raise CatsegError(f"--device {name!r}: choose auto, cpu or cuda")
    return torch.device(name)


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Return True when the CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated
    and slower than fp32."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """Return the autocast dtype for a --precision value on a device (float32 = no autocast)."""
    if name == "fp32":
        return torch.float32
    if name == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise CatsegError("--precision bf16: this GPU has no bf16 support. Use fp16 or fp32.")
        return torch.bfloat16
    if name == "fp16":
        if device.type != "cuda":
            raise CatsegError("--precision fp16 is for CUDA GPUs; on CPU use bf16 or fp32.")
        return torch.float16
    if name != "auto":
        raise CatsegError(f"--precision {name!r}: choose auto, fp32, bf16 or fp16")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


def precision_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Mixed precision when dtype is not float32; a no-op otherwise."""
    if dtype == torch.float32:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


@contextlib.contextmanager
def intra_op_threads(workers: int, processes: int = 1) -> Iterator[int]:
    """Give torch's intra-op pool the cores the loader workers do not use, yielding that count; the
    process's own setting is restored afterwards, so a library call leaves it as it found it. With several
    `processes` on the machine (torchrun on CPUs), each takes its share of the cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    before = torch.get_num_threads()
    threads = max(1, cores // max(1, processes) - max(0, workers))
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


@dataclass
class Forward:
    """The model's forward pass as catseg runs it everywhere: channels-last memory, the run's precision."""

    model: torch.nn.Module
    device: torch.device
    dtype: torch.dtype = torch.float32  # autocast dtype; float32 = no autocast
    channels_last: bool = True

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits (B, K, H, W) of normalised inputs (B, C, H, W) on self.device."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.dtype):
            return self.model(x)


def default_workers(device: torch.device, processes: int = 1) -> int:
    """Return loader workers for this machine: none on a small CPU box (augmenting cached arrays costs
    about 1% of a CPU step, and a worker would take a core from the model), several on a GPU box. With
    several training `processes` on the machine (torchrun), each gets its share of the cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores = max(1, cores // max(1, processes))
    if device.type == "cuda":
        return max(1, min(8, cores - 1))
    return 0 if cores <= 4 else min(2, cores // 4)
