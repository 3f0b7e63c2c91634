"""Existing dataset layouts -> a catseg dataset folder: Oxford-IIIT Pet, PASCAL VOC / labelme2voc, and
plain folders of photos and masks.

Each importer first pairs photos with annotations and checks them, collecting every problem into one
CatsegError; only then does it write, through data.DatasetWriter, so a failed import leaves nothing
behind. Oxford-IIIT Pet is the exception its release calls for: an unreadable photo, a missing trimap
or a trimap of the wrong size is skipped with a warning. The source folder is only read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from catseg.data import (
    IGNORE_INDEX,
    IMAGE_EXTENSIONS,
    DatasetWriter,
    dataset_json,
    image_bytes_for_dataset,
    open_image,
    provenance,
    read_mask,
    voc_colormap,
)
from catseg.errors import CatsegError

logger = logging.getLogger(__name__)

FORMATS = ("oxford-pets", "voc", "masks")
# --labels for oxford-pets -> class names. Trimaps hold 1 = pet, 2 = background, 3 = border.
OXFORD_LABELS: dict[str, tuple[str, ...]] = {
    "binary": ("background", "pet"),
    "binary-ignore-border": ("background", "pet"),
    "species": ("background", "cat", "dog"),
    "trimap": ("background", "pet", "border"),
}
_OXFORD_NOTES = {
    "binary": "border (trimap 3) counted as pet, as in the published binary protocol",
    "binary-ignore-border": f"border (trimap 3) written as {IGNORE_INDEX} = ignore",
    "species": "pet and border pixels take the species (1 cat, 2 dog)",
    "trimap": "trimap 1 pet -> 1, 2 background -> 0, 3 border -> 2",
}
OXFORD_PAGE = "https://www.robots.ox.ac.uk/~vgg/data/pets/"
_VOC_MASK_DIRS = ("SegmentationClass", "SegmentationClassPNG")  # labelme2voc: new layout, then old
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
            lines += [f"  - {w}" for w in _cap(self.warnings)]
        lines.append(f"Check it with: catseg check {self.out_dir}")
        return "\n".join(lines)


def import_dataset(
    fmt: str,
    src: Path,
    out_dir: Path,
    *,
    labels: str = "binary",
    images: str = "images",
    masks: str = "masks",
    colors: Path | None = None,
    classes: str | None = None,
    download: bool = False,
    force: bool = False,
) -> ImportReport:
    """Return the report of importing SRC, laid out as FMT, into the new dataset folder OUT_DIR."""
    src, out_dir = Path(src), Path(out_dir)
    problems = _option_problems(fmt, labels, images, masks, colors, classes, download)
    if problems:
        raise CatsegError("catseg import: invalid options; nothing was written", problems)
    _check_out_dir(src, out_dir, force)
    notes: list[str] = []
    if download:
        from catseg.download import download_oxford_pets

        notes = download_oxford_pets(src)
    if not src.is_dir():
        hint = " Pass --download to fetch the release into it." if fmt == "oxford-pets" else ""
        raise CatsegError(f"{src}: no such folder.{hint}")
    names = _parse_classes(classes) if classes is not None else None
    if fmt == "oxford-pets":
        plan = _plan_oxford(src, labels)
    elif fmt == "voc":
        plan = _plan_voc(src, names)
    else:
        plan = _plan_masks(src, src / images, src / masks, colors, names)
    plan.notes[:0] = notes
    extra: dict[str, Any] = {"format": fmt}
    if fmt == "oxford-pets":
        extra["labels"] = labels
    command = _command(fmt, src, out_dir, labels=labels, images=images, masks=masks, colors=colors, classes=classes)
    return _write(plan, fmt, src, out_dir, force, provenance(command, src, **extra))


# ----------------------------------------------------------------------------- shared machinery
@dataclass
class _Plan:
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


def _write(plan: _Plan, fmt: str, src: Path, out_dir: Path, force: bool, source: dict[str, Any]) -> ImportReport:
    warnings, problems, written, renamed, rotated = list(plan.warnings), [], [], [], []
    with DatasetWriter(out_dir, force=force) as writer:
        for done, (stem, photo_path, annotation) in enumerate(plan.pairs, 1):
            try:
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
            writer.write_image(stem, photo.data, photo.ext)
            writer.write_mask(stem, ids, plan.colors)
            written.append(stem)
            if photo.rotated:
                rotated.append(photo_path.name)
            elif photo.ext != _normal_ext(photo_path.suffix):
                renamed.append(f"{photo_path.name} -> images/{stem}{photo.ext}")
            if done % 500 == 0:
                logger.info("imported %d/%d images", done, len(plan.pairs))
        if problems:
            raise CatsegError(f"{src}: cannot import ({_count(len(problems), 'problem')}); nothing was written",
                              _cap(problems))
        if not written:
            raise CatsegError(f"{src}: no image could be imported; nothing was written", _cap(warnings))
        splits, split_notes = _restrict_splits(plan.splits, written)
        writer.write_dataset_json(dataset_json(plan.classes, plan.colors, source, splits))
    notes = list(plan.notes) + split_notes
    if renamed:
        notes.append(f"{_count(len(renamed), 'photo')} whose content is not what the extension says, stored under "
                     f"the content's extension: {_examples(renamed)}")
    if rotated:
        notes.append(f"{_count(len(rotated), 'photo')} with an EXIF orientation tag, stored as lossless PNG with "
                     f"it applied: {_examples(rotated)}")
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


def _photo_size(path: Path) -> tuple[tuple[int, int], tuple[int, int]]:
    """Return ((W, H) as stored, i.e. after EXIF rotation, (W, H) of the raw pixels), reading the header only."""
    try:
        with Image.open(path) as image:
            raw = image.size
            turned = image.getexif().get(0x0112) in (5, 6, 7, 8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CatsegError(f"{path}: cannot read this image ({exc}). Re-export it as JPEG or PNG.") from exc
    return ((raw[1], raw[0]) if turned else raw), raw


def _size_problem(photo: Path, annotation: Path, size: tuple[int, int], raw: tuple[int, int],
                  shape: tuple[int, ...]) -> str:
    text = f"{annotation}: mask is {shape[1]}x{shape[0]} but its photo {photo.name} is {size[0]}x{size[1]}"
    if raw != size and shape == (raw[1], raw[0]):
        text += " after its EXIF rotation (the mask matches the unrotated pixels; rotate the mask to match)"
    return text + "; a mask must have its photo's size"


def _scan_pairs(pairs: Iterable[tuple[str, Path, Path]],
                to_ids: Callable[[Path], np.ndarray]) -> tuple[dict[Path, np.ndarray], list[str]]:
    """Return ({annotation: class ids present}, problems) after reading every annotation and photo header."""
    present: dict[Path, np.ndarray] = {}
    problems = []
    for _stem, photo, annotation in pairs:
        try:
            ids = to_ids(annotation)
            size, raw = _photo_size(photo)
        except CatsegError as exc:
            problems.append(str(exc))
            continue
        if ids.shape != (size[1], size[0]):
            problems.append(_size_problem(photo, annotation, size, raw, ids.shape))
            continue
        present[annotation] = np.flatnonzero(np.bincount(ids.ravel(), minlength=256))
    return present, problems


def _id_problems(present: Mapping[Path, np.ndarray], classes: list[str], fix: str) -> list[str]:
    problems = []
    for annotation, ids in present.items():
        bad = ids[(ids >= len(classes)) & (ids != IGNORE_INDEX)]
        if bad.size:
            problems.append(f"{annotation}: class ids {bad.tolist()} but only {len(classes)} classes "
                            f"(0-{len(classes) - 1}: {', '.join(classes)}); {fix}")
    return problems


def _absent_classes_note(present: Mapping[Path, np.ndarray], classes: list[str]) -> list[str]:
    seen = set(np.concatenate(list(present.values())).tolist()) if present else set()
    absent = [name for i, name in enumerate(classes) if i not in seen]
    return [f"{_count(len(absent), 'class', 'classes')} in no mask: {_examples(absent)}"] if absent else []


def _default_classes(present: Mapping[Path, np.ndarray]) -> list[str]:
    ids = np.concatenate(list(present.values())) if present else np.zeros(0, dtype=np.int64)
    ids = ids[ids != IGNORE_INDEX]
    top = max(int(ids.max()) if ids.size else 0, 1)
    return ["background"] + [f"class{i}" for i in range(1, top + 1)]


def _scan_folder(folder: Path) -> tuple[dict[str, Path], list[Path], list[str]]:
    """Return ({stem: image file}, other files, duplicate-stem problems) for the files directly in a folder."""
    by_stem: dict[str, Path] = {}
    others, duplicates = [], []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue  # hidden files include the ._* AppleDouble copies in the Oxford archives
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            others.append(path)
        elif path.stem in by_stem:
            duplicates.append(f"{by_stem[path.stem]} and {path.name}: two files for {path.stem!r}; keep one")
        else:
            by_stem[path.stem] = path
    return by_stem, others, duplicates


def _pair(photos: Mapping[str, Path], masks: Mapping[str, Path],
          photos_dir: Path) -> tuple[list[tuple[str, Path, Path]], list[str]]:
    pairs = [(stem, photos[stem], masks[stem]) for stem in sorted(photos.keys() & masks.keys())]
    problems = [f"{masks[stem]}: no photo named {stem}.* in {photos_dir}; rename the mask to its photo's name "
                "or remove it" for stem in sorted(masks.keys() - photos.keys())]
    return pairs, problems


def _read_list(path: Path) -> list[str]:
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
            notes.append(f"split {name}: {len(unique) - len(inside)} of its {_count(len(unique), 'listed image')} not "
                         "imported" + ("" if inside else "; split not recorded"))
    return kept, notes


def _ids_from_image(image: Image.Image, path: Path) -> np.ndarray:
    if image.mode in ("P", "L", "1"):
        return np.asarray(image, dtype=np.uint8).copy()
    if image.mode in ("I", "I;16", "I;16B", "I;16L"):
        arr = np.asarray(image)
        if arr.max() > 255:
            raise CatsegError(f"{path}: mask values go up to {arr.max()}; class ids must be 0-254 (255 = ignore).")
        return arr.astype(np.uint8)
    raise CatsegError(f"{path}: mask is a {image.mode} image, not class ids in a grey or palette PNG. "
                      "For colour masks pass --colors with a 'name r g b' line per class.")


def _open_mask(path: Path) -> Image.Image:
    image = open_image(path)
    if image.format == "JPEG":
        raise CatsegError(f"{path}: a JPEG mask; JPEG compression changes pixel values, so class ids and colours "
                          "are not exact. Save masks as PNG.")
    return image


def _id_mask(path: Path) -> np.ndarray:
    return _ids_from_image(_open_mask(path), path)


def _binary_ids(path: Path) -> np.ndarray:
    ids = _id_mask(path)
    return np.where(ids == 255, 1, ids).astype(np.uint8)


def _rgb_to_ids(rgb: np.ndarray, table: Mapping[int, int], path: Path, fix: str) -> np.ndarray:
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


def _color_code(rgb: Iterable[int]) -> int:
    r, g, b = (int(v) for v in rgb)
    return r << 16 | g << 8 | b


# ----------------------------------------------------------------------------- oxford-pets
def trimap_to_mask(trimap: np.ndarray, labels: str = "binary", species: int = 1) -> np.ndarray:
    """Return (H, W) uint8 class ids for an Oxford-IIIT Pet trimap (1 pet, 2 background, 3 border) under a
    --labels mode; `species` (1 cat, 2 dog) is the pet's class id under "species"."""
    if labels not in OXFORD_LABELS:
        raise ValueError(f"labels is {labels!r}; expected one of {', '.join(OXFORD_LABELS)}")
    if species not in (1, 2):
        raise ValueError(f"species is {species!r}; expected 1 (cat) or 2 (dog)")
    found = np.flatnonzero(np.bincount(trimap.ravel(), minlength=256))
    unexpected = found[~np.isin(found, (1, 2, 3))]
    if unexpected.size:
        raise ValueError(f"trimap values {unexpected.tolist()}; an Oxford trimap holds only 1 (pet), 2 (background), "
                         "3 (border)")
    pet = species if labels == "species" else 1
    border = {"binary": 1, "binary-ignore-border": IGNORE_INDEX, "species": species, "trimap": 2}[labels]
    lut = np.zeros(256, dtype=np.uint8)
    lut[1], lut[3] = pet, border
    return lut[trimap]


