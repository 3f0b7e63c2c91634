"""How far to trust the probabilities: calibration error (ECE, reliability bins) and, for two classes,
the foreground threshold that maximises IoU.

Same conventions as catseg.metrics: pixels whose truth equals `ignore_index` count nowhere, and the
counting stays on the tensors' device.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from catseg.metrics import _as_tensor, _json_float, _ratio


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

    def state(self) -> dict[str, np.ndarray]:
        """Return the per-bin sums: `count` (int64 pixels), `confidence` and `correct` (float64 sums), zeros
        when nothing was counted. Sums of several accumulators' states make one that saw every pixel."""
        if self._count is None:
            return {"count": np.zeros(self.n_bins, np.int64), "confidence": np.zeros(self.n_bins),
                    "correct": np.zeros(self.n_bins)}
        return {"count": self._count.cpu().numpy().astype(np.int64),
                "confidence": self._conf.cpu().numpy().astype(np.float64),
                "correct": self._correct.cpu().numpy().astype(np.float64)}

    def load_state(self, state: dict[str, Any]) -> None:
        """Replace the sums with a `state()` (arrays or lists)."""
        count = np.asarray(state["count"], dtype=np.int64)
        if count.shape != (self.n_bins,):
            raise ValueError(f"{count.shape[0] if count.ndim else 0} calibration bins for an accumulator of {self.n_bins}")
        self._count = torch.from_numpy(count.copy())
        self._conf = torch.from_numpy(np.asarray(state["confidence"], dtype=np.float64).copy())
        self._correct = torch.from_numpy(np.asarray(state["correct"], dtype=np.float64).copy())

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

    "Foreground" is class 1, whose probability is thresholded. `target` says whose IoU is maximised:
    class 1 (the default: class 0 is background), class 0 (class 1 is background), or None for the mean
    of both (neither is background, as in a cat-versus-dog dataset).

    Keeps two histograms of the foreground probability, one for truth-foreground (class 1) and one
    for truth-background (class 0) pixels, so the search costs two bincounts per batch and no
    stored predictions. Candidate thresholds are `thresholds`: the `n_bins` points of
    linspace(0, 1) without 0 and 1 (0.01 .. 0.99 for the default 101); a pixel is predicted
    foreground when its probability is >= the threshold.
    """

    def __init__(self, n_bins: int = 101, target: int | None = 1) -> None:
        if n_bins < 3:
            raise ValueError(f"n_bins {n_bins}: must be at least 3")
        if target not in (0, 1, None):
            raise ValueError(f"target {target!r}: 0, 1 or None")
        self.n_bins, self.target = n_bins, target
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

    def state(self) -> dict[str, np.ndarray]:
        """Return the two int64 histograms (`fg`, `bg`); summing several searches' states makes one search."""
        return {"fg": self._fg.numpy().copy(), "bg": self._bg.numpy().copy()}

    def load_state(self, state: dict[str, Any]) -> None:
        """Replace the histograms with a `state()`."""
        self._fg = torch.as_tensor(np.asarray(state["fg"], dtype=np.int64)).clone()
        self._bg = torch.as_tensor(np.asarray(state["bg"], dtype=np.int64)).clone()

    def _ious(self) -> np.ndarray:
        """Return the target's IoU at every threshold (NaN where the class is in neither truth nor prediction)."""
        fg = self._fg.numpy()
        bg = self._bg.numpy()
        # above[j] = pixels with p >= edges[j] = sum of entries j+1 .. end
        fg_above = np.cumsum(fg[::-1])[::-1][1:]
        bg_above = np.cumsum(bg[::-1])[::-1][1:]
        tp = fg_above[1:-1]
        fp = bg_above[1:-1]
        fn = fg.sum() - tp
        iou1 = _ratio(tp, tp + fp + fn)
        if self.target == 1:
            return iou1
        tn = bg.sum() - fp  # class 0 is predicted below the threshold
        iou0 = _ratio(tn, bg.sum() + fn)
        return iou0 if self.target == 0 else (iou0 + iou1) / 2

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


def threshold_target(background: int | None) -> int | None:
    """Return the class whose IoU a two-class threshold maximises: the one that is not background."""
    return None if background is None else 1 - background
