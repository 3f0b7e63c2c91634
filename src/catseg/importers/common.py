"""What every importer shares: pairing photos with annotations, checking class ids, writing the dataset
folder through data.DatasetWriter, and the report."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from catseg.bands import (
    BAND_EXTENSIONS,
    band_header,
    cube_npy_bytes,
    dataset_channels,
    is_band_file,
    read_bands,
    same_bands,
)
from catseg.data import IGNORE_INDEX, DatasetWriter, dataset_json
from catseg.errors import CatsegError
from catseg.images import (
    IMAGE_EXTENSIONS,
    image_bytes_for_dataset,
    mask_ids,
    open_image,
    oriented_size,
)

logger = logging.getLogger(__name__)

_MAX_LISTED = 30  # one line each for this many problems or warnings; the rest are counted


@dataclass
class ImportReport:
    """What `import_dataset` wrote: counts, classes, splits, notes and the files it skipped."""

    format: str
    src: Path
    out_dir: Path
    classes: list[str]
    images: int
    splits: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """Return the text the CLI prints."""
        lines = [
            f"Imported {self.images} images ({self.format}) from {self.src}",
            f"dataset: {self.out_dir}",
            "classes: " + ", ".join(f"{i} {name}" for i, name in enumerate(self.classes)) + f"; {IGNORE_INDEX} = ignore",
        ]
        if self.splits:
            lines.append("splits: " + ", ".join(f"{name} ({n} images)" for name, n in self.splits.items()))
        else:
            lines.append("splits: none recorded")
        lines += [f"note: {note}" for note in self.notes]
        if self.warnings:
            lines.append(f"warnings ({len(self.warnings)}):")
            lines += [f"  - {w}" for w in cap(self.warnings)]
        lines.append(f"Check it with: catseg check {self.out_dir}")
        return "\n".join(lines)


@dataclass
class Plan:
    """A checked import: the pairs to write and how to turn an annotation file into class ids."""

    classes: list[str]
    pairs: list[tuple[str, Path, Path]]  # (stem, photo, annotation)
    to_ids: Callable[[Path], np.ndarray]  # annotation file -> (H, W) uint8 class ids
    colors: list[tuple[int, int, int]] | None = None  # None: the VOC colour map
    splits: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skip_bad_files: bool = False  # Oxford: a bad photo or trimap is skipped with a warning, not an error


class _Photo(NamedTuple):
    data: bytes  # what images/ gets
    ext: str  # from the content, not the file name
    size: tuple[int, int]  # (W, H) of what images/ gets
    raw_size: tuple[int, int]  # (W, H) before any EXIF rotation
    rotated: bool  # re-encoded as PNG to apply an EXIF orientation


def write_plan(plan: Plan, fmt: str, src: Path, out_dir: Path, force: bool, source: dict[str, Any],
               inputs: Sequence[Path | None] = (), channel_axis: str | None = None,
               band_names: Sequence[str] | None = None) -> ImportReport:
    """Return the report of writing a checked plan into the new dataset folder OUT_DIR (nothing stays if it fails).
    `inputs` are files the command reads besides SRC (--colors), which --force must not delete. When any
    photo is a band image (catseg.bands), every one is stored as images/<stem>.npy and dataset.json gets
    a "channels" block; `channel_axis` says where the bands are when the shape cannot, `band_names` names them."""
    warnings, problems, written, renamed, rotated = list(plan.warnings), [], [], [], []
    cubes: list[Path] = []
    band_mode = any(is_band_file(photo) for _, photo, _ in plan.pairs)
    with DatasetWriter(out_dir, force=force, inputs=inputs) as writer:
        for done, (stem, photo_path, annotation) in enumerate(plan.pairs, 1):
            try:
                if band_mode:
                    ids = plan.to_ids(annotation)
                    photo = _stored_cube(photo_path, annotation, ids.shape, channel_axis, cubes)
                else:
                    photo = _stored_photo(photo_path)
                    ids = plan.to_ids(annotation)
                if ids.shape != (photo.size[1], photo.size[0]):
                    raise CatsegError(_size_problem(photo_path, annotation, photo.size, photo.raw_size, ids.shape))
            except CatsegError as exc:
                if plan.skip_bad_files:
                    warnings.append(f"skipped {photo_path.name}: {exc}")
                else:
                    problems.append(str(exc))
                continue
            if problems:  # the import fails anyway; keep checking, stop writing
                continue
            stored = writer.write_image(stem, photo.data, photo.ext)
            cubes += [stored] if band_mode else []
            writer.write_mask(stem, ids, plan.colors)
            written.append(stem)
            if photo.rotated:
                rotated.append(photo_path.name)
            elif photo.ext != _normal_ext(photo_path.suffix):
                renamed.append(f"{photo_path.name} -> images/{stem}{photo.ext}")
            if done % 500 == 0:
                logger.info("imported %d/%d images", done, len(plan.pairs))
        if problems:
            raise CatsegError(f"{src}: cannot import ({count(len(problems), 'problem')}); nothing was written",
                              cap(problems))
        if not written:
            raise CatsegError(f"{src}: no image could be imported; nothing was written", cap(warnings))
        splits, split_notes = _restrict_splits(plan.splits, written)
        channels = dataset_channels(cubes, splits.get("train", ()), band_names) if band_mode else None
        writer.write_dataset_json(dataset_json(plan.classes, plan.colors, source, splits, channels=channels))
    notes = list(plan.notes) + split_notes
    if renamed:
        notes.append(f"{count(len(renamed), 'photo')} whose content is not what the extension says, stored under "
                     f"the content's extension: {examples(renamed)}")
    if rotated:
        notes.append(f"{count(len(rotated), 'photo')} with an EXIF orientation tag, stored as lossless PNG with "
                     f"it applied: {examples(rotated)}")
    return ImportReport(fmt, src, out_dir, list(plan.classes), len(written),
                        {name: len(stems) for name, stems in splits.items()}, notes, warnings)


def _stored_photo(path: Path) -> _Photo:
    size, raw_size = _photo_size(path)  # a file that is no image at all fails here, named by its path
    try:
        original = path.read_bytes()
    except OSError as exc:
        raise CatsegError(f"{path}: cannot read this file ({exc.strerror}).") from exc
    data, ext = image_bytes_for_dataset(original, str(path))
    return _Photo(data, ext, size, raw_size, data is not original)


def _stored_cube(path: Path, annotation: Path, hw: tuple[int, ...], axis: str | None, done: list[Path]) -> _Photo:
    """Return a band image as (H, W, C) .npy bytes; its bands and dtype must agree with the first one stored."""
    cube = read_bands(path, axis, hw=(int(hw[0]), int(hw[1])), hw_from=str(annotation))
    same_bands(cube, path, done[0] if done else None)
    size = (cube.shape[1], cube.shape[0])
    return _Photo(cube_npy_bytes(cube), ".npy", size, size, False)


def _photo_size(path: Path, hw: tuple[int, ...] | None = None, annotation: Path | None = None,
                channel_axis: str | None = None) -> tuple[tuple[int, int], tuple[int, int]]:
    """Return ((W, H) as stored, i.e. after EXIF rotation, (W, H) of the raw pixels), reading the header only.
    A band image's bands are told from its annotation's (H, W) `hw` (or `channel_axis`)."""
    if is_band_file(path):
        header = band_header(path, channel_axis, hw=(int(hw[0]), int(hw[1])) if hw else None,
                             hw_from=str(annotation or ""))
        return (header.width, header.height), (header.width, header.height)
    with open_image(path, decode=False) as image:  # header only; a CatsegError names a file that is no image
        raw, shown = image.size, oriented_size(image)
    return shown, raw


def _size_problem(photo: Path, annotation: Path, size: tuple[int, int], raw: tuple[int, int],
                  shape: tuple[int, ...]) -> str:
    text = f"{annotation}: mask is {shape[1]}x{shape[0]} but its photo {photo.name} is {size[0]}x{size[1]}"
    if raw != size and shape == (raw[1], raw[0]):
        text += " after its EXIF rotation (the mask matches the unrotated pixels; rotate the mask to match)"
    return text + "; a mask must have its photo's size"


def scan_pairs(pairs: Iterable[tuple[str, Path, Path]], to_ids: Callable[[Path], np.ndarray],
               channel_axis: str | None = None) -> tuple[dict[Path, np.ndarray], list[str]]:
    """Return ({annotation: class ids present}, problems) after reading every annotation and photo header."""
    present: dict[Path, np.ndarray] = {}
    problems = []
    for _stem, photo, annotation in pairs:
        try:
            ids = to_ids(annotation)
            size, raw = _photo_size(photo, ids.shape, annotation, channel_axis)
        except CatsegError as exc:
            problems.append(str(exc))
            continue
        if ids.shape != (size[1], size[0]):
            problems.append(_size_problem(photo, annotation, size, raw, ids.shape))
            continue
        present[annotation] = np.flatnonzero(np.bincount(ids.ravel(), minlength=256))
    return present, problems


def id_problems(present: Mapping[Path, np.ndarray], classes: list[str], fix: str) -> list[str]:
    problems = []
    for annotation, ids in present.items():
        bad = ids[(ids >= len(classes)) & (ids != IGNORE_INDEX)]
        if bad.size:
            problems.append(f"{annotation}: class ids {bad.tolist()} but only {len(classes)} classes "
                            f"(0-{len(classes) - 1}: {', '.join(classes)}); {fix}")
    return problems


def absent_classes_note(present: Mapping[Path, np.ndarray], classes: list[str]) -> list[str]:
    seen = set(np.concatenate(list(present.values())).tolist()) if present else set()
    absent = [name for i, name in enumerate(classes) if i not in seen]
    return [f"{count(len(absent), 'class', 'classes')} in no mask: {examples(absent)}"] if absent else []


def default_classes(present: Mapping[Path, np.ndarray]) -> list[str]:
    ids = np.concatenate(list(present.values())) if present else np.zeros(0, dtype=np.int64)
    ids = ids[ids != IGNORE_INDEX]
    top = max(int(ids.max()) if ids.size else 0, 1)
    return ["background"] + [f"class{i}" for i in range(1, top + 1)]


def scan_folder(folder: Path) -> tuple[dict[str, Path], list[Path], list[str]]:
    """Return ({stem: image file}, other files, duplicate-stem problems) for the files directly in a folder."""
    by_stem: dict[str, Path] = {}
    others, duplicates = [], []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue  # hidden files include the ._* AppleDouble copies in the Oxford archives
        if path.suffix.lower() not in IMAGE_EXTENSIONS + BAND_EXTENSIONS:
            others.append(path)
        elif path.stem in by_stem:
            duplicates.append(f"{by_stem[path.stem]} and {path.name}: two files for {path.stem!r}; keep one")
        else:
            by_stem[path.stem] = path
    return by_stem, others, duplicates


def pair_files(photos: Mapping[str, Path], masks: Mapping[str, Path],
               photos_dir: Path) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    """Return ([(stem, photo, mask)] for stems in both, a problem for each mask without a photo)."""
    pairs = [(stem, photos[stem], masks[stem]) for stem in sorted(photos.keys() & masks.keys())]
    problems = [f"{masks[stem]}: no photo named {stem}.* in {photos_dir}; rename the mask to its photo's name "
                "or remove it" for stem in sorted(masks.keys() - photos.keys())]
    return pairs, problems


def read_list(path: Path) -> list[str]:
    """Return the first word of each line of a split or list file, skipping blank and # lines."""
    words = (line.split() for line in path.read_text(encoding="utf-8", errors="replace").splitlines())
    return [w[0] for w in words if w and not w[0].startswith("#")]


