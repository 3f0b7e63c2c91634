"""`catseg check`: validate a dataset folder and describe it before any training starts.

`check_dataset` only reads. It never raises for a problem in the dataset: an unreadable
dataset.json, a missing folder or a broken file each become a line in `CheckReport.errors`, so that
one run lists everything to fix. Errors mean training would fail or learn from wrong labels
(`report.ok` is False, `catseg check` exits 1); warnings mean it would run but probably poorly, and
each names a remedy.

Speed: images are opened only as far as their header (size, mode, EXIF orientation), so a photo
whose header is fine but whose pixel data is truncated is not caught here. Masks are decoded, since
their values are the labels, and counted with one `np.bincount` each.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from catseg.bands import BAND_EXTENSIONS, band_header, dataset_axis, is_band_file
from catseg.check_text import class_table, figure_lines
from catseg.config import TrainConfig
from catseg.data import DatasetInfo, image_files_by_stem, read_dataset
from catseg.errors import CatsegError
from catseg.images import DECODE_ERRORS, IMAGE_EXTENSIONS, SWAPPING_ORIENTATIONS, exif_orientation, open_image

RARE_CLASS_FRACTION = 0.01  # a class under this share of labelled pixels gets an imbalance warning
TINY_OBJECT_FRACTION = 0.01  # median object under this share of its image gets a --size warning
FEW_IMAGES = 10  # fewer usable pairs than this gets a "more data" warning
_LISTED = 8  # file names shown in one warning line before "+N more"
_READ_ERRORS = DECODE_ERRORS


@dataclass
class Range:
    """Smallest, median and largest of a set of pixel lengths."""

    min: int
    median: float
    max: int


@dataclass
class CheckReport:
    """What `check_dataset` found: figures to assert on, and the problems as readable lines.

    File lists hold paths relative to the dataset folder (`images/a.jpg`, `masks/a.png`). Image
    figures (sizes, modes) cover every readable file in images/; class figures cover the usable
    pairs only (image and mask readable, same size, every mask value a class id or the ignore value),
    which is what training sees.
    """

    root: str
    classes: list[str] = field(default_factory=list)
    ignore_index: int = 255
    channels: dict[str, Any] | None = None  # dataset.json's "channels" block for band images
    num_images: int = 0  # image files in images/
    num_masks: int = 0  # .png files in masks/
    num_pairs: int = 0  # stems with both an image and a mask
    num_usable: int = 0  # pairs training can use
    width: Range | None = None  # of readable images, after EXIF orientation
    height: Range | None = None
    modes: dict[str, int] = field(default_factory=dict)  # PIL mode of the images -> count
    class_pixels: list[int] = field(default_factory=list)  # per class id, over usable masks
    class_images: list[int] = field(default_factory=list)  # usable masks containing each class
    ignore_pixels: int = 0
    median_object_fraction: float | None = None  # one object = one class but background in one image
    background: int | None = None  # the background class (catseg.classes), None when every class is real
    missing_masks: list[str] = field(default_factory=list)  # images without a mask
    extra_masks: list[str] = field(default_factory=list)  # masks without an image
    unreadable: list[str] = field(default_factory=list)
    size_mismatches: list[str] = field(default_factory=list)  # masks whose size differs from the image
    bad_values: dict[str, list[int]] = field(default_factory=dict)  # mask -> values that are no class
    empty_masks: list[str] = field(default_factory=list)  # only background (and ignore)
    all_ignore_masks: list[str] = field(default_factory=list)
    exif_rotated: list[str] = field(default_factory=list)  # images carrying an EXIF orientation
    split_missing: dict[str, list[str]] = field(default_factory=dict)  # split -> stems without a pair
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the dataset can be trained on: no errors and at least one usable pair."""
        return not self.errors and self.num_usable > 0

    @property
    def labelled_pixels(self) -> int:
        return sum(self.class_pixels)

    @property
    def class_fractions(self) -> list[float]:
        """Share of labelled (non-ignore) pixels per class id; zeros when nothing is labelled."""
        total = self.labelled_pixels
        return [p / total if total else 0.0 for p in self.class_pixels]

    def to_dict(self) -> dict[str, Any]:
        """Return every figure and problem as JSON-safe values, with `ok` and `class_fractions`."""
        doc = asdict(self)
        doc.update(ok=self.ok, labelled_pixels=self.labelled_pixels, class_fractions=self.class_fractions)
        return doc

    def format(self) -> str:
        """Return the report as text for a person: figures, a class table, then errors and warnings."""
        lines = [f"dataset   {self.root}"]
        if self.classes:
            lines += figure_lines(self)
            lines += ["", *class_table(self)]
        for title, items in (("errors", self.errors), ("warnings", self.warnings)):
            if items:
                lines += ["", f"{title} ({len(items)}):"]
                lines += ["  - " + item.replace("\n", "\n    ") for item in items]
        lines.append("")
        if self.ok:
            lines.append("OK: ready to train" + (" (see the warnings above)" if self.warnings else ""))
        else:
            lines.append(f"NOT READY: {len(self.errors)} error(s) to fix before training")
        return "\n".join(lines)


