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

    min_component_fraction: float = 0.0  # foreground pieces smaller than this share of the image become background
    fill_holes: bool = False  # background enclosed by one class becomes that class

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any] | None) -> Postprocess:
        doc = doc or {}
        return cls(float(doc.get("min_component_fraction", 0.0)), bool(doc.get("fill_holes", False)))

    @property
    def active(self) -> bool:
        return self.min_component_fraction > 0 or self.fill_holes

    def describe(self) -> str:
        """Return a short name such as 'drop<0.002+fill-holes' (or 'none')."""
        return _name(self)

    def __call__(self, mask: np.ndarray) -> np.ndarray:
        """Return the cleaned (H, W) uint8 class-id mask (a new array)."""
        out = mask.copy()
        if self.min_component_fraction > 0:
            out = remove_small_components(out, self.min_component_fraction)
        if self.fill_holes:
            out = fill_holes(out)
        return out


def remove_small_components(mask: np.ndarray, min_fraction: float) -> np.ndarray:
    """Return the mask with every connected foreground piece under min_fraction of the image set to 0."""
    out = mask.copy()
    min_area = min_fraction * mask.size
    for class_id in np.unique(mask):
        if class_id == 0:
            continue
        count, labels, stats, _ = cv2.connectedComponentsWithStats((mask == class_id).astype(np.uint8), connectivity=8)
        small = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] < min_area) + 1
        if len(small):
            out[np.isin(labels, small)] = 0
    return out


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Return the mask with background regions that touch no image border and are enclosed by a single
    class given that class.

    One pass per class over the image, whatever the number of regions: a 3x3 dilation of each class
    marks the background regions it touches, and diagonal contacts between two background regions
    (separate under 4-connectivity) count as touching background, which is never filled.
    """
    out = mask.copy()
    count, labels = cv2.connectedComponents((mask == 0).astype(np.uint8), connectivity=4)
    if count <= 2:  # background is one region (or none): nothing enclosed
        return out
    kernel = np.ones((3, 3), np.uint8)
    background = mask == 0
    touches: dict[int, np.ndarray] = {}  # class -> which regions it touches (count,)
    for class_id in np.unique(mask):
        if class_id == 0:
            continue
        ring = cv2.dilate((mask == class_id).astype(np.uint8), kernel).astype(bool) & background
        touches[int(class_id)] = np.bincount(labels[ring], minlength=count) > 0
    # Regions that touch another background region diagonally, or the border, stay background.
    blocked = np.zeros(count, bool)
    for a, b in ((labels[:-1, :-1], labels[1:, 1:]), (labels[:-1, 1:], labels[1:, :-1])):
        both = (a > 0) & (b > 0) & (a != b)
        blocked[a[both]] = True
        blocked[b[both]] = True
    blocked[np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))] = True
    blocked[0] = True  # label 0 is the foreground
    if not touches:
        return out
    classes = np.array(list(touches))
    matrix = np.stack([touches[c] for c in classes])  # (K', count)
    single = (matrix.sum(0) == 1) & ~blocked
    fill = np.zeros(count, mask.dtype)
    fill[single] = classes[matrix[:, single].argmax(0)]
    holes = fill[labels]
    return np.where(holes > 0, holes, out)


def choose_postprocess(predictions: Sequence[np.ndarray], truths: Sequence[np.ndarray], num_classes: int,
                       ignore_index: int, score: Callable[[MetricAccumulator], float] | None = None,
                       ) -> tuple[Postprocess, dict[str, float]]:
    """Return the candidate that scores best on (prediction, truth) pairs, and every candidate's mIoU.

    Doing nothing wins ties, so clean-up is only kept when it helps.
    """
    score = score or (lambda acc: acc.summary()["dataset"]["miou"] or 0.0)
    candidates = [Postprocess()] + [Postprocess(f, False) for f in MIN_FRACTIONS] + [Postprocess(0.0, True)]
    candidates += [Postprocess(f, True) for f in MIN_FRACTIONS]
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
