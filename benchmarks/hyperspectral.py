"""A synthetic hyperspectral scene: materials with distinct spectra plus noise, segmented with every band.

    nice -n 19 python benchmarks/hyperspectral.py             # 120 bands, 48 scenes, 20 epochs (about a minute)
    python benchmarks/hyperspectral.py --bands 400 --budget 2m --rgb-baseline --keep /tmp/hsi

The real command line throughout: write band-first .npy cubes (bands, height, width) and their masks
into train/ and test/ folders, `catseg import masks` with a split for each, `catseg check`, `catseg
train` for a fixed number of epochs (or a --budget), `catseg evaluate --split test` on scenes it never saw, `catseg preview` and
`catseg predict` on one test cube. Five classes: background soil and four materials. Two of them,
plastic-a and plastic-b, share one broad spectrum and differ only by a narrow absorption dip of a few
bands, so a false-colour preview shows them alike and only the full spectrum tells them apart. Every
object is lit by its own brightness (x0.6 to x1.4) and every pixel gets 2% noise, so spectral shape,
not brightness, separates the materials. With --rgb-baseline the same training runs on the 3-band
false-colour previews as a baseline. Prints the CPU flags, the per-class test IoU and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import cpu_flags  # benchmarks/machine.py
from PIL import Image

from catseg.cli import main

CLASSES = ["soil", "vegetation", "water", "plastic-a", "plastic-b"]


def spectra(bands: int) -> np.ndarray:
    """Return (5, bands) reflectances in 0-1 of the classes, over wavelengths 400-1000 nm."""
    nm = np.linspace(400, 1000, bands)
    soil = 0.15 + 0.25 * (nm - 400) / 600
    vegetation = 0.05 + 0.08 * np.exp(-((nm - 550) / 30) ** 2) + 0.45 / (1 + np.exp(-(nm - 715) / 12))
    water = 0.12 * np.exp(-(nm - 400) / 120) + 0.01
    plastic = 0.55 - 0.1 * ((nm - 700) / 300) ** 2
    dipped = plastic * (1 - 0.5 * np.exp(-((nm - 880) / 12) ** 2))  # a narrow absorption feature
    return np.stack([soil, vegetation, water, plastic, dipped])


def scene(rng: np.random.Generator, table: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ((bands, H, W) uint16 cube, (H, W) uint8 mask) with 4-7 ellipses of random materials."""
    mask = np.zeros((height, width), np.uint8)
    light = np.full((height, width), 1.0)
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(int(rng.integers(4, 8))):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(6, height / 4), rng.uniform(6, width / 4)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        mask[inside] = rng.integers(1, len(CLASSES))
        light[inside] = rng.uniform(0.6, 1.4)
    cube = table[mask] * light[:, :, None]  # (H, W, bands)
    cube *= 1 + 0.02 * rng.standard_normal(cube.shape)
    return np.moveaxis(np.clip(cube * 20000, 0, 65535).astype(np.uint16), -1, 0), mask


def write_split(root: Path, count: int, bands: int, size: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    table = spectra(bands)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(count):
        cube, mask = scene(rng, table, *size)
        np.save(root / "images" / f"scene{seed:02d}_{i:03d}.npy", cube)
        Image.fromarray(mask).save(root / "masks" / f"scene{seed:02d}_{i:03d}.png")


def run(argv: list[str]) -> None:
    print("$ catseg " + shlex.join(argv), flush=True)
    code = main(argv)
    if code not in (0,):
        raise SystemExit(f"catseg {argv[0]} exited with {code}")


def train_and_score(work: Path, dataset: Path, name: str, extra: list[str]) -> dict[str, float]:
    """Return the test IoU per class (and mIoU) of a from-scratch UNet trained on `dataset`."""
    run_dir = work / f"run-{name}"
    run(["train", str(dataset), "--out", str(run_dir), "--model", "unet", "--width", "16", "--class-weights", "auto",
         *extra])
    run(["evaluate", str(run_dir), str(dataset), "--split", "test", "--out", str(work / f"eval-{name}")])
    summary = json.loads((work / f"eval-{name}" / "summary.json").read_text())["dataset"]
    return {"miou": summary["miou"], **{c: summary["per_class"][c]["iou"] for c in CLASSES}}


def previews_dataset(work: Path, dataset: Path) -> Path:
    """Return a photo dataset of the 3-band false-colour previews of `dataset`, same masks and splits."""
    for split in ("train", "test"):
        run(["preview", str(work / "src" / split / "images"), "--out", str(work / "src" / f"rgb-{split}" / "images"),
             "--channel-axis", "first"])
        (work / "src" / f"rgb-{split}" / "masks").symlink_to(work / "src" / split / "masks")
    out = work / "dataset-rgb"
    run(["import", "masks", str(work / "src"), str(out), "--classes", ",".join(CLASSES),
         "--split", "train=rgb-train/images,rgb-train/masks", "--split", "test=rgb-test/images,rgb-test/masks"])
    return out


def main_benchmark() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bands", type=int, default=120)
    parser.add_argument("--train", type=int, default=48, help="training scenes (a fifth validates)")
    parser.add_argument("--test", type=int, default=16, help="held-out test scenes")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=20, help="training epochs (the same on any machine)")
    parser.add_argument("--budget", default="", help="a training time budget instead of --epochs (planned)")
    parser.add_argument("--rgb-baseline", action="store_true", help="also train on the false-colour previews")
    parser.add_argument("--keep", type=Path, default=None, help="folder to keep everything in (default: temporary)")
    args = parser.parse_args()
    print(f"cpu: {cpu_flags()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        write_split(work / "src" / "train", args.train, args.bands, (args.height, args.width), seed=1)
        write_split(work / "src" / "test", args.test, args.bands, (args.height, args.width), seed=2)
        dataset = work / "dataset"
        run(["import", "masks", str(work / "src"), str(dataset), "--classes", ",".join(CLASSES),
             "--split", "train=train/images,train/masks", "--split", "test=test/images,test/masks"])
        run(["check", str(dataset)])
        extra = ["--size", str(args.height)]
        extra += ["--time-budget", args.budget] if args.budget else ["--epochs", str(args.epochs)]
        started = time.perf_counter()
        scores = {"bands": train_and_score(work, dataset, "bands", extra)}
        seconds = time.perf_counter() - started
        probe = min((work / "src" / "test" / "images").glob("*.npy"))
        run(["preview", str(probe), "--out", str(work / "preview"), "--channel-axis", "first"])
        run(["predict", str(work / "run-bands"), str(probe), "--out", str(work / "predicted"),
             "--format", "mask,overlay,npy"])
        if args.rgb_baseline:
            rgb = previews_dataset(work, dataset)
            scores["false-colour preview"] = train_and_score(work, rgb, "rgb", extra)
    trained = f"{args.budget} of training" if args.budget else f"{args.epochs} epochs"
    print(f"\ntest IoU on {args.test} held-out {args.height}x{args.width} scenes of {args.bands} bands, {trained} "
          f"(train + evaluate with all bands: {seconds:.0f}s):")
    print(f"{'input':<22}" + "".join(f"{c:>12}" for c in CLASSES) + f"{'mIoU':>8}")
    for name, s in scores.items():
        print(f"{name:<22}" + "".join(f"{s[c]:>12.3f}" for c in CLASSES) + f"{s['miou']:>8.3f}")
    print(json.dumps({"bands": args.bands, "trained": trained, "seconds": round(seconds, 1), "cpu": cpu_flags(),
                      "scores": scores}))


if __name__ == "__main__":
    sys.exit(main_benchmark())
