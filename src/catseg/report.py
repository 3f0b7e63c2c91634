"""report.html for `catseg evaluate --report`: one self-contained page a person would rather look at.

`ReportCollector` is fed every evaluated image (photo, truth, probabilities, prediction) and keeps
only what the page needs: the two-class threshold histograms, one (class, object size, IoU) row per
class present in each image, and small pictures of the worst images so far. `write_report` draws the
figures with matplotlib's object API (no pyplot state) and embeds every picture as base64, so the
page can be mailed or archived alone. Every class is scored, drawn and named the same way; background
(catseg.classes) only decides the colours of the error pictures and what the two-class threshold serves.
"""

from __future__ import annotations

import base64
import heapq
import html
import io
import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from catseg.calibration import ThresholdSearch, threshold_target
from catseg.files import atomic_write_bytes
from catseg.metrics import confusion_matrix, scores

REPORT_FILE = "report.html"
SIZE_EDGES = (0.0, 0.01, 0.05, 0.2, 0.5, 1.0)  # object size as a share of the image's labelled pixels
THUMB = 240  # longest side of the gallery pictures, in pixels
# Error map colours: false positive, false negative (two classes), wrong class (more), ignored.
_FP, _FN, _WRONG, _IGNORED = (255, 0, 200), (0, 200, 255), (255, 40, 40), (128, 128, 128)


@dataclass
class _Example:
    stem: str
    miou: float
    ious: list[float]
    photo: bytes  # JPEG thumbnail
    truth: bytes  # PNG thumbnails
    pred: bytes
    errors: bytes
    image_path: Path
    mask_path: Path


class ReportCollector:
    """Gathers, image by image, what report.html shows beyond summary.json (bounded memory)."""

    def __init__(self, classes: Sequence[str], colors: Sequence[Sequence[int]], ignore_index: int = 255,
                 worst: int = 12, background: int | None = 0) -> None:
        self.classes = list(classes)
        self.background = background
        self.colors = np.zeros((256, 3), np.uint8)
        self.colors[: len(colors)] = np.asarray(colors, np.uint8).reshape(-1, 3)
        self.colors[ignore_index] = _IGNORED
        self.ignore_index = ignore_index
        self.worst = worst
        # The threshold decides class 1 against class 0 whatever their names, as prediction does.
        self.threshold = ThresholdSearch(target=threshold_target(background)) if len(self.classes) == 2 else None
        self.sizes: list[tuple[int, float, float]] = []  # (class, share of the image, IoU in that image)
        self._heap: list[tuple[float, int, _Example]] = []  # the worst images: max-heap on mIoU via -miou
        self._seen = 0

    def update(self, stem: str, image: np.ndarray, truth: np.ndarray, probs: torch.Tensor, pred: np.ndarray,
               image_path: Path, mask_path: Path) -> None:
        """Add one image: (H, W, 3) photo, (H, W) truth and prediction, (K, H, W) probabilities."""
        if self.threshold is not None:
            self.threshold.update(probs, torch.from_numpy(truth.astype(np.int64)), self.ignore_index)
        cm = confusion_matrix(pred, truth, len(self.classes), self.ignore_index)
        s = scores(cm)
        labelled = cm.sum()
        for c in range(len(self.classes)):
            if cm[c].sum() > 0:
                self.sizes.append((c, float(cm[c].sum() / labelled), float(s["iou"][c])))
        self._seen += 1
        miou = s["miou"]
        if math.isnan(miou) or (len(self._heap) == self.worst and -self._heap[0][0] <= miou) or not self.worst:
            return
        example = _Example(stem, float(miou), [float(v) for v in s["iou"]], *self._pictures(image, truth, pred),
                           image_path=Path(image_path), mask_path=Path(mask_path))
        heapq.heappush(self._heap, (-miou, -self._seen, example))
        if len(self._heap) > self.worst:
            heapq.heappop(self._heap)

    def worst_examples(self) -> list[_Example]:
        """Return the kept images, worst (lowest mIoU) first."""
        return [e for _, _, e in sorted(self._heap, key=lambda t: (-t[0], -t[1]))]

    def _pictures(self, image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> tuple[bytes, bytes, bytes, bytes]:
        h, w = truth.shape
        scale = min(1.0, THUMB / max(h, w))
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        photo = Image.fromarray(image).resize(size, Image.Resampling.BILINEAR)
        errors = np.zeros((h, w, 3), np.uint8)
        errors[...] = (np.asarray(image, np.float32) * 0.35).astype(np.uint8)  # the photo, dimmed
        wrong = (pred != truth) & (truth != self.ignore_index)
        if len(self.classes) == 2 and self.background is not None:
            errors[wrong & (pred != self.background)] = _FP
            errors[wrong & (pred == self.background)] = _FN
        else:
            errors[wrong] = _WRONG
        errors[truth == self.ignore_index] = _IGNORED
        return (_encode(photo, "JPEG"), _encode(self._colour(truth).resize(size, Image.Resampling.NEAREST)),
                _encode(self._colour(pred).resize(size, Image.Resampling.NEAREST)),
                _encode(Image.fromarray(errors).resize(size, Image.Resampling.NEAREST)))

    def _colour(self, mask: np.ndarray) -> Image.Image:
        return Image.fromarray(self.colors[mask])


def _encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _figure_png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _data_uri(data: bytes, fmt: str = "png") -> str:
    return f"data:image/{fmt};base64,{base64.b64encode(data).decode('ascii')}"


# ----------------------------------------------------------------------------- figures
def confusion_figure(cm: np.ndarray, classes: Sequence[str]) -> bytes:
    """Return a PNG of the confusion matrix, each row (truth) as shares of its pixels."""
    k = len(classes)
    rows = cm.sum(1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, float), where=rows > 0)
    side = min(12.0, 2.5 + 0.55 * k)
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), classes, rotation=45 if k > 3 else 0, ha="right" if k > 3 else "center")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    if k <= 15:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{share[i, j]:.1%}", ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class's pixels")
    ax.set_title("confusion matrix (rows sum to 100%)")
    fig.tight_layout()
    return _figure_png(fig)


