"""The on-disk dataset folder: images/, masks/ and dataset.json, read and written exactly.

A dataset folder looks like::

    DATASET/images/<stem>.<ext>   the photo, EXIF orientation already applied
    DATASET/masks/<stem>.png      palette PNG whose pixel values are class ids; 255 = ignore
    DATASET/dataset.json          classes, colours, ignore value, provenance, optional splits

This module imports no torch, so converting and checking data stays fast.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from catseg.errors import CatsegError

DATASET_FORMAT = "catseg-dataset"
DATASET_VERSION = 1
IGNORE_INDEX = 255
DATASET_JSON = "dataset.json"
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


@dataclass
class DatasetInfo:
    """What dataset.json says about a dataset folder, plus where that folder is."""

    root: Path
    classes: list[str]
    colors: list[tuple[int, int, int]]
    ignore_index: int = IGNORE_INDEX
    source: dict[str, Any] = field(default_factory=dict)
    splits: dict[str, list[str]] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def masks_dir(self) -> Path:
        return self.root / "masks"

    def mask_path(self, stem: str) -> Path:
        return self.masks_dir / f"{stem}.png"

    def image_path(self, stem: str) -> Path:
        """Return the image file for a stem; raise a CatsegError naming the folder if there is none."""
        found = image_files_by_stem(self.images_dir).get(stem)
        if found is None:
            raise CatsegError(f"{self.images_dir}: no image named {stem}.* (its mask is {self.mask_path(stem)})")
        return found

    def stems(self) -> list[str]:
        """Return the sorted stems that have both an image and a mask."""
        images = image_files_by_stem(self.images_dir)
        masks = {p.stem for p in self.masks_dir.glob("*.png")} if self.masks_dir.is_dir() else set()
        return sorted(set(images) & masks)

    def to_json(self) -> dict[str, Any]:
        return dataset_json(self.classes, self.colors, self.source, self.splits, self.ignore_index)


def dataset_json(
    classes: Sequence[str],
    colors: Sequence[Sequence[int]] | None = None,
    source: dict[str, Any] | None = None,
    splits: dict[str, list[str]] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> dict[str, Any]:
    """Return the dataset.json document for these classes (VOC colours unless given)."""
    if colors is None:
        colors = voc_colormap(len(classes)).tolist()
    return {
        "format": DATASET_FORMAT,
        "version": DATASET_VERSION,
        "classes": list(classes),
        "colors": [list(map(int, c)) for c in colors],
        "ignore_index": int(ignore_index),
        "source": dict(source or {}),
        "splits": {k: list(v) for k, v in (splits or {}).items()},
    }


def provenance(command: str, source_path: str | Path, **extra: Any) -> dict[str, Any]:
    """Return the `source` block of dataset.json: what made the dataset, from what, with which version."""
    from catseg import __version__

    info = {
        "command": command,
        "path": str(Path(source_path).resolve()) if source_path else "",
        "tool": f"catseg {__version__}",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    info.update(extra)
    return info


def read_dataset(root: str | Path) -> DatasetInfo:
    """Return the DatasetInfo of a dataset folder, with every problem in dataset.json reported at once."""
    root = Path(root)
    path = root / DATASET_JSON
    if not root.is_dir():
        raise CatsegError(f"{root}: no such dataset folder. Make one with `catseg convert` or `catseg import`.")
    if not path.is_file():
        raise CatsegError(
            f"{path}: missing. A dataset folder needs images/, masks/ and dataset.json; "
            "make one with `catseg convert` or `catseg import`."
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CatsegError(f"{path}: not valid JSON ({exc}).") from exc
    problems = _validate_dataset_json(doc)
    if problems:
        raise CatsegError(f"{path}: invalid dataset description", problems)
    return DatasetInfo(
        root=root,
        classes=list(doc["classes"]),
        colors=[tuple(int(v) for v in c) for c in doc["colors"]],  # type: ignore[misc]
        ignore_index=int(doc.get("ignore_index", IGNORE_INDEX)),
        source=dict(doc.get("source", {})),
        splits={k: list(v) for k, v in doc.get("splits", {}).items()},
    )


def _validate_dataset_json(doc: Any) -> list[str]:
    if not isinstance(doc, dict):
        return ["the top level must be an object"]
    problems = []
    if doc.get("format") != DATASET_FORMAT:
        problems.append(f"format is {doc.get('format')!r}, expected {DATASET_FORMAT!r}")
    if doc.get("version") != DATASET_VERSION:
        problems.append(f"version is {doc.get('version')!r}; this catseg reads version {DATASET_VERSION}")
    classes = doc.get("classes")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) and c for c in classes):
        problems.append("classes must be a list of at least two non-empty names, background first")
    elif len(set(classes)) != len(classes):
        problems.append(f"classes has duplicate names: {classes}")
    elif len(classes) > 255:
        problems.append(f"{len(classes)} classes; at most 255 fit in a PNG mask beside the ignore value")
    colors = doc.get("colors")
    if isinstance(classes, list) and (
        not isinstance(colors, list)
        or len(colors) != len(classes)
        or not all(isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in colors)
    ):
        problems.append("colors must hold one [r, g, b] (0-255) per class")
    ignore = doc.get("ignore_index", IGNORE_INDEX)
    if not isinstance(ignore, int) or not 0 <= ignore <= 255:
        problems.append(f"ignore_index is {ignore!r}; it must be an integer 0-255 (catseg writes 255)")
    if not isinstance(doc.get("source", {}), dict):
        problems.append("source must be an object (command, path, tool, created)")
    splits = doc.get("splits", {})
    if not isinstance(splits, dict) or not all(
        isinstance(v, list) and all(isinstance(s, str) for s in v) for v in splits.values()
    ):
        problems.append("splits must map split names to lists of image stems")
    return problems


def image_files_by_stem(folder: Path) -> dict[str, Path]:
    """Return {stem: path} for the image files directly in a folder (hidden files skipped)."""
    if not folder.is_dir():
        return {}
    return {
        p.stem: p
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    }


def open_image(path_or_bytes: str | Path | bytes, name: str | None = None, decode: bool = True) -> Image.Image:
    """Return a PIL image, identified by content not extension; a CatsegError names unreadable files.

    With decode=False only the header is read (size, mode, EXIF), so a JPEG can still be decoded at a
    reduced scale with `draft`.
    """
    label = name or str(path_or_bytes if not isinstance(path_or_bytes, bytes) else "<embedded image>")
    try:
        source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
        image = Image.open(source)
        if decode:
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CatsegError(f"{label}: cannot read this image ({exc}). Re-export it as JPEG or PNG.") from exc
    return image


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
    return to_rgb_array(open_image(path))


def read_mask(path: str | Path) -> np.ndarray:
    """Return a mask PNG as (H, W) uint8 class ids; a colour (RGB) mask is an error naming the fix."""
    return mask_ids(open_image(path), path)


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


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file so that a reader sees either the old file or the whole new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, doc: Any) -> None:
    """Write JSON atomically; NaN and infinities become null, since JSON has no such numbers."""
    text = json.dumps(_json_safe(doc), indent=2, ensure_ascii=False, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


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


def check_replaceable(path: Path, marker: str, what: str, fmt: str | None = None,
                      inputs: Sequence[str | Path | None] = ()) -> None:
    """Raise a CatsegError unless `path` is an empty folder or one catseg wrote (it holds `marker`, a JSON
    file whose "format" is `fmt` when given), so that --force can never delete a folder of the user's
    own, nor a file the same command reads (`inputs`)."""
    if not path.is_dir():
        raise CatsegError(f"{path}: exists and is not a folder; refusing to replace it.")
    if any(path.iterdir()) and not _is_marker(path / marker, fmt):
        raise CatsegError(f"{path}: is not {what} (no {marker}" + (f" of format {fmt!r}" if fmt else "")
                          + "); refusing to replace it even with --force. Choose a new folder.")
    root = path.resolve()
    for item in inputs:
        if item is not None and Path(item).resolve().is_relative_to(root):
            raise CatsegError(f"{item}: is inside {path}, which --force would replace; move it out first.")


def _is_marker(path: Path, fmt: str | None) -> bool:
    if not path.is_file():
        return False
    if fmt is None:
        return True
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(doc, dict) and doc.get("format") == fmt


class DatasetWriter:
    """Builds a dataset folder in a hidden temporary folder beside OUT and moves it into place only
    when everything was written, so an interrupted run leaves no half dataset that looks complete.

    With `force`, an existing OUT is replaced only after the new one is complete.
    """

    def __init__(self, out_dir: str | Path, force: bool = False, inputs: Sequence[str | Path | None] = ()) -> None:
        # resolved, so that '.' or 'a/..' name a real folder that can be renamed into place
        self.out_dir = Path(out_dir).resolve()
        self.force = force
        if self.out_dir.exists() and not force:
            raise CatsegError(f"{out_dir}: already exists. Choose a new folder, or pass --force to replace it.")
        if self.out_dir.exists():
            check_replaceable(self.out_dir, DATASET_JSON, "a catseg dataset folder", DATASET_FORMAT, inputs)
            if self.out_dir in Path.cwd().resolve().parents or self.out_dir == Path.cwd().resolve():
                raise CatsegError(f"{out_dir}: is the current folder (or holds it); run the command from elsewhere "
                                  "to replace it.")
        self.tmp_dir: Path | None = None

    def __enter__(self) -> DatasetWriter:
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_dir = Path(tempfile.mkdtemp(dir=self.out_dir.parent, prefix=f".{self.out_dir.name}.partial-"))
        (self.tmp_dir / "images").mkdir()
        (self.tmp_dir / "masks").mkdir()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self.tmp_dir is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            return
        self._move_into_place()

    def write_image(self, stem: str, data: bytes, ext: str) -> Path:
        assert self.tmp_dir is not None
        path = self.tmp_dir / "images" / f"{stem}{ext}"
        path.write_bytes(data)
        return path

    def write_mask(self, stem: str, mask: np.ndarray, colors: Sequence[Sequence[int]] | None = None) -> Path:
        assert self.tmp_dir is not None
        path = self.tmp_dir / "masks" / f"{stem}.png"
        path.write_bytes(mask_png_bytes(mask, colors))
        return path

    def write_file(self, relpath: str, data: bytes) -> Path:
        assert self.tmp_dir is not None
        path = self.tmp_dir / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def write_dataset_json(self, doc: dict[str, Any]) -> None:
        assert self.tmp_dir is not None
        atomic_write_json(self.tmp_dir / DATASET_JSON, doc)

    def _move_into_place(self) -> None:
        assert self.tmp_dir is not None
        if not (self.tmp_dir / DATASET_JSON).is_file():
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            raise RuntimeError("DatasetWriter closed without write_dataset_json")
        old: Path | None = None
        if self.out_dir.exists():
            old = Path(tempfile.mkdtemp(dir=self.out_dir.parent, prefix=f".{self.out_dir.name}.old-"))
            os.rmdir(old)
            os.replace(self.out_dir, old)
        os.replace(self.tmp_dir, self.out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def iter_files(root: Path, suffix: str) -> Iterator[Path]:
    """Yield files under root (recursively) with this suffix, sorted, hidden folders skipped."""
    for path in sorted(root.rglob(f"*{suffix}")):
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts):
            yield path
