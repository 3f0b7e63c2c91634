"""Validation during training, and the choice made on validation at its end (mirror TTA, sizes and clean-up)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from catseg.cache import CachedSample, stack_batch
from catseg.calibration import CalibrationAccumulator, ThresholdSearch, threshold_target
from catseg.metrics import MetricAccumulator
from catseg.postprocess import Postprocess, choose_postprocess
from catseg.preprocess import resize_image
from catseg.steps import StepContext

if TYPE_CHECKING:
    from catseg.distributed import Dist


def validate(ctx: StepContext, samples: Sequence[CachedSample], classes: Sequence[str], batch_size: int,
             dist: Dist | None = None, background: int | None = 0) -> dict[str, Any]:
    """Return the validation loss, mIoU, per-class IoU, ECE and (two classes) the best threshold of ctx.model.
    With `dist` (several processes), each rank scores its own block of `samples` and the counts are summed:
    every rank gets the scores of the whole set, each sample counted once."""
    if dist is not None and dist.enabled:
        dist.sync_buffers(ctx.model)  # every rank validates rank 0's model, the one rank 0 saves
        samples = dist.select(samples)
    return _validate(ctx, samples, classes, batch_size, dist, background)


@torch.inference_mode()
def _validate(ctx: StepContext, samples: Sequence[CachedSample], classes: Sequence[str], batch_size: int,
              dist: Dist | None, background: int | None) -> dict[str, Any]:
    ctx.model.eval()
    metrics = MetricAccumulator(ctx.num_classes, list(classes), ctx.ignore_index)
    calibration = CalibrationAccumulator()
    thresholds = ThresholdSearch(target=threshold_target(background)) if ctx.num_classes == 2 else None
    loss_sum, count = 0.0, 0
    for images, masks in validation_batches(samples, batch_size, ctx.pre.whole_image):
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
    if dist is not None and dist.enabled:
        loss_sum, count = _sum_over_ranks(dist, metrics, calibration, thresholds, loss_sum, count)
    summary = metrics.summary()["dataset"]  # NaN is None there (a class absent from prediction and truth)
    out = {"val_loss": loss_sum / max(1, count), "val_miou": nan_if_none(summary["miou"]), "val_ece": calibration.ece()}
    for name in classes:
        out[f"val_iou_{name}"] = nan_if_none(summary["per_class"][name]["iou"])
    if thresholds is not None:
        out["threshold"], out["val_iou_at_threshold"] = thresholds.best()
    return out


def _sum_over_ranks(dist: Dist, metrics: MetricAccumulator, calibration: CalibrationAccumulator,
                    thresholds: ThresholdSearch | None, loss_sum: float, count: int) -> tuple[float, int]:
    """Replace each accumulator's counts with their sums over the ranks; return the summed loss and count."""
    cal = calibration.state()
    thr = thresholds.state() if thresholds is not None else {"fg": np.zeros(1, np.int64), "bg": np.zeros(1, np.int64)}
    summed = dist.sum([metrics.confusion, cal["count"], cal["confidence"], cal["correct"], thr["fg"], thr["bg"],
                       np.array([loss_sum, count], dtype=np.float64)])
    metrics.confusion = summed[0].astype(np.int64)
    calibration.load_state({"count": summed[1], "confidence": summed[2], "correct": summed[3]})
    if thresholds is not None:
        thresholds.load_state({"fg": summed[4], "bg": summed[5]})
    return float(summed[6][0]), int(summed[6][1])


@dataclass
class FinishChoice:
    """What the finish chose on validation: mirror TTA, the prediction sizes averaged (multiples of the working
    size; (1.0,) = the working size alone), the clean-up, and every candidate's validation mIoU."""

    mirror: bool
    scales: tuple[float, ...]
    cleanup: Postprocess
    tried: dict[str, float]


