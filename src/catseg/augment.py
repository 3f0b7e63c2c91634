"""Joint image/mask augmentation (albumentations) on cached samples, and the training Dataset that applies it.

Rare classes (catseg.classes.rare) can be seen more often: with `oversample` p, a share p of the samples
is first cut to a window around a pixel of a rare class present in it, as nnU-Net's
oversample_foreground_percent does, and then augmented as usual.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence

# albumentations asks the internet for its latest version at import unless told not to; catseg must
# work offline and never touch the network unasked.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from catseg.cache import CachedSample  # noqa: E402
from catseg.classes import rare  # noqa: E402
from catseg.preprocess import Preprocess, model_input  # noqa: E402

# The cache keeps images a little larger than the training size so that scale-crop augmentation
# zooms into real detail instead of up-sampling an already shrunk image.
_CACHE_SCALE = {"none": 1.0, "light": 1.25, "strong": 1.5}
# OpenCV transforms take at most 128 channels; wider band images are augmented in slices of this many
# bands, each with the same random draw, so every band moves the same way.
_BAND_SLICE = 64
# Side of the window cut around a rare pixel, as a share of the cached sample's sides: a zoom of at most
# 1.7x, so rare small objects also grow a little.
FOCUS_SIDE = (0.6, 1.0)

log = logging.getLogger(__name__)



def cache_side(size: int, augment: str) -> int:
    """Return the cached side (stretch) or shorter side (scale) for a training size and augmentation."""
    return int(round(size * _CACHE_SCALE[augment]))



def build_augmentation(pre: Preprocess, augment: str, ignore_index: int, size: int | None = None) -> A.Compose:
    """Return the joint image/mask augmentation for a level: none, light or strong.

    `stretch`: the cached square is cropped at a random scale and resized to size x size.
    `scale`: the cached image (shorter side `size` times the cache factor) is rescaled around the
    working scale, then a patch x patch window is cut from it, padded where the image is smaller.
    Geometric transforms fill new mask pixels with the ignore value, so padding never teaches the
    model that the border is background.
    """
    if augment not in _CACHE_SCALE:
        raise ValueError(f"unknown augmentation level {augment!r}")
    size = size or pre.size
    patch = pre.patch
    if pre.whole_image:
        geometry = {
            "none": [A.Resize(size, size)],
            "light": [A.RandomResizedCrop((size, size), scale=(0.5, 1.0), ratio=(0.8, 1.25))],
            "strong": [A.Affine(scale=(0.8, 1.2), rotate=(-20, 20), translate_percent=(-0.05, 0.05), p=0.7,
                                fill=0, fill_mask=ignore_index),
                       A.RandomResizedCrop((size, size), scale=(0.35, 1.0), ratio=(0.75, 1.33))],
        }[augment]
    else:
        cached = _CACHE_SCALE[augment]
        low, high = {"none": (1.0, 1.0), "light": (0.8, 1.25), "strong": (0.7, 1.4)}[augment]
        geometry = [] if augment == "none" else [
            A.RandomScale(scale_limit=(low / cached - 1, high / cached - 1), p=1.0)]
        if augment == "strong":
            geometry.append(A.Affine(rotate=(-20, 20), p=0.5, fill=0, fill_mask=ignore_index))
        geometry += [A.PadIfNeeded(patch, patch, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=ignore_index),
                     A.RandomCrop(patch, patch)]
    photometric = {
        "none": [],
        "light": [A.HorizontalFlip(p=0.5), A.RandomBrightnessContrast(0.15, 0.15, p=0.5)],
        "strong": [A.HorizontalFlip(p=0.5), A.ColorJitter(0.25, 0.25, 0.25, 0.05, p=0.7),
                   A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.GaussNoise(std_range=(0.02, 0.06))], p=0.3),
                   A.ToGray(p=0.05)],
    }[augment]
    if pre.bands:  # colour jitter, blur, noise and grey are RGB-photo ideas; bands get the flips only
        photometric = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)] if augment != "none" else []
    return A.Compose(geometry + photometric)



def rare_class_ids(samples: Sequence[CachedSample], num_classes: int, background: int | None) -> list[int]:
    """Return the classes (not background) under RARE_SHARE of the cached training pixels."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for s in samples:
        counts += np.bincount(s.mask.ravel(), minlength=256)[:num_classes]
    return rare(counts.tolist(), background)