def check_dataset(root: str | Path) -> CheckReport:
    """Return a CheckReport of the dataset folder at `root`; reads only, never raises for bad data."""
    root = Path(root)
    try:
        info = read_dataset(root)
    except CatsegError as exc:
        report = CheckReport(root=str(root))
        report.errors += [f"{exc.message}: {p}" for p in exc.problems] or [exc.message]
        return report
    report = CheckReport(root=str(root), classes=list(info.classes), ignore_index=info.ignore_index,
                         class_pixels=[0] * info.num_classes, class_images=[0] * info.num_classes,
                         background=info.background, channels=info.channels)
    if info.ignore_index < info.num_classes:
        report.errors.append(
            f"{root / 'dataset.json'}: ignore_index {info.ignore_index} is also the id of class "
            f"{info.classes[info.ignore_index]!r}; that class could never be learned. Use 255 as the ignore value.")
    images, masks = _list_files(info, report)
    headers = {stem: _read_header(path, report, info.channels) for stem, path in images.items()}
    _check_bands(info, images, headers, report)
    pairs = sorted(images.keys() & masks.keys())
    report.num_pairs = len(pairs)
    report.missing_masks = [_rel(info, images[s]) for s in sorted(images.keys() - masks.keys())]
    report.extra_masks = [_rel(info, masks[s]) for s in sorted(masks.keys() - images.keys())]
    object_fractions: list[float] = []
    for stem in pairs:
        _check_pair(info, images[stem], masks[stem], headers[stem], report, object_fractions)
    if object_fractions:
        report.median_object_fraction = float(np.median(object_fractions))
    _check_splits(info, set(pairs), report)
    _summarise_images([h for h in headers.values() if h is not None], report)
    _add_warnings(report)
    if report.num_usable == 0:
        report.errors.append(f"{root}: no usable image/mask pair, so there is nothing to train on.")
    return report


# ----------------------------------------------------------------------------- files
@dataclass
class _Header:
    size: tuple[int, int]  # (width, height) as training sees it, EXIF orientation applied
    mode: str
    orientation: int
    channels: int = 3  # band images (catseg.bands): their band count and dtype
    dtype: str = "uint8"


def _rel(info: DatasetInfo, path: Path) -> str:
    return path.relative_to(info.root).as_posix()


def _list_files(info: DatasetInfo, report: CheckReport) -> tuple[dict[str, Path], dict[str, Path]]:
    """Return ({stem: image}, {stem: mask}) as training will see them; note folder-level problems."""
    images = image_files_by_stem(info.images_dir)
    masks: dict[str, Path] = {}
    skipped: list[str] = []
    image_names: dict[str, list[str]] = {}
    for folder in (info.images_dir, info.masks_dir):
        if not folder.is_dir():
            report.errors.append(f"{folder}: missing. A dataset folder needs images/, masks/ and dataset.json.")
            continue
        for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
            if folder == info.masks_dir and path.suffix == ".png":
                masks[path.stem] = path
            elif folder == info.images_dir and path.suffix.lower() in IMAGE_EXTENSIONS + BAND_EXTENSIONS:
                image_names.setdefault(path.stem, []).append(path.name)
            else:
                skipped.append(_rel(info, path))
    report.num_images, report.num_masks = len(images), len(masks)
    if skipped:
        report.warnings.append(f"{len(skipped)} file(s) are not read: {_names(skipped)}. Images must be one of "
                               f"{' '.join(IMAGE_EXTENSIONS)}; masks must be .png files of class ids.")
    for stem, names in image_names.items():
        if len(names) > 1:
            report.warnings.append(f"images/: {', '.join(names)} share the stem {stem!r}; only "
                                   f"{images[stem].name} is used. Rename or remove the others.")
    return images, masks


