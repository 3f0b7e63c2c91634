"""`catseg demo`: the whole job on generated data, with no downloads.

It draws cat-like figures (body, head, ears, tail) on textured backgrounds, writes them as real
labelme JSON + JPEG files, and then runs the same library functions as the CLI: convert, train,
evaluate, predict.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from catseg.errors import CatsegError
from catseg.files import atomic_write_json, replaced_on_success

DEMO_MARKER = "catseg-demo.json"  # marks a folder `catseg demo` wrote, so --force replaces nothing else
DEMO_FORMAT = "catseg-demo"

log = logging.getLogger(__name__)


def _texture(rng: np.random.Generator, h: int, w: int, base: np.ndarray, contrast: float, scale: int) -> np.ndarray:
    """Return (h, w, 3) float noise around a base colour; `scale` sets the blob size."""
    small = rng.normal(0, 1, (max(2, h // scale), max(2, w // scale), 3)).astype(np.float32)
    noise = np.asarray(Image.fromarray(((small - small.min()) / np.ptp(small) * 255).astype(np.uint8))
                       .resize((w, h), Image.BICUBIC), dtype=np.float32) / 255.0 - 0.5
    fine = rng.normal(0, 0.08, (h, w, 1)).astype(np.float32)
    return base[None, None, :] * (1 + contrast * noise + fine)


def _cat_shapes(rng: np.random.Generator, w: int, h: int) -> list[dict[str, Any]]:
    """Return labelme shapes for one cat-like figure: body polygon, head circle, ear polygons, tail line."""
    cx, cy = rng.uniform(0.35, 0.65) * w, rng.uniform(0.5, 0.7) * h
    rx, ry = rng.uniform(0.16, 0.26) * w, rng.uniform(0.10, 0.16) * h
    body = [[cx + rx * math.cos(t), cy + ry * math.sin(t)] for t in np.linspace(0, 2 * math.pi, 20, endpoint=False)]
    side = rng.choice([-1, 1])
    hx, hy = cx + side * rx * 0.9, cy - ry * 1.3
    hr = min(rx, ry) * rng.uniform(0.7, 0.9)
    ears = [[[hx + s * hr * 0.9, hy - hr * 0.3], [hx + s * hr * 0.2, hy - hr * 0.6],
             [hx + s * hr * 0.75, hy - hr * 1.6]] for s in (-1, 1)]
    tail = [[cx - side * rx * 0.9, cy], [cx - side * rx * 1.3, cy - ry * 0.8], [cx - side * rx * 1.2, cy - ry * 1.8]]
    shapes = [{"label": "cat", "points": body, "shape_type": "polygon"},
              {"label": "cat", "points": [[hx, hy], [hx + hr, hy]], "shape_type": "circle"}]
    shapes += [{"label": "cat", "points": e, "shape_type": "polygon"} for e in ears]
    shapes.append({"label": "cat", "points": tail, "shape_type": "linestrip"})
    for s in shapes:
        s.update({"group_id": None, "description": "", "flags": {}, "mask": None})
    return shapes


def _paint(rng: np.random.Generator, w: int, h: int, shapes: list[dict[str, Any]]) -> Image.Image:
    """Return a photo-like JPEG-able image with the figure drawn where the shapes say."""
    bg_base = rng.uniform(60, 200, 3).astype(np.float32)
    background = _texture(rng, h, w, bg_base, 0.6, int(rng.integers(6, 16)))
    if rng.random() < 0.5:  # stripes: a wall or a floor
        yy = np.arange(h, dtype=np.float32)[:, None, None]
        background *= 1 + 0.15 * np.sin(yy / rng.uniform(3, 9))
    fur_base = np.array(rng.choice([[200, 120, 50], [90, 90, 95], [40, 35, 30], [220, 210, 190]]), np.float32)
    fur = _texture(rng, h, w, fur_base * rng.uniform(0.85, 1.15), 0.35, 3)
    figure = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(figure)
    for s in shapes:
        pts = [tuple(p) for p in s["points"]]
        if s["shape_type"] == "circle":
            (x0, y0), (x1, y1) = pts
            r = math.hypot(x1 - x0, y1 - y0)
            draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=255)
        elif s["shape_type"] == "linestrip":
            draw.line(pts, fill=255, width=10)
        else:
            draw.polygon(pts, fill=255)
    alpha = np.asarray(figure.filter(ImageFilter.GaussianBlur(0.7)), np.float32)[..., None] / 255.0
    photo = np.clip(background * (1 - alpha) + fur * alpha, 0, 255).astype(np.uint8)
    return Image.fromarray(photo)


def make_synthetic_labelme(folder: str | Path, count: int = 48, seed: int = 0, annotate: bool = True) -> list[Path]:
    """Write `count` cat-like photos (JPEG, sides not multiples of 16) with labelme JSON files; return the JSONs
    (or the images when annotate is False)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = []
    for i in range(count):
        w, h = int(rng.integers(100, 150)), int(rng.integers(80, 120))
        shapes = _cat_shapes(rng, w, h)
        image = _paint(rng, w, h, shapes)
        name = f"cat_{seed:02d}_{i:03d}"
        image.save(folder / f"{name}.jpg", quality=92)
        if not annotate:
            written.append(folder / f"{name}.jpg")
            continue
        doc = {"version": "5.5.0", "flags": {}, "shapes": shapes, "imagePath": f"{name}.jpg", "imageData": None,
               "imageHeight": h, "imageWidth": w}
        (folder / f"{name}.json").write_text(json.dumps(doc, indent=1), encoding="utf-8")
        written.append(folder / f"{name}.json")
    return written