@torch.inference_mode()
def choose_finish(ctx: StepContext, samples: Sequence[CachedSample], threshold: float | None,
                  background: int | None = 0, scales: Sequence[float] = ()) -> FinishChoice:
    """Choose, on the validation photos, mirror TTA, extra prediction sizes and the clean-up.

    Candidates, cheapest first: the working size alone, or averaged with each of `scales` (the photo also
    predicted that many times larger or smaller, its probabilities resized back), each plain and averaged
    with the mirrored photo; the clean-up is chosen on each candidate's masks. A dearer candidate is kept
    only when it raises validation mIoU, so doing nothing wins ties."""
    ctx.model.eval()
    options = [(1.0,)] + [(1.0, float(s)) for s in scales]
    candidates = [(sizes, flip) for sizes in options for flip in (False, True)]
    preds: dict[tuple[tuple[float, ...], bool], list[np.ndarray]] = {c: [] for c in candidates}
    truths = []
    for images, masks in validation_batches(samples, 8, ctx.pre.whole_image):
        probs = {}
        for scale in {s for sizes in options for s in sizes}:
            plain = _scaled_probs(ctx, images, scale)
            probs[scale, False] = plain
            probs[scale, True] = (plain + _scaled_probs(ctx, images.flip(2), scale).flip(-1)) / 2  # (B, H, W, C)
        for sizes, flip in candidates:
            mean = sum(probs[s, flip] for s in sizes) / len(sizes)
            labels = (mean[:, 1] >= threshold) if ctx.num_classes == 2 and threshold is not None else mean.argmax(1)
            preds[sizes, flip] += list(labels.to(torch.uint8).cpu().numpy())
        truths += list(masks.numpy().astype(np.uint8))
    ctx.model.train()
    best: FinishChoice | None = None
    tried: dict[str, float] = {}
    for sizes, flip in candidates:
        cleanup, scores = choose_postprocess(preds[sizes, flip], truths, ctx.num_classes, ctx.ignore_index,
                                             background=background)
        prefix = "+".join((["mirror-tta"] if flip else []) + ([_scales_name(sizes)] if len(sizes) > 1 else []))
        tried.update({(f"{prefix}+{k}" if k != "none" else prefix) if prefix else k: v for k, v in scores.items()})
        if best is None or max(scores.values()) > max(best.tried.values()) + 1e-4:
            best = FinishChoice(flip, sizes, cleanup, scores)
    assert best is not None
    return FinishChoice(best.mirror, best.scales, best.cleanup, tried)


def _scales_name(sizes: Sequence[float]) -> str:
    return "scales-" + "+".join(f"{s:g}" for s in sizes)


def _scaled_probs(ctx: StepContext, images: torch.Tensor, scale: float) -> torch.Tensor:
    """Return (B, K, H, W) probabilities of cached (B, H, W, C) images predicted at `scale` times their working
    size, as prediction does (the logits resized back to the image, then softmax)."""
    if scale == 1.0:
        return _logits(ctx, images).softmax(1)
    height, width = images.shape[1:3]
    size = max(16, round(height * scale)), max(16, round(width * scale))
    larger = torch.from_numpy(np.stack([resize_image(np.ascontiguousarray(im), *size) for im in images.numpy()]))
    logits = ctx.pre.scaled(scale).logits(ctx.forward, larger.to(ctx.device))
    logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
    return logits.softmax(1)


def _logits(ctx: StepContext, images: torch.Tensor) -> torch.Tensor:
    """Return float (B, K, H, W) logits of cached images at their working size, as prediction computes them."""
    return ctx.pre.logits(ctx.forward, images.to(ctx.device))


def validation_batches(samples: Sequence[CachedSample], batch_size: int,
                       whole_image: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images, masks): stacked squares when the model sees whole images, else one photo at a time."""
    step = batch_size if whole_image else 1
    for start in range(0, len(samples), step):
        yield stack_batch(samples[start:start + step])


def nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else float(value)
