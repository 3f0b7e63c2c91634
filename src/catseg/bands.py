"""Multi-band images: grey 16-bit or float PNG/TIFF, multispectral and hyperspectral cubes (.tif, .npy).

A band image is read as an (H, W, C) array in its own dtype (uint8, uint16, float32, ...), never
expanded to float32 whole: .npy files are memory-mapped, and resizing works a few bands at a time.
Which axis of a 3-D array holds the bands is decided, in this order, by --channel-axis, by the height
and width the annotation says, by the band count a run was trained on, by the TIFF's own axes, and
by shape when one axis is much shorter than the others; otherwise a CatsegError names the file.

A dataset folder of band images stores each one as images/<stem>.npy, (H, W, C) in its own dtype,
and dataset.json gets a "channels" block (count, names, dtype, per-band mean and std, preview bands).
This module imports no torch.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from catseg.errors import CatsegError
from catseg.extras import require_extra
from catseg.images import MAX_PIXELS_ENV, max_pixels, open_image

BAND_EXTENSIONS = (".npy",)  # beside catseg.images.IMAGE_EXTENSIONS (which has .tif, .tiff, .png)
CHANNEL_AXES = ("first", "last")
_PHOTO_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr")  # 8-bit photos: read as RGB, as before
_CV2_DTYPES = (np.uint8, np.uint16, np.int16, np.float32)  # what cv2.resize keeps; others become float32
_RESIZE_CHUNK = 4  # cv2 resizes up to 4 channels with every interpolation; wider arrays go in slices


@dataclass(frozen=True)
class BandHeader:
    """What a band image holds, read without decoding its pixels where the format allows."""

    height: int
    width: int
    channels: int
    dtype: str
    axis: str  # where the bands were in the file: "first" or "last"


# ----------------------------------------------------------------------------- which files
def is_band_file(path: str | Path) -> bool:
    """Return True for a file catseg reads as bands: .npy, 16-bit or float PNG/TIFF, multi-page or
    many-sample TIFF. 8-bit photos (JPEG, RGB or grey PNG) are False: they stay RGB photos."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in BAND_EXTENSIONS:
        return True
    if suffix not in (".tif", ".tiff", ".png"):
        return False
    try:
        with open_image(path, decode=False) as image:  # header only, past catseg's pixel limit refused
            return image.mode not in _PHOTO_MODES or getattr(image, "n_frames", 1) > 1
    except CatsegError:
        return suffix in (".tif", ".tiff")  # Pillow cannot read many-band TIFFs; tifffile will say


def _tifffile() -> Any:
    return require_extra("tifffile", "bands", "reading multi-band TIFF", " (or save the cube as .npy)")


# ----------------------------------------------------------------------------- the band axis
def band_axis(shape: Sequence[int], label: str, axis: str | None = None, channels: int | None = None,
              hw: tuple[int, int] | None = None, hw_from: str = "", axes: str = "") -> str:
    """Return "first" or "last": where the bands are in a 3-D array of `shape` read from `label`.

    `hw` is the (height, width) an annotation (`hw_from`) gives, `channels` the band count a run expects,
    `axes` a TIFF's axes string (e.g. 'CYX', 'YXS'). A cube that fits none, or fits both ways, is an error."""
    a, b, c = (int(v) for v in shape)
    fits = {"first": (b, c), "last": (a, b)}
    if axis is not None:
        if axis not in CHANNEL_AXES:
            raise CatsegError(f"--channel-axis {axis!r}: choose first (bands, height, width) or last "
                              "(height, width, bands)")
        if hw is not None and fits[axis] != tuple(hw):
            raise _size_error(label, shape, hw, hw_from)
        return axis
    options = list(CHANNEL_AXES)
    if hw is not None:
        options = [o for o in options if fits[o] == tuple(hw)]
        if not options:
            raise _size_error(label, shape, hw, hw_from)
    if channels is not None:
        options = [o for o in options if (a if o == "first" else c) == channels]
        if not options:
            raise CatsegError(f"{label}: an array of shape {tuple(shape)} has no axis of {channels} bands, the "
                              "number the model was trained on; give images with the same bands as the training set")
    if len(options) == 2 and axes:
        if axes.endswith("YX") and not axes.startswith("YX"):
            options = ["first"]
        elif axes.startswith("YX") and not axes.endswith("YX"):
            options = ["last"]
    if len(options) == 2:
        if 4 * c <= min(a, b):
            options = ["last"]
        elif 4 * a <= min(b, c):
            options = ["first"]
    if len(options) == 2:
        raise CatsegError(f"{label}: cannot tell which axis holds the bands in an array of shape {tuple(shape)}; "
                          "pass --channel-axis first (bands, height, width) or last (height, width, bands)")
    return options[0]


