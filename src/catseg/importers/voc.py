"""PASCAL VOC and labelme2voc: photos in JPEGImages/, masks in SegmentationClass/ (or SegmentationClassPNG/),
class names in class_names.txt, splits in ImageSets/Segmentation/*.txt."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path

import numpy as np

from catseg.data import IGNORE_INDEX
from catseg.errors import CatsegError
from catseg.images import mask_ids, voc_colormap
from catseg.importers.common import (
    Plan,
    absent_classes_note,
    cap,
    color_code,
    count,
    default_classes,
    examples,
    id_problems,
    open_mask,
    pair_files,
    read_list,
    rgb_to_ids,
    scan_folder,
    scan_pairs,
)

_VOC_MASK_DIRS = ("SegmentationClass", "SegmentationClassPNG")  # labelme2voc: new layout, then old
_VOC_TABLE = {color_code(rgb): i for i, rgb in enumerate(voc_colormap(256))}


def _voc_ids(path: Path, rgb_seen: list[Path]) -> np.ndarray:
    image = open_mask(path)
    if image.mode in ("RGB", "RGBA"):
        rgb_seen.append(path)
        return rgb_to_ids(np.asarray(image.convert("RGB")), _VOC_TABLE, path,
                          "VOC colour masks may use only the VOC colour map; save masks as palette PNGs of class ids")
    return mask_ids(image, path)


def _voc_class_names(src: Path, given: list[str] | None,
                     present: Mapping[Path, np.ndarray]) -> tuple[list[str], list[str], list[str]]:
    """Return (class names, notes, problems) from --classes, class_names.txt, or the highest id found."""
    names_file = src / "class_names.txt"
    if given is not None:
        return given, ["class names from --classes" + (f"; {names_file} ignored" if names_file.is_file() else "")], []
    if not names_file.is_file():
        names = default_classes(present)
        return names, [f"no class_names.txt: classes named {', '.join(names[:3])}{', ...' if len(names) > 3 else ''} "
                       f"up to the highest id found ({len(names) - 1}); name them with --classes"], []
    try:
        text = names_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CatsegError(f"{names_file}: cannot read it as UTF-8 text ({exc}); save it as UTF-8, one class per line, "
                          "or name the classes with --classes.") from exc
    names = [line.strip() for line in text.splitlines() if line.strip()]
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


def plan_voc(src: Path, given: list[str] | None) -> Plan:
    """Return the checked import plan for a VOC / labelme2voc folder; GIVEN is --classes, if passed."""
    photos_dir = src / "JPEGImages"
    masks_dir = next((src / d for d in _VOC_MASK_DIRS if (src / d).is_dir() and any((src / d).glob("*.png"))), None)
    missing = [] if photos_dir.is_dir() else [f"{photos_dir}: missing (the photos)"]
    if masks_dir is None:
        missing.append(f"{src / 'SegmentationClass'}: missing or holds no PNG masks (labelme2voc writes "
                       "SegmentationClass/, older versions SegmentationClassPNG/)")
    if missing:
        raise CatsegError(f"{src}: not a PASCAL VOC / labelme2voc folder; nothing was written", missing)
    assert masks_dir is not None
    photos, _, photo_dups = scan_folder(photos_dir)
    mask_files, _, mask_dups = scan_folder(masks_dir)
    pairs, problems = pair_files(photos, mask_files, photos_dir)
    rgb_seen: list[Path] = []
    present, scan_problems = scan_pairs(pairs, partial(_voc_ids, rgb_seen=rgb_seen))
    classes, notes, name_problems = _voc_class_names(src, given, present)
    fix = "name every class in class_names.txt (or --classes), background first"
    problems = photo_dups + mask_dups + problems + scan_problems + name_problems
    problems += [] if name_problems else id_problems(present, classes, fix)
    if problems:
        raise CatsegError(f"{src}: cannot import ({count(len(problems), 'problem')}); nothing was written",
                          cap(problems))
    notes.insert(0, f"masks from {masks_dir.name}/")
    if rgb_seen:
        notes.append(f"{count(len(rgb_seen), 'mask')} stored as RGB colour PNG; mapped the VOC colour map back "
                     "to class ids")
    unlabelled = sorted(photos.keys() - mask_files.keys())
    if unlabelled:
        notes.append(f"{count(len(unlabelled), 'photo')} in JPEGImages/ without a mask, not imported: "
                     f"{examples(unlabelled)}")
    notes += absent_classes_note(present, classes)
    splits = {p.stem: read_list(p) for p in sorted((src / "ImageSets" / "Segmentation").glob("*.txt"))}
    return Plan(classes, pairs, partial(_voc_ids, rgb_seen=[]), splits=splits, notes=notes)
