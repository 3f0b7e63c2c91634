"""Training and prediction speed of catseg against the course configuration, measured in one run.

    python benchmarks/throughput.py            # about 4 minutes on a 2-core CPU
    python benchmarks/throughput.py --quick    # fewer steps, for a smoke test

Each part runs in its own process so that its peak resident memory is its own. Parts:
  matmul          the machine's bf16 and fp32 2048x2048 matrix-product rate (GFLOP/s)
  train-catseg    `catseg train`'s real code path (fit(): cached loader + augmentation + step) for the
                  default UNet (width 32, depth 4) at 256x256, batch 8, precision auto
  train-course    the course configuration: the same model, fp32, default memory layout, batch 8,
                  images decoded and resized from disk in the loader on every step
  predict-catseg  one 1024x640 JPEG, end to end (decode -> mask PNG on disk), and a batch of 16
  predict-course  the same with fp32, default memory layout, as the reference
  predict-huge    one 6000x4000 photo, to show memory stays bounded (stretch policy, and the same
                  network under the scale policy with overlapping windows)
  train-default   the default pretrained model (`--model auto`: smp-unet with the ImageNet-pretrained
                  efficientnet-lite0) at the size the planner picks for the pets in 10 minutes
  predict-default that model on the 1024x640 JPEG, end to end, without and with mirror TTA
It prints a table and, last, one JSON line with every figure and the ratios. Run it on an idle
machine: a second busy process on a 2-core CPU slows PyTorch's thread pool many times over.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from machine import cpu_flags  # benchmarks/machine.py

BATCH, SIZE, WIDTH, DEPTH = 8, 256, 32, 4
DEFAULT_SIZE = 160  # what the planner chose for the pets sample with --time-budget 10m on this CPU


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    """A photo-like image: smooth colour fields and an ellipse, so JPEG sizes are realistic."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (max(2, h // 32), max(2, w // 32), 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), dtype=np.int16)
    image += rng.integers(-12, 12, image.shape, dtype=np.int16)
    yy, xx = np.ogrid[:h, :w]
    inside = ((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 3)) ** 2 < 1
    image[inside] = (image[inside] * 0.5 + 90).astype(np.int16)
    return np.clip(image, 0, 255).astype(np.uint8)


def make_dataset(root: Path, count: int = 72) -> Path:
    """Write a dataset folder of `count` 500x375 JPEG photos with elliptical masks."""
    from catseg.data import DatasetWriter, dataset_json

    with DatasetWriter(root) as writer:
        for i in range(count):
            image = _photo(375, 500, i)
            yy, xx = np.ogrid[:375, :500]
            mask = (((yy - 187.5) / 125) ** 2 + ((xx - 250) / 166.7) ** 2 < 1).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format="JPEG", quality=90)
            writer.write_image(f"p{i:03d}", buf.getvalue(), ".jpg")
            writer.write_mask(f"p{i:03d}", mask)
        writer.write_dataset_json(dataset_json(["background", "thing"]))
    return root


def _train_flops_per_image() -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from catseg.models import create_model

    model = create_model("unet", 3, 2, width=WIDTH, depth=DEPTH)
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, SIZE, SIZE)).sum().backward()
    return counter.get_total_flops()


def part_matmul(args: argparse.Namespace) -> dict:
    import torch

    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
        for _ in range(3):
            a @ b
        n = 10 if not args.quick else 4
        t0 = time.perf_counter()
        for _ in range(n):
            a @ b
        out[f"matmul_{name}_gflops"] = 2 * 2048**3 / ((time.perf_counter() - t0) / n) / 1e9
    out["train_gflop_per_image"] = _train_flops_per_image() / 1e9
    return out


def part_train_catseg(args: argparse.Namespace) -> dict:
    from catseg.config import TrainConfig
    from catseg.train import fit

    epochs = 2 if args.quick else 3
    result = fit(TrainConfig(dataset=str(args.data), out=str(args.work / "run"), model="unet", size=SIZE, width=WIDTH, depth=DEPTH,
                             batch_size=BATCH, epochs=epochs, val_fraction=0.12, precision=args.precision,
                             force=True).validate())
    last = result.history[-1]  # the first epoch pays for one-off set-up (allocator, kernel choice)
    run_config = json.loads((args.work / "run" / "config.json").read_text())
    return {"train_catseg_img_s": last["images_per_s"], "train_catseg_data_wait": last["data_wait_frac"],
            "train_catseg_precision": run_config["train"]["precision_used"],
            "train_catseg_peak_mb": _peak_rss_mb()}


