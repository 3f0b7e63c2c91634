"""labelme JSON -> class-index masks, pixel for pixel what labelme's own labelme2voc writes.

Each shape is drawn by catseg.shapes exactly as labelme draws it; this module finds the JSON files
and their photos, checks them, and writes the dataset folder. It imports neither labelme nor torch.

labels.txt follows labelme's convention: `__ignore__` (optional, first), `_background_` (id 0),
then one class per line (ids 1..n). `__ignore__` shapes write 255, `_background_` shapes write 0.
In dataset.json, class 0 is called "background".
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from catseg.bands import (
    cube_npy_bytes,
    dataset_channels,
    false_colour,
    pair_cubes,
    read_bands,
    same_bands,
)
from catseg.data import DatasetWriter, dataset_json, iter_files, provenance
from catseg.errors import CatsegError
from catseg.images import (
    image_bytes_for_dataset,
    mask_png_bytes,
    open_image,
    oriented_size,
    to_rgb_array,
    voc_colormap,
)
from catseg.labelme_image import image_bytes, image_grid
from catseg.shapes import Invalid, patch_problem, shape_problem, shapes_to_mask

log = logging.getLogger(__name__)

IGNORE_LABEL = "__ignore__"
BACKGROUND_LABEL = "_background_"
IGNORE_ID = 255


@dataclass
class ConvertReport:
    """What `convert_labelme` did: where the dataset is, its classes, what was converted and skipped."""

    out_dir: Path
    classes: list[str]
    converted: list[str] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    label_to_id: dict[str, int] = field(default_factory=dict)
    viz_dir: Path | None = None

    def summary(self) -> str:
        """Return the multi-line text the CLI prints."""
        lines = [f"converted {len(self.converted)} labelme file(s)"]
        lines.append("classes: " + ", ".join(f"{i} {name}" for i, name in enumerate(self.classes))
                     + f"; {IGNORE_ID} = ignore ({IGNORE_LABEL})")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} invalid file(s):")
            lines += [f"  - {path}: {reason}" for path, reason in self.skipped]
        if self.viz_dir is not None:
            lines.append(f"overlays to check by eye: {self.viz_dir}")
        lines.append(f"dataset: {self.out_dir}")
        return "\n".join(lines)


@dataclass
class _Source:
    """One labelme file as read in the validation pass (without its embedded image)."""

    path: Path
    stem: str
    doc: dict[str, Any]
    embedded: bool = False
    image_name: str = ""
    size: tuple[int, int] = (0, 0)  # (height, width) of the grid labelme drew on
    keep_raw: bool = False  # store the unrotated pixels (see labelme_image.image_grid)
    problem: str | None = None  # why it cannot be converted; None when valid


# ----------------------------------------------------------------------------- labels
def read_labels_file(path: Path) -> dict[str, int]:
    """Return {label: id} from a labelme labels.txt (`__ignore__`, `_background_`, then classes).

    A file with no `_background_` line gives id 0 to its first class: a dataset without a background
    class (catseg.classes), whose every pixel is one of the listed classes, as `catseg predict --format
    labelme` writes it for such a run. Pixels nobody painted are then that first class.
    """
    try:
        names = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise CatsegError(f"{path}: cannot read the labels file ({exc}).") from exc
    names = [n for n in names if n]
    if names[:1] == [IGNORE_LABEL]:
        names = names[1:]
    problems = []
    if BACKGROUND_LABEL in names[1:]:
        problems.append(f"{BACKGROUND_LABEL} must be the first class (id 0), after an optional {IGNORE_LABEL} line")
    for reserved in (IGNORE_LABEL, "background"):
        if reserved in names[1:]:
            problems.append(f"{reserved!r} cannot be a class name here; remove that line")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"listed more than once: {', '.join(duplicates)}")
    if len(names) > IGNORE_ID:
        problems.append(f"{len(names)} classes; at most {IGNORE_ID} fit in a mask beside the ignore value")
    if problems:
        raise CatsegError(f"{path}: not a labelme labels file ({IGNORE_LABEL}, {BACKGROUND_LABEL}, "
                          "then one class per line)", problems)
    return {**{name: i for i, name in enumerate(names)}, IGNORE_LABEL: IGNORE_ID}


def _labels_from_sources(sources: list[_Source]) -> dict[str, int]:
    """Return {label: id} for every label in the folder: background 0, the rest sorted from 1."""
    found = {s.get("label") for src in sources for s in src.doc.get("shapes") or []
             if isinstance(s, dict) and isinstance(s.get("label"), str)}
    # "background" is left out so files using it get a clear per-file problem instead of a clash.
    special = (IGNORE_LABEL, BACKGROUND_LABEL, "background")
    names = sorted(n for n in found if isinstance(n, str) and n and n not in special)
    if len(names) >= IGNORE_ID:
        raise CatsegError(f"{len(names)} labels found; at most {IGNORE_ID - 1} classes fit beside background and "
                          f"ignore. Merge labels, or list the ones to keep in a labels file (--labels).")
    return {BACKGROUND_LABEL: 0, **{n: i for i, n in enumerate(names, start=1)}, IGNORE_LABEL: IGNORE_ID}


def _class_names(label_to_id: dict[str, int]) -> list[str]:
    by_id = {i: n for n, i in label_to_id.items() if i != IGNORE_ID}
    return ["background" if by_id[i] == BACKGROUND_LABEL else by_id[i] for i in range(len(by_id))]


# ----------------------------------------------------------------------------- reading and checking
def _read_doc(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Invalid(f"not valid JSON ({exc}); re-save it in labelme") from exc
    except RecursionError:
        raise Invalid("not a labelme file (JSON nested too deeply to read); move it out of the folder") from None
    except OSError as exc:
        raise Invalid(f"cannot read it ({exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("shapes"), list):
        raise Invalid("not a labelme file (no 'shapes' list); move it out of the folder")
    return doc


def _shapes_problems(shapes: list[Any], label_to_id: dict[str, int]) -> list[str]:
    problems = [f"shape {i} {p}" for i, s in enumerate(shapes) if (p := shape_problem(s)) is not None]
    labels = {s.get("label") for s in shapes if isinstance(s, dict) and isinstance(s.get("label"), str)}
    unknown = sorted(n for n in labels - set(label_to_id) if n)
    if "background" in unknown:
        problems.append(f"label 'background' is reserved for class 0; use {BACKGROUND_LABEL} to paint background "
                        "or rename it")
        unknown.remove("background")
    if unknown:
        problems.append(f"labels {', '.join(map(repr, unknown))} are not in the labels file; add them to it "
                        "or rename the shapes")
    return problems


def _check_source(source: _Source, label_to_id: dict[str, int]) -> None:
    """Check one labelme file completely (shapes, labels, image, size); raise Invalid naming all problems."""
    shapes = source.doc["shapes"]
    problems = _shapes_problems(shapes, label_to_id)
    try:
        data, source.image_name, source.embedded = image_bytes(source.path, source.doc)
        source.size, source.keep_raw = image_grid(data, source.image_name, source.embedded)
    except Invalid as exc:
        problems.append(str(exc))
    else:
        problems += _size_problems(source)
        if not problems:
            problems += [f"shape {i} {p}" for i, s in enumerate(shapes)
                         if (s.get("shape_type") == "mask") and (p := patch_problem(s, *source.size))]
    source.doc.pop("imageData", None)  # the validation pass keeps no image in memory
    if problems:
        raise Invalid("; ".join(problems))


def _size_problems(source: _Source) -> list[str]:
    height, width = source.size
    declared = (source.doc.get("imageHeight"), source.doc.get("imageWidth"))
    if all(v is None for v in declared) or declared == (height, width):
        return []
    return [f"imageHeight x imageWidth is {declared[0]} x {declared[1]} but the image {source.image_name} is "
            f"{height} x {width} (after EXIF orientation); annotate the right image, or open and re-save in labelme"]


def _find_sources(src_dir: Path, out_dir: Path) -> list[_Source]:
    """Return every labelme file under src_dir (out_dir excluded); unreadable ones and duplicate stems
    carry their problem."""
    out = out_dir.resolve()
    paths = [p for p in iter_files(src_dir, ".json") if out != p.resolve() and out not in p.resolve().parents]
    if not paths:
        raise CatsegError(f"{src_dir}: no labelme .json files found (searched recursively). "
                          "Point convert at the folder you saved the annotations in.")
    by_stem: dict[str, list[Path]] = {}
    for path in paths:
        by_stem.setdefault(path.stem, []).append(path)
    sources = []
    for path in paths:
        source = _Source(path, path.stem, {"shapes": []})
        try:
            source.doc = _read_doc(path)
        except Invalid as exc:
            source.problem = str(exc)
        others = [str(p) for p in by_stem[path.stem] if p != path]
        if others and source.problem is None:
            source.problem = (f"stem {path.stem!r} is also used by {', '.join(others)}; rename one of them "
                              "(each becomes images/<stem> and masks/<stem>.png)")
        sources.append(source)
    return sources


# ----------------------------------------------------------------------------- writing
def _stored_image(data: bytes, name: str, keep_raw: bool) -> tuple[bytes, str]:
    """Return (bytes, extension) for images/: the original bytes when possible, else a lossless PNG."""
    if not keep_raw:
        return image_bytes_for_dataset(data, name)
    image = open_image(data, name)
    if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"):
        image = image.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG")  # Pillow writes EXIF to a PNG only when asked, so no orientation tag
    return buf.getvalue(), ".png"


def _overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Return the (H, W, 3) uint8 photo with every labelled (non-zero) pixel blended with its VOC colour."""
    colors = voc_colormap(256)[mask].astype(np.float32)
    out = image.astype(np.float32)
    labelled = mask != 0
    out[labelled] = (1.0 - alpha) * out[labelled] + alpha * colors[labelled]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _write_source(writer: DatasetWriter, source: _Source, label_to_id: dict[str, int], viz: bool) -> None:
    try:
        doc = _read_doc(source.path) if source.embedded else source.doc
        data, name, _ = image_bytes(source.path, doc)
    except Invalid as exc:  # it was fine when checked
        raise CatsegError(f"{source.path}: changed during the conversion ({exc}); run it again.") from exc
    stored, ext = _stored_image(data, name, source.keep_raw)
    mask = shapes_to_mask(source.doc["shapes"], *source.size, label_to_id)
    writer.write_image(source.stem, stored, ext)
    writer.write_file(f"masks/{source.stem}.png", mask_png_bytes(mask))
    if viz or _loader_size(stored) != source.size:
        rgb = to_rgb_array(open_image(stored, name))
        if rgb.shape[:2] != source.size:  # the file changed since it was checked
            raise CatsegError(f"{source.path}: its image {name} changed during the conversion; run it again.")
        if viz:
            buf = io.BytesIO()
            Image.fromarray(_overlay(rgb, mask)).save(buf, format="JPEG", quality=90)
            writer.write_file(f"viz/{source.stem}.jpg", buf.getvalue())


