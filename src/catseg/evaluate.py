"""evaluate(run, dataset) -> scores at each image's original size, written as summary.json."""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from catseg.bands import dataset_axis, read_bands
from catseg.calibration import CalibrationAccumulator
from catseg.data import read_dataset
from catseg.errors import CatsegError
from catseg.files import atomic_write_bytes, atomic_write_json, check_replaceable, replaced_on_success
from catseg.images import check_mask_values, read_image, read_mask
from catseg.metrics import MetricAccumulator
from catseg.predict import Predictor
from catseg.run import read_run_config, read_splits

log = logging.getLogger(__name__)


def _read(path: Path, channels: dict[str, Any] | None) -> Any:
    """Return a photo as (H, W, 3) uint8, or a band image (dataset.json has channels) as (H, W, C)."""
    return read_image(path) if channels is None else read_bands(path, dataset_axis(path), int(channels["count"]))


def _choose_stems(run_dir: Path, dataset_dir: Path, split: str | None) -> tuple[str, list[str]]:
    info = read_dataset(dataset_dir)
    available = set(info.stems())
    if split:
        if split in info.splits:
            stems = list(info.splits[split])
        elif split in ("val", "train") and read_splits(run_dir).get(split):
            stems = read_splits(run_dir)[split]
        else:
            names = sorted(set(info.splits) | ({"train", "val"} if read_splits(run_dir) else set()))
            raise CatsegError(f"--split {split!r}: not a split of {dataset_dir} or of the run; "
                              f"choose from {', '.join(names) or 'none (omit --split)'}")
        missing = [s for s in stems if s not in available]
        if missing:
            raise CatsegError(f"--split {split}: {len(missing)} stems have no image/mask pair in {dataset_dir} "
                              f"(first: {missing[:5]})")
        return split, stems
    config = read_run_config(run_dir)
    if config.dataset and Path(config.dataset).resolve() == dataset_dir.resolve() and read_splits(run_dir).get("val"):
        # Scoring the training images would flatter the model: default to what it never trained on.
        return "val", read_splits(run_dir)["val"]
    return "all", sorted(available)


def evaluate(run_dir: str | Path, dataset_dir: str | Path, split: str | None = None, out_dir: str | Path | None = None,
             threshold: float | None = None, device: str = "auto", force: bool = False,
             predictor: Predictor | None = None, tta: bool | None = None,
             tta_scales: Sequence[float] = (1.0,), report: bool = False, report_worst: int = 12) -> dict[str, Any]:
    """Return the scores of a run on a dataset (see the README's summary.json) and write them to out_dir;
    with `report`, also report.html (figures and the `report_worst` worst images; catseg.report)."""
    run_dir, dataset_dir = Path(run_dir), Path(dataset_dir)
    split_name, stems = _choose_stems(run_dir, dataset_dir, split)
    if not stems:
        raise CatsegError(f"{dataset_dir}: no images to evaluate in split {split_name!r}")
    out = Path(out_dir) if out_dir else run_dir / f"eval-{dataset_dir.name}-{split_name}"
    if out.exists() and any(out.iterdir()):
        if not force:
            raise CatsegError(f"{out}: already exists. Pass --out elsewhere or --force to replace it.")
        check_replaceable(out, "summary.json", "an evaluation folder", inputs=[run_dir, dataset_dir])
    with replaced_on_success(out, "summary.json", "an evaluation folder", inputs=[run_dir, dataset_dir]):
        return _evaluate(run_dir, dataset_dir, split_name, stems, out, threshold, device, predictor, tta, tta_scales,
                         report, report_worst)


