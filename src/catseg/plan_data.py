"""What the planner reads from a dataset (image and object sizes, rare and thin classes) and what it returns.

catseg.planner plans the from-scratch UNet and picks the model; catseg.plan_pretrained plans the pretrained
encoder-decoder. Both build on these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from catseg.classes import RARE_SHARE, objects, rare
from catseg.config import TrainConfig
from catseg.data import DatasetInfo
from catseg.images import open_image, read_mask
from catseg.objects import object_widths, typical_width

PLANNED = ("model", "encoder", "encoder_weights", "decoder_width", "precision", "size", "resize", "patch", "window",
           "width", "augment", "lr", "class_weights", "oversample", "try_scales")
# Many classes and small objects (CamVid): the thinnest class's typical object should keep this many input
# pixels of width. Its poles are ~5.4 px wide in 480 px photos: 256 px keeps them ~2.9 px, 160 px ~1.8 px.
THIN_WIDTH_PX = 3.0
# Share of training crops centred on a rare class's pixel, as nnU-Net's oversample_foreground_percent.
OVERSAMPLE = 0.33
WIDTH_SAMPLE = 80  # masks whose objects are measured for their width (the slow part of the statistics)


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
    median_long_side: int = 0  # 0: unknown (taken as the shorter side)


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
                     channels=int(info.channels["count"]) if info.channels else 3,
                     median_long_side=int(np.median([max(s) for s in sizes])))


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


def step_side(config: TrainConfig, size: int) -> int:
    """Return the side of the square one training image costs at working size `size`: the --patch crop under
    --resize scale (given by the user), else the size itself."""
    return min(size, config.patch) if config.patch and config.resize == "scale" else size


def plan_rare(stats: DataStats, given: set[str], reasons: list[str], crops: bool = False) -> dict[str, Any]:
    """Return class weights and rare-class crops for a dataset with rare classes (nothing otherwise). With
    `crops` (training on crops at the photos' own scale) rare-class crops are not planned."""
    changes: dict[str, Any] = {}
    if "class_weights" not in given and (stats.rarest_class_fraction < 0.05 or stats.rare_classes):
        changes["class_weights"] = "auto"
        why = (f"{', '.join(stats.rare_classes)} each under {100 * RARE_SHARE:g}% of pixels" if stats.rare_classes
               else f"the rarest class is {100 * stats.rarest_class_fraction:.1f}% of pixels")
        reasons.append(f"class weights auto: {why}")
    if "loss" not in given and stats.rare_classes:
        reasons.append("loss dice+ce kept: its Dice term weighs every class alike, as class-mean IoU does, where "
                       "cross-entropy alone would favour the common classes")
    if "oversample" not in given and stats.rare_classes and crops:
        reasons.append("oversample off: rare-class crops are for whole-photo training; the crops at the photos' "
                       "own scale are drawn anywhere in the photo")
    elif "oversample" not in given and stats.rare_classes:
        changes["oversample"] = OVERSAMPLE
        reasons.append(f"oversample {OVERSAMPLE:g}: a third of the training crops are centred on a pixel of "
                       f"{', '.join(stats.rare_classes)}, so the rare classes are seen more often")
    return changes
