"""Training-time data: decode and resize every image once into memory, augment on the fly.

Decoding a 1600 px JPEG costs tens of milliseconds; a training step on a batch of 256 px crops
costs about as much per image. Caching the decoded, resized uint8 arrays keeps the loader far
ahead of the model, and augmentation (albumentations, joint image/mask) runs per sample on the
cached arrays.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

# albumentations asks the internet for its latest version at import unless told not to; catseg must
# work offline and never touch the network unasked.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2
import numpy as np
import torch

from catseg.data import DatasetInfo, open_image, oriented_size, read_mask, to_rgb_array
from catseg.errors import CatsegError
from catseg.inference import resize_image, working_size

log = logging.getLogger(__name__)

# The cache keeps images a little larger than the training size so that scale-crop augmentation
# zooms into real detail instead of up-sampling an already shrunk image.
_CACHE_SCALE = {"none": 1.0, "light": 1.25, "strong": 1.5}


@dataclass
class CachedSample:
    """One decoded, resized image and its mask, ready for augmentation."""

    stem: str
    image: np.ndarray  # (S, S, 3) uint8
    mask: np.ndarray  # (S, S) uint8 class ids, ignore value kept


def load_resized(info: DatasetInfo, stem: str, size: int, policy: str = "stretch") -> CachedSample:
    """Return the image and mask of `stem` resized by the size policy (bilinear or area / nearest):
    `stretch` to size x size, `scale` so the shorter side is `size`."""
    image_path = info.image_path(stem)
    mask = read_mask(info.mask_path(stem))
    pil = open_image(image_path, decode=False)
    width, height = oriented_size(pil)
    if (height, width) != mask.shape:
        raise CatsegError(
            f"{image_path}: image is {width}x{height} but its mask {info.mask_path(stem)} is "
            f"{mask.shape[1]}x{mask.shape[0]}. Run `catseg check {info.root}` and re-create the mask."
        )
    out_h, out_w = working_size(height, width, size, policy)
    if pil.format == "JPEG" and height >= 2 * out_h and width >= 2 * out_w:
        # Let libjpeg decode at a reduced scale: several times faster for large photos.
        pil.draft("RGB", (out_w, out_h))
    try:
        image = to_rgb_array(pil)
    except OSError as exc:
        raise CatsegError(f"{image_path}: cannot decode this image ({exc}). Re-export it as JPEG or PNG.") from exc
    image = resize_image(image, out_h, out_w)
    mask = cv2.resize(mask, (out_w, out_h), interpolation=cv2.INTER_NEAREST)
    return CachedSample(stem, np.ascontiguousarray(image), np.ascontiguousarray(mask))


def cache_samples(info: DatasetInfo, stems: Sequence[str], size: int, policy: str = "stretch",
                  threads: int | None = None, disk_dir: Path | None = None) -> list[CachedSample]:
    """Return every (image, mask) pair decoded and resized once; decoding runs in threads
    (Pillow and OpenCV release the GIL while they work).

    With `disk_dir`, each array is written there as .npy and memory-mapped back, so a dataset larger
    than memory is paged in by the operating system (and shared with loader workers) as needed.
    """
    threads = threads or min(8, os.cpu_count() or 1)
    if disk_dir is not None:
        disk_dir.mkdir(parents=True, exist_ok=True)

    def load(index_stem: tuple[int, str]) -> CachedSample:
        sample = load_resized(info, index_stem[1], size, policy)
        return sample if disk_dir is None else _to_disk(sample, disk_dir / f"{index_stem[0]:06d}")

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(load, enumerate(stems)))


def _to_disk(sample: CachedSample, prefix: Path) -> CachedSample:
    np.save(f"{prefix}_image.npy", sample.image)
    np.save(f"{prefix}_mask.npy", sample.mask)
    return CachedSample(sample.stem, np.load(f"{prefix}_image.npy", mmap_mode="r"),
                        np.load(f"{prefix}_mask.npy", mmap_mode="r"))


def cache_fits_in_memory(count: int, side: int, policy: str, share: float = 0.5) -> bool:
    """Return True when `count` cached samples (image + mask bytes) take under `share` of the memory
    available now. Under `scale` the longer side is unknown before decoding; 1.5x the shorter is assumed."""
    per_sample = side * side * 4 * (1.5 if policy == "scale" else 1.0)
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return True
    return count * per_sample < share * available


def cache_side(size: int, augment: str) -> int:
    """Return the cached side (stretch) or shorter side (scale) for a training size and augmentation."""
    return int(round(size * _CACHE_SCALE[augment]))


def build_augmentation(size: int, augment: str, ignore_index: int, policy: str = "stretch",
                       patch: int | None = None) -> A.Compose:
    """Return the joint image/mask augmentation for a level: none, light or strong.

    `stretch`: the cached square is cropped at a random scale and resized to size x size.
    `scale`: the cached image (shorter side `size` times the cache factor) is rescaled around the
    working scale, then a patch x patch window is cut from it, padded where the image is smaller.
    Geometric transforms fill new mask pixels with the ignore value, so padding never teaches the
    model that the border is background.
    """
    if augment not in _CACHE_SCALE:
        raise ValueError(f"unknown augmentation level {augment!r}")
    patch = patch or size
    if policy == "stretch":
        geometry = {
            "none": [A.Resize(size, size)],
            "light": [A.RandomResizedCrop((size, size), scale=(0.5, 1.0), ratio=(0.8, 1.25))],
            "strong": [A.Affine(scale=(0.8, 1.2), rotate=(-20, 20), translate_percent=(-0.05, 0.05), p=0.7,
                                fill=0, fill_mask=ignore_index),
                       A.RandomResizedCrop((size, size), scale=(0.35, 1.0), ratio=(0.75, 1.33))],
        }[augment]
    elif policy == "scale":
        cached = _CACHE_SCALE[augment]
        low, high = {"none": (1.0, 1.0), "light": (0.8, 1.25), "strong": (0.7, 1.4)}[augment]
        geometry = [] if augment == "none" else [
            A.RandomScale(scale_limit=(low / cached - 1, high / cached - 1), p=1.0)]
        if augment == "strong":
            geometry.append(A.Affine(rotate=(-20, 20), p=0.5, fill=0, fill_mask=ignore_index))
        geometry += [A.PadIfNeeded(patch, patch, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=ignore_index),
                     A.RandomCrop(patch, patch)]
    else:
        raise ValueError(f"unknown size policy {policy!r}")
    photometric = {
        "none": [],
        "light": [A.HorizontalFlip(p=0.5), A.RandomBrightnessContrast(0.15, 0.15, p=0.5)],
        "strong": [A.HorizontalFlip(p=0.5), A.ColorJitter(0.25, 0.25, 0.25, 0.05, p=0.7),
                   A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.GaussNoise(std_range=(0.02, 0.06))], p=0.3),
                   A.ToGray(p=0.05)],
    }[augment]
    return A.Compose(geometry + photometric)


class AugmentedDataset(torch.utils.data.Dataset):
    """Yields (image (S,S,3) uint8 tensor, mask (S,S) int64 tensor) with fresh augmentation per call.

    Normalisation happens on the device, on whole batches, so the loader moves only bytes.
    """

    def __init__(self, samples: Sequence[CachedSample], size: int, augment: str, ignore_index: int, seed: int,
                 policy: str = "stretch", patch: int | None = None) -> None:
        self.samples = list(samples)
        self.size, self.augment, self.ignore_index, self.policy, self.patch = size, augment, ignore_index, policy, patch
        self.transform = build_augmentation(size, augment, ignore_index, policy, patch)
        self.seed = seed
        self.set_epoch(0)

    def set_size(self, size: int) -> None:
        """Produce samples of another size from now on (progressive resizing); the cache stays as it is."""
        if size != self.size:
            self.size = size
            self.transform = build_augmentation(size, self.augment, self.ignore_index, self.policy, self.patch)

    def set_epoch(self, epoch: int) -> None:
        """Reseed so that epoch N augments the same way whether or not the run was resumed."""
        self.transform.set_random_seed(self.seed * 100_003 + epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.samples[index]
        out = self.transform(image=sample.image, mask=sample.mask)
        # np.require copies only when needed: a memory-mapped cache gives read-only arrays
        image = np.require(out["image"], dtype=np.uint8, requirements=["C", "W"])
        return torch.from_numpy(image), torch.from_numpy(out["mask"].astype(np.int64))


def seed_worker(worker_id: int) -> None:
    """Give each loader worker its own augmentation stream derived from the epoch's seed."""
    info = torch.utils.data.get_worker_info()
    if info is not None:
        base = torch.initial_seed() % 2**31
        random.seed(base)
        np.random.seed(base)
        info.dataset.transform.set_random_seed(base)


def stack_batch(samples: Sequence[CachedSample]) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (images (B,S,S,3) uint8, masks (B,S,S) int64) of cached samples, unaugmented."""
    images = torch.from_numpy(np.stack([s.image for s in samples]))
    masks = torch.from_numpy(np.stack([s.mask for s in samples]).astype(np.int64))
    return images, masks


def normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Return (B, C, H, W) normalised floats from (B, H, W, C) uint8, on the images' device."""
    x = images.permute(0, 3, 1, 2).to(dtype=torch.float32).div_(255.0)
    m = torch.tensor(mean, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    return ((x - m) / s).to(dtype)
