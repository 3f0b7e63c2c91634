"""Choosing training settings from the dataset and the time budget, as nnU-Net plans from the data.

With `--time-budget` and no explicit --size/--width/--augment/--lr/--class-weights, catseg measures
how fast this machine trains each candidate input size and model width, then picks the largest one
that still gets enough optimisation steps in the budget. On a small CPU the number of steps matters
more than resolution: the same 10 minutes spent on a width-16 UNet at 160 px beats a width-32 one at
256 px by a wide margin (see the README). Every choice is printed with its reason, recorded in
config.json (`train.plan`), and any flag the user gives is left alone.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from catseg.config import TrainConfig
from catseg.data import DatasetInfo
from catseg.hardware import Forward, resolve_device, resolve_precision
from catseg.images import open_image, read_mask
from catseg.losses import SegmentationLoss
from catseg.models import create_model
from catseg.preprocess import Preprocess
from catseg.steps import StepContext, step_seconds

log = logging.getLogger(__name__)

# (input size, UNet width), from least to most expensive per step.
CANDIDATES = ((96, 12), (112, 12), (128, 12), (128, 16), (144, 16), (160, 16), (192, 16), (192, 24), (224, 24),
              (256, 32))
# Optimisation steps worth aiming for (batch 8). On the Oxford pet sample with the same 10 minutes of this
# 2-core CPU, pet IoU rose with steps much more than with resolution: 160 px / width 16 (3900 steps) 0.805,
# 128 px / width 16 (5400) 0.824; 192 px / width 16 with 20 minutes (5400 steps) 0.819.
TARGET_STEPS = 5000
# Input pixels the median object should span: beyond that, resolution costs steps and buys little (pets
# fill ~38% of their photos and span ~80 px at 128 px; 160 and 192 px did not score higher).
OBJECT_SPAN = 80
PLANNED = ("size", "width", "augment", "lr", "class_weights")


@dataclass
class DataStats:
    """What the planner needs to know about the training images."""

    images: int
    median_short_side: int
    median_object_fraction: float  # median share of the image covered by one foreground class
    rarest_class_fraction: float  # smallest share of labelled pixels among the classes


@dataclass
class Plan:
    """The chosen settings and why."""

    config: TrainConfig
    reasons: list[str] = field(default_factory=list)
    measured: dict[str, float] = field(default_factory=dict)  # "SIZE/wWIDTH" -> seconds per training step

    def to_json(self) -> dict[str, Any]:
        return {"reasons": self.reasons, "seconds_per_step": self.measured,
                **{name: getattr(self.config, name) for name in PLANNED}}


def data_stats(info: DatasetInfo, stems: list[str], sample: int = 200) -> DataStats:
    """Return image sizes (from headers) and object sizes (from up to `sample` masks)."""
    shorts = [min(open_image(info.image_path(stem), decode=False).size) for stem in stems]
    fractions, counts = [], np.zeros(info.num_classes, dtype=np.int64)
    for stem in stems[:: max(1, len(stems) // sample)]:
        mask = read_mask(info.mask_path(stem))
        hist = np.bincount(mask.ravel(), minlength=256)[: info.num_classes]
        counts += hist
        fractions += [h / mask.size for h in hist[1:] if h > 0]
    labelled = counts.sum() or 1
    return DataStats(len(stems), int(np.median(shorts)), float(np.median(fractions)) if fractions else 0.0,
                     float(counts.min() / labelled))


def seconds_per_step(config: TrainConfig, size: int, width: int, num_classes: int, repeats: int = 5) -> float:
    """Return the measured seconds of one training step (the real train_step: normalise, forward, loss,
    backward, AdamW) at this size and width, on the configured device and precision, with random data."""
    device = resolve_device(config.device)
    dtype = resolve_precision(config.precision, device)
    torch.manual_seed(0)
    model = create_model("unet", 3, num_classes, width=width, depth=config.depth, upsample=config.upsample)
    model.to(device, memory_format=torch.channels_last).train()
    ctx = StepContext(Forward(model, device, dtype), Preprocess(size), SegmentationLoss(config.loss, num_classes).to(device),
                      num_classes, 255)
    images = torch.randint(0, 256, (config.batch_size, size, size, 3), dtype=torch.uint8)
    masks = torch.randint(0, num_classes, (config.batch_size, size, size))
    return step_seconds(ctx, torch.optim.AdamW(model.parameters(), lr=1e-4), images, masks, repeats=repeats)


def plan_training(config: TrainConfig, info: DatasetInfo, train_stems: list[str], given: set[str]) -> Plan:
    """Return settings for `config.time_budget` on this machine, changing only what the user did not give."""
    budget = config.time_budget_s
    if budget is None or config.model != "unet":
        return Plan(config, ["no planning: it needs --time-budget and the unet model"])
    stats = data_stats(info, train_stems)
    reasons = [f"{stats.images} training images, median shorter side {stats.median_short_side}px, median object "
               f"{100 * stats.median_object_fraction:.1f}% of the image, rarest class "
               f"{100 * stats.rarest_class_fraction:.1f}% of labelled pixels"]
    steps_per_epoch = max(1, stats.images // config.batch_size)
    # Validation and caching take part of the budget; training gets about 85% of it.
    train_seconds = 0.85 * budget
    floor = 224 if stats.median_object_fraction < 0.02 else 96  # tiny objects need resolution
    # No point enlarging photos beyond their own size, nor objects far beyond OBJECT_SPAN pixels.
    enough = 16 * round(OBJECT_SPAN / math.sqrt(max(stats.median_object_fraction, 1e-4)) / 16)
    ceiling = max(floor, min(stats.median_short_side, enough))
    if ceiling < min(stats.median_short_side, 256):
        reasons.append(f"sizes up to {ceiling}px: the median object spans about {OBJECT_SPAN}px there; more "
                       "resolution would cost steps")
    sizes = [config.size] if "size" in given else None
    widths = [config.width] if "width" in given else None
    candidates = [(s, w) for s, w in CANDIDATES
                  if (sizes is None or s in sizes) and (widths is None or w in widths) and floor <= s <= ceiling]
    if not candidates:
        candidates = [(config.size if sizes else min(ceiling, 256), config.width if widths else 16)]
    # Cheapest first: stop at the first candidate that misses the step target, so the probes themselves cost
    # little (the expensive sizes, which would take seconds per step, are never run on a short budget).
    measured: dict[str, float] = {}
    chosen = candidates[0]
    for size, width in candidates:
        seconds = seconds_per_step(config, size, width, info.num_classes)
        measured[f"{size}/w{width}"] = round(seconds, 4)
        if train_seconds / seconds < TARGET_STEPS:
            break
        chosen = (size, width)
    size, width = chosen
    steps = int(train_seconds / measured[f"{size}/w{width}"])
    epochs = steps / steps_per_epoch
    reasons.append(f"size {size}px, width {width}: about {steps} steps ({epochs:.0f} epochs) fit in "
                   f"{config.time_budget}; the largest model that gets {TARGET_STEPS} steps"
                   + ("" if steps >= TARGET_STEPS else " (none did: the smallest candidate)"))
    changes: dict[str, Any] = {}
    if "size" not in given:
        changes["size"] = size
    if "width" not in given:
        changes["width"] = width
    if "augment" not in given:
        changes["augment"] = "strong" if epochs >= 60 and stats.images < 2000 else "light"
        reasons.append(f"augment {changes['augment']}: {epochs:.0f} epochs over {stats.images} images "
                       + ("would over-fit without it" if changes["augment"] == "strong" else "is few enough"))
    if "lr" not in given:
        changes["lr"] = 2e-3 if width <= 16 else 1e-3
        reasons.append(f"lr {changes['lr']:g}: narrow UNets with BatchNorm train well at a higher rate")
    if "class_weights" not in given and stats.rarest_class_fraction < 0.05:
        changes["class_weights"] = "auto"
        reasons.append(f"class weights auto: the rarest class is {100 * stats.rarest_class_fraction:.1f}% of pixels")
    return Plan(replace(config, **changes), reasons, measured)
