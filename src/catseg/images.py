"""Reading photos and masks from disk or bytes, by content not extension, with EXIF orientation applied.

This module imports no torch, so converting and checking data stays fast.
"""

from __future__ import annotations

import io
import os
import struct
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from catseg.errors import CatsegError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")


# What PIL calls a format -> the extension a copied file gets, so a PNG named .jpg is stored as .png.
_FORMAT_EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp", "GIF": ".gif"}



def voc_colormap(n: int = 256) -> np.ndarray:
    """Return the PASCAL VOC colour map (the one labelme writes masks with) as (n, 3) uint8."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap



# Decompression bombs: a tiny file that decodes to gigapixels. An image with more pixels than this is refused
# from its header, never decoded. PIL's own guard is 89.5 MP (warning) and twice that (error); catseg uses one
# limit the user can raise (`catseg --max-pixels N ...` or CATSEG_MAX_PIXELS=N).
DEFAULT_MAX_PIXELS = 178_956_970
MAX_PIXELS_ENV = "CATSEG_MAX_PIXELS"


def max_pixels() -> int:
    """Return the largest width x height catseg decodes (CATSEG_MAX_PIXELS, else DEFAULT_MAX_PIXELS)."""
    text = os.environ.get(MAX_PIXELS_ENV, "")
    try:
        value = int(text) if text else DEFAULT_MAX_PIXELS
    except ValueError:
        raise CatsegError(f"{MAX_PIXELS_ENV}={text!r}: give a whole number of pixels, e.g. 400000000") from None
    if value < 1:
        raise CatsegError(f"{MAX_PIXELS_ENV}={text!r}: must be at least 1")
    return value


def open_image(path_or_bytes: str | Path | bytes, name: str | None = None, decode: bool = True) -> Image.Image:
    """Return a PIL image, identified by content not extension; a CatsegError names unreadable files
    and images past the pixel limit (`max_pixels`), which are refused from their header, never decoded.

    With decode=False only the header is read (size, mode, EXIF), so a JPEG can still be decoded at a
    reduced scale with `draft`.
    """
    label = name or str(path_or_bytes if not isinstance(path_or_bytes, bytes) else "<embedded image>")
    limit = max_pixels()
    try:
        source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # catseg's own limit is below
            image = _open_unguarded(source)
        width, height = image.size
        if width * height > limit:
            raise CatsegError(f"{label}: {width} x {height} = {width * height:,} pixels, more than the limit of "
                              f"{limit:,} (a guard against decompression bombs; nothing was decoded). If the image "
                              f"is genuine, raise the limit: catseg --max-pixels {width * height} ... "
                              f"(or {MAX_PIXELS_ENV}={width * height}).")
        if decode:
            image.load()
    except CatsegError:
        raise
    except DECODE_ERRORS as exc:
        raise unreadable(label, exc) from exc
    return image


# PIL's decoders raise many types on crafted or damaged files; each of them means "cannot read this image".
DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError,
                 KeyError, ZeroDivisionError, MemoryError, struct.error, Image.DecompressionBombError)


def unreadable(label: str | Path, exc: BaseException) -> CatsegError:
    """Return the error for an image file that cannot be decoded, naming it and the fix."""
    return CatsegError(f"{label}: cannot read this image ({type(exc).__name__}: {exc}). The file may be "
                       "truncated or not an image; re-export it as JPEG or PNG.")


def _open_unguarded(source: Any) -> Image.Image:
    """Image.open without PIL's own pixel guard (open_image applies catseg's, with the user's limit). PIL reads
    the guard from a module global, so the swap is locked: the training cache decodes in threads, and two
    unlocked swaps could leave the guard off for everything else in the process."""
    with _PIL_GUARD:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(source)  # reads the header only; decoding happens later, outside the lock
        finally:
            Image.MAX_IMAGE_PIXELS = saved


_PIL_GUARD = threading.Lock()


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Return a (H, W, 3) uint8 RGB array from a PIL image of any mode, EXIF orientation applied."""
    image = ImageOps.exif_transpose(image) or image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grey: scale the full range to 8 bits rather than clipping at 255.
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if image.mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = ((arr - lo) / (hi - lo or 1.0) * 255.0 + 0.5).astype(np.uint8)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))



def read_image(path: str | Path) -> np.ndarray:
    """Return the photo at `path` as (H, W, 3) uint8 RGB with EXIF orientation applied."""
    image = open_image(path)
    try:
        return to_rgb_array(image)
    except DECODE_ERRORS as exc:
        raise unreadable(path, exc) from exc