def _size_error(label: str, shape: Sequence[int], hw: tuple[int, int], hw_from: str) -> CatsegError:
    source = f"its annotation {hw_from}" if hw_from else "its annotation"
    return CatsegError(f"{label}: the cube has shape {tuple(shape)} but {source} is {hw[1]}x{hw[0]} "
                       f"(width x height); no arrangement of bands, height and width matches. Annotate a preview "
                       "of this very cube (`catseg preview`), or pair the right files.")


# ----------------------------------------------------------------------------- reading
def _raw_array(path: Path) -> tuple[np.ndarray, str]:
    """Return (the pixels, TIFF axes or '') of a band file; a .npy is memory-mapped, not read."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False), ""
        if suffix in (".tif", ".tiff"):
            with _tifffile().TiffFile(path) as tif:
                _check_pixels(path, tuple(tif.series[0].shape))
                return tif.series[0].asarray(), tif.series[0].axes
        with open_image(path) as image:  # decoded only below catseg's pixel limit
            if image.mode in ("I;16", "I;16B", "I;16L"):
                return np.asarray(image).astype(np.uint16), ""
            return np.asarray(image), ""
    except CatsegError:
        raise
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError, EOFError) as exc:
        raise CatsegError(f"{path}: cannot read this image ({exc}). Save the cube as .npy or TIFF.") from exc


def _check_pixels(path: Path, shape: tuple[int, ...]) -> None:
    """Refuse a cube whose height x width (all but its smallest axis, the bands) passes catseg's pixel limit,
    before anything is decoded (a decompression bomb guard, as for photos)."""
    pixels = int(np.prod(shape)) // (min(shape) if len(shape) == 3 else 1)
    if pixels > max_pixels():
        raise CatsegError(f"{path}: {pixels:,} pixels per band, more than the limit of {max_pixels():,} (a guard "
                          f"against decompression bombs; nothing was decoded). If it is genuine, raise the limit: "
                          f"catseg --max-pixels {pixels} ... (or {MAX_PIXELS_ENV}={pixels}).")


def _shape_dtype(path: Path) -> tuple[tuple[int, ...], np.dtype, str]:
    """Return (shape, dtype, TIFF axes) of a band file, reading only its header where the format allows."""
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        try:
            with _tifffile().TiffFile(path) as tif:
                series = tif.series[0]
                return tuple(series.shape), np.dtype(series.dtype), series.axes
        except CatsegError:
            raise
        except (OSError, ValueError, EOFError) as exc:
            raise CatsegError(f"{path}: cannot read this image ({exc}). Save the cube as .npy or TIFF.") from exc
    array, axes = _raw_array(path)
    return tuple(array.shape), array.dtype, axes


def _squeeze(shape: tuple[int, ...], label: str) -> tuple[int, ...]:
    kept = tuple(v for v in shape if v != 1) if len(shape) > 3 else shape
    if len(kept) not in (2, 3):
        raise CatsegError(f"{label}: an array of shape {shape}; catseg reads 2-D (height, width) or 3-D "
                          "(bands, height, width / height, width, bands) images")
    return kept


def band_header(path: str | Path, axis: str | None = None, channels: int | None = None,
                hw: tuple[int, int] | None = None, hw_from: str = "") -> BandHeader:
    """Return the height, width, band count and dtype of a band file (arguments as for band_axis)."""
    path = Path(path)
    shape, dtype, axes = _shape_dtype(path)
    shape = _squeeze(shape, str(path))
    if len(shape) == 2:
        if hw is not None and tuple(shape) != tuple(hw):
            raise _size_error(str(path), shape, hw, hw_from)
        return BandHeader(shape[0], shape[1], 1, dtype.name, "last")
    where = band_axis(shape, str(path), axis, channels, hw, hw_from, axes)
    h, w, c = (shape[1], shape[2], shape[0]) if where == "first" else shape
    return BandHeader(h, w, c, dtype.name, where)


def read_bands(path: str | Path, axis: str | None = None, channels: int | None = None,
               hw: tuple[int, int] | None = None, hw_from: str = "") -> np.ndarray:
    """Return a band image as (H, W, C) in its own dtype; a .npy stays memory-mapped (a view, not a copy)."""
    path = Path(path)
    array, axes = _raw_array(path)
    array = array.reshape(_squeeze(tuple(array.shape), str(path)))
    if array.ndim == 2:
        if hw is not None and array.shape != tuple(hw):
            raise _size_error(str(path), array.shape, hw, hw_from)
        return array[:, :, None]
    if array.dtype.kind not in "uif" or array.dtype.itemsize > 8:
        raise CatsegError(f"{path}: holds {array.dtype} values; catseg reads integer or float bands")
    if band_axis(array.shape, str(path), axis, channels, hw, hw_from, axes) == "first":
        return np.moveaxis(array, 0, -1)
    return array


def dataset_axis(path: str | Path) -> str | None:
    """Return "last" for a dataset folder's images/<stem>.npy, which catseg writes (H, W, C), so that even a
    cube as tall and wide as it has bands is read right; None (find out) for other files put there."""
    return "last" if Path(path).suffix.lower() == ".npy" else None


def cube_npy_bytes(cube: np.ndarray) -> bytes:
    """Return .npy bytes of an (H, W, C) band image, C-contiguous in its own dtype, for images/<stem>.npy."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(cube), allow_pickle=False)
    return buf.getvalue()