def focus_crop(image: np.ndarray, mask: np.ndarray, focus: Sequence[int], rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
    """Return a window of (image, mask) holding a pixel of one of the `focus` classes present (each present
    class as likely, then any of its pixels), at a random place in the window; the input when none is there."""
    present = [c for c in focus if (mask == c).any()]
    if not present:
        return image, mask
    ys, xs = np.nonzero(mask == present[int(rng.integers(len(present)))])
    pick = int(rng.integers(len(ys)))
    h, w = mask.shape
    side = rng.uniform(*FOCUS_SIDE)
    ch, cw = max(1, round(h * side)), max(1, round(w * side))
    top = int(np.clip(ys[pick] - rng.integers(ch), 0, h - ch))
    left = int(np.clip(xs[pick] - rng.integers(cw), 0, w - cw))
    return image[top:top + ch, left:left + cw], mask[top:top + ch, left:left + cw]


class AugmentedDataset(torch.utils.data.Dataset):
    """Yields (image (S,S,3) uint8 tensor, mask (S,S) int64 tensor) with fresh augmentation per call.

    Normalisation happens on the device, on whole batches, so the loader moves only bytes. With
    `oversample` > 0 and `focus` classes, that share of the samples is cut around a focus pixel first
    (whole-image models only: --resize scale already trains on crops, which this would shrink).
    """

    def __init__(self, samples: Sequence[CachedSample], pre: Preprocess, augment: str, ignore_index: int,
                 seed: int, focus: Sequence[int] = (), oversample: float = 0.0) -> None:
        self.samples = list(samples)
        self.pre, self.size, self.augment, self.ignore_index = pre, pre.size, augment, ignore_index
        self.transform = build_augmentation(pre, augment, ignore_index)
        self.seed = seed
        self.focus = list(focus)
        self.oversample = oversample if self.focus and pre.whole_image else 0.0
        if oversample and not self.oversample:
            log.info("oversample %g: off (%s)", oversample,
                     "no rare class" if not self.focus else "--resize scale trains on crops already")
        self.set_epoch(0)

    def set_size(self, size: int) -> None:
        """Produce samples of another size from now on (progressive resizing); the cache stays as it is."""
        if size != self.size:
            self.size = size
            self.transform = build_augmentation(self.pre, self.augment, self.ignore_index, size)

    def set_epoch(self, epoch: int) -> None:
        """Reseed so that epoch N augments the same way whether or not the run was resumed."""
        self.reseed(self.seed * 100_003 + epoch)

    def reseed(self, seed: int) -> None:
        self.transform.set_random_seed(seed)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.samples[index]
        image, mask = sample.image, sample.mask
        if self.oversample and self.rng.random() < self.oversample:
            image, mask = focus_crop(image, mask, self.focus, self.rng)
        if image.shape[2] > _BAND_SLICE:
            image, mask = self._augment_in_slices(image, mask)
        else:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        # np.require copies only when needed: a memory-mapped cache gives read-only arrays
        image = np.require(model_input(image), requirements=["C", "W"])
        return torch.from_numpy(image), torch.from_numpy(mask.astype(np.int64))

    def _augment_in_slices(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (image, mask) of a wide band image augmented _BAND_SLICE bands at a time with one draw."""
        seed = int(self.transform.random_generator.integers(0, 2**31 - 1))  # follows set_epoch and seed_worker
        parts, given = [], mask
        for start in range(0, image.shape[2], _BAND_SLICE):
            self.transform.set_random_seed(seed)
            out = self.transform(image=np.ascontiguousarray(image[:, :, start:start + _BAND_SLICE]), mask=given)
            parts.append(out["image"].reshape(out["image"].shape[0], out["image"].shape[1], -1))
            mask = out["mask"] if start == 0 else mask
        self.transform.set_random_seed(seed + 1)  # the next sample draws anew
        return np.concatenate(parts, axis=2), mask



def seed_worker(worker_id: int) -> None:
    """Give each loader worker its own augmentation stream derived from the epoch's seed."""
    info = torch.utils.data.get_worker_info()
    if info is not None:
        base = torch.initial_seed() % 2**31
        random.seed(base)
        np.random.seed(base)
        info.dataset.reseed(base)
