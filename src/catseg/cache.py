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
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from catseg.bands import band_statistics, cache_dtype, dataset_axis, read_bands, resize_bands
from catseg.data import DatasetInfo
from catseg.errors import CatsegError
from catseg.images import DECODE_ERRORS, check_mask_values, open_image, oriented_size, read_mask, to_rgb_array, unreadable
from catseg.preprocess import Preprocess, model_input, resize_image

log = logging.getLogger(__name__)


@dataclass
class CachedSample:
    """One decoded, resized image and its mask, ready for augmentation."""

    stem: str
    image: np.ndarray  # (S, S, 3) uint8 photo, or (S, S, C) band image in its cache dtype (catseg.bands)
    mask: np.ndarray  # (S, S) uint8 class ids, ignore value kept


def load_resized(info: DatasetInfo, stem: str, pre: Preprocess, size: int | None = None) -> CachedSample:
    """Return the image and mask of `stem` resized by the run's size policy at `size` (default the run's own;
    bilinear or area for the photo, nearest for the mask)."""
    image_path = info.image_path(stem)
    mask = read_mask(info.mask_path(stem))
    check_mask_values(mask, info.num_classes, info.ignore_index, info.mask_path(stem))
    if info.channels is not None:
        return _load_bands(info, stem, image_path, mask, pre, size)
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


def _load_bands(info: DatasetInfo, stem: str, image_path: Path, mask: np.ndarray, pre: Preprocess,
                size: int | None) -> CachedSample:
    """Return a band image (memory-mapped, resized a few bands at a time, in its own dtype) and its mask."""
    assert info.channels is not None
    cube = read_bands(image_path, dataset_axis(image_path), int(info.channels["count"]), hw=mask.shape,
                      hw_from=str(info.mask_path(stem)))
    if cube.shape[2] != int(info.channels["count"]):
        raise CatsegError(f"{image_path}: has {cube.shape[2]} band(s) but dataset.json says "
                          f"{info.channels['count']}. Run `catseg check {info.root}`.")
    out_h, out_w = pre.working_size(cube.shape[0], cube.shape[1], size)
    image = resize_bands(cube, out_h, out_w)
    mask = cv2.resize(mask, (out_w, out_h), interpolation=cv2.INTER_NEAREST)
    return CachedSample(stem, image, np.ascontiguousarray(mask))


def band_preprocess(pre: Preprocess, info: DatasetInfo) -> Preprocess:
    """Return the run's Preprocess for a band dataset (dataset.json's statistics, pixels not divided by 255);
    photos keep theirs."""
    if info.channels is None:
        return pre
    block = info.channels
    return replace(pre, mean=tuple(block["mean"]), std=tuple(block["std"]), pixel_scale=1.0, dtype=block["dtype"],
                   band_names=tuple(block.get("names") or ()), preview=tuple(block.get("preview") or (0, 0, 0)))


def with_train_statistics(pre: Preprocess, samples: Sequence[CachedSample]) -> Preprocess:
    """Return a band run's Preprocess with per-band mean and std measured on its training images."""
    if not pre.bands or not samples:
        return pre
    mean, std = band_statistics(s.image for s in samples)
    return replace(pre, mean=tuple(mean), std=tuple(std))


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
    available now. Under `scale` the longer side is unknown before decoding; 1.5x the shorter is assumed.
    Band images count their bands and the bytes of their cache dtype (a 400-band uint16 cube: 801 B/px)."""
    pixel_bytes = pre.channels * cache_dtype(pre.dtype).itemsize + 1
    per_sample = side * side * pixel_bytes * (1.0 if pre.whole_image else 1.5)
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return True
    return count * per_sample < share * available


def stack_batch(samples: Sequence[CachedSample]) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (images (B,S,S,3) uint8 or (B,S,S,C) float32 bands, masks (B,S,S) int64) of cached samples,
    unaugmented."""
    images = torch.from_numpy(model_input(np.stack([s.image for s in samples])))
    masks = torch.from_numpy(np.stack([s.mask for s in samples]).astype(np.int64))
    return images, masks