def _write_cube(writer: DatasetWriter, source: _Source, label_to_id: dict[str, int], viz: bool, cube_path: Path,
                axis: str | None, first: Path | None) -> Path:
    """Write the band image paired with a labelme file (drawn on its preview) as images/<stem>.npy, and its mask."""
    cube = read_bands(cube_path, axis, hw=source.size, hw_from=str(source.path))
    same_bands(cube, cube_path, first)
    mask = shapes_to_mask(source.doc["shapes"], *source.size, label_to_id)
    stored = writer.write_image(source.stem, cube_npy_bytes(cube), ".npy")
    writer.write_file(f"masks/{source.stem}.png", mask_png_bytes(mask))
    if viz:
        buf = io.BytesIO()
        Image.fromarray(_overlay(false_colour(cube), mask)).save(buf, format="JPEG", quality=90)
        writer.write_file(f"viz/{source.stem}.jpg", buf.getvalue())
    return stored


def _pair_cubes(sources: list[_Source], images: Path, axis: str | None) -> dict[str, Path]:
    """Return {stem: band image} for the valid sources; a missing cube or one of another size is their problem."""
    checked = [s for s in sources if s.problem is None]
    found, problems = pair_cubes(images, [(s.stem, s.path, s.size) for s in checked], axis)
    for source in checked:
        source.problem = problems.get(source.stem, source.problem)
    return found