def threshold_figure(search: ThresholdSearch, classes: Sequence[str], used: float | None) -> bytes:
    """Return a PNG of class 1's IoU against the cut-off on its probability (two classes)."""
    ts = np.array(search.thresholds)
    ious = np.array([search.iou_at(t) for t in search.thresholds])
    fig = Figure(figsize=(5.2, 3.6))
    ax = fig.add_subplot()
    ax.plot(ts, ious, color="tab:blue")
    if not np.all(np.isnan(ious)):
        best_t, best = search.best()
        ax.plot([best_t], [best], "o", color="tab:green", label=f"best {best:.3f} at {best_t:.2f}")
    if used is not None:
        ax.axvline(used, color="tab:red", linestyle="--", label=f"used {used:.2f}")
    ax.set_xlabel(f"threshold on p({classes[1]})")
    ax.set_ylabel(f"IoU of {classes[1]}")
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower center")
    ax.set_title("IoU versus threshold (before clean-up)")
    fig.tight_layout()
    return _figure_png(fig)


def reliability_figure(bins: dict[str, list[Any]], ece: float | None) -> bytes:
    """Return a PNG of the reliability diagram: accuracy against confidence per bin, and pixels per bin."""
    n = len(bins["count"])
    centres = (np.arange(n) + 0.5) / n
    acc = np.array([np.nan if v is None else v for v in bins["accuracy"]], float)
    conf = np.array([np.nan if v is None else v for v in bins["confidence"]], float)
    fig = Figure(figsize=(5.2, 4.6))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(centres, np.nan_to_num(acc), width=1 / n, edgecolor="white", color="tab:blue", label="accuracy")
    top.plot(conf, acc, "o", color="tab:orange", markersize=3, label="mean confidence")
    top.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    top.set_ylabel("accuracy")
    top.set_ylim(0, 1)
    top.legend(loc="upper left", fontsize=8)
    top.set_title("reliability" + ("" if ece is None else f" (ECE {ece:.4f})"))
    bottom.bar(centres, bins["count"], width=1 / n, color="grey", edgecolor="white")
    bottom.set_yscale("log")
    bottom.set_ylabel("pixels")
    bottom.set_xlabel("confidence of the predicted class")
    bottom.set_xlim(0, 1)
    fig.tight_layout()
    return _figure_png(fig)