def _oxford_ids(path: Path, labels: str, species: Mapping[str, int]) -> np.ndarray:
    try:
        return trimap_to_mask(read_mask(path), labels, species.get(path.stem, 1))
    except ValueError as exc:
        raise CatsegError(f"{path}: {exc}") from None


def _oxford_species(list_file: Path, stems: Iterable[str]) -> tuple[dict[str, int], int]:
    """Return ({stem: 1 cat or 2 dog}, how many came from the capital-letter rule rather than list.txt)."""
    listed = {}
    if list_file.is_file():
        for line in list_file.read_text(encoding="utf-8", errors="replace").splitlines():
            words = line.split()  # Image CLASS-ID SPECIES BREED-ID
            if len(words) >= 3 and not words[0].startswith("#") and words[2] in ("1", "2"):
                listed[words[0]] = int(words[2])
    species, guessed = {}, 0
    for stem in stems:
        if stem not in listed:
            guessed += 1
        species[stem] = listed.get(stem, 1 if stem[:1].isupper() else 2)
    return species, guessed


def _plan_oxford(src: Path, labels: str) -> _Plan:
    images_dir, annotations = src / "images", src / "annotations"
    trimaps_dir = annotations / "trimaps"
    missing = [f"{d}: missing" for d in (images_dir, trimaps_dir) if not d.is_dir()]
    if missing:
        raise CatsegError(
            f"{src}: not the Oxford-IIIT Pet layout (images/, annotations/trimaps/, annotations/trainval.txt). "
            f"Pass --download to fetch it, or download images.tar.gz and annotations.tar.gz from {OXFORD_PAGE} "
            f"and extract both into {src}.", missing)
    photos, others, duplicates = _scan_folder(images_dir)
    pairs, warnings = [], [f"skipped {d}" for d in duplicates]
    for stem, photo in photos.items():
        trimap = trimaps_dir / f"{stem}.png"
        if trimap.is_file():
            pairs.append((stem, photo, trimap))
        else:
            warnings.append(f"skipped {photo.name}: no trimap {trimap}")
    notes = [f"--labels {labels}: {_OXFORD_NOTES[labels]}"]
    if others:
        notes.append(f"ignored {_count(len(others), 'file')} in images/ that are not images: "
                     f"{_examples(p.name for p in others)}")
    orphans = sorted({p.stem for p in trimaps_dir.glob("*.png") if not p.name.startswith(".")} - photos.keys())
    if orphans:
        notes.append(f"{_count(len(orphans), 'trimap')} without a photo in images/: {_examples(orphans)}")
    species: dict[str, int] = {}
    if labels == "species":
        species, guessed = _oxford_species(annotations / "list.txt", (stem for stem, _, _ in pairs))
        if guessed:
            notes.append(f"species of {_count(guessed, 'image')} not in annotations/list.txt taken from the file name "
                         "(capital first letter = cat)")
    splits = {name: _read_list(annotations / f"{name}.txt") for name in ("trainval", "test")
              if (annotations / f"{name}.txt").is_file()}
    if not splits:
        notes.append("no annotations/trainval.txt or test.txt: no official split recorded")
    return _Plan(list(OXFORD_LABELS[labels]), pairs, partial(_oxford_ids, labels=labels, species=species),
                 splits=splits, notes=notes, warnings=warnings, skip_bad_files=True)


