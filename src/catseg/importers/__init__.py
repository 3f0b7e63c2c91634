"""Existing dataset layouts -> a catseg dataset folder: Oxford-IIIT Pet, PASCAL VOC / labelme2voc, and
plain folders of photos and masks.

Each importer first pairs photos with annotations and checks them, collecting every problem into one
CatsegError; only then does it write, through data.DatasetWriter, so a failed import leaves nothing
behind. Oxford-IIIT Pet is the exception its release calls for: an unreadable photo, a missing trimap
or a trimap of the wrong size is skipped with a warning. The source folder is only read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from catseg.data import provenance
from catseg.errors import CatsegError
from catseg.importers.common import ImportReport, write_plan
from catseg.importers.masks import plan_masks, read_colors_file
from catseg.importers.oxford import OXFORD_LABELS, plan_oxford, trimap_to_mask
from catseg.importers.voc import plan_voc

__all__ = ["FORMATS", "OXFORD_LABELS", "ImportReport", "import_dataset", "read_colors_file", "trimap_to_mask"]

FORMATS = ("oxford-pets", "voc", "masks")


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
    ignore_id: int | None = None,
    splits: Sequence[str] = (),
    channel_axis: str | None = None,
    band_names: Sequence[str] | None = None,
) -> ImportReport:
    """Return the report of importing SRC, laid out as FMT, into the new dataset folder OUT_DIR.

    masks only: `ignore_id` is the mask value that means void (written as 255); `splits` are
    'NAME=IMAGES_DIR,MASKS_DIR' (relative to SRC), one per named split, recorded in dataset.json."""
    src, out_dir = Path(src), Path(out_dir)
    problems = _option_problems(fmt, labels, images, masks, colors, classes, download)
    problems += _masks_option_problems(fmt, images, masks, ignore_id, splits)
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
        plan = plan_oxford(src, labels)
    elif fmt == "voc":
        plan = plan_voc(src, names)
    else:
        folders = dict(_parse_split(s) for s in splits) or {"": (images, masks)}
        plan = plan_masks(src, {name: (src / i, src / m) for name, (i, m) in folders.items()}, colors, names,
                          ignore_id, channel_axis)
    plan.notes[:0] = notes
    extra: dict[str, Any] = {"format": fmt}
    if fmt == "oxford-pets":
        extra["labels"] = labels
    command = _command(fmt, src, out_dir, labels=labels, images=images, masks=masks, colors=colors, classes=classes,
                       ignore_id=ignore_id, split=list(splits) or None, channel_axis=channel_axis)
    return write_plan(plan, fmt, src, out_dir, force, provenance(command, src, **extra), inputs=[colors],
                      channel_axis=channel_axis, band_names=band_names)


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
    defaults = {"labels": "binary", "images": "images", "masks": "masks", "colors": None, "classes": None,
                "ignore_id": None, "split": None, "channel_axis": None}
    flags = [f"--{k.replace('_', '-')} {w}" for k, v in options.items() if v != defaults[k]
             for w in (v if isinstance(v, list) else [v])]
    return " ".join(["catseg import", fmt, str(src), str(out_dir), *flags])


def _masks_option_problems(fmt: str, images: str, masks: str, ignore_id: int | None,
                           splits: Sequence[str]) -> list[str]:
    problems = []
    if fmt != "masks" and (ignore_id is not None or splits):
        problems.append("--ignore-id and --split are for the masks format")
    if ignore_id is not None and not 0 <= ignore_id <= 254:
        problems.append(f"--ignore-id {ignore_id}: a mask value 0-254 (255 already means ignore)")
    if splits and (images, masks) != ("images", "masks"):
        problems.append("--split names each split's images and masks folders; drop --images/--masks")
    names = []
    for text in splits:
        try:
            names.append(_parse_split(text)[0])
        except CatsegError as exc:
            problems.append(str(exc))
    if len(set(names)) != len(names):
        problems.append(f"--split names a split twice: {', '.join(names)}")
    return problems


def _parse_split(text: str) -> tuple[str, tuple[str, str]]:
    """Return (name, (images dir, masks dir)) of a --split NAME=IMAGES_DIR,MASKS_DIR."""
    name, _, folders = text.partition("=")
    parts = folders.split(",")
    if not name.strip() or len(parts) != 2 or not all(p.strip() for p in parts):
        raise CatsegError(f"--split {text!r}: write it as NAME=IMAGES_DIR,MASKS_DIR, e.g. train=train,trainannot")
    return name.strip(), (parts[0].strip(), parts[1].strip())
