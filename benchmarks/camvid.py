"""Many classes and small objects: CamVid through the defaults, the protocol of the CamVid issue.

    python benchmarks/camvid.py                      # 10m
    python benchmarks/camvid.py --budgets 10m,30m --picture docs/camvid-predictions.png

For each budget it runs the real command line as a new user would: import CamVid with its own train/val
folders and void id 11, `catseg train DS --out RUN --time-budget B` with no other flag, and `catseg evaluate`
on the val part at the photos' own size. It prints the CPU flags, the plan lines, the class-mean IoU over the
11 classes (void ignored), each class's IoU worst first, the targets (>= 0.60 after 10 minutes, >= 0.66 after
30; Pole, Pedestrian and Bicyclist >= 0.30 after 10), and one JSON line. Needs ../shared/data/camvid (or
--data); run it on an idle machine. Figures on val are validation figures: the test split is held back.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_flags  # benchmarks/machine.py

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"
CLASSES = "Sky,Building,Pole,Road,Pavement,Tree,SignSymbol,Fence,Car,Pedestrian,Bicyclist"
SMALL = ("Pole", "Pedestrian", "Bicyclist")
TARGETS = {"10m": 0.60, "30m": 0.66}


def _catseg(*args: str, log: Path | None = None) -> str:
    proc = subprocess.run([sys.executable, "-m", "catseg.cli", *args], capture_output=True, text=True)
    if log is not None:
        log.write_text(f"$ catseg {' '.join(args)}\n{proc.stdout}{proc.stderr}", encoding="utf-8")
    if proc.returncode != 0:
        sys.exit(f"catseg {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def run_budget(dataset: Path, work: Path, budget: str, train_args: list[str] = ()) -> dict:
    run = work / f"run-{budget}"
    started = time.perf_counter()
    train_log = work / f"train-{budget}.log"
    _catseg("train", str(dataset), "--out", str(run), "--time-budget", budget, *train_args, log=train_log)
    seconds = time.perf_counter() - started
    printed = _catseg("evaluate", str(run), str(dataset), "--out", str(work / f"eval-{budget}"))
    summary = json.loads((work / f"eval-{budget}" / "summary.json").read_text())
    per_class = {name: v["iou"] for name, v in summary["dataset"]["per_class"].items()}
    plan = [line for line in train_log.read_text().splitlines() if line.startswith("plan:")]
    return {"budget": budget, "train_seconds": round(seconds, 1), "class_mean_iou": summary["dataset"]["miou"],
            "per_class_iou": per_class, "plan": plan, "evaluate": printed, "run": str(run),
            "objects": summary.get("objects", {})}


def picture(run: Path, data: Path, out: Path, stems: list[str]) -> None:
    """Write photo | truth | prediction rows for a few val photos (overlays drawn by catseg predict)."""
    import numpy as np
    from PIL import Image

    from catseg.images import read_image, read_mask
    from catseg.predict import Predictor, overlay

    predictor = Predictor.from_run(run)
    colors = predictor.config.colors
    rows = []
    for stem in stems:
        image = read_image(next((data / "images").glob(f"{stem}.*")))
        truth = read_mask(data / "masks" / f"{stem}.png")
        truth_shown = np.where(truth == 255, 0, truth).astype(np.uint8)
        pred = predictor.predict(image)
        background = predictor.config.background  # None for CamVid: every class is painted
        rows.append(np.concatenate([image, overlay(image, truth_shown, colors, 0.7, background),
                                    overlay(image, pred, colors, 0.7, background)], axis=1))
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--budgets", default="10m")
    parser.add_argument("--work", type=Path, default=None, help="keep runs and logs here (default: a temp folder)")
    parser.add_argument("--picture", type=Path, default=None, help="write photo/truth/prediction rows here")
    parser.add_argument("--train-args", default="",
                        help="extra `catseg train` flags, quoted (the targets are for none)")
    args = parser.parse_args()
    if not (args.data / "train").is_dir():
        sys.exit(f"{args.data}: no CamVid here (see ../shared/data/README.md); skipped")
    print(f"machine: {cpu_flags()}")
    work = args.work or Path(tempfile.mkdtemp(prefix="catseg-camvid-"))
    dataset = work / "camvid-ds"
    if not (dataset / "dataset.json").is_file():
        _catseg("-q", "import", "masks", str(args.data), str(dataset), "--split", "train=train,trainannot",
                "--split", "val=val,valannot", "--classes", CLASSES, "--ignore-id", "11")
    results = []
    for budget in args.budgets.split(","):
        r = run_budget(dataset, work, budget, shlex.split(args.train_args))
        results.append(r)
        print(f"\n== {budget}: trained {r['train_seconds']:.0f}s (run {r['run']})")
        print("\n".join(r["plan"]))
        print(r["evaluate"].rstrip())
        target = TARGETS.get(budget)
        small = {c: r["per_class_iou"][c] for c in SMALL}
        print(f"class-mean IoU {r['class_mean_iou']:.3f}" + (f" (target >= {target:.2f}: "
              f"{'met' if r['class_mean_iou'] >= target else 'NOT met'})" if target else ""))
        print("small classes: " + ", ".join(f"{c} {v:.3f}" for c, v in small.items())
              + (f" (target >= 0.30 each: {'met' if min(small.values()) >= 0.30 else 'NOT met'})"
                 if budget == "10m" else ""))
    if args.picture and results:
        stems = json.loads((dataset / "dataset.json").read_text())["splits"]["val"]
        picture(Path(results[-1]["run"]), dataset, args.picture, [stems[5], stems[40], stems[80]])
        print(f"picture: {args.picture}")
    print(json.dumps({"cpu": cpu_flags(), "results": [{k: v for k, v in r.items() if k != "evaluate"}
                                                      for r in results]}))


if __name__ == "__main__":
    main()
