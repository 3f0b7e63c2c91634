"""The on-disk dataset folder: images/, masks/ and dataset.json, read and written exactly.

A dataset folder looks like::

    DATASET/images/<stem>.<ext>   the photo, EXIF orientation already applied
    DATASET/masks/<stem>.png      palette PNG whose pixel values are class ids; 255 = ignore
    DATASET/dataset.json          classes, colours, ignore value, provenance, optional splits

This module imports no torch, so converting and checking data stays fast.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from catseg.bands import BAND_EXTENSIONS, check_channels_block
from catseg.classes import AUTO, background_id, declared_problem
from catseg.config import TrainConfig
from catseg.errors import CatsegError
from catseg.files import atomic_write_json, check_replaceable, swap_in_place
from catseg.images import IMAGE_EXTENSIONS, mask_png_bytes, voc_colormap

DATASET_FORMAT = "catseg-dataset"
DATASET_VERSION = 1
IGNORE_INDEX = 255
DATASET_JSON = "dataset.json"


@dataclass
class DatasetInfo:
    """What dataset.json says about a dataset folder, plus where that folder is."""

    root: Path
    classes: list[str]
    colors: list[tuple[int, int, int]]
    ignore_index: int = IGNORE_INDEX
    source: dict[str, Any] = field(default_factory=dict)
    splits: dict[str, list[str]] = field(default_factory=dict)
    channels: dict[str, Any] | None = None  # band images (catseg.bands): count, names, dtype, mean, std; None = photos
    declared_background: Any = AUTO  # dataset.json's `background` (an id or None); AUTO when it says nothing
    # {stem: image path}, listed once per DatasetInfo (a command): listing images/ for every lookup read
    # millions of folder entries on a 7,000-photo dataset before training started.
    _images: dict[str, Path] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def background(self) -> int | None:
        """The background class id, or None when every class is real (see catseg.classes)."""
        return background_id(self.classes, self.declared_background)

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
        found = self.image_index().get(stem)
        if found is None:
            raise CatsegError(f"{self.images_dir}: no image named {stem}.* (its mask is {self.mask_path(stem)})")
        return found

    def image_index(self) -> dict[str, Path]:
        """Return {stem: image file} of images/, listed on the first call only."""
        if self._images is None:
            self._images = image_files_by_stem(self.images_dir)
        return self._images

    def stems(self) -> list[str]:
        """Return the sorted stems that have both an image and a mask."""
        images = self.image_index()
        masks = {p.stem for p in self.masks_dir.glob("*.png")} if self.masks_dir.is_dir() else set()
        return sorted(set(images) & masks)

    def to_json(self) -> dict[str, Any]:
        doc = dataset_json(self.classes, self.colors, self.source, self.splits, self.ignore_index, self.channels)
        if self.declared_background != AUTO:
            doc["background"] = self.declared_background
        return doc


def dataset_json(
    classes: Sequence[str],
    colors: Sequence[Sequence[int]] | None = None,
    source: dict[str, Any] | None = None,
    splits: dict[str, list[str]] | None = None,
    ignore_index: int = IGNORE_INDEX,
    channels: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Return the dataset.json document for these classes (VOC colours unless given); a "channels" block
    only for band images, so a photo dataset's file is as it always was."""
    if colors is None:
        colors = voc_colormap(len(classes)).tolist()
    doc = {
        "format": DATASET_FORMAT,
        "version": DATASET_VERSION,
        "classes": list(classes),
        "colors": [list(map(int, c)) for c in colors],
        "ignore_index": int(ignore_index),
        "source": dict(source or {}),
        "splits": {k: list(v) for k, v in (splits or {}).items()},
    }
    if channels is not None:
        doc["channels"] = dict(channels)
    return doc


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
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise CatsegError(f"{path}: not valid JSON ({type(exc).__name__}: {exc}). Re-create it with `catseg "
                          "convert` or `catseg import`.") from exc
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
        channels=dict(doc["channels"]) if "channels" in doc else None,
        declared_background=doc.get("background", AUTO),
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
        problems.append("classes must be a list of at least two non-empty names, in id order")
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
    if isinstance(classes, list) and (bad := declared_problem(doc.get("background", AUTO), len(classes))):
        problems.append(bad)
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
    if "channels" in doc:
        problems += check_channels_block(doc["channels"])
    return problems


def image_files_by_stem(folder: Path) -> dict[str, Path]:
    """Return {stem: path} for the image files directly in a folder (hidden files skipped)."""
    if not folder.is_dir():
        return {}
    found = {}
    with os.scandir(folder) as entries:  # one listing; scandir knows the entry types without a stat each
        for entry in sorted(entries, key=lambda e: e.name):
            path = Path(entry.path)
            if (not entry.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS + BAND_EXTENSIONS
                    and entry.is_file()):
                found[path.stem] = path
    return found


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
        swap_in_place(self.tmp_dir, self.out_dir)


def iter_files(root: Path, suffix: str) -> Iterator[Path]:
    """Yield files under root (recursively) with this suffix, sorted, hidden folders skipped."""
    for path in sorted(root.rglob(f"*{suffix}")):
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts):
            yield path


# ----------------------------------------------------------------------------- splits
def choose_split(info: DatasetInfo, config: TrainConfig) -> tuple[list[str], list[str]]:
    """Return (train stems, val stems): named splits when the dataset or flags give them, else a seeded
    split of everything outside a 'test' split."""
    available = set(info.stems())
    if not available:
        raise CatsegError(f"{info.root}: no image with a mask. Run `catseg check {info.root}`.")

    def named(name: str) -> list[str]:
        if name not in info.splits:
            raise CatsegError(f"{info.root}: no split named {name!r}; dataset.json has: "
                              f"{', '.join(info.splits) or 'none'}")
        return list(info.splits[name])

    val = named(config.val_split) if config.val_split else (
        named("val") if "val" in info.splits else named("validation") if "validation" in info.splits else None)
    if config.train_split:
        pool = named(config.train_split)
    elif "train" in info.splits:
        pool = named("train")
    elif "trainval" in info.splits:
        pool = named("trainval")
    else:
        held_out = set(info.splits.get("test", []))
        pool = sorted(available - held_out)
    missing = sorted(set(pool + (val or [])) - available)
    if missing:
        raise CatsegError(f"{info.root}: the split names {len(missing)} stems with no image/mask pair "
                          f"(first: {missing[:5]}). Run `catseg check {info.root}`.")
    if val is None:
        if len(pool) < 2:
            raise CatsegError(f"{info.root}: {len(pool)} image(s); training needs at least 2 (one to validate on).")
        shuffled = sorted(pool)
        random.Random(config.seed).shuffle(shuffled)
        n_val = min(len(shuffled) - 1, max(1, round(len(shuffled) * config.val_fraction)))
        val, train = sorted(shuffled[:n_val]), sorted(shuffled[n_val:])
    else:
        train = sorted(set(pool) - set(val))
    if not train or not val:
        raise CatsegError(f"{info.root}: the split leaves {len(train)} training and {len(val)} validation images; "
                          "both need at least one.")
    return train, sorted(val)