def _restrict_splits(splits: Mapping[str, list[str]], written: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    imported = set(written)
    kept, notes = {}, []
    for name, listed in splits.items():
        unique = list(dict.fromkeys(listed))
        inside = [s for s in unique if s in imported]
        if inside:
            kept[name] = inside
        if len(inside) < len(unique):
            notes.append(f"split {name}: {len(unique) - len(inside)} of its {count(len(unique), 'listed image')} not "
                         "imported" + ("" if inside else "; split not recorded"))
    return kept, notes


def open_mask(path: Path) -> Image.Image:
    """Return a mask file as a PIL image; a JPEG mask is an error, as its values are not exact."""
    image = open_image(path)
    if image.format == "JPEG":
        raise CatsegError(f"{path}: a JPEG mask; JPEG compression changes pixel values, so class ids and colours "
                          "are not exact. Save masks as PNG.")
    return image


def id_mask(path: Path) -> np.ndarray:
    return mask_ids(open_mask(path), path)


def binary_ids(path: Path) -> np.ndarray:
    ids = id_mask(path)
    return np.where(ids == 255, 1, ids).astype(np.uint8)


def rgb_to_ids(rgb: np.ndarray, table: Mapping[int, int], path: Path, fix: str) -> np.ndarray:
    """Return (H, W) uint8 ids for a (H, W, 3) colour mask; a colour missing from the table is an error."""
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    found, inverse, counts = np.unique(codes.ravel(), return_inverse=True, return_counts=True)
    unknown = [(int(c), int(n)) for c, n in zip(found, counts) if int(c) not in table]
    if unknown:
        listed = ", ".join(f"({c >> 16}, {c >> 8 & 255}, {c & 255}) in {n} pixels" for c, n in unknown[:5])
        more = f" and {len(unknown) - 5} more colours" if len(unknown) > 5 else ""
        raise CatsegError(f"{path}: colour {listed}{more} not in the colour table; {fix}")
    lut = np.array([table[int(c)] for c in found], dtype=np.uint8)
    return lut[inverse.ravel()].reshape(rgb.shape[:2])


def color_code(rgb: Iterable[int]) -> int:
    r, g, b = (int(v) for v in rgb)
    return r << 16 | g << 8 | b


def _normal_ext(suffix: str) -> str:
    suffix = suffix.lower()
    return {".jpeg": ".jpg", ".tiff": ".tif"}.get(suffix, suffix)


def count(n: int, noun: str, plural: str = "") -> str:
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def examples(items: Iterable[Any], limit: int = 5) -> str:
    items = [str(i) for i in items]
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def cap(lines: list[str]) -> list[str]:
    if len(lines) <= _MAX_LISTED:
        return lines
    return lines[:_MAX_LISTED] + [f"... and {len(lines) - _MAX_LISTED} more like these"]
