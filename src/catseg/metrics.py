"""Segmentation scores: confusion matrices, IoU/Dice with dataset-wide and per-image reductions
(calibration and the two-class threshold search are in catseg.calibration).

Conventions shared with the rest of catseg: class ids are 0..K-1, and pixels whose truth equals
`ignore_index` (255) count nowhere. Inputs may be numpy arrays or torch tensors on any device;
the counting happens on the tensor's device with `bincount`, so only K*K numbers (or a few
histogram bins) ever leave the GPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "confusion_matrix",
    "scores",
    "top_confusions",
    "MetricAccumulator",
]


def _as_tensor(x: Any, device: torch.device | None = None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    return t if device is None else t.to(device)


def _device_of(*xs: Any) -> torch.device | None:
    for x in xs:
        if isinstance(x, torch.Tensor):
            return x.device
    return None


def _check_labels(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    """Raise ValueError when a prediction or a non-ignored truth value is not a class id."""
    if num_classes < 1:
        raise ValueError(f"num_classes {num_classes}: must be at least 1")
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
    if pred.is_floating_point() or target.is_floating_point():
        raise ValueError("prediction and target must hold integer class ids, not floats (take argmax first)")
    bad_t = (target != ignore_index) & ((target < 0) | (target >= num_classes))
    if bool(bad_t.any()):
        values = sorted(set(target[bad_t].unique().tolist()))[:10]
        raise ValueError(f"target holds values {values} outside the class ids 0..{num_classes - 1} "
                         f"and the ignore value {ignore_index}")
    bad_p = (pred < 0) | (pred >= num_classes)
    if bool(bad_p.any()):
        values = sorted(set(pred[bad_p].unique().tolist()))[:10]
        raise ValueError(f"prediction holds values {values} outside the class ids 0..{num_classes - 1}")


def _batched_confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                       ignore_index: int) -> torch.Tensor:
    """Return (B, K, K) int64 confusion counts on the inputs' device; inputs are (B, H, W)."""
    k = num_classes
    b = pred.shape[0]
    valid = target != ignore_index
    image = torch.arange(b, device=pred.device).view(b, *([1] * (pred.dim() - 1)))
    idx = image * (k * k) + target.long() * k + pred.long()
    # Ignored pixels go to one spare bin past the end instead of being masked out: no nonzero() sync.
    idx = torch.where(valid, idx, torch.full_like(idx, b * k * k))
    counts = torch.bincount(idx.reshape(-1), minlength=b * k * k + 1)
    return counts[: b * k * k].view(b, k, k)