def read_mask(path: str | Path) -> np.ndarray:
    """Return a mask PNG as (H, W) uint8 class ids; a colour (RGB) mask is an error naming the fix."""
    image = open_image(path)
    try:
        return mask_ids(image, path)
    except DECODE_ERRORS as exc:
        raise unreadable(path, exc) from exc


def check_mask_values(mask: np.ndarray, num_classes: int, ignore_index: int, path: str | Path) -> None:
    """Raise a CatsegError naming the mask file when it holds ids that are neither a class nor the ignore value
    (the loss would fail on them, on CUDA with a device-side assert)."""
    counts = np.bincount(mask.ravel(), minlength=256)
    bad = [v for v in np.flatnonzero(counts) if v >= num_classes and v != ignore_index]
    if bad:
        shown = ", ".join(str(int(v)) for v in bad[:8]) + (" ..." if len(bad) > 8 else "")
        raise CatsegError(f"{path}: mask values {shown} are not class ids: the dataset has {num_classes} classes "
                          f"(0-{num_classes - 1}) and {ignore_index} = ignore. Fix the mask, or the classes in "
                          "dataset.json; `catseg check` lists every such file.")



def mask_ids(image: Image.Image, path: str | Path) -> np.ndarray:
    """Return (H, W) uint8 class ids from a palette, grey, 1-bit or 16-bit mask image; `path` names it in errors."""
    if image.mode in ("P", "L", "1"):
        return np.asarray(image, dtype=np.uint8).copy()
    if image.mode in ("I", "I;16", "I;16B", "I;16L"):
        arr = np.asarray(image)
        if arr.max() > 255:
            raise CatsegError(f"{path}: mask values go up to {arr.max()}; class ids must be 0-254 (255 = ignore).")
        return arr.astype(np.uint8)
    raise CatsegError(
        f"{path}: mask is a {image.mode} image; catseg masks hold class ids in a palette (P) or grey (L) PNG. "
        "For colour masks use `catseg import masks` and pass --colors with a 'name r g b' line per class."
    )



def mask_png_bytes(mask: np.ndarray, colors: Sequence[Sequence[int]] | None = None) -> bytes:
    """Return PNG bytes of a (H, W) uint8 class-id mask with the VOC palette (labelme's lblsave)."""
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"mask must be 2-D uint8, got {mask.dtype} with shape {mask.shape}")
    palette = voc_colormap(256)
    if colors is not None:
        palette[: len(colors)] = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    image = Image.fromarray(mask, mode="P")
    image.putpalette(palette.flatten().tolist())
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


EXIF_ORIENTATION = 0x0112  # the EXIF tag; 5-8 turn the picture by 90 degrees, swapping width and height


SWAPPING_ORIENTATIONS = (5, 6, 7, 8)



def exif_orientation(image: Image.Image) -> int:
    """Return the EXIF orientation 1-8 of an opened image (1 = upright); missing or invalid values (0 occurs
    in the wild) count as 1. Reads the header only for JPEG; a PNG is not decoded for a late eXIf chunk."""
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    value = image.getexif().get(EXIF_ORIENTATION, 1)
    return int(value) if value in range(2, 9) else 1



def oriented_size(image: Image.Image) -> tuple[int, int]:
    """Return (width, height) of an opened image as shown, after its EXIF orientation."""
    width, height = image.size
    return (height, width) if exif_orientation(image) in SWAPPING_ORIENTATIONS else (width, height)



def image_bytes_for_dataset(data: bytes, name: str) -> tuple[bytes, str]:
    """Return (bytes, extension) to store a photo in images/: the original bytes when no EXIF
    rotation is needed (a JPEG is never re-encoded), else a lossless PNG of the rotated pixels.

    The extension follows the content, so a PNG named `.jpg` is stored as `.png`.
    """
    image = open_image(data, name)
    if exif_orientation(image) == 1:  # nothing to apply
        fmt = image.format or "PNG"
        ext = _FORMAT_EXTENSIONS.get(fmt)
        if ext is not None:
            return data, ext
    rotated = ImageOps.exif_transpose(image) or image
    if "exif" in rotated.info:  # the orientation is applied now; do not let viewers rotate again
        rotated.info.pop("exif")
    if rotated.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):  # CMYK, YCbCr, LAB: PNG has no such mode
        rotated = rotated.convert("RGB")
    buf = io.BytesIO()
    rotated.save(buf, format="PNG")
    return buf.getvalue(), ".png"
