"""The run's preprocessing as one frozen object: working size, normalisation, and logits over a whole image.

It travels with the weights (config.json "preprocess"), as timm's pretrained_cfg travels with a model,
and training, validation, prediction and export all call it instead of re-reading loose settings.

Two size policies:
  stretch  the photo is resized to size x size; one forward pass; the logits are resized back.
  scale    the photo is resized so its shorter side is `size` (aspect kept); training takes patch x
           patch crops; prediction runs on window x window windows (window = patch unless set) that
           overlap by half, blended with a Gaussian weight so window edges leave no seams, or on the
           whole working image in one pass when it fits in one window; the logits are resized back.
           Memory stays bounded by the window, whatever the photo's size.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np
import torch

from catseg.bands import resize_bands
from catseg.config import RESIZE

Forward = Callable[[torch.Tensor], torch.Tensor]  # normalised (B, C, h, w) -> logits (B, K, h, w)


@dataclass(frozen=True)
class Preprocess:
    """How a photo becomes model input, and how the model's logits cover the photo again."""

    size: int  # stretch: the side of the square input; scale: the shorter side of the working image
    resize: str = "stretch"  # size policy, one of catseg.config.RESIZE
    patch: int = 0  # scale: side of the training crops (0 = size)
    window: int = 0  # scale: side of the prediction windows (0 = patch)
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)  # per channel, of pixel / 255
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    overlap: float = field(default=0.5, repr=False)  # scale: share of a window its neighbour overlaps
    # Band images (catseg.bands): pixels are divided by pixel_scale (255 for photos, 1 for bands, whose
    # mean and std are in the file's own units), and `preview` names the bands an overlay shows as RGB.
    pixel_scale: float = 255.0
    dtype: str = "uint8"  # of the images the run was trained on
    band_names: tuple[str, ...] = ()
    preview: tuple[int, ...] = ()  # empty for photos

    def __post_init__(self) -> None:
        if self.resize not in RESIZE:
            raise ValueError(f"unknown size policy {self.resize!r}; choose one of {', '.join(RESIZE)}")
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values, std {len(self.std)}")
        object.__setattr__(self, "patch", int(self.patch or self.size))
        object.__setattr__(self, "window", int(self.window or self.patch))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "band_names", tuple(str(v) for v in self.band_names))
        object.__setattr__(self, "preview", tuple(int(v) for v in self.preview))

    @property
    def channels(self) -> int:
        return len(self.mean)

    @property
    def bands(self) -> bool:
        """True for a run on band images (catseg.bands) rather than 8-bit RGB photos."""
        return bool(self.preview)

    @property
    def whole_image(self) -> bool:
        """True when one forward pass sees the whole photo (stretch), False for sliding windows (scale)."""
        return self.resize == "stretch"

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"mean": list(self.mean), "std": list(self.std), "size": self.size,
                               "resize": self.resize, "patch": self.patch}
        if self.window != self.patch:  # runs without their own windows keep the config.json they always had
            doc["window"] = self.window
        if self.bands:  # photo runs keep the config.json they always had
            doc["input"] = {"dtype": self.dtype, "pixel_scale": self.pixel_scale, "band_names": list(self.band_names),
                            "preview": list(self.preview)}
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Preprocess:
        """Return the Preprocess of a config.json "preprocess" entry (runs written since catseg 0.1)."""
        bands = doc.get("input", {})
        return cls(size=int(doc["size"]), resize=str(doc.get("resize", "stretch")),
                   patch=int(doc.get("patch") or doc["size"]), window=int(doc.get("window") or 0),
                   mean=tuple(doc["mean"]), std=tuple(doc["std"]),
                   pixel_scale=float(bands.get("pixel_scale", 255.0)), dtype=str(bands.get("dtype", "uint8")),
                   band_names=tuple(bands.get("band_names", ())), preview=tuple(bands.get("preview", ())))

    def working_size(self, height: int, width: int, size: int | None = None) -> tuple[int, int]:
        """Return the (height, width) a photo is resized to before the model sees it (at `size`, default
        the run's own; test-time scale augmentation asks for others)."""
        return working_size(height, width, size or self.size, self.resize)

    def scaled(self, scale: float) -> Preprocess:
        """Return this policy at `scale` times the working size (test-time scales): under scale, a larger working
        image gets windows larger by the same factor, so a photo predicted in one pass at the working size is
        predicted in one pass at every size (memory still bounded by WINDOW x scale) instead of in several
        overlapping windows, which would cost far more than scale squared."""
        if scale == 1.0:
            return self
        size = max(16, round(self.size * scale))
        if self.whole_image:
            return replace(self, size=size, patch=size, window=size)
        return replace(self, size=size, window=max(self.window, round(self.window * scale)))

    def resize_photo(self, image: np.ndarray, size: int | None = None) -> np.ndarray:
        """Return the photo (H, W, C) uint8 resized to its working size."""
        return resize_image(image, *self.working_size(image.shape[0], image.shape[1], size))

    def normalise(self, images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Return (B, C, H, W) normalised floats from (B, H, W, C) uint8 photos (or float bands), on the images'
        device."""
        x = images.permute(0, 3, 1, 2).to(dtype=torch.float32)
        if self.pixel_scale != 1.0:
            x = x.div_(self.pixel_scale)
        m = torch.tensor(self.mean, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(self.std, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
        return ((x - m) / s).to(dtype)

    def logits(self, forward: Forward, images: torch.Tensor) -> torch.Tensor:
        """Return float (B, K, h, w) logits of (B, h, w, C) uint8 images already at their working size: one
        pass over the batch under stretch, overlapping windows over each image under scale."""
        x = self.normalise(images)
        if self.whole_image:
            return forward(x).float()
        return torch.stack([sliding_window(forward, one, self.window, self.overlap) for one in x])

    def photo_logits(self, forward: Forward, photos: Sequence[np.ndarray], device: torch.device,
                     size: int | None = None) -> list[torch.Tensor]:
        """Return working-scale logits (K, h, w) for each (H, W, C) uint8 photo of any size."""
        resized = [self.resize_photo(photo, size) for photo in photos]
        if self.whole_image:  # every photo is the same square: one batch
            return list(self.logits(forward, _tensor(model_input(np.stack(resized))).to(device)))
        return [self.logits(forward, _tensor(model_input(r[None])).to(device))[0] for r in resized]

    def windows(self, height: int, width: int) -> int:
        """Return how many forward passes cover a working-size image (1 under stretch)."""
        if self.whole_image:
            return 1
        rows, cols = window_starts(height, self.window, self.overlap), window_starts(width, self.window, self.overlap)
        return len(rows) * len(cols)


def working_size(height: int, width: int, size: int, policy: str) -> tuple[int, int]:
    """Return the (height, width) a photo is resized to before the model sees it."""
    if policy == "stretch":
        return size, size
    if policy == "scale":
        factor = size / min(height, width)
        return max(1, round(height * factor)), max(1, round(width * factor))
    raise ValueError(f"unknown size policy {policy!r}; choose one of {', '.join(RESIZE)}")


def model_input(images: np.ndarray) -> np.ndarray:
    """Return images as the loader hands them to torch: uint8 photos as they are, band images as float32
    (after cropping or resizing, so only model-sized arrays are ever expanded)."""
    return images if images.dtype == np.uint8 else np.asarray(images, dtype=np.float32)


def _tensor(images: np.ndarray) -> torch.Tensor:
    """Return a tensor over images; a read-only array (np.asarray of a PIL image, the caller's photo passed
    through unresized) is copied, since torch cannot share memory it may not write."""
    return torch.from_numpy(images if images.flags.writeable else images.copy())


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Return a (height, width, C) uint8 resize: area averaging when shrinking, bilinear when growing."""
    if image.dtype != np.uint8 or image.shape[2] > 4:  # band images: a few bands at a time, in their dtype
        return resize_bands(image, height, width)
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


def sliding_window(forward: Forward, x: torch.Tensor, patch: int, overlap: float = 0.5,
                   batch_size: int = 8) -> torch.Tensor:
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
