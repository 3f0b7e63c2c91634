"""Training losses: cross-entropy, soft Dice and their sum, all honouring the ignore value 255."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from catseg.config import LOSSES

__all__ = ["LOSSES", "SegmentationLoss", "class_weights_from_frequency"]

WEIGHT_MODES = ("inverse_sqrt", "inverse", "none")


class SegmentationLoss(nn.Module):
    """Return a scalar loss for logits (B, K, H, W) against class ids (B, H, W).

    `kind`:
    - "ce": `F.cross_entropy` with `ignore_index` and optional `class_weights` (a weighted mean over
      non-ignored pixels). With two classes this is exactly the binary cross-entropy of the logit
      difference z1 - z0, since softmax over two logits is sigmoid(z1 - z0).
    - "dice": 1 - mean over classes of the soft Dice score 2*sum(p*y) + s / (sum(p) + sum(y) + s),
      with p the softmax probabilities and y the one-hot truth, each summed over the whole batch and
      over non-ignored pixels only. Every class takes part: a class with no truth pixels in the
      batch scores s / (sum(p) + s): predicted mass on it is penalised and no mass gives 1. This is
      why `smooth` must be > 0: at 0 such a class would score 0/0, or 0 for any mass at all, however
      small, putting a floor under the loss. Over whole batches of pixels s = 1 barely moves the
      score of a class that is present.
    - "dice+ce": the sum of the two.

    Pixels whose target is `ignore_index` contribute nothing and receive zero gradient; a batch with
    no valid pixel gives 0. The loss is computed in float32 even under `torch.autocast`.
    Target values other than 0..K-1 and `ignore_index` are the caller's bug (masks are checked
    when the dataset is loaded); cross-entropy raises on them.
    """

    def __init__(self, kind: str = "dice+ce", num_classes: int = 2, ignore_index: int = 255,
                 class_weights: Sequence[float] | None = None, smooth: float = 1.0) -> None:
        super().__init__()
        problems = []
        if kind not in LOSSES:
            problems.append(f"loss kind {kind!r}: choose one of {', '.join(LOSSES)}")
        if num_classes < 2:
            problems.append(f"num_classes {num_classes}: the model always has at least 2 classes")
        if not (math.isfinite(smooth) and smooth > 0):
            problems.append(f"smooth {smooth}: must be > 0 so that classes absent from a batch score 1, not 0/0")
        weights = None
        if class_weights is not None:
            weights = [float(w) for w in class_weights]
            if len(weights) != num_classes:
                problems.append(f"{len(weights)} class weights {weights} for {num_classes} classes: give one per class")
            if any(not (math.isfinite(w) and w >= 0) for w in weights) or not any(w > 0 for w in weights):
                problems.append(f"class weights {weights}: need finite values >= 0, at least one positive")
        if problems:
            raise ValueError("; ".join(problems))
        self.kind = kind
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.smooth = float(smooth)
        self.class_weights: torch.Tensor | None
        # A buffer follows .to(device); not persistent, since weights are rebuilt from config.json.
        self.register_buffer("class_weights", None if weights is None else torch.tensor(weights), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits shape {tuple(logits.shape)}: expected (B, {self.num_classes}, H, W)")
        if target.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}: "
                             "expected (B, H, W)")
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits = logits.float()
            target = target.long()
            valid = target != self.ignore_index  # (B, H, W)
            loss = logits.new_zeros(())
            if self.kind in ("ce", "dice+ce"):
                loss = loss + self._cross_entropy(logits, target, valid)
            if self.kind in ("dice", "dice+ce"):
                loss = loss + self._dice(logits, target, valid)
        return loss

    def _cross_entropy(self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        # Sum, then divide by the (weighted) valid count ourselves: F.cross_entropy's own mean is
        # 0/0 = NaN when every pixel is ignored, and this way needs no host sync to check for that.
        weight = None if self.class_weights is None else self.class_weights.to(logits.dtype)
        total = F.cross_entropy(logits, target, weight=weight, ignore_index=self.ignore_index, reduction="sum")
        if weight is None:
            denom = valid.sum().to(total.dtype)
        else:
            safe = torch.where(valid, target, torch.zeros_like(target))
            denom = (weight[safe] * valid).sum()
        return total / denom.clamp_min(torch.finfo(total.dtype).tiny)

    def _dice(self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        mask = valid.unsqueeze(1).to(logits.dtype)  # (B, 1, H, W)
        probs = logits.softmax(dim=1) * mask  # (B, K, H, W)
        safe = torch.where(valid, target, torch.zeros_like(target))  # one_hot would reject 255
        onehot = F.one_hot(safe, self.num_classes).permute(0, 3, 1, 2).to(probs.dtype) * mask
        dims = (0, 2, 3)
        inter = (probs * onehot).sum(dims)  # (K,)
        denom = probs.sum(dims) + onehot.sum(dims)
        score = (2 * inter + self.smooth) / (denom + self.smooth)
        return 1 - score.mean()


def class_weights_from_frequency(pixel_counts: Sequence[int], mode: str = "inverse_sqrt") -> list[float]:
    """Return one cross-entropy weight per class from its training pixel count, with mean 1.

    `mode`: "inverse_sqrt" (w ~ 1/sqrt(count), the gentle default), "inverse" (w ~ 1/count) or
    "none" (all 1). A class with zero pixels gets the largest weight of the counted classes: it is
    the rarest, cross-entropy never sees it in training anyway, and 0 would hide it from a
    validation loss computed with the same weights while infinity would swamp it.
    """
    if mode not in WEIGHT_MODES:
        raise ValueError(f"weight mode {mode!r}: choose one of {', '.join(WEIGHT_MODES)}")
    counts = [int(c) for c in pixel_counts]
    if not counts:
        raise ValueError("no pixel counts given: need one count per class")
    if any(c < 0 for c in counts):
        raise ValueError(f"pixel counts {counts}: must be >= 0")
    if not any(counts):
        raise ValueError(f"pixel counts {counts}: every class has zero pixels, so there is nothing to weight by")
    power = {"inverse_sqrt": 0.5, "inverse": 1.0, "none": 0.0}[mode]
    raw = [c ** -power if c > 0 else math.nan for c in counts]
    top = max(w for w in raw if not math.isnan(w))
    raw = [top if math.isnan(w) else w for w in raw]
    mean = sum(raw) / len(raw)
    return [w / mean for w in raw]