def size_figure(sizes: Sequence[tuple[int, float, float]], classes: Sequence[str], colors: np.ndarray) -> bytes:
    """Return a PNG of the mean per-image IoU of each class, grouped by how much of the image it fills."""
    labels = [f"{lo:.0%}-{hi:.0%}" for lo, hi in itertools.pairwise(SIZE_EDGES)]
    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.add_subplot()
    x = np.arange(len(labels))
    for c, name in enumerate(classes):
        rows = np.array([(share, iou) for k, share, iou in sizes if k == c and not math.isnan(iou)]).reshape(-1, 2)
        which = np.clip(np.searchsorted(SIZE_EDGES, rows[:, 0], side="right") - 1, 0, len(labels) - 1)
        means = [rows[which == b, 1].mean() if (which == b).any() else np.nan for b in range(len(labels))]
        counts = [int((which == b).sum()) for b in range(len(labels))]
        colour = colors[c] / 255.0 if colors[c].sum() > 60 else (0.3, 0.3, 0.3)
        ax.plot(x, means, "o-", color=colour, label=name)
        for xi, m, n in zip(x, means, counts):
            if n:
                ax.annotate(str(n), (xi, m), textcoords="offset points", xytext=(5, 4 if c % 2 else -10), fontsize=7,
                            color=colour)
    ax.set_xticks(x, labels)
    ax.set_xlabel("object size: share of the image's labelled pixels (numbers: images)")
    ax.set_ylabel("IoU in the image")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2 if len(classes) > 6 else 1)
    ax.set_title("IoU by object size (one object = one class in one image)")
    fig.tight_layout()
    return _figure_png(fig)


# ----------------------------------------------------------------------------- the page
def write_report(path: str | Path, summary: dict[str, Any], collector: ReportCollector,
                 calibration_bins: dict[str, list[Any]]) -> Path:
    """Write report.html (self-contained) for an evaluation summary; return its path."""
    path = Path(path)
    classes = summary["classes"]
    cm = np.asarray(summary["confusion_matrix"], np.int64)
    figures = [("Confusion matrix", confusion_figure(cm, classes))]
    if collector.threshold is not None:
        figures.append(("IoU versus threshold", threshold_figure(collector.threshold, classes, summary.get("threshold"))))
    figures.append(("Reliability", reliability_figure(calibration_bins, summary.get("ece"))))
    figures.append(("IoU by object size", size_figure(collector.sizes, classes, collector.colors)))
    parts = [_HEAD.format(title=html.escape(f"catseg evaluation: {Path(summary['run']).name}")),
             _headline(summary), _class_table(summary, cm, collector.colors)]
    parts.append('<h2>Figures</h2><div class="figs">' + "".join(
        f'<figure><img class="figure" alt="{html.escape(t)}" src="{_data_uri(png)}"><figcaption>{html.escape(t)}'
        "</figcaption></figure>" for t, png in figures) + "</div>")
    parts.append(_gallery(collector, path.parent))
    parts.append("</body></html>\n")
    atomic_write_bytes(path, "".join(parts).encode("utf-8"))
    return path