def confusion_matrix(pred: Any, target: Any, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Return the (K, K) int64 confusion matrix, rows = truth, columns = prediction.

    `pred` and `target` are (H, W) or (B, H, W) integer arrays or tensors (mixed is fine; a numpy
    input moves to the tensor's device). Pixels whose target is `ignore_index` are not counted.
    Raises ValueError for mismatched shapes or values that are not class ids.
    """
    device = _device_of(pred, target)
    p, t = _as_tensor(pred, device), _as_tensor(target, device)
    _check_labels(p, t, num_classes, ignore_index)
    cm = _batched_confusion(p.reshape(1, -1), t.reshape(1, -1), num_classes, ignore_index)[0]
    return cm.cpu().numpy().astype(np.int64)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _nanmean(x: np.ndarray, axis: int | None = None) -> Any:
    """np.nanmean without the 'mean of empty slice' warning: all-NaN gives NaN quietly."""
    x = np.asarray(x, dtype=np.float64)
    finite = ~np.isnan(x)
    total = np.where(finite, x, 0.0).sum(axis=axis)
    count = finite.sum(axis=axis)
    return _ratio(total, count) if axis is not None else (float(total / count) if count else math.nan)


def scores(cm: np.ndarray, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Return per-class and mean scores of a (K, K) confusion matrix (rows = truth).

    Keys: `classes` (names), per-class float64 arrays `iou` = TP/(TP+FP+FN), `dice` =
    2TP/(2TP+FP+FN), `precision` = TP/(TP+FP), `recall` = TP/(TP+FN); floats `miou`, `mdice`
    (NaN-ignoring means over classes, NaN if every class is NaN) and `pixel_accuracy` (correct /
    counted pixels). A score whose denominator is zero is NaN, not 0 or 1: a class absent from both
    truth and prediction has no IoU, and averaging it in as 0 or 1 would distort the mean.
    """
    cm = np.asarray(cm, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square (K, K), got shape {cm.shape}")
    k = cm.shape[0]
    names = _class_names(k, class_names)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    iou = _ratio(tp, tp + fp + fn)
    dice = _ratio(2 * tp, 2 * tp + fp + fn)
    total = cm.sum()
    return {
        "classes": names,
        "iou": iou,
        "dice": dice,
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "miou": _nanmean(iou),
        "mdice": _nanmean(dice),
        "pixel_accuracy": float(tp.sum() / total) if total else math.nan,
    }


def top_confusions(cm: np.ndarray, class_names: Sequence[str], count: int = 5) -> list[dict[str, Any]]:
    """Return the `count` largest mistakes of a (K, K) confusion matrix (rows = truth), largest share first:
    {"truth", "predicted", "pixels", "share"}, where share is the part of the true class's counted pixels
    predicted as the other class (a rare class mistaken for a common one ranks by its own loss)."""
    cm = np.asarray(cm, dtype=np.int64)
    rows = cm.sum(axis=1, keepdims=True)
    share = _ratio(cm, np.broadcast_to(rows, cm.shape))
    share[np.diag_indices_from(share)] = np.nan
    share[cm == 0] = np.nan
    order = [int(i) for i in np.argsort(-np.nan_to_num(share, nan=-1.0), axis=None, kind="stable")[:count]]
    k = cm.shape[0]
    return [{"truth": str(class_names[i // k]), "predicted": str(class_names[i % k]), "pixels": int(cm.flat[i]),
             "share": float(share.flat[i])} for i in order if not np.isnan(share.flat[i])]


def _class_names(num_classes: int, class_names: Sequence[str] | None) -> list[str]:
    if class_names is None:
        return [f"class_{i}" for i in range(num_classes)]
    names = [str(n) for n in class_names]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names {names} for {num_classes} classes: give one name per class")
    if len(set(names)) != len(names):
        raise ValueError(f"class names {names} repeat a name: each class needs its own")
    return names


def _json_float(x: Any) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


class MetricAccumulator:
    """Collects dataset-wide and per-image IoU/Dice over an evaluation set.

    Two reductions, because they answer different questions:
    - `dataset`: one confusion matrix summed over every pixel of every image, then scored. Large
      images and large objects weigh more.
    - `per_image`: each image scored on its own (a class absent from an image's truth and prediction
      is NaN there), then per class the NaN-ignoring mean over images; `miou` is the mean over images
      of each image's mIoU (images where every class is NaN are skipped). Every image weighs the same.
    """

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes {num_classes}: must be at least 1")
        self.num_classes = num_classes
        self.class_names = _class_names(num_classes, class_names)
        self.ignore_index = ignore_index
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        self._names: list[str] = []
        self._iou: list[np.ndarray] = []
        self._dice: list[np.ndarray] = []
        self._acc: list[float] = []

    @property
    def num_images(self) -> int:
        return len(self._names)

    def update(self, pred: Any, target: Any, name: str | None = None) -> None:
        """Add ONE image: `pred`, `target` are (H, W) (or (1, H, W)) class ids; `name` labels its row."""
        device = _device_of(pred, target)
        p, t = _as_tensor(pred, device), _as_tensor(target, device)
        if p.dim() == 3 and p.shape[0] == 1:
            p = p[0]
        if t.dim() == 3 and t.shape[0] == 1:
            t = t[0]
        if p.dim() != 2:
            raise ValueError(f"update takes one (H, W) image, got shape {tuple(p.shape)}: use update_batch for (B, H, W)")
        self.update_batch(p[None], t[None], None if name is None else [name])

    def update_batch(self, preds: Any, targets: Any, names: Sequence[str] | None = None) -> None:
        """Add B images at once: `preds`, `targets` are (B, H, W); each image is scored on its own."""
        device = _device_of(preds, targets)
        p, t = _as_tensor(preds, device), _as_tensor(targets, device)
        if p.dim() != 3:
            raise ValueError(f"update_batch takes (B, H, W) class ids, got shape {tuple(p.shape)}")
        if names is not None and len(names) != p.shape[0]:
            raise ValueError(f"{len(names)} names for a batch of {p.shape[0]} images")
        _check_labels(p, t, self.num_classes, self.ignore_index)
        cms = _batched_confusion(p, t, self.num_classes, self.ignore_index).cpu().numpy().astype(np.int64)
        for i, cm in enumerate(cms):
            s = scores(cm, self.class_names)
            self.confusion += cm
            self._names.append(str(self.num_images) if names is None else str(names[i]))
            self._iou.append(s["iou"])
            self._dice.append(s["dice"])
            self._acc.append(s["pixel_accuracy"])

    def _per_image(self) -> dict[str, Any]:
        k = self.num_classes
        iou = np.array(self._iou).reshape(-1, k)
        dice = np.array(self._dice).reshape(-1, k)
        class_iou = _nanmean(iou, axis=0)
        class_dice = _nanmean(dice, axis=0)
        return {
            "miou": _json_float(_nanmean(_nanmean(iou, axis=1))),
            "mdice": _json_float(_nanmean(_nanmean(dice, axis=1))),
            "pixel_accuracy": _json_float(_nanmean(np.array(self._acc))),
            "per_class": {n: {"iou": _json_float(class_iou[c]), "dice": _json_float(class_dice[c])}
                          for c, n in enumerate(self.class_names)},
        }

    def summary(self) -> dict[str, Any]:
        """Return a JSON-safe dict (NaN written as None) of both reductions and the confusion matrix.

        Shape: {"num_images", "classes", "dataset": {"miou", "mdice", "pixel_accuracy",
        "per_class": {name: {"iou", "dice", "precision", "recall"}}}, "per_image": {same keys, iou and dice
        per class}, "confusion_matrix": [[...]] (rows = truth), "top_confusions": see top_confusions}.
        """
        s = scores(self.confusion, self.class_names)
        dataset = {
            "miou": _json_float(s["miou"]),
            "mdice": _json_float(s["mdice"]),
            "pixel_accuracy": _json_float(s["pixel_accuracy"]),
            "per_class": {n: {"iou": _json_float(s["iou"][c]), "dice": _json_float(s["dice"][c]),
                              "precision": _json_float(s["precision"][c]), "recall": _json_float(s["recall"][c])}
                          for c, n in enumerate(self.class_names)},
        }
        return {
            "num_images": self.num_images,
            "classes": list(self.class_names),
            "dataset": dataset,
            "per_image": self._per_image(),
            "confusion_matrix": self.confusion.tolist(),
            "top_confusions": top_confusions(self.confusion, self.class_names),
        }

    def state(self) -> dict[str, Any]:
        """Return everything this accumulator counted, JSON-safe (NaN as None), for `from_states`: the confusion
        matrix and each image's name, per-class IoU and Dice and pixel accuracy."""
        return {
            "confusion_matrix": self.confusion.tolist(),
            "images": [{"image": n, "iou": [_json_float(v) for v in iou], "dice": [_json_float(v) for v in dice],
                        "pixel_accuracy": _json_float(acc)}
                       for n, iou, dice, acc in zip(self._names, self._iou, self._dice, self._acc)],
        }

    @classmethod
    def from_states(cls, states: Sequence[dict[str, Any]], num_classes: int, class_names: Sequence[str] | None = None,
                    ignore_index: int = 255) -> MetricAccumulator:
        """Return one accumulator holding the images of several `state()`s in order, as if one accumulator had
        seen them all: its summary and rows equal that accumulator's exactly."""
        merged = cls(num_classes, class_names, ignore_index)
        nan = lambda v: math.nan if v is None else float(v)  # noqa: E731
        for state in states:
            cm = np.asarray(state["confusion_matrix"], dtype=np.int64)
            if cm.shape != (num_classes, num_classes):
                raise ValueError(f"confusion matrix of shape {cm.shape} for {num_classes} classes")
            merged.confusion += cm
            for row in state["images"]:
                merged._names.append(str(row["image"]))
                merged._iou.append(np.array([nan(v) for v in row["iou"]], dtype=np.float64))
                merged._dice.append(np.array([nan(v) for v in row["dice"]], dtype=np.float64))
                merged._acc.append(nan(row["pixel_accuracy"]))
        return merged

    def per_image_rows(self) -> list[dict[str, Any]]:
        """Return one row per image for a CSV: `image`, `miou`, `pixel_accuracy`, `iou_<class>` (None = NaN)."""
        rows = []
        for name, iou, acc in zip(self._names, self._iou, self._acc):
            row: dict[str, Any] = {"image": name, "miou": _json_float(_nanmean(iou)), "pixel_accuracy": _json_float(acc)}
            row.update({f"iou_{n}": _json_float(iou[c]) for c, n in enumerate(self.class_names)})
            rows.append(row)
        return rows


