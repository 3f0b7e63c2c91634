"""Time to accuracy on the Oxford-IIIT Pet sample: the protocol of the accuracy issue.

    python benchmarks/accuracy.py                  # 2m and 10m: the default (pretrained) and --model unet
    python benchmarks/accuracy.py --budgets 10m --train-args "--model unet --size 128 --width 16"

For each budget it runs the real command line: import the sample with the binary labels (border
counted as pet), let `catseg train` split trainval 80/20 with seed 0, train with --time-budget,
and evaluate on the held-out 20% at each photo's original resolution. It prints the CPU flags, dataset-wide
and per-image pet IoU per series and budget, a table, one JSON line, and writes a time-to-accuracy plot.
Needs ../shared/data/oxford-pets-sample (or --data); run it on an idle machine.
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

from machine import cpu_flags, parse_series  # benchmarks/machine.py

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "oxford-pets-sample"


def _catseg(*args: str, log: Path | None = None) -> str:
    """Run the real command line; with `log`, keep its whole console output there (plan lines, epochs)."""
    quiet = [] if log else ["-q"]
    proc = subprocess.run([sys.executable, "-m", "catseg.cli", *quiet, *args], capture_output=True, text=True)
    if log is not None:
        log.write_text(f"$ catseg {' '.join(args)}\n{proc.stdout}{proc.stderr}", encoding="utf-8")
    if proc.returncode != 0:
        sys.exit(f"catseg {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def run_budget(dataset: Path, work: Path, budget: str, train_args: list[str], tta: str) -> dict:
    """Train with one budget and return its scores."""
    run = work / f"run-{budget}"
    started = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    _catseg("train", str(dataset), "--out", str(run), "--time-budget", budget, "--force", *train_args,
            log=work / f"train-{budget}.log")
    seconds = time.perf_counter() - started
    out = work / f"eval-{budget}"
    _catseg("evaluate", str(run), str(dataset), "--out", str(out), "--force",
            *{"auto": [], "on": ["--tta"], "off": ["--no-tta"]}[tta])
    summary = json.loads((out / "summary.json").read_text())
    config = json.loads((run / "config.json").read_text())
    return {"budget": budget, "train_seconds": round(seconds, 1), "epochs": config["scores"]["epochs"],
            "pet_iou": summary["dataset"]["per_class"]["pet"]["iou"],
            "pet_iou_per_image": summary["per_image"]["per_class"]["pet"]["iou"],
            "miou": summary["dataset"]["miou"], "val_images": summary["num_images"],
            "mirror_tta": summary["tta"]["flip"], "postprocess": config["postprocess"],
            "settings": {k: config["train"].get(k) for k in ("model", "encoder", "encoder_weights", "decoder_width", "size", "resize", "width",
                                                             "depth", "batch_size", "augment", "encoder_lr",
                                                             "size_start", "lr", "precision_used")}}


def plot(series: dict[str, list[dict]], path: Path) -> None:
    """Write pet IoU against training time, one line per series (matplotlib's object API)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.8))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for (name, rows), marker in zip(series.items(), "os^v"):
        minutes = [r["train_seconds"] / 60 for r in rows]
        ax.plot(minutes, [r["pet_iou"] for r in rows], f"{marker}-", label=f"{name}: dataset-wide")
        ax.plot(minutes, [r["pet_iou_per_image"] for r in rows], f"{marker}--", alpha=0.5, label=f"{name}: per image")
        for m, r in zip(minutes, rows):
            ax.annotate(f"{r['pet_iou']:.3f}", (m, r["pet_iou"]), textcoords="offset points", xytext=(4, -12),
                        fontsize=8)
    ax.set_xlabel("training time on this machine (minutes, import and evaluation not counted)")
    ax.set_ylabel("pet IoU on held-out photos")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the Oxford-IIIT Pet sample (release layout)")
    parser.add_argument("--budgets", default="2m,10m", help="comma list of --time-budget values")
    parser.add_argument("--series", action="append", default=None, metavar="NAME=FLAGS",
                        help="a line of the table and plot: its name and its extra `catseg train` flags (repeat it); "
                             "default: 'pretrained (default)=' and 'from scratch=--model unet'")
    parser.add_argument("--train-args", default=None, help="one series' extra `catseg train` flags, quoted")
    parser.add_argument("--tta", choices=("auto", "on", "off"), default="auto",
                        help="mirror test-time augmentation: as the run chose on validation (auto), always, or never")
    parser.add_argument("--plot", type=Path, default=Path("accuracy.png"), help="where to write the plot")
    parser.add_argument("--work", type=Path, default=None, help="keep datasets and runs here (default: a temp folder)")
    args = parser.parse_args()
    print(f"cpu: {cpu_flags()}", file=sys.stderr, flush=True)
    if not args.data.is_dir():
        sys.exit(f"{args.data}: the Oxford-IIIT Pet sample is not there; pass --data")
    if args.train_args is not None:
        specs = [f"custom={args.train_args}"]
    else:
        specs = args.series or ["pretrained (default)=", "from scratch=--model unet"]
    series_args = parse_series(specs)
    work = args.work or Path(tempfile.mkdtemp(prefix="catseg-accuracy-"))
    dataset = work / "pets"
    if not dataset.exists():
        _catseg("import", "oxford-pets", str(args.data), str(dataset), "--labels", "binary")
    series: dict[str, list[dict]] = {}
    for n, (name, flags) in enumerate(series_args.items()):
        rows = series[name] = []
        for budget in [b.strip() for b in args.budgets.split(",") if b.strip()]:
            print(f"{name}: training with --time-budget {budget} {flags}...", file=sys.stderr, flush=True)
            rows.append(run_budget(dataset, work / f"series{n}", budget, shlex.split(flags), args.tta))
            r = rows[-1]
            print(f"  {budget}: pet IoU {r['pet_iou']:.4f} (per image {r['pet_iou_per_image']:.4f}), "
                  f"{r['epochs']} epochs, {r['train_seconds']:.0f}s, {r['settings']}, mirror TTA {r['mirror_tta']}",
                  file=sys.stderr, flush=True)
    print(f"cpu: {cpu_flags()}")
    print(f"{'series':24s} {'budget':>7s} {'train s':>8s} {'epochs':>6s} {'pet IoU':>8s} {'per image':>9s} {'mIoU':>7s}")
    for name, rows in series.items():
        for r in rows:
            print(f"{name:24s} {r['budget']:>7s} {r['train_seconds']:8.0f} {r['epochs']:6d} {r['pet_iou']:8.4f} "
                  f"{r['pet_iou_per_image']:9.4f} {r['miou']:7.4f}")
    for name, rows in series.items():
        print(f"{name}: {[r['settings'] for r in rows]}")
    print(f"{next(iter(series.values()))[0]['val_images']} held-out photos; work folder {work}")
    plot(series, args.plot)
    print(json.dumps({"series": series, "tta": args.tta, "cpu": cpu_flags()}))


if __name__ == "__main__":
    main()