def _loader_size(stored: bytes) -> tuple[int, int]:
    """Return (height, width) catseg's loader will see for stored image bytes, without decoding pixels."""
    with Image.open(io.BytesIO(stored)) as image:
        width, height = oriented_size(image)
        return height, width


def _command(src_dir: Path, out_dir: Path, labels_file: Path | None, skip_invalid: bool, viz: bool,
             images: Path | None = None, axis: str | None = None) -> str:
    parts = ["catseg convert", str(src_dir), str(out_dir)]
    parts += [f"--images {images}"] if images is not None else []
    parts += [f"--channel-axis {axis}"] if axis is not None else []
    parts += [f"--labels {labels_file}"] if labels_file is not None else []
    parts += ["--skip-invalid"] if skip_invalid else []
    parts += ["--viz"] if viz else []
    return " ".join(parts)


# ----------------------------------------------------------------------------- the stage
def convert_labelme(
    src_dir: Path,
    out_dir: Path,
    labels_file: Path | None = None,
    force: bool = False,
    skip_invalid: bool = False,
    viz: bool = False,
    images: Path | None = None,
    channel_axis: str | None = None,
    band_names: list[str] | None = None,
) -> ConvertReport:
    """Return the report of turning a folder of labelme JSON files (recursive) into a dataset folder.

    Every file is checked before anything is written; invalid files are all reported in one
    CatsegError, or with skip_invalid converted around and listed in the report. OUT_DIR must not
    exist unless force; it appears complete or not at all. The source folder is only read.
    With `images`, each JSON was drawn on a preview of the band image of its stem in that folder
    (catseg.bands), which images/ gets instead of the preview; `channel_axis` as for `catseg import`.
    """
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    if not src_dir.is_dir():
        raise CatsegError(f"{src_dir}: no such folder. Give the folder that holds the labelme .json files.")
    # refuses a bad OUT_DIR before slow work; --force must not replace a folder holding the sources
    writer = DatasetWriter(out_dir, force=force, inputs=[labels_file, src_dir])
    label_to_id = read_labels_file(labels_file) if labels_file is not None else None
    sources = _find_sources(src_dir, out_dir)
    if label_to_id is None:
        label_to_id = _labels_from_sources(sources)  # unreadable files add nothing
    classes = _class_names(label_to_id)
    log.info("label ids: %s", ", ".join(f"{i} {n}" for i, n in enumerate(classes)) + f", {IGNORE_ID} ignore")
    for source in sources:
        if source.problem is None:
            try:
                _check_source(source, label_to_id)
            except Invalid as exc:
                source.problem = str(exc)
    cubes = _pair_cubes(sources, Path(images), channel_axis) if images is not None else {}
    valid = [s for s in sources if s.problem is None]
    skipped = [(s.path, s.problem) for s in sources if s.problem is not None]
    _raise_if_invalid(src_dir, len(sources), skipped, skip_invalid and bool(valid))
    report = ConvertReport(out_dir, classes, [s.stem for s in valid], skipped, label_to_id,
                           out_dir / "viz" if viz else None)
    with writer:
        stored: list[Path] = []
        for source in valid:
            if images is None:
                _write_source(writer, source, label_to_id, viz)
            else:
                stored.append(_write_cube(writer, source, label_to_id, viz, cubes[source.stem], channel_axis,
                                          stored[0] if stored else None))
        source_info = provenance(_command(src_dir, out_dir, labels_file, skip_invalid, viz, images, channel_axis),
                                 src_dir,
                                 labels_file=str(Path(labels_file).resolve()) if labels_file else None,
                                 files=len(valid), skipped=[str(p) for p, _ in skipped])
        writer.write_dataset_json(dataset_json(classes, source=source_info,
                                               channels=dataset_channels(stored, names=band_names) if stored else None))
    log.info("converted %d labelme file(s) into %s", len(valid), out_dir)
    return report


def _raise_if_invalid(src_dir: Path, total: int, skipped: list[tuple[Path, str]], may_skip: bool) -> None:
    if not skipped or may_skip:
        return
    if len(skipped) == total:
        message = f"{src_dir}: none of the {total} labelme file(s) can be converted; nothing was written."
    else:
        message = (f"{src_dir}: {len(skipped)} of {total} labelme file(s) cannot be converted; nothing was "
                   "written. Fix them, or pass --skip-invalid to convert the rest.")
    raise CatsegError(message, [f"{path}: {reason}" for path, reason in skipped])
