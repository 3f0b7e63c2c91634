"""One training step, one validation pass, and the clean-up choice: the pieces fit() repeats."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from catseg.inference import sliding_window, window_starts
from catseg.loading import AugmentedDataset, CachedSample, normalise, stack_batch
from catseg.losses import SegmentationLoss
from catseg.metrics import CalibrationAccumulator, MetricAccumulator, ThresholdSearch
from catseg.postprocess import Postprocess, choose_postprocess
from catseg.runtime import autocast


@dataclass
class StepContext:
    """What the step functions share, so each stays short."""

    model: torch.nn.Module
    loss_fn: SegmentationLoss
    device: torch.device
    dtype: torch.dtype
    mean: list[float]
    std: list[float]
    channels_last: bool
    num_classes: int
    ignore_index: int
    scaler: Any = None
    resize: str = "stretch"
    patch: int = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of normalised (B, C, H, W) inputs, in the run's precision and memory layout."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.dtype):
            return self.model(x)

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        return normalise(images.to(self.device, non_blocking=True), self.mean, self.std)


def train_step(ctx: StepContext, optimizer: torch.optim.Optimizer, images: torch.Tensor, masks: torch.Tensor) -> float:
    logits = ctx.forward(ctx.inputs(images))
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


@torch.inference_mode()
def validate(ctx: StepContext, samples: Sequence[CachedSample], classes: Sequence[str], batch_size: int) -> dict[str, Any]:
    ctx.model.eval()
    metrics = MetricAccumulator(ctx.num_classes, list(classes), ctx.ignore_index)
    calibration = CalibrationAccumulator()
    thresholds = ThresholdSearch() if ctx.num_classes == 2 else None
    loss_sum, count = 0.0, 0
    for images, masks in validation_batches(samples, batch_size, ctx.resize):
        y = masks.to(ctx.device)
        logits = _logits(ctx, images)
        loss_sum += float(ctx.loss_fn(logits, y)) * len(images)
        count += len(images)
        probs = logits.softmax(1)
        metrics.update_batch(probs.argmax(1), y)
        calibration.update(probs, y, ctx.ignore_index)
        if thresholds is not None:
            thresholds.update(probs[:, 1], y, ctx.ignore_index)
    ctx.model.train()
    summary = metrics.summary()["dataset"]  # NaN is None there (a class absent from prediction and truth)
    out = {"val_loss": loss_sum / max(1, count), "val_miou": nan_if_none(summary["miou"]), "val_ece": calibration.ece()}
    for name in classes:
        out[f"val_iou_{name}"] = nan_if_none(summary["per_class"][name]["iou"])
    if thresholds is not None:
        out["threshold"], out["val_iou_at_threshold"] = thresholds.best()
    return out


@torch.inference_mode()
def choose_finish(ctx: StepContext, samples: Sequence[CachedSample], threshold: float | None
                  ) -> tuple[bool, Postprocess, dict[str, float]]:
    """Return (mirror TTA on?, mask clean-up, every candidate's mIoU), chosen on the validation photos at the
    working scale. Mirroring is kept when averaging with the flipped photo raises validation mIoU; the
    clean-up is then chosen on those predictions. Doing nothing wins ties."""
    ctx.model.eval()
    preds: dict[bool, list[np.ndarray]] = {False: [], True: []}
    truths = []
    for images, masks in validation_batches(samples, 8, ctx.resize):
        plain = _logits(ctx, images).softmax(1)
        both = (plain + _logits(ctx, images.flip(2)).softmax(1).flip(-1)) / 2  # images are (B, H, W, C)
        for flip, probs in ((False, plain), (True, both)):
            labels = (probs[:, 1] >= threshold) if ctx.num_classes == 2 and threshold is not None else probs.argmax(1)
            preds[flip] += list(labels.to(torch.uint8).cpu().numpy())
        truths += list(masks.numpy().astype(np.uint8))
    ctx.model.train()
    plain_cleanup, plain_tried = choose_postprocess(preds[False], truths, ctx.num_classes, ctx.ignore_index)
    flip_cleanup, flip_tried = choose_postprocess(preds[True], truths, ctx.num_classes, ctx.ignore_index)
    tried = {**plain_tried, **{f"mirror-tta+{k}" if k != "none" else "mirror-tta": v for k, v in flip_tried.items()}}
    if max(flip_tried.values()) > max(plain_tried.values()) + 1e-4:
        return True, flip_cleanup, tried
    return False, plain_cleanup, tried


def _logits(ctx: StepContext, images: torch.Tensor) -> torch.Tensor:
    """Return float (B, K, H, W) logits of stacked cached squares (stretch), or of one photo of its own shape
    covered by overlapping windows as at prediction (scale)."""
    if ctx.resize == "stretch":
        return ctx.forward(ctx.inputs(images)).float()
    return sliding_window(ctx.forward, ctx.inputs(images)[0], ctx.patch)[None]


def validation_batches(samples: Sequence[CachedSample], batch_size: int,
                        resize: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images, masks): stacked squares under stretch, one photo at a time under scale."""
    step = batch_size if resize == "stretch" else 1
    for start in range(0, len(samples), step):
        yield stack_batch(samples[start:start + step])


def nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else float(value)


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
                 warmup: int = 2, repeats: int = 5) -> float:
    """Return the median seconds of `repeats` training steps on one batch, after `warmup` untimed steps
    (allocations, kernel choice, thread pool). Timing two steps after one warm-up was seen to be off by
    45% on a 2-core CPU; the median of five is steady."""
    def timed() -> float:
        start = time.perf_counter()
        train_step(ctx, optimizer, images, masks)
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for _ in range(warmup):
        timed()
    return float(np.median([timed() for _ in range(repeats)]))


def estimate_epoch_seconds(ctx: StepContext, dataset: AugmentedDataset, val_cache: Sequence[CachedSample],
                           batch_size: int, steps_per_epoch: int) -> float:
    """Return the seconds one epoch (training + validation) should take, measured on a copy of the model
    so the measurement does not touch the real weights."""
    probe = copy.deepcopy(ctx.model)
    probe_ctx = StepContext(probe, ctx.loss_fn, ctx.device, ctx.dtype, ctx.mean, ctx.std, ctx.channels_last,
                            ctx.num_classes, ctx.ignore_index, None, ctx.resize, ctx.patch)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=0.0)
    n = min(len(dataset), batch_size)
    batch = [dataset[i] for i in range(n)]
    images, masks = torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])
    seconds = step_seconds(probe_ctx, optimizer, images, masks, warmup=1, repeats=3) * (batch_size / n)
    del probe, optimizer
    # A forward pass costs about a third of a training step; under scale each photo is several windows.
    if ctx.resize == "stretch":
        windows = len(val_cache)
    else:
        windows = sum(len(window_starts(s.mask.shape[0], ctx.patch, 0.5))
                      * len(window_starts(s.mask.shape[1], ctx.patch, 0.5)) for s in val_cache)
    val_seconds = windows / batch_size * seconds / 3
    return steps_per_epoch * seconds + val_seconds