# ----------------------------------------------------------------------------- statistics
def band_statistics(cubes: Iterable[np.ndarray], rows: int = 64) -> tuple[list[float], list[float]]:
    """Return per-band (mean, std) over every pixel of (H, W, C) cubes, a few rows at a time in float64,
    so a memory-mapped 400-band cube is never expanded whole."""
    total = squares = None
    count = 0
    for cube in cubes:
        for start in range(0, cube.shape[0], rows):
            part = np.asarray(cube[start:start + rows], dtype=np.float64).reshape(-1, cube.shape[2])
            s, q = part.sum(0), np.square(part).sum(0)
            total, squares = (s, q) if total is None else (total + s, squares + q)
            count += part.shape[0]
    if total is None or count == 0:
        raise ValueError("no pixels to compute band statistics on")
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    std = np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, 1.0)  # a constant band: centre only
    return [float(v) for v in mean], [float(v) for v in std]


def default_preview(channels: int) -> list[int]:
    """Return the bands shown as red, green and blue by default: for a cube ordered by wavelength,
    long -> red, middle -> green, short -> blue; a grey image shows its one band in all three."""
    if channels < 3:
        return [0, channels - 1, channels - 1] if channels == 2 else [0, 0, 0]
    return [round((channels - 1) * 0.85), round((channels - 1) * 0.5), round((channels - 1) * 0.15)]


def channels_block(cubes: Iterable[np.ndarray], count: int, dtype: str, names: Sequence[str] | None,
                   described: str) -> dict[str, Any]:
    """Return dataset.json's "channels" block: band count, names, dtype, per-band statistics, preview bands."""
    mean, std = band_statistics(cubes)
    return {"count": int(count), "names": list(names) if names else None, "dtype": dtype,
            "mean": mean, "std": std, "statistics_of": described, "preview": default_preview(count)}


def check_channels_block(block: Any) -> list[str]:
    """Return the problems of a dataset.json "channels" block (none when it is well formed)."""
    if not isinstance(block, dict):
        return ["channels must be an object (count, names, dtype, mean, std, preview)"]
    count = block.get("count")
    if not isinstance(count, int) or count < 1:
        return [f"channels.count is {count!r}; it must be a positive integer"]
    problems = []
    for key in ("mean", "std"):
        values = block.get(key)
        if not isinstance(values, list) or len(values) != count or not all(isinstance(v, (int, float)) for v in values):
            problems.append(f"channels.{key} must hold {count} numbers, one per band")
    names = block.get("names")
    if names is not None and (not isinstance(names, list) or len(names) != count):
        problems.append(f"channels.names must be null or {count} names")
    preview = block.get("preview", [0, 0, 0])
    if not isinstance(preview, list) or len(preview) != 3 or not all(isinstance(v, int) and 0 <= v < count
                                                                      for v in preview):
        problems.append(f"channels.preview must be 3 band indices 0-{count - 1}")
    try:
        np.dtype(str(block.get("dtype")))
    except TypeError:
        problems.append(f"channels.dtype {block.get('dtype')!r} is not a numpy dtype name")
    return problems


# ----------------------------------------------------------------------------- resizing and viewing
def cache_dtype(dtype: str | np.dtype) -> np.dtype:
    """Return the dtype a band image is cached and augmented in: its own when OpenCV keeps it, else float32."""
    dtype = np.dtype(dtype)
    return dtype if any(dtype == d for d in _CV2_DTYPES) else np.dtype(np.float32)


