"""Training-time data: decode and resize every image once, into memory or memory-mapped files.

Decoding a 1600 px JPEG costs tens of milliseconds; a training step on a batch of 256 px crops
costs about as much per image. Caching the decoded, resized uint8 arrays keeps the loader far
ahead of the model; augmentation (catseg.augment) then runs per sample on the cached arrays.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from catseg.data import DatasetInfo
from catseg.errors import CatsegError
from catseg.images import DECODE_ERRORS, check_mask_values, open_image, oriented_size, read_mask, to_rgb_array, unreadable
from catseg.preprocess import Preprocess, resize_image

log = logging.getLogger(__name__)


@dataclass
class CachedSample:
    """One decoded, resized image and its mask, ready for augmentation."""

    stem: str
    image: np.ndarray  # (S, S, 3) uint8
    mask: np.ndarray  # (S, S) uint8 class ids, ignore value kept


def load_resized(info: DatasetInfo, stem: str, pre: Preprocess, size: int | None = None) -> CachedSample:
    """Return the image and mask of `stem` resized by the run's size policy at `size` (default the run's own;
    bilinear or area for the photo, nearest for the mask)."""
    image_path = info.image_path(stem)
    mask = read_mask(info.mask_path(stem))
    check_mask_values(mask, info.num_classes, info.ignore_index, info.mask_path(stem))
    pil = open_image(image_path, decode=False)
    width, height = oriented_size(pil)
    if (height, width) != mask.shape:
        raise CatsegError(
            f"{image_path}: image is {width}x{height} but its mask {info.mask_path(stem)} is "
            f"{mask.shape[1]}x{mask.shape[0]}. Run `catseg check {info.root}` and re-create the mask."
        )
    out_h, out_w = pre.working_size(height, width, size)
    if pil.format == "JPEG" and height >= 2 * out_h and width >= 2 * out_w:
        # Let libjpeg decode at a reduced scale: several times faster for large photos.
        pil.draft("RGB", (out_w, out_h))
    try:
        image = to_rgb_array(pil)
    except DECODE_ERRORS as exc:
        raise unreadable(image_path, exc) from exc
    image = resize_image(image, out_h, out_w)  # to the size the original (not the draft) asks for
    mask = cv2.resize(mask, (out_w, out_h), interpolation=cv2.INTER_NEAREST)
    return CachedSample(stem, np.ascontiguousarray(image), np.ascontiguousarray(mask))


def cache_samples(info: DatasetInfo, stems: Sequence[str], pre: Preprocess, size: int | None = None,
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
        sample = load_resized(info, index_stem[1], pre, size)
        return sample if disk_dir is None else _to_disk(sample, disk_dir / f"{index_stem[0]:06d}")

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(load, enumerate(stems)))


def _to_disk(sample: CachedSample, prefix: Path) -> CachedSample:
    np.save(f"{prefix}_image.npy", sample.image)
    np.save(f"{prefix}_mask.npy", sample.mask)
    return CachedSample(sample.stem, np.load(f"{prefix}_image.npy", mmap_mode="r"),
                        np.load(f"{prefix}_mask.npy", mmap_mode="r"))


def cache_fits_in_memory(count: int, side: int, pre: Preprocess, share: float = 0.5) -> bool:
    """Return True when `count` cached samples (image + mask bytes) take under `share` of the memory
    available now. Under `scale` the longer side is unknown before decoding; 1.5x the shorter is assumed."""
    per_sample = side * side * 4 * (1.0 if pre.whole_image else 1.5)
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return True
    return count * per_sample < share * available


def stack_batch(samples: Sequence[CachedSample]) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (images (B,S,S,3) uint8, masks (B,S,S) int64) of cached samples, unaugmented."""
    images = torch.from_numpy(np.stack([s.image for s in samples]))
    masks = torch.from_numpy(np.stack([s.mask for s in samples]).astype(np.int64))
    return images, masks


