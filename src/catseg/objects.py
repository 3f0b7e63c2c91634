"""Object-level recall by object size: how many pedestrians of each size were found at all.

Pixel IoU hides small objects: a model can miss every distant pedestrian and lose little IoU, because
the near ones hold most of the pedestrian pixels. Here an object is one 8-connected piece of a class in
the true mask (ignored pixels are never part of one), its size is its pixel area in the mask, bucketed
as COCO does (small under 32x32 pixels, medium under 96x96, large beyond), and it counts as found when
at least FOUND_SHARE of its pixels are predicted as its class. Background (catseg.classes) makes no
objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from catseg.classes import objects

SIZE_BUCKETS = (("small", 32 * 32), ("medium", 96 * 96), ("large", None))  # (name, area below which it falls)
FOUND_SHARE = 0.5  # share of an object's pixels that must be predicted as its class for it to count as found


def size_bucket(area: int) -> int:
    """Return the index in SIZE_BUCKETS of an object of `area` pixels."""
    for i, (_, below) in enumerate(SIZE_BUCKETS):
        if below is None or area < below:
            return i
    raise AssertionError("the last bucket has no upper bound")


class ObjectRecall:
    """Counts, per class and size bucket, the true objects and those found, image by image."""

    def __init__(self, classes: Sequence[str], background: int | None, found_share: float = FOUND_SHARE) -> None:
        self.classes = list(classes)
        self.object_classes = objects(self.classes, background)
        self.found_share = found_share
        self.total = np.zeros((len(self.classes), len(SIZE_BUCKETS)), np.int64)
        self.found = np.zeros_like(self.total)

    def update(self, pred: np.ndarray, truth: np.ndarray) -> None:
        """Add one image: (H, W) predicted and true class ids at the same size."""
        if pred.shape != truth.shape:
            raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
        for c in self.object_classes:
            present = truth == c
            if not present.any():
                continue
            count, labels, stats, _ = cv2.connectedComponentsWithStats(present.astype(np.uint8), connectivity=8)
            areas = stats[1:, cv2.CC_STAT_AREA]
            hits = np.bincount(labels[present & (pred == c)], minlength=count)[1:]
            buckets = np.array([size_bucket(int(a)) for a in areas], dtype=np.int64)
            found = hits >= self.found_share * areas
            np.add.at(self.total[c], buckets, 1)
            np.add.at(self.found[c], buckets, found.astype(np.int64))

    def summary(self) -> dict[str, Any]:
        """Return a JSON-safe dict: the buckets, and per class (and for all classes together) per bucket
        {"objects", "found", "recall"} (recall None where there is no object)."""
        def cell(total: int, found: int) -> dict[str, Any]:
            return {"objects": int(total), "found": int(found), "recall": found / total if total else None}

        names = [name for name, _ in SIZE_BUCKETS]
        per_class = {self.classes[c]: {names[b]: cell(self.total[c, b], self.found[c, b]) for b in range(len(names))}
                     for c in self.object_classes}
        overall = {names[b]: cell(self.total[:, b].sum(), self.found[:, b].sum()) for b in range(len(names))}
        return {"found_share": self.found_share,
                "buckets": {name: (f"area < {below} px" if below else f"area >= {SIZE_BUCKETS[-2][1]} px")
                            for name, below in SIZE_BUCKETS},
                "per_class": per_class, "all": overall}


def format_object_recall(doc: dict[str, Any]) -> list[str]:
    """Return the printed table of an ObjectRecall summary: found/objects per class and size."""
    names = list(doc["buckets"])
    width = max([len("all classes")] + [len(c) for c in doc["per_class"]])
    sizes = ", ".join(f"{n} {doc['buckets'][n]}" for n in names)
    title = f"objects found (>= {doc['found_share']:.0%} of an object's pixels predicted as its class), by size ({sizes}):"
    lines = [title, f"  {'class':{width}s} " + " ".join(f"{n:>16s}" for n in names)]
    rows = list(doc["per_class"].items()) + [("all classes", doc["all"])]
    for name, cells in rows:
        lines.append(f"  {name:{width}s} " + " ".join(f"{_cell(cells[n]):>16s}" for n in names))
    return lines


def _cell(cell: dict[str, Any]) -> str:
    if not cell["objects"]:
        return "-"
    return f"{cell['found']}/{cell['objects']} {cell['recall']:.0%}"


def object_widths(mask: np.ndarray, class_ids: Sequence[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Return {class: (widths, areas)} of the objects of each class in one (H, W) mask.

    An object's width is twice the largest distance from one of its pixels to a pixel of another value
    (the diameter of the largest disc inside it): a pole 100 px tall and 4 px wide is 4 px wide, however
    long. The image border is no edge: an object cut by it keeps its width.
    """
    padded = np.pad(mask, 1, mode="edge")
    edge = np.zeros(padded.shape, bool)
    edge[:-1] |= padded[:-1] != padded[1:]
    edge[1:] |= padded[1:] != padded[:-1]
    edge[:, :-1] |= padded[:, :-1] != padded[:, 1:]
    edge[:, 1:] |= padded[:, 1:] != padded[:, :-1]
    # Distance to the nearest edge pixel, +1 because edge pixels themselves belong to their object.
    depth = cv2.distanceTransform((~edge).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1] + 1
    depth = np.minimum(depth, max(mask.shape))  # one value everywhere: no edge, and no object is wider
    out = {}
    for c in class_ids:
        present = mask == c
        if not present.any():
            continue
        count, labels, stats, _ = cv2.connectedComponentsWithStats(present.astype(np.uint8), connectivity=8)
        order = np.argsort(depth[present], kind="stable")
        deepest = np.zeros(count, np.float32)
        deepest[labels[present][order]] = depth[present][order]  # the last write per object is its maximum
        out[c] = (2 * deepest[1:] - 1, stats[1:, cv2.CC_STAT_AREA].astype(np.int64))
    return out


def typical_width(widths: np.ndarray, areas: np.ndarray) -> float:
    """Return the mean width of the objects a class's pixels sit in (objects weighted by their area), so
    the many specks a mask's edges leave hardly count. A mean, not a median: widths come in whole pixels,
    and a median jumps between them from one sample of masks to the next (CamVid's poles: 3 or 5 px)."""
    if not len(widths):
        return float("nan")
    return float(np.sum(widths * areas) / np.sum(areas))
