"""Mask clean-up chosen on the validation split: drop small specks, fill holes.

A run stores the choice in config.json (`postprocess`), and prediction applies it after the
threshold or argmax. It is only kept when it raised validation mIoU, so a dataset whose objects are
small or hollow keeps its masks untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from catseg.metrics import MetricAccumulator

# Candidate speck sizes, as a fraction of the image area.
MIN_FRACTIONS = (0.0005, 0.002, 0.01)


@dataclass(frozen=True)
class Postprocess:
    """What to do to every predicted mask; the default does nothing."""

    min_component_fraction: float = 0.0  # pieces of a class smaller than this share of the image are dropped
    fill_holes: bool = False  # background enclosed by one class becomes that class
    background: int | None = 0  # where dropped pieces go and what holes are; None: no class is background

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any] | None) -> Postprocess:
        doc = doc or {}
        background = doc.get("background", 0)  # runs written before it was stored had class 0 as background
        return cls(float(doc.get("min_component_fraction", 0.0)), bool(doc.get("fill_holes", False)),
                   None if background is None else int(background))

    @property
    def active(self) -> bool:
        return self.min_component_fraction > 0 or (self.fill_holes and self.background is not None)

    def describe(self) -> str:
        """Return a short name such as 'drop<0.002+fill-holes' (or 'none')."""
        return _name(self)

    def __call__(self, mask: np.ndarray) -> np.ndarray:
        """Return the cleaned (H, W) uint8 class-id mask (a new array)."""
        out = mask.copy()
        if self.min_component_fraction > 0:
            out = remove_small_components(out, self.min_component_fraction, self.background)
        if self.fill_holes:
            out = fill_holes(out, self.background)
        return out


def remove_small_components(mask: np.ndarray, min_fraction: float, background: int | None = 0) -> np.ndarray:
    """Return the mask with every connected piece of a class under min_fraction of the image removed.

    A removed piece becomes background; without a background class (every class is real, as CamVid's
    Sky at id 0) each of its pixels takes the class of the nearest pixel that was kept.
    """
    out = mask.copy()
    min_area = min_fraction * mask.size
    dropped = np.zeros(mask.shape, dtype=bool)
    for class_id in np.unique(mask):
        if class_id == background:
            continue
        count, labels, stats, _ = cv2.connectedComponentsWithStats((mask == class_id).astype(np.uint8), connectivity=8)
        small = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] < min_area) + 1
        if len(small):
            dropped |= np.isin(labels, small)
    if background is not None:
        out[dropped] = background
    elif dropped.any() and not dropped.all():
        # Label every kept pixel on its own; each dropped pixel learns which kept pixel is nearest.
        _, nearest = cv2.distanceTransformWithLabels(dropped.astype(np.uint8), cv2.DIST_L2, 3,
                                                     labelType=cv2.DIST_LABEL_PIXEL)
        class_of = np.zeros(int(nearest.max()) + 1, dtype=mask.dtype)
        class_of[nearest[~dropped]] = mask[~dropped]
        out[dropped] = class_of[nearest[dropped]]
    return out


def fill_holes(mask: np.ndarray, background: int | None = 0) -> np.ndarray:
    """Return the mask with background regions that touch no image border and are enclosed by a single
    class given that class (unchanged when no class is background: there are no holes, only classes).

    One pass per class over the image, whatever the number of regions: a 3x3 dilation of each class
    marks the background regions it touches, and diagonal contacts between two background regions
    (separate under 4-connectivity) count as touching background, which is never filled.
    """
    out = mask.copy()
    if background is None:
        return out
    is_background = mask == background
    count, labels = cv2.connectedComponents(is_background.astype(np.uint8), connectivity=4)
    if count <= 2:  # background is one region (or none): nothing enclosed
        return out
    kernel = np.ones((3, 3), np.uint8)
    touches: dict[int, np.ndarray] = {}  # class -> which regions it touches (count,)
    for class_id in np.unique(mask):
        if class_id == background:
            continue
        ring = cv2.dilate((mask == class_id).astype(np.uint8), kernel).astype(bool) & is_background
        touches[int(class_id)] = np.bincount(labels[ring], minlength=count) > 0
    # Regions that touch another background region diagonally, or the border, stay background.
    blocked = np.zeros(count, bool)
    for a, b in ((labels[:-1, :-1], labels[1:, 1:]), (labels[:-1, 1:], labels[1:, :-1])):
        both = (a > 0) & (b > 0) & (a != b)
        blocked[a[both]] = True
        blocked[b[both]] = True
    blocked[np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))] = True
    blocked[0] = True  # label 0 is everything that is not background
    if not touches:
        return out
    classes = np.array(list(touches))
    matrix = np.stack([touches[c] for c in classes])  # (K', count)
    single = (matrix.sum(0) == 1) & ~blocked
    filled = np.zeros(count, bool)
    filled[single] = True
    fill = np.zeros(count, mask.dtype)
    fill[single] = classes[matrix[:, single].argmax(0)]
    return np.where(filled[labels], fill[labels], out)


def choose_postprocess(predictions: Sequence[np.ndarray], truths: Sequence[np.ndarray], num_classes: int,
                       ignore_index: int, score: Callable[[MetricAccumulator], float] | None = None,
                       background: int | None = 0) -> tuple[Postprocess, dict[str, float]]:
    """Return the candidate that scores best on (prediction, truth) pairs, and every candidate's mIoU.

    Doing nothing wins ties, so clean-up is only kept when it helps. Hole filling is only tried where
    a class is background.
    """
    score = score or (lambda acc: acc.summary()["dataset"]["miou"] or 0.0)
    candidates = [Postprocess(background=background)] + [Postprocess(f, False, background) for f in MIN_FRACTIONS]
    if background is not None:
        candidates += [Postprocess(0.0, True, background)] + [Postprocess(f, True, background) for f in MIN_FRACTIONS]
    results: dict[str, float] = {}
    best, best_score = candidates[0], -1.0
    for candidate in candidates:
        acc = MetricAccumulator(num_classes, None, ignore_index)
        for pred, truth in zip(predictions, truths):
            acc.update(candidate(pred), truth)
        value = score(acc)
        results[_name(candidate)] = value
        if value > best_score + 1e-4:
            best, best_score = candidate, value
    return best, results


def _name(p: Postprocess) -> str:
    parts = []
    if p.min_component_fraction:
        parts.append(f"drop<{p.min_component_fraction:g}")
    if p.fill_holes:
        parts.append("fill-holes")
    return "+".join(parts) or "none"