def _evaluate(run_dir: Path, dataset_dir: Path, split_name: str, stems: list[str], out: Path, threshold: float | None,
              device: str, predictor: Predictor | None, tta: bool | None, tta_scales: Sequence[float], report: bool,
              report_worst: int) -> dict[str, Any]:
    info = read_dataset(dataset_dir)
    predictor = predictor or Predictor.from_run(run_dir, device=device, tta=tta, tta_scales=tta_scales)
    if info.classes != predictor.classes:
        raise CatsegError(f"{dataset_dir}: classes {info.classes} differ from the run's {predictor.classes}; "
                          "evaluate on a dataset with the same classes.")
    metrics = MetricAccumulator(info.num_classes, info.classes, info.ignore_index)
    calibration = CalibrationAccumulator()
    collector = None
    if report:
        from catseg.report import ReportCollector  # matplotlib, only when asked

        collector = ReportCollector(info.classes, info.colors, info.ignore_index, report_worst)
    for i, stem in enumerate(stems):
        image, mask = _read(info.image_path(stem), info.channels), read_mask(info.mask_path(stem))
        if image.shape[:2] != mask.shape:
            raise CatsegError(f"{info.image_path(stem)}: image is {image.shape[1]}x{image.shape[0]} but its mask "
                              f"{info.mask_path(stem)} is {mask.shape[1]}x{mask.shape[0]}. Run `catseg check "
                              f"{dataset_dir}` and re-create the mask.")
        check_mask_values(mask, info.num_classes, info.ignore_index, info.mask_path(stem))
        probs = predictor.predict_proba(image)
        pred = predictor.labels_from_proba(probs, threshold)
        metrics.update(pred, mask, name=stem)
        calibration.update(probs, _tensor(mask), info.ignore_index)
        if collector is not None:
            collector.update(stem, image, mask, probs, pred, info.image_path(stem), info.mask_path(stem))
        if (i + 1) % 50 == 0:
            log.info("evaluated %d/%d", i + 1, len(stems))
    summary = metrics.summary()
    used = threshold if threshold is not None else predictor.config.threshold
    summary.update({"run": str(run_dir), "dataset_dir": str(dataset_dir), "split": split_name,
                    "threshold": used if info.num_classes == 2 else None, "ece": _clean(calibration.ece()),
                    "tta": {"flip": predictor.tta, "scales": list(predictor.tta_scales)}})
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "summary.json", summary)
    _write_rows(out / "per_image.csv", metrics.per_image_rows())
    if collector is not None:
        from catseg.report import REPORT_FILE, write_report

        summary["report"] = str(write_report(out / REPORT_FILE, summary, collector, calibration.bins()))
    summary["out_dir"] = str(out)
    return summary


def _tensor(mask: Any) -> Any:
    import torch

    return torch.from_numpy(mask.astype("int64"))


def _clean(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0].keys()))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


def format_summary(summary: dict[str, Any]) -> str:
    """Return a readable table of a summary: per-class IoU and Dice, both reductions."""
    def f(v: Any) -> str:
        return "   n/a" if v is None else f"{v:6.4f}"

    lines = [f"{summary['num_images']} images ({summary['split']}) of {summary['dataset_dir']}",
             f"{'class':20s} {'IoU':>7s} {'Dice':>7s}   {'IoU/img':>7s} {'Dice/img':>8s}"]
    for name in summary["classes"]:
        d, p = summary["dataset"]["per_class"][name], summary["per_image"]["per_class"][name]
        lines.append(f"{name:20s} {f(d['iou']):>7s} {f(d['dice']):>7s}   {f(p['iou']):>7s} {f(p['dice']):>8s}")
    lines.append(f"{'mean':20s} {f(summary['dataset']['miou']):>7s} {f(summary['dataset']['mdice']):>7s}   "
                 f"{f(summary['per_image']['miou']):>7s} {f(summary['per_image']['mdice']):>8s}")
    lines.append(f"pixel accuracy {f(summary['dataset']['pixel_accuracy'])}, calibration error (ECE) "
                 f"{f(summary.get('ece'))}" + (f", threshold {summary['threshold']:.2f}"
                                              if summary.get("threshold") is not None else "")
                 + (", mirror TTA" if summary.get("tta", {}).get("flip") else ""))
    lines.append(f"(dataset-wide: pixels summed over all images; /img: mean over images)\nwritten to {summary['out_dir']}")
    return "\n".join(lines)
