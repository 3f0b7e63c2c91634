"""Segmentation scores: confusion matrices, IoU/Dice with dataset-wide and per-image reductions,
calibration error and the two-class threshold search.

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
    "MetricAccumulator",
    "CalibrationAccumulator",
    "ThresholdSearch",
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
        "per_class": {name: {"iou", "dice"}}}, "per_image": {same keys}, "confusion_matrix": [[...]]}.
        """
        s = scores(self.confusion, self.class_names)
        dataset = {
            "miou": _json_float(s["miou"]),
            "mdice": _json_float(s["mdice"]),
            "pixel_accuracy": _json_float(s["pixel_accuracy"]),
            "per_class": {n: {"iou": _json_float(s["iou"][c]), "dice": _json_float(s["dice"][c])}
                          for c, n in enumerate(self.class_names)},
        }
        return {
            "num_images": self.num_images,
            "classes": list(self.class_names),
            "dataset": dataset,
            "per_image": self._per_image(),
            "confusion_matrix": self.confusion.tolist(),
        }

    def per_image_rows(self) -> list[dict[str, Any]]:
        """Return one row per image for a CSV: `image`, `miou`, `pixel_accuracy`, `iou_<class>` (None = NaN)."""
        rows = []
        for name, iou, acc in zip(self._names, self._iou, self._acc):
            row: dict[str, Any] = {"image": name, "miou": _json_float(_nanmean(iou)), "pixel_accuracy": _json_float(acc)}
            row.update({f"iou_{n}": _json_float(iou[c]) for c, n in enumerate(self.class_names)})
            rows.append(row)
        return rows