def resize_bands(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Return an (H, W, C) resize in the image's cache dtype: area averaging when shrinking, bilinear
    when growing; a few bands at a time, since OpenCV handles at most a few channels per call."""
    dtype = cache_dtype(image.dtype)
    if image.shape[:2] == (height, width):
        return np.ascontiguousarray(image, dtype=dtype)
    shrink = height * width < image.shape[0] * image.shape[1]
    mode = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    out = np.empty((height, width, image.shape[2]), dtype=dtype)
    for start in range(0, image.shape[2], _RESIZE_CHUNK):
        part = np.ascontiguousarray(image[:, :, start:start + _RESIZE_CHUNK], dtype=dtype)
        resized = cv2.resize(part, (width, height), interpolation=mode)
        out[:, :, start:start + _RESIZE_CHUNK] = resized.reshape(height, width, -1)
    return out


def false_colour(cube: np.ndarray, bands: Sequence[int] | None = None, low: float = 2.0,
                 high: float = 98.0) -> np.ndarray:
    """Return an (H, W, 3) uint8 picture of three bands (red, green, blue), each stretched between its
    `low` and `high` percentiles, for a person to look at and annotate on."""
    bands = list(bands) if bands else default_preview(cube.shape[2])
    bad = [b for b in bands if not 0 <= b < cube.shape[2]]
    if len(bands) != 3 or bad:
        raise CatsegError(f"--bands {','.join(map(str, bands))}: give 3 band indices from 0 to {cube.shape[2] - 1}")
    out = np.empty(cube.shape[:2] + (3,), dtype=np.uint8)
    for i, band in enumerate(bands):
        plane = np.asarray(cube[:, :, band], dtype=np.float64)
        finite = plane[np.isfinite(plane)]
        lo, hi = (np.percentile(finite, [low, high]) if finite.size else (0.0, 1.0))
        scaled = (np.nan_to_num(plane, nan=lo) - lo) / ((hi - lo) or 1.0)
        out[:, :, i] = np.clip(scaled * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


def png_bytes(rgb: np.ndarray) -> bytes:
    """Return PNG bytes of an (H, W, 3) uint8 picture."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------- dataset folders
def read_band_names(text: str | None) -> list[str] | None:
    """Return the names of a --band-names option: comma-separated names, or a text file of one per line."""
    if not text:
        return None
    path = Path(text)
    if path.is_file():
        try:
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise CatsegError(f"--band-names {path}: cannot read it ({exc})") from exc
    else:
        names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise CatsegError(f"--band-names {text!r}: give non-empty names, comma-separated or one per line in a file")
    return names


def dataset_channels(cubes: Sequence[Path], train: Iterable[str] = (), names: Sequence[str] | None = None
                     ) -> dict[str, Any]:
    """Return dataset.json's "channels" block for the images/<stem>.npy just written, with statistics over
    the stems of a train split when there is one, else over every image."""
    train = set(train)
    chosen = [p for p in cubes if p.stem in train] or list(cubes)
    first = np.load(chosen[0], mmap_mode="r")
    if names is not None and len(names) != first.shape[2]:
        raise CatsegError(f"--band-names names {len(names)} bands but the images have {first.shape[2]}")
    described = f"the {len(chosen)} images of split 'train'" if train else f"all {len(chosen)} images"
    return channels_block((np.load(p, mmap_mode="r") for p in chosen), first.shape[2], first.dtype.name, names,
                          described)


def same_bands(cube: np.ndarray, path: Path, first: Path | None) -> None:
    """Raise a CatsegError naming `path` when its bands or dtype differ from the cube stored at `first`."""
    if first is None:
        return
    ref = np.load(first, mmap_mode="r")
    if (ref.shape[2], ref.dtype) != (cube.shape[2], cube.dtype):
        raise CatsegError(f"{path}: has {cube.shape[2]} band(s) of {cube.dtype} but the images before it have "
                          f"{ref.shape[2]} of {ref.dtype}; every image of a dataset needs the same bands")


def pair_cubes(folder: Path, annotations: Sequence[tuple[str, Path, tuple[int, int]]],
               axis: str | None = None) -> tuple[dict[str, Path], dict[str, str]]:
    """Return ({stem: band image in folder}, {stem: problem}) for (stem, annotation file, (H, W) annotated) triples:
    each annotation needs a cube of its stem whose height and width are the ones annotated."""
    if not folder.is_dir():
        raise CatsegError(f"--images {folder}: no such folder. Give the folder of the band images (.npy, .tif).")
    by_stem: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in (".npy", ".tif", ".tiff", ".png"):
            by_stem.setdefault(path.stem, path)
    found, problems = {}, {}
    for stem, annotation, hw in annotations:
        if stem not in by_stem:
            problems[stem] = f"no band image named {stem}.npy/.tif/.tiff/.png in {folder}"
            continue
        try:
            band_header(by_stem[stem], axis, hw=hw, hw_from=str(annotation))
        except CatsegError as exc:
            problems[stem] = str(exc)
            continue
        found[stem] = by_stem[stem]
    return found, problems
