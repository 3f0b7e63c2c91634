"""One optimisation step, the learning-rate schedule and the clock: the pieces the training loop repeats."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from catseg.config import TrainConfig
from catseg.hardware import Forward
from catseg.losses import SegmentationLoss
from catseg.preprocess import Preprocess


@dataclass
class StepContext:
    """What the step and validation functions share, so each stays short."""

    forward: Forward  # the model, its device, precision and memory layout
    pre: Preprocess  # the run's preprocessing: normalisation and how logits cover an image
    loss_fn: SegmentationLoss
    num_classes: int
    ignore_index: int
    scaler: Any = None  # torch.amp.GradScaler under fp16, else None

    @property
    def model(self) -> torch.nn.Module:
        return self.forward.model

    @property
    def device(self) -> torch.device:
        return self.forward.device


def train_step(ctx: StepContext, optimizer: torch.optim.Optimizer, images: torch.Tensor, masks: torch.Tensor) -> float:
    """Return the loss of one optimisation step on (B, H, W, C) uint8 images and (B, H, W) class ids."""
    logits = ctx.forward(ctx.pre.normalise(images.to(ctx.device, non_blocking=True)))
    loss = ctx.loss_fn(logits.float(), masks.to(ctx.device, non_blocking=True))
    optimizer.zero_grad(set_to_none=True)
    if ctx.scaler is not None:
        ctx.scaler.scale(loss).backward()
        ctx.scaler.step(optimizer)
        ctx.scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def learning_rate(progress: float, peak: float, warmup: float) -> float:
    """Return the learning rate at a point (0..1) of training: linear warm-up, then cosine decay to 1%."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return peak * max(progress / warmup, 0.01)
    t = (progress - warmup) / max(1e-9, 1.0 - warmup)
    return peak * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t)))


def timed_batches(loader: torch.utils.data.DataLoader) -> Iterator[tuple[float, tuple[torch.Tensor, torch.Tensor]]]:
    """Yield (seconds waited for the batch, batch), so the loader's share of the step time is known."""
    it = iter(loader)
    while True:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        yield time.perf_counter() - t0, batch


def step_seconds(ctx: StepContext, optimizer: torch.optim.Optimizer, images: torch.Tensor, masks: torch.Tensor,
                 warmup: int = 2, repeats: int = 5, fastest: bool = False) -> float:
    """Return the median seconds of `repeats` training steps on one batch, after `warmup` untimed steps
    (allocations, kernel choice, thread pool), or with `fastest` the fastest of them. Timing two steps after
    one warm-up was seen to be off by 45% on a 2-core CPU; the median of five is steady for a small model.
    A larger model settles more slowly on a CPU (oneDNN chooses and caches its kernels shape by shape over
    the first steps, more so in bf16): the fastest step after the warm-up is the steadier figure there."""
    def timed() -> float:
        start = time.perf_counter()
        train_step(ctx, optimizer, images, masks)
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for _ in range(warmup):
        timed()
    times = [timed() for _ in range(repeats)]
    return float(min(times) if fastest else np.median(times))


@dataclass
class Clock:
    """When training stops: after `total_steps`, or at `deadline` under a time budget."""

    loop_start: float  # perf_counter() at which the (possibly resumed) loop began, less the time trained before
    deadline: float | None = None
    total_steps: int | None = None

    def progress(self, step: int) -> float:
        """Return how far training is (0..1): by the clock under a time budget, else by steps."""
        if self.deadline is not None:
            return (time.perf_counter() - self.loop_start) / max(1e-9, self.deadline - self.loop_start)
        return step / max(1, self.total_steps or 1)

    def finished(self, step: int) -> bool:
        return ((self.total_steps is not None and step >= self.total_steps)
                or (self.deadline is not None and time.perf_counter() >= self.deadline))

    def elapsed(self) -> float:
        return time.perf_counter() - self.loop_start

    def eta(self, step: int) -> str:
        """Return ', about Xm Ys left' for the per-epoch log line ('' when done)."""
        if self.deadline is not None:
            left = self.deadline - time.perf_counter()
        else:
            left = (self.total_steps - step) * self.elapsed() / max(1, step) if self.total_steps else 0.0
        if left <= 0:
            return ""
        minutes, seconds = divmod(int(left + 0.5), 60)
        return f", about {minutes}m{seconds:02d}s left" if minutes else f", about {seconds}s left"


# ----------------------------------------------------------------------------- helpers
def pretrained_encoder(config: TrainConfig) -> bool:
    """Return whether config's encoder starts from pretrained weights (encoder_weights resolved: not auto)."""
    return config.encoder_weights not in ("none", "", "auto")


def frozen_encoder_bn(config: TrainConfig) -> bool:
    """Return whether the encoder's BatchNorm layers keep their pretrained statistics while training.

    Pets, 10 minutes (a slower day of the 2-core AVX-512 machine, ~31 epochs): pet IoU 0.878 frozen against
    0.860 following each batch of 8; 2 minutes: 0.837 against 0.833. Batches of 8 crops estimate the
    statistics of layers of up to 1152 channels poorly, and ImageNet's are a better normaliser for photos."""
    return config.encoder_bn == "frozen" or (config.encoder_bn == "auto" and pretrained_encoder(config))


def param_groups(model: torch.nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """Return AdamW parameter groups: a pretrained encoder learns at `encoder_lr` times the rate of the
    freshly initialised decoder and head, so the first steps' large gradients do not wash out ImageNet's
    features. Each group's `lr_scale` multiplies the scheduled rate."""
    encoder = getattr(getattr(model, "net", None), "encoder", None)
    if not pretrained_encoder(config) or encoder is None or config.encoder_lr == 1.0:
        return [{"params": list(model.parameters()), "lr_scale": 1.0}]
    own = {id(p) for p in encoder.parameters()}
    rest = [p for p in model.parameters() if id(p) not in own]
    return [{"params": list(encoder.parameters()), "lr_scale": config.encoder_lr},
            {"params": rest, "lr_scale": 1.0}]



def grown_size(config: TrainConfig, progress: float) -> int:
    """Return the training size at a point of training under --size-start: linear growth from size_start
    to size over the first 60%, in steps of 16 pixels."""
    grown = config.size_start + (config.size - config.size_start) * min(1.0, progress / 0.6)
    return min(config.size, max(config.size_start, int(grown) // 16 * 16))