def part_train_course(args: argparse.Namespace) -> dict:
    """The course's loop: decode + resize from disk per sample, fp32, NCHW, BCE-style CE + Dice."""
    import torch
    import torch.nn.functional as F

    from catseg.data import read_dataset
    from catseg.images import read_image, read_mask
    from catseg.models import create_model

    info = read_dataset(args.data)
    stems = info.stems()

    class CourseDataset(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(stems)

        def __getitem__(self, i: int):
            image = Image.fromarray(read_image(info.image_path(stems[i]))).resize((SIZE, SIZE), Image.BILINEAR)
            mask = Image.fromarray(read_mask(info.mask_path(stems[i]))).resize((SIZE, SIZE), Image.NEAREST)
            x = torch.from_numpy(np.asarray(image, np.float32) / 255.0).permute(2, 0, 1)
            return x, torch.from_numpy(np.asarray(mask, np.int64))

    torch.manual_seed(0)
    model = create_model("unet", 3, 2, width=WIDTH, depth=DEPTH)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(CourseDataset(), batch_size=BATCH, shuffle=True, drop_last=True)
    steps = 3 if args.quick else 6
    seen, t0 = 0, None
    for i, (x, y) in enumerate(loader):
        logits = model(x)
        probs = logits.softmax(1)[:, 1]
        dice = 1 - (2 * (probs * y).sum() + 1) / (probs.sum() + y.sum() + 1)
        loss = F.cross_entropy(logits, y) + dice
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i == 0:
            t0 = time.perf_counter()  # the first step pays for one-off set-up, as in catseg's last epoch
        else:
            seen += len(x)
        if i == steps:
            break
    return {"train_course_img_s": seen / (time.perf_counter() - t0), "train_course_peak_mb": _peak_rss_mb()}


def _photo_file(path: Path, h: int, w: int, seed: int) -> Path:
    Image.fromarray(_photo(h, w, seed)).save(path, format="JPEG", quality=90)
    return path


def part_predict_catseg(args: argparse.Namespace) -> dict:
    from catseg.files import atomic_write_bytes
    from catseg.images import mask_png_bytes, read_image
    from catseg.predict import Predictor, predict_files

    photo = _photo_file(args.work / "photo.jpg", 640, 1024, 1)
    # tta=False: the engine is compared with the course's single forward pass (a run may choose mirroring).
    predictor = Predictor.from_run(args.work / "run", device="cpu", precision=args.precision, tta=False)
    times = []
    for i in range(6 if not args.quick else 3):
        t0 = time.perf_counter()
        mask = predictor.predict(read_image(photo))
        atomic_write_bytes(args.work / "photo_mask.png", mask_png_bytes(mask, predictor.config.colors))
        times.append(time.perf_counter() - t0)
    batch_dir = args.work / "batch"
    batch_dir.mkdir(exist_ok=True)
    for i in range(16):
        _photo_file(batch_dir / f"b{i:02d}.jpg", 640, 1024, 100 + i)
    t0 = time.perf_counter()
    predict_files(args.work / "run", [str(batch_dir)], args.work / "batch_out", batch_size=8, force=True,
                  device="cpu", tta=False)
    batch_seconds = time.perf_counter() - t0
    return {"predict_catseg_ms": 1000 * statistics.median(times[1:]), "predict_catseg_batch_img_s": 16 / batch_seconds,
            "predict_catseg_peak_mb": _peak_rss_mb()}


def part_predict_course(args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F

    from catseg.models import create_model, load_weights

    photo = _photo_file(args.work / "photo.jpg", 640, 1024, 1)
    model = create_model("unet", 3, 2, width=WIDTH, depth=DEPTH)
    load_weights(model, args.work / "run" / "model.safetensors")
    model.eval()
    times = []
    for i in range(6 if not args.quick else 3):
        t0 = time.perf_counter()
        image = Image.open(photo).convert("RGB")
        x = torch.from_numpy(np.asarray(image.resize((SIZE, SIZE), Image.BILINEAR), np.float32) / 255.0)
        with torch.no_grad():
            logits = model(((x - 0.5) / 0.5).permute(2, 0, 1)[None])
        logits = F.interpolate(logits, size=(image.height, image.width), mode="bilinear", align_corners=False)
        Image.fromarray(logits.argmax(1)[0].numpy().astype(np.uint8)).save(args.work / "course_mask.png")
        times.append(time.perf_counter() - t0)
    return {"predict_course_ms": 1000 * statistics.median(times[1:]), "predict_course_peak_mb": _peak_rss_mb()}


def part_predict_huge(args: argparse.Namespace) -> dict:
    from catseg.predict import predict_files

    photo = _photo_file(args.work / "huge.jpg", 4000, 6000, 7)
    t0 = time.perf_counter()
    predict_files(args.work / "run", [str(photo)], args.work / "huge_out", force=True, device="cpu")
    return {"predict_huge_s": time.perf_counter() - t0, "predict_huge_peak_mb": _peak_rss_mb()}


def part_predict_huge_scale(args: argparse.Namespace) -> dict:
    """The same network under the `scale` policy (sliding windows), which a fully convolutional model allows."""
    from catseg.predict import predict_files

    run = args.work / "run-scale"
    if not run.exists():
        shutil.copytree(args.work / "run", run)
        config = json.loads((run / "config.json").read_text())
        config["preprocess"].update({"resize": "scale", "patch": SIZE})
        (run / "config.json").write_text(json.dumps(config))
    photo = _photo_file(args.work / "huge.jpg", 4000, 6000, 7)
    t0 = time.perf_counter()
    predict_files(run, [str(photo)], args.work / "huge_scale_out", force=True, device="cpu")
    return {"predict_huge_scale_s": time.perf_counter() - t0, "predict_huge_scale_peak_mb": _peak_rss_mb()}


def part_train_default(args: argparse.Namespace) -> dict:
    from catseg.config import TrainConfig
    from catseg.planner import PRETRAINED_DECODER_WIDTH
    from catseg.train import fit

    result = fit(TrainConfig(dataset=str(args.data), out=str(args.work / "run-default"), model="smp-unet",
                             encoder="efficientnet-lite0", encoder_weights="imagenet", size=DEFAULT_SIZE,
                             decoder_width=PRETRAINED_DECODER_WIDTH,
                             batch_size=BATCH, epochs=2 if args.quick else 3, val_fraction=0.12,
                             precision=args.precision, force=True).validate())
    last = result.history[-1]
    return {"train_default_img_s": last["images_per_s"], "train_default_data_wait": last["data_wait_frac"],
            "train_default_peak_mb": _peak_rss_mb()}


def part_predict_default(args: argparse.Namespace) -> dict:
    from catseg.images import read_image
    from catseg.predict import Predictor

    photo = read_image(_photo_file(args.work / "photo.jpg", 640, 1024, 1))
    out = {}
    for tta in (False, True):
        predictor = Predictor.from_run(args.work / "run-default", device="cpu", precision=args.precision, tta=tta)
        times = []
        for _ in range(6 if not args.quick else 3):
            t0 = time.perf_counter()
            predictor.predict(photo)
            times.append(time.perf_counter() - t0)
        out["predict_default_tta_ms" if tta else "predict_default_ms"] = 1000 * statistics.median(times[1:])
    out["predict_default_peak_mb"] = _peak_rss_mb()
    return out


PARTS = {"matmul": part_matmul, "train-default": part_train_default, "predict-default": part_predict_default, "train-catseg": part_train_catseg, "train-course": part_train_course,
         "predict-catseg": part_predict_catseg, "predict-course": part_predict_course,
         "predict-huge": part_predict_huge, "predict-huge-scale": part_predict_huge_scale}


def _run_part(name: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--part", name, "--work", str(args.work), "--data", str(args.data),
           "--precision", args.precision] + (["--quick"] if args.quick else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"part {name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _table(r: dict) -> str:
    rows = [
        ("matmul 2048^2, fp32 / bf16", f"{r['matmul_fp32_gflops']:.0f} / {r['matmul_bf16_gflops']:.0f} GFLOP/s", ""),
        ("train, course config (fp32, NCHW)", f"{r['train_course_img_s']:.2f} img/s",
         f"{r['train_course_peak_mb']:.0f} MB"),
        (f"train, catseg ({r['train_catseg_precision']}, channels-last)", f"{r['train_catseg_img_s']:.2f} img/s",
         f"{r['train_catseg_peak_mb']:.0f} MB"),
        ("  speed-up over the course", f"{r['train_speedup']:.2f}x", ""),
        ("  model FLOP rate / bf16 matmul rate", f"{r['train_gflops']:.0f} GFLOP/s = {100 * r['train_flop_util']:.0f}%", ""),
        ("  time waiting for data", f"{100 * r['train_catseg_data_wait']:.1f}% of step time", ""),
        ("predict 1024x640, course (fp32, NCHW)", f"{r['predict_course_ms']:.0f} ms", f"{r['predict_course_peak_mb']:.0f} MB"),
        ("predict 1024x640, catseg", f"{r['predict_catseg_ms']:.0f} ms", f"{r['predict_catseg_peak_mb']:.0f} MB"),
        ("  speed-up over the course", f"{r['predict_speedup']:.2f}x", ""),
        ("predict a batch of 16 1024x640 files", f"{r['predict_catseg_batch_img_s']:.1f} img/s", ""),
        ("predict one 6000x4000 photo (stretch)", f"{r['predict_huge_s']:.1f} s", f"{r['predict_huge_peak_mb']:.0f} MB"),
        ("predict one 6000x4000 photo (scale, windows)", f"{r['predict_huge_scale_s']:.1f} s",
         f"{r['predict_huge_scale_peak_mb']:.0f} MB"),
        (f"train, default pretrained (smp-unet lite0, {DEFAULT_SIZE}px)", f"{r['train_default_img_s']:.2f} img/s",
         f"{r['train_default_peak_mb']:.0f} MB"),
        ("  vs the course config (a larger model)", f"{r['train_default_img_s'] / r['train_course_img_s']:.2f}x", ""),
        ("predict 1024x640, default pretrained", f"{r['predict_default_ms']:.0f} ms",
         f"{r['predict_default_peak_mb']:.0f} MB"),
        ("  with mirror TTA", f"{r['predict_default_tta_ms']:.0f} ms", ""),
    ]
    width = max(len(a) for a, _, _ in rows)
    lines = [f"{'measure':{width}s}  {'figure':>28s}  {'peak RSS':>9s}"]
    lines += [f"{a:{width}s}  {b:>28s}  {c:>9s}" for a, b, c in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (smoke test, noisier figures)")
    parser.add_argument("--precision", default="auto", help="catseg's precision: auto, bf16 or fp32")
    parser.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        import logging

        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(PARTS[args.part](args)))
        return
    work = Path(tempfile.mkdtemp(prefix="catseg-bench-"))
    try:
        args.work, args.data = work, make_dataset(work / "data")
        print(f"cpu: {cpu_flags()}", flush=True)
        results: dict = {"cpu_count": os.cpu_count(), "cpu": cpu_flags()}
        for name in ("matmul", "train-catseg", "train-course", "predict-catseg", "predict-course", "predict-huge",
                     "predict-huge-scale", "train-default", "predict-default"):
            print(f"running {name} ...", file=sys.stderr, flush=True)
            results.update(_run_part(name, args))
        results["train_speedup"] = results["train_catseg_img_s"] / results["train_course_img_s"]
        results["train_gflops"] = results["train_catseg_img_s"] * results["train_gflop_per_image"]
        results["train_flop_util"] = results["train_gflops"] / results["matmul_bf16_gflops"]
        results["predict_speedup"] = results["predict_course_ms"] / results["predict_catseg_ms"]
        print(_table(results))
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in results.items()}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