_HEAD = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>
body{{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1200px;color:#222;padding:0 1em}}
h1{{font-size:1.5em}} h2{{margin-top:1.6em;border-bottom:1px solid #ddd}}
.cards{{display:flex;gap:1em;flex-wrap:wrap}} .card{{border:1px solid #ddd;border-radius:6px;padding:.6em 1em}}
.card b{{display:block;font-size:1.8em}} .meta{{color:#555;font-size:.9em}}
table{{border-collapse:collapse}} td,th{{padding:.25em .7em;text-align:right;border-bottom:1px solid #eee}}
td:first-child,th:first-child{{text-align:left}} .sw{{display:inline-block;width:.9em;height:.9em;
border:1px solid #999;margin-right:.4em;vertical-align:middle}}
.figs{{display:flex;flex-wrap:wrap;gap:1em}} figure{{margin:0}} figcaption{{text-align:center;color:#555}}
.gallery .row{{display:flex;gap:.5em;align-items:flex-start;margin-bottom:1em;flex-wrap:wrap}}
.gallery img{{border:1px solid #ccc}} .gallery .info{{width:14em;font-size:.9em;overflow-wrap:anywhere}}
.legend span{{margin-right:1.2em}}
</style></head><body>
<h1>{title}</h1>
"""


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _headline(summary: dict[str, Any]) -> str:
    cards = [("mIoU (dataset-wide)", summary["dataset"]["miou"]), ("mIoU (per image)", summary["per_image"]["miou"]),
             ("pixel accuracy", summary["dataset"]["pixel_accuracy"]), ("calibration error (ECE)", summary.get("ece"))]
    tta = summary.get("tta", {})
    meta = [(f"{summary['num_images']} images, split {html.escape(str(summary['split']))} of "
             f"{html.escape(str(summary['dataset_dir']))}"), f"run {html.escape(str(summary['run']))}",
            "mirror TTA " + ("on" if tta.get("flip") else "off")
            + (f", scales {tta.get('scales')}" if tta.get("scales") not in (None, [1.0]) else "")]
    if summary.get("threshold") is not None:
        meta.append(f"threshold {summary['threshold']:.2f} on p({html.escape(summary['classes'][1])})")
    return ('<div class="cards">' + "".join(f'<div class="card">{html.escape(n)}<b>{_fmt(v)}</b></div>' for n, v in cards)
            + '</div><p class="meta">' + " &middot; ".join(meta) + "</p>")


def _class_table(summary: dict[str, Any], cm: np.ndarray, colors: np.ndarray) -> str:
    s = scores(cm, summary["classes"])
    total = max(1, int(cm.sum()))
    rows = []
    for c, name in enumerate(summary["classes"]):
        d, p = summary["dataset"]["per_class"][name], summary["per_image"]["per_class"][name]
        swatch = f'<span class="sw" style="background:rgb{tuple(int(v) for v in colors[c])}"></span>'
        cells = [d["iou"], d["dice"], p["iou"], p["dice"], s["precision"][c], s["recall"][c]]
        rows.append(f"<tr><td>{swatch}{html.escape(name)}</td>" + "".join(f"<td>{_fmt(_f(v))}</td>" for v in cells)
                    + f"<td>{cm[c].sum() / total:.2%}</td><td>{cm[:, c].sum() / total:.2%}</td></tr>")
    head = ["class", "IoU", "Dice", "IoU/img", "Dice/img", "precision", "recall", "true pixels", "predicted pixels"]
    return ("<h2>Per class</h2><table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(rows)
            + "</table><p class=\"meta\">dataset-wide: pixels summed over all images; /img: mean over the images "
              "where the class is in the truth or the prediction</p>")


def _f(v: Any) -> float | None:
    return None if v is None else float(v)


def _href(target: Path, base: Path) -> str:
    try:
        return html.escape(Path(os.path.relpath(os.path.abspath(target), os.path.abspath(base))).as_posix(), quote=True)
    except ValueError:  # another drive
        return html.escape(target.resolve().as_uri(), quote=True)


def _gallery(collector: ReportCollector, base: Path) -> str:
    examples = collector.worst_examples()
    two = len(collector.classes) == 2 and collector.background is not None
    bg = collector.background or 0
    thing, ground = html.escape(collector.classes[1 - bg]), html.escape(collector.classes[bg])
    legend = (f'<span style="color:rgb{_FP}">&#9632; false positive: predicted {thing}, '
              f'truly {ground}</span><span style="color:rgb{_FN}">&#9632; false negative: '
              f'predicted {ground}, truly {thing}</span>'
              if two else f'<span style="color:rgb{_WRONG}">&#9632; wrong class</span>')
    legend += f'<span style="color:rgb{_IGNORED}">&#9632; ignored</span>'
    out = [(f'<h2>The {len(examples)} worst images (lowest per-image mIoU)</h2><div class="gallery">'
            f'<p class="legend">photo &middot; true mask &middot; predicted mask &middot; errors: {legend}</p>')]
    for e in examples:
        per_class = "<br>".join(f"{html.escape(n)} {_fmt(v)}" for n, v in zip(collector.classes, e.ious))
        photo, mask = _href(e.image_path, base), _href(e.mask_path, base)
        out.append(f'<div class="row example"><div class="info"><a href="{photo}"><b>{html.escape(e.stem)}</b></a>'
                   f"<br>mIoU {_fmt(e.miou)}<br>{per_class}</div>"
                   f'<a href="{photo}"><img alt="photo" src="{_data_uri(e.photo, "jpeg")}"></a>'
                   f'<a href="{mask}"><img alt="true mask" src="{_data_uri(e.truth)}"></a>'
                   f'<img alt="predicted mask" src="{_data_uri(e.pred)}">'
                   f'<img alt="errors" src="{_data_uri(e.errors)}"></div>')
    return "".join(out) + "</div>"