def _read_header(path: Path, report: CheckReport, channels: dict[str, Any] | None = None) -> _Header | None:
    """Return the image's oriented size, mode and EXIF orientation; the pixels are decoded too, so a truncated
    download is reported here rather than during training (an image past the pixel limit is not decoded).
    A band image (catseg.bands) gives its size, band count and dtype from its header."""
    if channels is not None or is_band_file(path):
        try:
            h = band_header(path, dataset_axis(path), int(channels["count"]) if channels else None)
        except CatsegError as exc:
            report.unreadable.append(path.relative_to(report.root).as_posix())
            report.errors.append(str(exc))
            return None
        return _Header((h.width, h.height), f"{h.channels}-band {h.dtype}", 1, h.channels, h.dtype)
    try:
        with open_image(path) as image:
            width, height = image.size
            mode = image.mode
            orientation = exif_orientation(image)
    except (CatsegError, *_READ_ERRORS) as exc:
        report.unreadable.append(path.relative_to(report.root).as_posix())
        report.errors.append(f"{exc} Or remove it." if isinstance(exc, CatsegError) else
                             f"{path}: cannot read this image ({exc}). Re-export it as JPEG or PNG, or remove it.")
        return None
    if orientation in SWAPPING_ORIENTATIONS:
        width, height = height, width
    if orientation != 1:
        report.exif_rotated.append(path.relative_to(report.root).as_posix())
    return _Header((width, height), mode, orientation)



def _check_bands(info: DatasetInfo, images: dict[str, Path], headers: dict[str, _Header | None],
                 report: CheckReport) -> None:
    """Add an error for each image whose band count or dtype differs from dataset.json's "channels"."""
    block = info.channels
    for stem, header in headers.items():
        if header is None:
            continue
        if block is None and header.mode.endswith("-band " + header.dtype):
            report.errors.append(f"{images[stem]}: is a band image but {info.root / 'dataset.json'} has no "
                                 "\"channels\" block; make the dataset with `catseg import masks` or `catseg convert "
                                 "--images`, which record the bands")
        elif block is not None and (header.channels, header.dtype) != (int(block["count"]), block["dtype"]):
            report.errors.append(f"{images[stem]}: has {header.channels} band(s) of {header.dtype} but dataset.json "
                                 f"says {block['count']} of {block['dtype']}; every image needs the same bands")


def _read_mask(path: Path, report: CheckReport) -> np.ndarray | None:
    """Return the mask's class ids as a 2-D integer array, or None after noting why it is unusable."""
    try:
        with open_image(path) as image:
            mode = image.mode
            if mode in ("P", "L", "1"):  # the modes data.mask_ids reads, so check and training agree
                return np.asarray(image, dtype=np.uint8)
            if mode in ("I", "I;16", "I;16B", "I;16L"):
                return np.asarray(image).astype(np.int64)
    except (CatsegError, *_READ_ERRORS) as exc:
        report.unreadable.append(path.relative_to(report.root).as_posix())
        report.errors.append(f"{path}: cannot read this mask ({exc}). Re-save it as a PNG of class ids.")
        return None
    report.errors.append(f"{path}: mask is a {mode} image; catseg masks hold class ids in a palette (P) or grey (L) "
                         "PNG. For colour masks use `catseg import masks --colors`.")
    return None


# ----------------------------------------------------------------------------- pairs
def _check_pair(info: DatasetInfo, image_path: Path, mask_path: Path, header: _Header | None,
                report: CheckReport, object_fractions: list[float]) -> None:
    """Check one image/mask pair and, when training can use it, add its mask to the class figures."""
    mask = _read_mask(mask_path, report)
    if mask is None or header is None:
        return
    rel = _rel(info, mask_path)
    height, width = mask.shape
    usable = True
    if (width, height) != header.size:
        usable = False
        report.size_mismatches.append(rel)
        rotated = " after its EXIF rotation" if header.orientation in SWAPPING_ORIENTATIONS else ""
        report.errors.append(f"{mask_path}: mask is {width}x{height} but {image_path.name} is "
                             f"{header.size[0]}x{header.size[1]}{rotated}; a mask must match its image pixel for "
                             "pixel. Re-export the mask at the image's size.")
    values, counts = _value_counts(mask)
    num_classes = info.num_classes
    bad = [int(v) for v in values if not 0 <= v < num_classes and v != info.ignore_index]
    if bad:
        usable = False
        report.bad_values[rel] = bad
        report.errors.append(f"{mask_path}: has value(s) {', '.join(map(str, bad))}, which are neither class ids "
                             f"(0-{num_classes - 1}) nor the ignore value {info.ignore_index}. Fix the mask, "
                             "or add the missing classes to dataset.json.")
    if usable:
        _tally(info, rel, dict(zip(values.tolist(), counts.tolist())), width * height, report, object_fractions)