def _split_probs(probs: Any, target: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (B, K, H, W) float32 probabilities and (B, H, W) target on the same device."""
    p = _as_tensor(probs)
    t = _as_tensor(target, p.device)
    if p.dim() == 3:
        p = p[None]
    if t.dim() == 2:
        t = t[None]
    if p.dim() != 4 or t.shape != (p.shape[0], *p.shape[2:]):
        raise ValueError(f"probabilities {tuple(p.shape)} and target {tuple(t.shape)}: expected "
                         "(B, K, H, W) with (B, H, W), or (K, H, W) with (H, W)")
    return p.float(), t


class CalibrationAccumulator:
    """Accumulates the expected calibration error (ECE) of the top-class confidence.

    Confidences fall into `n_bins` equal bins over [0, 1]; ECE = sum over bins of
    (pixels in bin / all pixels) * |accuracy in bin - mean confidence in bin|. 0 means the model's
    confidence matches how often it is right; values near 1 mean confidently wrong.
    """

    def __init__(self, n_bins: int = 15) -> None:
        if n_bins < 1:
            raise ValueError(f"n_bins {n_bins}: must be at least 1")
        self.n_bins = n_bins
        self._count: torch.Tensor | None = None  # (n_bins,) int64
        self._conf: torch.Tensor | None = None  # (n_bins,) float64 sum of confidences
        self._correct: torch.Tensor | None = None  # (n_bins,) float64 count of correct pixels

    def update(self, probs: Any, target: Any, ignore_index: int = 255) -> None:
        """Add softmax probabilities (B, K, H, W) or (K, H, W) against truth (B, H, W) or (H, W)."""
        p, t = _split_probs(probs, target)
        conf, pred = p.max(dim=1)  # (B, H, W)
        bins = (conf * self.n_bins).long().clamp_(0, self.n_bins - 1)
        # Ignored pixels land in a spare last bin that is dropped: no boolean-mask sync on the GPU.
        bins = torch.where(t != ignore_index, bins, torch.full_like(bins, self.n_bins)).reshape(-1)
        n = self.n_bins + 1
        count = torch.bincount(bins, minlength=n)[:-1]
        conf_sum = torch.bincount(bins, weights=conf.reshape(-1).double(), minlength=n)[:-1]
        correct = torch.bincount(bins, weights=(pred == t).reshape(-1).double(), minlength=n)[:-1]
        if self._count is None:
            self._count, self._conf, self._correct = count, conf_sum, correct
        else:
            dev = self._count.device
            self._count = self._count + count.to(dev)
            self._conf = self._conf + conf_sum.to(dev)
            self._correct = self._correct + correct.to(dev)

    def bins(self) -> dict[str, list[float]]:
        """Return per-bin `count`, `confidence` and `accuracy` (means; None for empty bins), for plots."""
        if self._count is None:
            return {"count": [0] * self.n_bins, "confidence": [None] * self.n_bins, "accuracy": [None] * self.n_bins}
        count = self._count.cpu().numpy()
        return {
            "count": count.tolist(),
            "confidence": [_json_float(v) for v in _ratio(self._conf.cpu().numpy(), count)],
            "accuracy": [_json_float(v) for v in _ratio(self._correct.cpu().numpy(), count)],
        }

    def ece(self) -> float:
        """Return the expected calibration error in [0, 1]; NaN when no pixel was counted."""
        if self._count is None:
            return math.nan
        total = int(self._count.sum())
        if total == 0:
            return math.nan
        return float((self._correct - self._conf).abs().sum().item() / total)


class ThresholdSearch:
    """Finds the foreground-probability cut-off that maximises foreground IoU (two classes).

    Keeps two histograms of the foreground probability, one for truth-foreground (class 1) and one
    for truth-background (class 0) pixels, so the search costs two bincounts per batch and no
    stored predictions. Candidate thresholds are `thresholds`: the `n_bins` points of
    linspace(0, 1) without 0 and 1 (0.01 .. 0.99 for the default 101); a pixel is predicted
    foreground when its probability is >= the threshold.
    """

    def __init__(self, n_bins: int = 101) -> None:
        if n_bins < 3:
            raise ValueError(f"n_bins {n_bins}: must be at least 3")
        self.n_bins = n_bins
        grid = [j / (n_bins - 1) for j in range(n_bins)]
        self.thresholds: list[float] = grid[1:-1]
        # float32 like the probabilities, so `p >= t` (t a Python float) agrees with the binning exactly
        self._edges = torch.tensor(grid, dtype=torch.float32)
        # Entry i counts pixels with exactly i edges <= p; p >= edges[j] iff i >= j + 1.
        self._fg = torch.zeros(n_bins + 1, dtype=torch.int64)
        self._bg = torch.zeros(n_bins + 1, dtype=torch.int64)

    def update(self, probs: Any, target: Any, ignore_index: int = 255) -> None:
        """Add foreground probabilities, shaped like `target` ((B, H, W) or (H, W)), or two-class
        softmax probabilities with a channel axis ((B, 2, H, W) or (2, H, W)), of which channel 1 is used.

        Truth must be 0 (background), 1 (foreground) or `ignore_index`, else ValueError.
        """
        p = _as_tensor(probs)
        t = _as_tensor(target, p.device)
        if p.dim() == t.dim() + 1:
            if p.shape[-3] != 2:
                raise ValueError(f"probabilities {tuple(p.shape)} have {p.shape[-3]} channels: "
                                 "threshold search needs two classes")
            p = p.select(-3, 1)
        if p.shape != t.shape:
            raise ValueError(f"foreground probabilities {tuple(p.shape)} and target {tuple(t.shape)} differ in shape")
        if bool(((t != 0) & (t != 1) & (t != ignore_index)).any()):
            values = sorted(t.unique().tolist())[:10]
            raise ValueError(f"threshold search needs truth 0, 1 or {ignore_index}; got {values}")
        idx = torch.bucketize(p.float().reshape(-1), self._edges.to(p.device), right=True)
        t = t.reshape(-1)
        spare = self.n_bins + 1  # ignored / other-class pixels go past the end and are dropped
        fg = torch.bincount(torch.where(t == 1, idx, spare), minlength=spare + 1)[:spare]
        bg = torch.bincount(torch.where(t == 0, idx, spare), minlength=spare + 1)[:spare]
        # out of place: stays valid when created and updated on either side of torch.inference_mode
        self._fg = self._fg + fg.cpu()
        self._bg = self._bg + bg.cpu()

    def _ious(self) -> np.ndarray:
        """Return foreground IoU at every threshold (NaN where no truth and no predicted foreground)."""
        fg = self._fg.numpy()
        bg = self._bg.numpy()
        # above[j] = pixels with p >= edges[j] = sum of entries j+1 .. end
        fg_above = np.cumsum(fg[::-1])[::-1][1:]
        bg_above = np.cumsum(bg[::-1])[::-1][1:]
        tp = fg_above[1:-1]
        fp = bg_above[1:-1]
        fn = fg.sum() - tp
        return _ratio(tp, tp + fp + fn)

    def iou_at(self, threshold: float) -> float:
        """Return the foreground IoU at `threshold`, which must be one of `thresholds`."""
        j = int(np.argmin(np.abs(np.array(self.thresholds) - threshold)))
        if abs(self.thresholds[j] - threshold) > 1e-6:
            raise ValueError(f"threshold {threshold} is not on the grid of {len(self.thresholds)} thresholds "
                             f"{self.thresholds[0]:.4g}..{self.thresholds[-1]:.4g}")
        return float(self._ious()[j])

    def best(self) -> tuple[float, float]:
        """Return (threshold, foreground IoU) maximising IoU; ties go to the threshold nearest 0.5.

        Gives (0.5, NaN) when no pixel has foreground truth or prediction (nothing to choose on).
        """
        ious = self._ious()
        if np.all(np.isnan(ious)):
            return 0.5, math.nan
        top = np.nanmax(ious)
        candidates = np.flatnonzero(ious == top)
        ts = np.array(self.thresholds)
        j = int(candidates[np.argmin(np.abs(ts[candidates] - 0.5))])
        return float(ts[j]), float(top)
