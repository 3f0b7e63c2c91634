"""Class-id masks -> labelme annotations that labelme opens and `catseg convert` turns back into the same masks.

`mask_to_shapes` is the pure part: one polygon per connected region per class, simplified with
cv2.approxPolyDP. labelme draws shapes in file order and the last one wins, so shapes are written
from the largest filled outline to the smallest: a region inside another region's hole is written
after it, and a background hole is a later `_background_` polygon. Shapes carry
`flags: {"catseg": true}` and a description, so a person can tell them from their own.

The rest writes a labelme JSON for a photo: `imagePath` relative to the JSON, the size labelme shows
(EXIF orientation applied where labelme applies it), and a labels.txt that makes `catseg convert
--labels` give every class its id again. This module imports neither labelme nor torch.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from catseg.errors import CatsegError
from catseg.images import exif_orientation, open_image
from catseg.labelme import BACKGROUND_LABEL, IGNORE_ID, IGNORE_LABEL, _stored_image, read_labels_file
from catseg.labelme_image import image_grid

# The labelme file format written (the one `catseg demo` writes); labelme 4 to 6 open it.
LABELME_VERSION = "5.5.0"
MACHINE_FLAG = "catseg"  # shape flag that marks a machine-made shape
LABELS_FILE = "labels.txt"

# The Pillow transpose that undoes each EXIF orientation (5 and 7 are their own inverse, 6 and 8 swap).
_UNDO_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                     4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
                     7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}


@dataclass(frozen=True)
class LabelmeOptions:
    """How predicted masks become labelme polygons."""

    tolerance: float = 1.0  # pixels a simplified outline may stray from the mask (cv2.approxPolyDP epsilon)
    min_area: int = 20  # regions (and background holes) of fewer pixels are dropped
    embed_image: bool = False  # also store the photo in the JSON (imageData), as labelme's "Save With Image Data"

    def validate(self) -> LabelmeOptions:
        """Return self, or raise one CatsegError listing every bad value."""
        problems = []
        if not 0 <= self.tolerance <= 100:
            problems.append(f"--tolerance {self.tolerance}: give pixels between 0 (every outline pixel) and 100")
        if self.min_area < 1:
            problems.append(f"--min-area {self.min_area}: give at least 1 pixel")
        if problems:
            raise CatsegError("bad labelme options", problems)
        return self


@dataclass
class _Region:
    value: int  # class id (or the ignore value)
    fill: int  # pixels inside the outer outline, holes included: the drawing order
    contour: np.ndarray  # (N, 1, 2) int32 outline through the region's boundary pixels, image coordinates
    box: tuple[int, int, int, int]  # x, y, w, h


# ----------------------------------------------------------------------------- masks -> shapes
def mask_to_shapes(mask: np.ndarray, class_names: Sequence[str], tolerance: float = 1.0, min_area: int = 20,
                   ignore_index: int = IGNORE_ID, description: str = "catseg prediction",
                   background: int | None = 0) -> list[dict[str, Any]]:
    """Return labelme polygon shapes that draw `mask` ((H, W) class ids) again, in labelme's drawing order.

    Class 0 is what labelme leaves unlabelled (`_background_`), `ignore_index` becomes `__ignore__`,
    class k > 0 is `class_names[k]`. Each 8-connected region of a class gives one polygon; background
    enclosed by one region is a later `_background_` polygon; regions and holes under `min_area`
    pixels are dropped (they take the colour around them). With `background` None (no class is background,
    catseg.classes) class 0 is drawn under its own name like every class, and there are no holes.
    """
    if background not in (0, None):
        raise CatsegError(f"background is class {background}; labelme's _background_ is id 0, so labelme "
                          "output needs background at id 0 or no background class")
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"mask must be 2-D uint8 class ids, got {mask.dtype} with shape {mask.shape}")
    values = [int(v) for v in np.unique(mask)]
    bad = [v for v in values if v >= len(class_names) and v != ignore_index]
    if bad:
        raise ValueError(f"mask holds values {bad} beyond the {len(class_names)} class names and ignore {ignore_index}")
    regions: list[_Region] = []
    painted = np.zeros(mask.shape, dtype=bool)  # what the non-background polygons cover, holes included
    for value in values:
        if value != background:
            regions += _regions(mask == value, value, min_area, connectivity=8, painted=painted)
    if painted.any() and background is not None:
        # Background needs a polygon only where a region's outline painted over it. 4-connected, so a
        # background hole stays apart from the outside where an 8-connected outline pinches diagonally.
        holes = (mask == 0) & painted
        regions += _regions(mask == 0, 0, min_area, connectivity=4, painted=None, keep=holes)
    regions.sort(key=lambda r: -r.fill)  # stable: equal fills never contain one another
    return [_shape(_label(r.value, class_names, ignore_index, background), _points(r, tolerance), description)
            for r in regions]


def _regions(binary: np.ndarray, value: int, min_area: int, connectivity: int, painted: np.ndarray | None,
             keep: np.ndarray | None = None) -> list[_Region]:
    """Return the connected regions of `binary` with at least min_area pixels (and touching `keep` when given),
    marking each one's filled outline in `painted`."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=connectivity)
    out = []
    for i in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[i])
        if area < min_area:
            continue
        crop = labels[y:y + h, x:x + w] == i
        if keep is not None and not (keep[y:y + h, x:x + w] & crop).any():
            continue
        padded = np.pad(crop, 1).astype(np.uint8)
        contours, _ = cv2.findContours(padded, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        contour = max(contours, key=len)  # a 4-connected region is one 8-connected outline; a guard only
        filled = cv2.drawContours(np.zeros_like(padded), [contour], -1, 1, thickness=cv2.FILLED)[1:-1, 1:-1]
        if painted is not None:
            painted[y:y + h, x:x + w] |= filled.astype(bool)
        out.append(_Region(value, int(filled.sum()), contour + np.array([x - 1, y - 1], np.int32), (x, y, w, h)))
    return out


def _points(region: _Region, tolerance: float) -> list[list[float]]:
    """Return at least 3 [x, y] points outlining the region (labelme and convert need 3 for a polygon)."""
    contour, epsilon = region.contour, tolerance
    while epsilon >= 0.25:  # a thin region may simplify to a line: simplify it less
        simplified = cv2.approxPolyDP(region.contour, epsilon, True)
        if len(simplified) >= 3:
            contour = simplified
            break
        epsilon /= 2
    if len(contour) < 3:  # a single pixel or a straight one-pixel line: its box is the region
        x, y, w, h = region.box
        contour = np.array([[[x, y]], [[x + w - 1, y]], [[x + w - 1, y + h - 1]], [[x, y + h - 1]]])
    return [[float(px), float(py)] for px, py in contour[:, 0, :]]


def _label(value: int, class_names: Sequence[str], ignore_index: int, background: int | None = 0) -> str:
    if value == ignore_index:
        return IGNORE_LABEL
    return BACKGROUND_LABEL if value == background else str(class_names[value])


def _shape(label: str, points: list[list[float]], description: str) -> dict[str, Any]:
    return {"label": label, "points": points, "group_id": None, "description": description,
            "shape_type": "polygon", "flags": {MACHINE_FLAG: True}, "mask": None}


def is_machine_made(shape: dict[str, Any]) -> bool:
    """Return True for a shape catseg wrote and no person has unflagged."""
    return bool((shape.get("flags") or {}).get(MACHINE_FLAG))


# ----------------------------------------------------------------------------- labels.txt
def labels_text(class_names: Sequence[str], background: int | None = 0) -> str:
    """Return a labels.txt in labelme's convention giving class k the id k: `__ignore__`, `_background_`,
    then class_names[1:] (class 0, whatever its name, is labelme's `_background_`). Without a background
    class, the id-0 line names class 0 itself (`__ignore__`, then every class)."""
    reserved = {IGNORE_LABEL, BACKGROUND_LABEL, "background"}
    named = list(class_names[1:] if background is not None else class_names)
    clash = [n for n in named if n in reserved or not n.strip() or n != n.strip() or "\n" in n]
    if clash:
        raise CatsegError(f"classes {clash} cannot be written as labelme labels (reserved, blank or with "
                          "surrounding spaces); rename them in the dataset and train again")
    first = [BACKGROUND_LABEL] if background is not None else []
    return "\n".join([IGNORE_LABEL, *first, *named]) + "\n"


def labels_file_problem(out_dir: Path, class_names: Sequence[str], background: int | None = 0) -> str | None:
    """Return why out_dir/labels.txt cannot stay as it is for these classes, or None (absent or compatible:
    it gives every class the same id, and may list more classes after them)."""
    path = Path(out_dir) / LABELS_FILE
    if not path.exists():
        return None
    try:
        existing = read_labels_file(path)
    except CatsegError as exc:
        return str(exc)
    wanted = {name: i for i, name in enumerate(class_names) if i != background}
    wrong = [f"{name} (id {existing.get(name)}, needs {i})" for name, i in wanted.items() if existing.get(name) != i]
    return None if not wrong else f"{path}: gives other ids to {', '.join(wrong)}"


# ----------------------------------------------------------------------------- one photo -> labelme JSON
def labelme_document(photo: str | Path, json_path: str | Path, mask: np.ndarray, class_names: Sequence[str],
                     options: LabelmeOptions = LabelmeOptions(), description: str = "catseg prediction",
                     ignore_index: int = IGNORE_ID, background: int | None = 0) -> dict[str, Any]:
    """Return the labelme JSON document annotating `photo` with `mask` ((H, W) class ids on the photo as
    catseg reads it, EXIF orientation applied), to be saved at `json_path`."""
    photo, json_path = Path(photo), Path(json_path)
    data = photo.read_bytes()
    (height, width), keep_raw = image_grid(data, str(photo), embedded=False)
    if keep_raw:  # labelme shows this format unrotated: turn the mask back onto its pixels
        orientation = exif_orientation(open_image(data, str(photo), decode=False))
        mask = np.asarray(Image.fromarray(mask).transpose(_UNDO_ORIENTATION[orientation]))
    if mask.shape != (height, width):
        raise ValueError(f"mask {mask.shape} does not cover {photo}, which labelme shows as {height}x{width}")
    image_data = None
    if options.embed_image:
        stored, _ = _stored_image(data, str(photo), keep_raw)  # the bytes convert would store: same pixel grid
        image_data = base64.b64encode(stored).decode("ascii")
    shapes = mask_to_shapes(mask, class_names, options.tolerance, options.min_area, ignore_index, description,
                            background)
    return {"version": LABELME_VERSION, "flags": {}, "shapes": shapes, "imagePath": relative_image_path(photo, json_path),
            "imageData": image_data, "imageHeight": height, "imageWidth": width}


def labelme_json_bytes(doc: dict[str, Any]) -> bytes:
    """Return a labelme document as the UTF-8 JSON labelme itself writes (indent 2)."""
    return (json.dumps(doc, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def relative_image_path(photo: Path, json_path: Path) -> str:
    """Return imagePath: the photo relative to the JSON's folder, with forward slashes (absolute across drives)."""
    photo_abs = os.path.abspath(photo)  # not resolve(): a symlinked photo stays where the person put it
    try:
        rel = os.path.relpath(photo_abs, os.path.dirname(os.path.abspath(json_path)))
    except ValueError:  # Windows, another drive
        return Path(photo_abs).as_posix()
    return Path(rel).as_posix()


def annotation_path(out_dir: str | Path, photo: str | Path) -> Path:
    """Return where the labelme JSON of a photo goes: out_dir/<stem>.json, as labelme names it."""
    return Path(out_dir) / f"{Path(photo).stem}.json"


def split_annotated(photos: Sequence[Path], out_dir: str | Path, force: bool) -> tuple[list[Path], list[Path]]:
    """Return (photos to annotate, photos skipped because out_dir already holds their labelme JSON): a
    person's annotation is never replaced unless force."""
    if force:
        return list(photos), []
    skipped = [p for p in photos if annotation_path(out_dir, p).exists()]
    return [p for p in photos if p not in skipped], skipped


def check_labels_file(out_dir: str | Path, class_names: Sequence[str], force: bool,
                      background: int | None = 0) -> str | None:
    """Return the labels.txt text to write into out_dir (None: one that fits is there); raise a CatsegError
    when one that gives other ids is there and not force. Checked before anything is written."""
    text = labels_text(class_names, background)
    path = Path(out_dir) / LABELS_FILE
    problem = labels_file_problem(Path(out_dir), class_names, background)
    if problem is not None and not force:
        raise CatsegError(f"{problem}; `catseg convert --labels {path}` would give the classes other ids. Choose "
                          "another output folder, or pass --force to replace it")
    return text if problem is not None or not path.exists() else None
