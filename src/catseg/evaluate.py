"""evaluate(run, dataset) -> scores at each image's original size, written as summary.json."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from catseg.bands import dataset_axis, read_bands
from catseg.calibration import CalibrationAccumulator
from catseg.data import DatasetInfo, read_dataset
from catseg.errors import CatsegError
from catseg.files import atomic_write_bytes, atomic_write_json, check_replaceable, replaced_on_success
from catseg.images import check_mask_values, read_image, read_mask
from catseg.metrics import MetricAccumulator
from catseg.objects import ObjectRecall, format_object_recall
from catseg.predict import Predictor
from catseg.run import read_run_config, read_splits
from catseg.shards import Shard

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
             tta_scales: Sequence[float] | None = None, report: bool = False, report_worst: int = 12,
             shard: Shard | None = None) -> dict[str, Any]:
    """Return the scores of a run on a dataset (see the README's summary.json) and write them to out_dir;
    with `report`, also report.html (figures and the `report_worst` worst images; catseg.report).

    With `shard` I/N, only the I-th of N blocks of the split's images is scored and its counts are written to
    out_dir/shard-I-of-N.json (nothing else; other shards write beside it); `merge_evaluations` then makes
    the summary.json one process would have written. The returned dict describes the shard."""
    run_dir, dataset_dir = Path(run_dir), Path(dataset_dir)
    split_name, stems = _choose_stems(run_dir, dataset_dir, split)
    if not stems:
        raise CatsegError(f"{dataset_dir}: no images to evaluate in split {split_name!r}")
    out = Path(out_dir) if out_dir else run_dir / f"eval-{dataset_dir.name}-{split_name}"
    mine = stems
    if shard is not None:
        if report:
            raise CatsegError("--report with --shard: the report's gallery needs every image in one process. "
                              "Drop --report, or run evaluate --report without --shard")
        mine = shard.select(stems)
        if (out / shard_file_name(shard)).exists() and not force:
            raise CatsegError(f"{out / shard_file_name(shard)}: already exists. Pass --force to replace this "
                              "shard's counts (the other shards' files are left alone)")
        log.info("shard %s: %d of %d images", shard, len(mine), len(stems))
        return _evaluate(run_dir, dataset_dir, split_name, stems, mine, out, threshold, device, predictor, tta,
                         tta_scales, report, report_worst, shard)
    marker, fmt = _replaceable_out(out, force)
    # An existing evaluation (catseg's own) waits beside the new one and is removed only when it is complete.
    with replaced_on_success(out, marker, "an evaluation folder", fmt, inputs=[run_dir, dataset_dir]):
        return _evaluate(run_dir, dataset_dir, split_name, stems, mine, out, threshold, device, predictor, tta,
                         tta_scales, report, report_worst, shard)


def _evaluate(run_dir: Path, dataset_dir: Path, split_name: str, stems: list[str], mine: list[str], out: Path,
              threshold: float | None, device: str, predictor: Predictor | None, tta: bool | None,
              tta_scales: Sequence[float], report: bool, report_worst: int, shard: Shard | None) -> dict[str, Any]:
    info = read_dataset(dataset_dir)
    predictor = predictor or Predictor.from_run(run_dir, device=device, tta=tta, tta_scales=tta_scales)
    if info.classes != predictor.classes:
        raise CatsegError(f"{dataset_dir}: classes {info.classes} differ from the run's {predictor.classes}; "
                          "evaluate on a dataset with the same classes.")
    collector = None
    if report:
        from catseg.report import ReportCollector  # matplotlib, only when asked

        collector = ReportCollector(info.classes, info.colors, info.ignore_index, report_worst,
                                    predictor.config.background)
    metrics, calibration, found = _score(info, dataset_dir, predictor, mine, threshold, collector)
    used = threshold if threshold is not None else predictor.config.threshold
    meta = {"run": str(run_dir), "dataset_dir": str(dataset_dir), "split": split_name,
            "threshold": used if info.num_classes == 2 else None,
            "tta": {"flip": predictor.tta, "scales": list(predictor.tta_scales)},
            "background": predictor.config.background}
    if shard is not None:
        return _write_shard(out, shard, stems, meta, metrics, calibration, found)
    summary = _write_summary(out, meta, metrics, calibration, found)
    if collector is not None:
        from catseg.report import REPORT_FILE, write_report

        summary["report"] = str(write_report(out / REPORT_FILE, summary, collector, calibration.bins()))
    summary["out_dir"] = str(out)
    return summary


def _replaceable_out(out: Path, force: bool) -> tuple[str, str | None]:
    """Return (marker file, its format) that shows `out` is catseg's evaluation folder; refuse a folder that is
    not empty without `force`, or that catseg did not write."""
    shards = sorted(out.glob(SHARD_GLOB)) if out.is_dir() else []
    marker, fmt = (("summary.json", None) if (out / "summary.json").exists() or not shards
                   else (shards[0].name, SHARD_FORMAT))
    if out.exists() and any(out.iterdir()):
        if not force:
            raise CatsegError(f"{out}: already exists. Pass --out elsewhere or --force to replace it.")
        check_replaceable(out, marker, "an evaluation folder", fmt)
    return marker, fmt


def _score(info: DatasetInfo, dataset_dir: Path, predictor: Predictor, stems: Sequence[str],
           threshold: float | None, collector: Any) -> tuple[MetricAccumulator, CalibrationAccumulator, ObjectRecall]:
    """Return the metrics, calibration and object recall of `stems`, each predicted and scored at its own size."""
    metrics = MetricAccumulator(info.num_classes, info.classes, info.ignore_index)
    calibration = CalibrationAccumulator()
    found = ObjectRecall(info.classes, predictor.config.background)
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
        found.update(pred, mask)
        calibration.update(probs, _tensor(mask), info.ignore_index)
        if collector is not None:
            collector.update(stem, image, mask, probs, pred, info.image_path(stem), info.mask_path(stem))
        if (i + 1) % 50 == 0:
            log.info("evaluated %d/%d", i + 1, len(stems))
    return metrics, calibration, found


def _write_summary(out: Path, meta: dict[str, Any], metrics: MetricAccumulator,
                   calibration: CalibrationAccumulator, found: ObjectRecall) -> dict[str, Any]:
    """Write summary.json and per_image.csv into `out`; return the summary."""
    summary = metrics.summary()
    summary["objects"] = found.summary()
    summary.update({k: meta[k] for k in ("run", "dataset_dir", "split", "threshold")})
    summary.update({"ece": _clean(calibration.ece()), "tta": meta["tta"]})
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "summary.json", summary)
    _write_rows(out / "per_image.csv", metrics.per_image_rows())
    return summary


# ----------------------------------------------------------------------------- shards
SHARD_FORMAT = "catseg-eval-shard"
SHARD_VERSION = 1
SHARD_GLOB = "shard-*-of-*.json"
_SAME = ("shards", "run", "dataset_dir", "split", "images", "stems_sha256", "threshold", "tta", "classes",
         "ignore_index")  # what every shard of one evaluation agrees on


def shard_file_name(shard: Shard) -> str:
    return f"shard-{shard.index}-of-{shard.count}.json"


def _stems_digest(stems: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(stems).encode("utf-8")).hexdigest()


def _write_shard(out: Path, shard: Shard, stems: Sequence[str], meta: dict[str, Any], metrics: MetricAccumulator,
                 calibration: CalibrationAccumulator, found: ObjectRecall) -> dict[str, Any]:
    """Write one shard's counts (README: "Sharded evaluation"); return what the CLI prints about it."""
    cal = calibration.state()
    doc = {"format": SHARD_FORMAT, "version": SHARD_VERSION, "shard": shard.index, "shards": shard.count,
           **meta, "images": len(stems), "stems_sha256": _stems_digest(stems), "classes": metrics.class_names,
           "ignore_index": metrics.ignore_index, "metrics": metrics.state(),
           "calibration": {k: v.tolist() for k, v in cal.items()},
           "objects": {"total": found.total.tolist(), "found": found.found.tolist()}}
    path = out / shard_file_name(shard)
    atomic_write_json(path, doc)
    return {"shard": str(shard), "num_images": metrics.num_images, "images": len(stems), "file": str(path),
            "out_dir": str(out)}


def merge_evaluations(dirs: Sequence[str | Path], out_dir: str | Path | None = None,
                      force: bool = False) -> dict[str, Any]:
    """Return the summary of a sharded evaluation: read every shard-I-of-N.json in `dirs`, check that shards
    1..N of one evaluation are all there, and write the summary.json and per_image.csv that one unsharded
    `evaluate` would have written (into out_dir, default the first of `dirs`)."""
    dirs = [Path(d) for d in dirs]
    missing_dirs = [str(d) for d in dirs if not d.is_dir()]
    if missing_dirs or not dirs:
        raise CatsegError(f"{', '.join(missing_dirs) or 'no folder given'}: give the folders the shards' "
                          "`catseg evaluate --shard I/N --out DIR` wrote")
    docs = [(_read_shard(p), p) for d in dirs for p in sorted(d.glob(SHARD_GLOB))]
    if not docs:
        raise CatsegError(f"{', '.join(map(str, dirs))}: no {SHARD_GLOB.replace('*', 'I', 1).replace('*', 'N')} "
                          "files; run `catseg evaluate RUN DATASET --shard I/N --out DIR` for I = 1..N first")
    ordered = _check_shards(docs)
    first = ordered[0]
    out = Path(out_dir) if out_dir else dirs[0]
    if (out / "summary.json").exists() and not force:
        raise CatsegError(f"{out / 'summary.json'}: already exists. Pass --force to replace it.")
    metrics = MetricAccumulator.from_states([d["metrics"] for d in ordered], len(first["classes"]),
                                            first["classes"], first["ignore_index"])
    calibration = CalibrationAccumulator()
    calibration.load_state({k: sum(np.asarray(d["calibration"][k]) for d in ordered)
                            for k in ("count", "confidence", "correct")})
    found = ObjectRecall(first["classes"], first.get("background"))
    found.total = sum(np.asarray(d["objects"]["total"], np.int64) for d in ordered)
    found.found = sum(np.asarray(d["objects"]["found"], np.int64) for d in ordered)
    summary = _write_summary(out, first, metrics, calibration, found)
    summary["out_dir"] = str(out)
    summary["merged_shards"] = len(ordered)
    return summary


def _read_shard(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CatsegError(f"{path}: cannot read this shard file ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != SHARD_FORMAT:
        raise CatsegError(f"{path}: not a catseg evaluation shard (format {SHARD_FORMAT!r} expected)")
    if doc.get("version") != SHARD_VERSION:
        raise CatsegError(f"{path}: shard format version {doc.get('version')!r}; this catseg reads {SHARD_VERSION}")
    return doc


def _check_shards(docs: list[tuple[dict[str, Any], Path]]) -> list[dict[str, Any]]:
    """Return the shards 1..N in order; raise one CatsegError listing every mismatch, gap or repeat."""
    ref, ref_path = docs[0]
    problems = []
    for doc, path in docs[1:]:
        differ = [k for k in _SAME if doc.get(k) != ref.get(k)]
        if differ:
            problems.append(f"{path}: {', '.join(differ)} differ from {ref_path} (another evaluation's shard? "
                            "remove it or merge each evaluation's folder on its own)")
    by_index: dict[int, Path] = {}
    for doc, path in docs:
        if doc["shard"] in by_index:
            problems.append(f"{path} and {by_index[doc['shard']]} are both shard {doc['shard']}/{doc['shards']}")
        by_index[doc["shard"]] = path
    count = int(ref["shards"])
    absent = [f"{i}/{count}" for i in range(1, count + 1) if i not in by_index]
    if absent:
        problems.append(f"shards {', '.join(absent)} are missing: run them (or wait for them to finish) before merging")
    if problems:
        raise CatsegError(f"cannot merge {len(docs)} shard files", problems)
    ordered = [doc for doc, _ in sorted(docs, key=lambda dp: dp[0]["shard"])]
    counted = sum(len(d["metrics"]["images"]) for d in ordered)
    if counted != ref["images"]:
        raise CatsegError(f"the {len(ordered)} shards hold {counted} images; the evaluation has {ref['images']}")
    return ordered


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
    """Return a readable table of a summary: per-class IoU and Dice (both reductions), worst IoU first,
    then the largest confusions between classes and the objects found by size."""
    def f(v: Any) -> str:
        return "   n/a" if v is None else f"{v:6.4f}"

    lines = [f"{summary['num_images']} images ({summary['split']}) of {summary['dataset_dir']}",
             f"{'class (worst IoU first)':24s} {'IoU':>7s} {'Dice':>7s}   {'IoU/img':>7s} {'Dice/img':>8s}"]
    per_class = summary["dataset"]["per_class"]
    for name in sorted(summary["classes"], key=lambda n: (per_class[n]["iou"] is None, per_class[n]["iou"] or 0)):
        d, p = per_class[name], summary["per_image"]["per_class"][name]
        lines.append(f"{name:24s} {f(d['iou']):>7s} {f(d['dice']):>7s}   {f(p['iou']):>7s} {f(p['dice']):>8s}")
    lines.append(f"{'mean over classes':24s} {f(summary['dataset']['miou']):>7s} {f(summary['dataset']['mdice']):>7s}   "
                 f"{f(summary['per_image']['miou']):>7s} {f(summary['per_image']['mdice']):>8s}")
    if summary.get("top_confusions"):
        lines.append("largest confusions (share of the true class's pixels): " + ", ".join(
            f"{c['truth']} as {c['predicted']} {c['share']:.1%}" for c in summary["top_confusions"]))
    if summary.get("objects"):
        lines += format_object_recall(summary["objects"])
    lines.append(f"pixel accuracy {f(summary['dataset']['pixel_accuracy'])}, calibration error (ECE) "
                 f"{f(summary.get('ece'))}" + (f", threshold {summary['threshold']:.2f}"
                                              if summary.get("threshold") is not None else "")
                 + (", mirror TTA" if summary.get("tta", {}).get("flip") else "")
                 + (f", sizes {'+'.join(f'{s:g}x' for s in summary['tta']['scales'])}"
                    if len(summary.get("tta", {}).get("scales", [1.0])) > 1 else ""))
    lines.append(f"(dataset-wide: pixels summed over all images, ignored pixels left out; /img: mean over images)\n"
                 f"written to {summary['out_dir']}")
    return "\n".join(lines)
