"""Plain folders of photos and masks: masks of class ids, binary 0/255 masks, or colour masks with a --colors file."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

import numpy as np

from catseg.data import IGNORE_INDEX
from catseg.errors import CatsegError
from catseg.importers.common import (
    Plan,
    absent_classes_note,
    binary_ids,
    cap,
    color_code,
    count,
    default_classes,
    id_mask,
    id_problems,
    open_mask,
    pair_files,
    rgb_to_ids,
    scan_folder,
    scan_pairs,
)


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
        if color_code(rgb) in table:
            problems.append(f"{path}:{number}: colour {rgb} is already used on an earlier line")
        elif name in names:
            problems.append(f"{path}:{number}: class {name!r} is already named on an earlier line")
        else:
            table[color_code(rgb)] = IGNORE_INDEX if name == "__ignore__" else len(names)
            if name != "__ignore__":
                names.append(name)
                colors.append(rgb)
    if not problems and len(names) < 2:
        problems.append(f"{path}: names {len(names)} classes; give background (class 0) first, then at least one class")
    if problems:
        raise CatsegError(f"{path}: invalid --colors file", problems)
    return names, colors, table  # type: ignore[return-value]


def _color_ids(path: Path, table: Mapping[int, int], colors_file: Path) -> np.ndarray:
    rgb = np.asarray(open_mask(path).convert("RGB"))
    return rgb_to_ids(rgb, table, path, f"add a 'name r g b' line for it to {colors_file}")


def plan_masks(src: Path, folders: Mapping[str, tuple[Path, Path]], colors_file: Path | None,
               given: list[str] | None, ignore_id: int | None = None, channel_axis: str | None = None) -> Plan:
    """Return the checked import plan for photos and masks folders; GIVEN is --classes, if passed.

    `folders` maps a split name to its (photos, masks) folders; the name "" means no named split.
    `ignore_id`, when given, is the mask value that means void: it is stored as 255."""
    missing = [f"{d}: missing" for pair in folders.values() for d in pair if not d.is_dir()]
    if missing:
        raise CatsegError(f"{src}: expected photos and masks in subfolders (set them with --images and --masks, "
                          "or --split NAME=IMAGES,MASKS); nothing was written", missing)
    palette = read_colors_file(colors_file) if colors_file is not None else None
    pairs, problems, unlabelled, splits, seen_in = [], [], [], {}, {}
    for name, (photos_dir, masks_dir) in folders.items():
        photos, _, photo_dups = scan_folder(photos_dir)
        mask_files, _, mask_dups = scan_folder(masks_dir)
        found, pair_problems = pair_files(photos, mask_files, photos_dir)
        problems += photo_dups + mask_dups + pair_problems
        for stem, photo, _mask in found:
            if stem in seen_in:
                problems.append(f"{photo}: the stem {stem!r} is also in split {seen_in[stem]!r}; stems must be "
                                "unique across splits (rename one of the photos and its mask)")
            seen_in[stem] = name
        pairs += found
        if name:
            splits[name] = [stem for stem, _, _ in found]
        unlabelled += [f"{photos[s]}: no mask in {masks_dir}; not imported"
                       for s in sorted(photos.keys() - mask_files.keys())]
    to_ids: Callable[[Path], np.ndarray] = id_mask
    if palette is not None:
        to_ids = partial(_color_ids, table=palette[2], colors_file=colors_file)
    if ignore_id is not None:
        to_ids = partial(_void_to_ignore, to_ids=to_ids, ignore_id=ignore_id)
    present, scan_problems = scan_pairs(pairs, to_ids, channel_axis)
    problems += scan_problems
    notes: list[str] = []
    if ignore_id is not None:
        notes.append(f"mask value {ignore_id} (void) stored as {IGNORE_INDEX}: ignored by the loss and the metrics")
    seen = set(np.concatenate(list(present.values())).tolist()) if present else set()
    if palette is not None:
        classes, colors = palette[0], palette[1]
        notes.append(f"colour masks mapped to {len(classes)} classes with {colors_file}")
    elif seen <= {0, 255} and 255 in seen and ignore_id is None:
        classes, colors, to_ids = given or ["background", "class1"], None, binary_ids
        present = {p: np.where(ids == 255, 1, ids) for p, ids in present.items()}
        notes.append("masks hold only 0 and 255: read as binary masks, 255 -> class 1 (not ignore)")
    else:
        classes, colors = given or default_classes(present), None
        if given is None:
            notes.append(f"classes named {', '.join(classes[:3])}{', ...' if len(classes) > 3 else ''} by id; "
                         "name them with --classes")
    fix = "list every class with --classes, background first"
    if ignore_id is None:
        fix += ", or name the void value with --ignore-id"
    problems += id_problems(present, classes, fix)
    if problems:
        raise CatsegError(f"{src}: cannot import ({count(len(problems), 'problem')}); nothing was written",
                          cap(problems))
    return Plan(classes, pairs, to_ids, colors=colors, splits=splits,
                notes=notes + absent_classes_note(present, classes), warnings=unlabelled)


def _void_to_ignore(path: Path, to_ids: Callable[[Path], np.ndarray], ignore_id: int) -> np.ndarray:
    ids = to_ids(path)
    return np.where(ids == ignore_id, IGNORE_INDEX, ids).astype(np.uint8)