# ----------------------------------------------------------------------------- voc
_VOC_TABLE = {_color_code(rgb): i for i, rgb in enumerate(voc_colormap(256))}


def _voc_ids(path: Path, rgb_seen: list[Path]) -> np.ndarray:
    image = _open_mask(path)
    if image.mode in ("RGB", "RGBA"):
        rgb_seen.append(path)
        return _rgb_to_ids(np.asarray(image.convert("RGB")), _VOC_TABLE, path,
                           "VOC colour masks may use only the VOC colour map; save masks as palette PNGs of class ids")
    return _ids_from_image(image, path)


def _voc_class_names(src: Path, given: list[str] | None,
                     present: Mapping[Path, np.ndarray]) -> tuple[list[str], list[str], list[str]]:
    """Return (class names, notes, problems) from --classes, class_names.txt, or the highest id found."""
    names_file = src / "class_names.txt"
    if given is not None:
        return given, ["class names from --classes" + (f"; {names_file} ignored" if names_file.is_file() else "")], []
    if not names_file.is_file():
        names = _default_classes(present)
        return names, [f"no class_names.txt: classes named {', '.join(names[:3])}{', ...' if len(names) > 3 else ''} "
                       f"up to the highest id found ({len(names) - 1}); name them with --classes"], []
    names = [line.strip() for line in names_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    notes = []
    if names[:1] == ["__ignore__"]:
        names, notes = names[1:], [f"{names_file}: dropped the __ignore__ line (ignore is {IGNORE_INDEX} in masks)"]
    if names[:1] == ["_background_"]:
        names[0] = "background"
    problems = []
    if len(names) < 2:
        problems.append(f"{names_file}: names {len(names)} class; a dataset needs background plus at least one class")
    if len(set(names)) != len(names):
        problems.append(f"{names_file}: duplicate class names {sorted({n for n in names if names.count(n) > 1})}")
    return names, notes, problems


def _plan_voc(src: Path, given: list[str] | None) -> _Plan:
    photos_dir = src / "JPEGImages"
    masks_dir = next((src / d for d in _VOC_MASK_DIRS if (src / d).is_dir() and any((src / d).glob("*.png"))), None)
    missing = [] if photos_dir.is_dir() else [f"{photos_dir}: missing (the photos)"]
    if masks_dir is None:
        missing.append(f"{src / 'SegmentationClass'}: missing or holds no PNG masks (labelme2voc writes "
                       "SegmentationClass/, older versions SegmentationClassPNG/)")
    if missing:
        raise CatsegError(f"{src}: not a PASCAL VOC / labelme2voc folder; nothing was written", missing)
    assert masks_dir is not None
    photos, _, photo_dups = _scan_folder(photos_dir)
    mask_files, _, mask_dups = _scan_folder(masks_dir)
    pairs, problems = _pair(photos, mask_files, photos_dir)
    rgb_seen: list[Path] = []
    present, scan_problems = _scan_pairs(pairs, partial(_voc_ids, rgb_seen=rgb_seen))
    classes, notes, name_problems = _voc_class_names(src, given, present)
    fix = "name every class in class_names.txt (or --classes), background first"
    problems = photo_dups + mask_dups + problems + scan_problems + name_problems
    problems += [] if name_problems else _id_problems(present, classes, fix)
    if problems:
        raise CatsegError(f"{src}: cannot import ({_count(len(problems), 'problem')}); nothing was written",
                          _cap(problems))
    notes.insert(0, f"masks from {masks_dir.name}/")
    if rgb_seen:
        notes.append(f"{_count(len(rgb_seen), 'mask')} stored as RGB colour PNG; mapped the VOC colour map back "
                     "to class ids")
    unlabelled = sorted(photos.keys() - mask_files.keys())
    if unlabelled:
        notes.append(f"{_count(len(unlabelled), 'photo')} in JPEGImages/ without a mask, not imported: "
                     f"{_examples(unlabelled)}")
    notes += _absent_classes_note(present, classes)
    splits = {p.stem: _read_list(p) for p in sorted((src / "ImageSets" / "Segmentation").glob("*.txt"))}
    return _Plan(classes, pairs, partial(_voc_ids, rgb_seen=[]), splits=splits, notes=notes)


# ----------------------------------------------------------------------------- masks
def read_colors_file(path: Path) -> tuple[list[str], list[tuple[int, int, int]], dict[int, int]]:
    """Return (class names, colours, {colour code: id}) from a 'name r g b' per line file; class 0 first.

    A line named __ignore__ maps its colour to the ignore value instead of a class."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CatsegError(f"{path}: cannot read the --colors file ({exc}).") from exc
    names, colors, table, problems = [], [], {}, []
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        try:
            rgb = tuple(int(v) for v in words[-3:])
            if len(words) < 4 or not all(0 <= v <= 255 for v in rgb):
                raise ValueError
        except ValueError:
            problems.append(f"{path}:{number}: {line.strip()!r}; expected 'name r g b' with r, g, b in 0-255")
            continue
        name = " ".join(words[:-3])
        if _color_code(rgb) in table:
            problems.append(f"{path}:{number}: colour {rgb} is already used on an earlier line")
        elif name in names:
            problems.append(f"{path}:{number}: class {name!r} is already named on an earlier line")
        else:
            table[_color_code(rgb)] = IGNORE_INDEX if name == "__ignore__" else len(names)
            if name != "__ignore__":
                names.append(name)
                colors.append(rgb)
    if not problems and len(names) < 2:
        problems.append(f"{path}: names {len(names)} classes; give background (class 0) first, then at least one class")
    if problems:
        raise CatsegError(f"{path}: invalid --colors file", problems)
    return names, colors, table  # type: ignore[return-value]


def _color_ids(path: Path, table: Mapping[int, int], colors_file: Path) -> np.ndarray:
    rgb = np.asarray(_open_mask(path).convert("RGB"))
    return _rgb_to_ids(rgb, table, path, f"add a 'name r g b' line for it to {colors_file}")


def _plan_masks(src: Path, photos_dir: Path, masks_dir: Path, colors_file: Path | None,
                given: list[str] | None) -> _Plan:
    missing = [f"{d}: missing" for d in (photos_dir, masks_dir) if not d.is_dir()]
    if missing:
        raise CatsegError(f"{src}: expected photos and masks in subfolders (set them with --images and --masks); "
                          "nothing was written", missing)
    palette = read_colors_file(colors_file) if colors_file is not None else None
    photos, _, photo_dups = _scan_folder(photos_dir)
    mask_files, _, mask_dups = _scan_folder(masks_dir)
    pairs, problems = _pair(photos, mask_files, photos_dir)
    to_ids: Callable[[Path], np.ndarray] = _id_mask
    if palette is not None:
        to_ids = partial(_color_ids, table=palette[2], colors_file=colors_file)
    present, scan_problems = _scan_pairs(pairs, to_ids)
    problems = photo_dups + mask_dups + problems + scan_problems
    notes: list[str] = []
    seen = set(np.concatenate(list(present.values())).tolist()) if present else set()
    if palette is not None:
        classes, colors = palette[0], palette[1]
        notes.append(f"colour masks mapped to {len(classes)} classes with {colors_file}")
    elif seen <= {0, 255} and 255 in seen:
        classes, colors, to_ids = given or ["background", "class1"], None, _binary_ids
        present = {p: np.where(ids == 255, 1, ids) for p, ids in present.items()}
        notes.append("masks hold only 0 and 255: read as binary masks, 255 -> class 1 (not ignore)")
    else:
        classes, colors = given or _default_classes(present), None
        if given is None:
            notes.append(f"classes named {', '.join(classes[:3])}{', ...' if len(classes) > 3 else ''} by id; "
                         "name them with --classes")
    problems += _id_problems(present, classes, "list every class with --classes, background first")
    if problems:
        raise CatsegError(f"{src}: cannot import ({_count(len(problems), 'problem')}); nothing was written",
                          _cap(problems))
    unlabelled = sorted(photos.keys() - mask_files.keys())
    warnings = [f"{photos[s]}: no mask in {masks_dir}; not imported" for s in unlabelled]
    return _Plan(classes, pairs, to_ids, colors=colors, notes=notes + _absent_classes_note(present, classes),
                 warnings=warnings)


# ----------------------------------------------------------------------------- options and paths
def _option_problems(fmt: str, labels: str, images: str, masks: str, colors: Path | None, classes: str | None,
                     download: bool) -> list[str]:
    if fmt not in FORMATS:
        return [f"format {fmt!r}: expected one of {', '.join(FORMATS)}"]
    problems = []
    if fmt == "oxford-pets" and labels not in OXFORD_LABELS:
        problems.append(f"--labels {labels!r}: oxford-pets takes one of {', '.join(OXFORD_LABELS)}")
    if fmt != "oxford-pets" and labels != "binary":
        problems.append(f"--labels is for oxford-pets; {fmt} takes its classes from the masks")
    if fmt != "oxford-pets" and download:
        problems.append(f"--download fetches the Oxford-IIIT Pet release; it does not apply to {fmt}")
    if fmt != "masks":
        for flag, value, default in (("--images", images, "images"), ("--masks", masks, "masks"),
                                     ("--colors", colors, None)):
            if value != default:
                problems.append(f"{flag} is for the masks format, not {fmt}")
    if fmt == "oxford-pets" and classes is not None:
        problems.append("--classes is for voc and masks; oxford-pets classes follow --labels")
    if colors is not None and classes is not None:
        problems.append("--colors already names the classes; drop --classes")
    if classes is not None and fmt != "oxford-pets":
        try:
            _parse_classes(classes)
        except CatsegError as exc:
            problems.append(str(exc))
    return problems


def _parse_classes(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",")]
    if any(not n for n in names) or len(names) < 2:
        raise CatsegError(f"--classes {text!r}: give at least two comma-separated non-empty names, background first")
    if len(set(names)) != len(names):
        raise CatsegError(f"--classes {text!r}: names a class twice")
    if len(names) > 255:
        raise CatsegError(f"--classes names {len(names)} classes; at most 255 fit beside the ignore value")
    return names


def _check_out_dir(src: Path, out_dir: Path, force: bool) -> None:
    source, out = src.resolve(), out_dir.resolve()
    if out == source or out in source.parents:
        raise CatsegError(f"{out_dir}: contains the source folder {src}; choose a dataset folder outside it.")
    if source in out.parents:
        raise CatsegError(f"{out_dir}: is inside the source folder {src}, which import only reads; "
                          "choose a dataset folder outside it.")
    if out_dir.exists() and not force:
        raise CatsegError(f"{out_dir}: already exists. Choose a new folder, or pass --force to replace it.")


def _command(fmt: str, src: Path, out_dir: Path, **options: Any) -> str:
    defaults = {"labels": "binary", "images": "images", "masks": "masks", "colors": None, "classes": None}
    flags = [f"--{k} {v}" for k, v in options.items() if v != defaults[k]]
    return " ".join(["catseg import", fmt, str(src), str(out_dir), *flags])


def _normal_ext(suffix: str) -> str:
    suffix = suffix.lower()
    return {".jpeg": ".jpg", ".tiff": ".tif"}.get(suffix, suffix)


def _count(n: int, noun: str, plural: str = "") -> str:
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def _examples(items: Iterable[Any], limit: int = 5) -> str:
    items = [str(i) for i in items]
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _cap(lines: list[str]) -> list[str]:
    if len(lines) <= _MAX_LISTED:
        return lines
    return lines[:_MAX_LISTED] + [f"... and {len(lines) - _MAX_LISTED} more like these"]
