"""Running a trained model over a whole image: resizing by the run's size policy, and sliding windows.

Two size policies (config.json `preprocess.resize`):
  stretch  the photo is resized to size x size; one forward pass; the logits are resized back.
  scale    the photo is resized so its shorter side is `size` (aspect kept); the model runs on
           patch x patch windows that overlap by half, blended with a Gaussian weight so window
           edges leave no seams; the logits are resized back. Memory stays bounded by the working
           scale, whatever the photo's size.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import cv2
import numpy as np
import torch

RESIZE_POLICIES = ("stretch", "scale")


def working_size(height: int, width: int, size: int, policy: str) -> tuple[int, int]:
    """Return the (height, width) a photo is resized to before the model sees it."""
    if policy == "stretch":
        return size, size
    if policy == "scale":
        factor = size / min(height, width)
        return max(1, round(height * factor)), max(1, round(width * factor))
    raise ValueError(f"unknown size policy {policy!r}; choose one of {', '.join(RESIZE_POLICIES)}")


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Return a (height, width, C) uint8 resize: area averaging when shrinking, bilinear when growing."""
    if image.shape[:2] == (height, width):
        return image
    shrink = height * width < image.shape[0] * image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def window_starts(length: int, window: int, overlap: float) -> list[int]:
    """Return start offsets of windows of `window` pixels covering `length`, overlapping by `overlap`."""
    if length <= window:
        return [0]
    stride = max(1, int(window * (1.0 - overlap)))
    count = math.ceil((length - window) / stride) + 1
    return sorted({round(i * (length - window) / (count - 1)) for i in range(count)})


@functools.lru_cache(maxsize=8)
def gaussian_weight(height: int, width: int) -> torch.Tensor:
    """Return an (H, W) weight peaking at the window centre (sigma = side / 8, as nnU-Net), floored so
    that every pixel keeps some weight."""
    def axis(n: int) -> np.ndarray:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2
        return np.exp(-0.5 * (x / max(1.0, n / 8)) ** 2)

    weight = np.outer(axis(height), axis(width))
    weight = np.maximum(weight / weight.max(), 1e-3)
    return torch.from_numpy(weight.astype(np.float32))


def sliding_window(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, patch: int,
                   overlap: float = 0.5, batch_size: int = 8) -> torch.Tensor:
    """Return logits (K, H, W) float32 for one image x (C, H, W), running `forward` on (B, C, p, p) windows."""
    _, height, width = x.shape
    wh, ww = min(patch, height), min(patch, width)
    boxes = [(y, x0) for y in window_starts(height, wh, overlap) for x0 in window_starts(width, ww, overlap)]
    if len(boxes) == 1:
        return forward(x[None])[0].float()
    weight = gaussian_weight(wh, ww).to(x.device)
    total: torch.Tensor | None = None
    norm = torch.zeros((height, width), device=x.device)
    for start in range(0, len(boxes), batch_size):
        chunk = boxes[start:start + batch_size]
        windows = torch.stack([x[:, y:y + wh, x0:x0 + ww] for y, x0 in chunk])
        logits = forward(windows).float()  # (B, K, wh, ww)
        if total is None:
            total = torch.zeros((logits.shape[1], height, width), device=x.device)
        for (y, x0), out in zip(chunk, logits):
            total[:, y:y + wh, x0:x0 + ww] += out * weight
            norm[y:y + wh, x0:x0 + ww] += weight
    assert total is not None
    return total / norm