def _value_counts(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (values, pixel counts) of the values present in a mask."""
    if mask.dtype == np.uint8:
        counts = np.bincount(mask.ravel(), minlength=256)
        values = np.flatnonzero(counts)
        return values, counts[values]
    return np.unique(mask, return_counts=True)


def _tally(info: DatasetInfo, rel: str, counts: dict[int, int], area: int, report: CheckReport,
           object_fractions: list[float]) -> None:
    report.num_usable += 1
    report.ignore_pixels += counts.get(info.ignore_index, 0)
    labelled = {v: n for v, n in counts.items() if v != info.ignore_index}
    for value, n in labelled.items():
        report.class_pixels[value] += n
        report.class_images[value] += 1
        if value != info.background:
            object_fractions.append(n / area)
    if not labelled:
        report.all_ignore_masks.append(rel)
    elif set(labelled) == {info.background}:
        report.empty_masks.append(rel)


def _check_splits(info: DatasetInfo, pairs: set[str], report: CheckReport) -> None:
    where = info.root / "dataset.json"
    for name, stems in info.splits.items():
        missing = [s for s in stems if s not in pairs]
        if missing:
            report.split_missing[name] = missing
            report.errors.append(f"{where}: split {name!r} names {len(missing)} stem(s) with no image/mask pair: "
                                 f"{_names(missing)}. Remove them from the split or add the files.")
    names = sorted(info.splits)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = sorted(set(info.splits[a]) & set(info.splits[b]))
            if shared:
                report.warnings.append(f"{where}: splits {a!r} and {b!r} share {len(shared)} stem(s): "
                                       f"{_names(shared)}; scores on one would be measured on training images.")


# ----------------------------------------------------------------------------- summary
def _summarise_images(headers: list[_Header], report: CheckReport) -> None:
    if not headers:
        return
    widths = [h.size[0] for h in headers]
    heights = [h.size[1] for h in headers]
    report.width = Range(min(widths), float(np.median(widths)), max(widths))
    report.height = Range(min(heights), float(np.median(heights)), max(heights))
    for h in headers:
        report.modes[h.mode] = report.modes.get(h.mode, 0) + 1


def _add_warnings(report: CheckReport) -> None:
    """Append the warnings that come with a remedy: unpaired files, empty masks, imbalance, size."""
    w = report.warnings
    if report.missing_masks:
        w.append(f"{len(report.missing_masks)} image(s) have no mask and are skipped: {_names(report.missing_masks)}. "
                 "Annotate them, or move them out of images/.")
    if report.extra_masks:
        w.append(f"{len(report.extra_masks)} mask(s) have no image and are skipped: {_names(report.extra_masks)}.")
    if report.exif_rotated:
        w.append(f"{len(report.exif_rotated)} image(s) carry an EXIF orientation, which dataset folders should not "
                 f"(catseg applies it when reading, and sizes here are after it): {_names(report.exif_rotated)}. "
                 "Re-create the dataset with `catseg convert` or `catseg import`, which store photos upright.")
    if report.empty_masks:
        w.append(f"{len(report.empty_masks)} mask(s) hold only background: {_names(report.empty_masks)}. "
                 "Fine for true negatives; otherwise their annotation is missing.")
    if report.all_ignore_masks:
        w.append(f"{len(report.all_ignore_masks)} mask(s) are all ignore ({report.ignore_index}) and teach nothing: "
                 f"{_names(report.all_ignore_masks)}.")
    if not report.num_usable:
        return
    if report.num_usable < FEW_IMAGES:
        w.append(f"only {report.num_usable} usable image(s): expect a weak model. Annotate more (tens at least), "
                 "and keep augmentation on (`--augment strong`).")
    for cid, (name, n, share) in enumerate(zip(report.classes, report.class_images, report.class_fractions)):
        if n == 0:
            w.append(f"class {cid} {name!r} is in no usable mask, so it cannot be learned. "
                     "Annotate it, or remove it from dataset.json if it is not needed.")
        elif share < RARE_CLASS_FRACTION:
            w.append(f"class {cid} {name!r} is {share:.2%} of labelled pixels, so a model can score well by never "
                     "predicting it: train with `--class-weights auto` or `--loss dice`.")
    _warn_tiny_objects(report)


def _warn_tiny_objects(report: CheckReport) -> None:
    fraction = report.median_object_fraction
    if fraction is None or fraction >= TINY_OBJECT_FRACTION:
        return
    size = TrainConfig.size
    side = math.sqrt(fraction) * size
    # The --size at which the median object would be as wide as a 1%-of-the-image square.
    suggested = min(1024, max(size * 2, 64 * math.ceil(math.sqrt(TINY_OBJECT_FRACTION / fraction) * size / 64)))
    report.warnings.append(
        f"small objects: the median object covers {fraction:.2%} of its image, about {side:.0f}x{side:.0f} px at "
        f"the default --size {size}. Train with a larger `--size` (e.g. {suggested}) so they survive resizing.")


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:_LISTED])
    return shown + (f" (+{len(items) - _LISTED} more)" if len(items) > _LISTED else "")
