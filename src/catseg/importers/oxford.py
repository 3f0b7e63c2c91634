"""Oxford-IIIT Pet: photos in images/, trimaps in annotations/trimaps/, splits and species in annotations/*.txt.

Unlike the other importers, an unreadable photo, a missing trimap or a trimap of the wrong size is skipped
with a warning, as the release calls for."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import partial
from pathlib import Path

import numpy as np

from catseg.data import IGNORE_INDEX
from catseg.errors import CatsegError
from catseg.images import read_mask
from catseg.importers.common import Plan, count, examples, read_list, scan_folder

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


def plan_oxford(src: Path, labels: str) -> Plan:
    """Return the import plan for an Oxford-IIIT Pet release in SRC under a --labels mode."""
    images_dir, annotations = src / "images", src / "annotations"
    trimaps_dir = annotations / "trimaps"
    missing = [f"{d}: missing" for d in (images_dir, trimaps_dir) if not d.is_dir()]
    if missing:
        raise CatsegError(
            f"{src}: not the Oxford-IIIT Pet layout (images/, annotations/trimaps/, annotations/trainval.txt). "
            f"Pass --download to fetch it, or download images.tar.gz and annotations.tar.gz from {OXFORD_PAGE} "
            f"and extract both into {src}.", missing)
    photos, others, duplicates = scan_folder(images_dir)
    pairs, warnings = [], [f"skipped {d}" for d in duplicates]
    for stem, photo in photos.items():
        trimap = trimaps_dir / f"{stem}.png"
        if trimap.is_file():
            pairs.append((stem, photo, trimap))
        else:
            warnings.append(f"skipped {photo.name}: no trimap {trimap}")
    notes = [f"--labels {labels}: {_OXFORD_NOTES[labels]}"]
    if others:
        notes.append(f"ignored {count(len(others), 'file')} in images/ that are not images: "
                     f"{examples(p.name for p in others)}")
    orphans = sorted({p.stem for p in trimaps_dir.glob("*.png") if not p.name.startswith(".")} - photos.keys())
    if orphans:
        notes.append(f"{count(len(orphans), 'trimap')} without a photo in images/: {examples(orphans)}")
    species: dict[str, int] = {}
    if labels == "species":
        species, guessed = _oxford_species(annotations / "list.txt", (stem for stem, _, _ in pairs))
        if guessed:
            notes.append(f"species of {count(guessed, 'image')} not in annotations/list.txt taken from the file name "
                         "(capital first letter = cat)")
    splits = {name: read_list(annotations / f"{name}.txt") for name in ("trainval", "test")
              if (annotations / f"{name}.txt").is_file()}
    if not splits:
        notes.append("no annotations/trainval.txt or test.txt: no official split recorded")
    return Plan(list(OXFORD_LABELS[labels]), pairs, partial(_oxford_ids, labels=labels, species=species),
                splits=splits, notes=notes, warnings=warnings, skip_bad_files=True)