@dataclass
class DemoReport:
    """Where the demo wrote everything and what it reached."""

    out_dir: Path
    labelme_dir: Path
    dataset_dir: Path
    run_dir: Path
    eval_dir: Path
    predictions_dir: Path
    miou: float
    cat_iou: float
    seconds: float

    def summary(self) -> str:
        return "\n".join([
            f"catseg demo finished in {self.seconds:.0f}s",
            f"  labelme annotations : {self.labelme_dir}",
            f"  dataset folder      : {self.dataset_dir}",
            f"  trained run         : {self.run_dir}  (config.json, model.safetensors, metrics.csv, curves.png)",
            f"  evaluation          : {self.eval_dir}/summary.json",
            f"  predicted masks     : {self.predictions_dir}",
            f"validation mIoU {self.miou:.3f} (cat IoU {self.cat_iou:.3f}) at the photos' own sizes",
            f"next: catseg predict {self.run_dir} YOUR_PHOTO.jpg --out masks/ --format mask,overlay",
        ])


def run_demo(out_dir: str | Path = "catseg-demo", time_budget: str = "60s", force: bool = False,
             progress: Any = None, size: int = 96, width: int = 16) -> DemoReport:
    """Generate data, convert, train, evaluate and predict; return where everything is.

    `progress` is passed to catseg.train.fit (a per-step callback)."""
    started = time.perf_counter()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not force:
        raise CatsegError(f"{out}: already exists. Pass --out elsewhere or --force to replace it.")
    # --force replaces only a folder an earlier demo wrote (its marker file), and only once the new one is done.
    with replaced_on_success(out, DEMO_MARKER, "a catseg demo folder", DEMO_FORMAT):
        return _run_demo(out, time_budget, progress, size, width, started)


def _run_demo(out: Path, time_budget: str, progress: Any, size: int, width: int, started: float) -> DemoReport:
    from catseg.config import TrainConfig
    from catseg.evaluate import evaluate
    from catseg.labelme import convert_labelme
    from catseg.predict import predict_files
    from catseg.train import fit

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / DEMO_MARKER, {"format": DEMO_FORMAT, "note": "written by catseg demo; --force may "
                                                                          "replace this folder"})
    labelme_dir, dataset_dir, run_dir = out / "labelme", out / "dataset", out / "run"
    log.info("1/5 drawing 48 annotated photos as labelme JSON in %s", labelme_dir)
    make_synthetic_labelme(labelme_dir, count=48, seed=0)
    new_photos = out / "new-photos"
    make_synthetic_labelme(new_photos, count=4, seed=1, annotate=False)
    log.info("2/5 converting to a dataset folder")
    convert_labelme(labelme_dir, dataset_dir)
    log.info("3/5 training for %s", time_budget)
    fit(TrainConfig(dataset=str(dataset_dir), out=str(run_dir), model="unet", size=size, width=width, depth=3,
                    time_budget=time_budget, batch_size=8, lr=3e-3, seed=0, no_plan=True).validate(), progress=progress)
    log.info("4/5 evaluating on the validation photos at their own sizes")
    summary = evaluate(run_dir, dataset_dir)
    log.info("5/5 predicting masks for %s", new_photos)
    predictions = out / "predictions"
    predict_files(run_dir, [str(new_photos)], predictions, formats=["mask", "overlay"])
    return DemoReport(out, labelme_dir, dataset_dir, run_dir, Path(summary["out_dir"]), predictions,
                      summary["dataset"]["miou"], summary["dataset"]["per_class"]["cat"]["iou"],
                      time.perf_counter() - started)
