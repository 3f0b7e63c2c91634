"""Prediction speed and agreement of the backends, in one run on this CPU: PyTorch eager (the run's
precision, and fp32) against onnxruntime fp32 on `catseg export`'s file, OpenVINO fp32 on the same file
when catseg[openvino] is installed, and onnxruntime int8 (static quantisation of the convolutions,
calibrated on the run's training photos, else on the folder's) when it can be made.

    python benchmarks/export.py                 # the default UNet (width 32, depth 4, 256 px), random weights
    python benchmarks/export.py --run RUN       # a trained run folder (agreement figures mean more)
    python benchmarks/export.py --quick         # fewer repeats, for a smoke test

Prints the CPU's flags first (avx2, avx512f, avx512_bf16, amx), then per backend: the median time for
one 1024x640 photo (decoded array -> cleaned mask) and the images per second over a folder of photos,
each with the mean IoU of its masks against PyTorch fp32's and the run's own precision's, and the lowest
share of pixels any photo's mask agrees on with PyTorch fp32's (catseg keeps a runtime at >= 99.9%, the
export's parity bar; int8 is reported, not shipped, below 99%). The last line is one JSON object with
every figure. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")


def cpu_flags() -> dict[str, bool]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return {f: f in flags for f in FLAGS}


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    """A photo-like image: smooth colour fields and an ellipse."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (max(2, h // 64), max(2, w // 64), 3)).astype(np.uint8)
    image = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    image += rng.integers(-12, 12, image.shape, dtype=np.int16)
    yy, xx = np.ogrid[:h, :w]
    inside = ((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 3)) ** 2 < 1
    image[inside] = (image[inside] * 0.5 + 90).astype(np.int16)
    return np.clip(image, 0, 255).astype(np.uint8)


def random_run(root: Path) -> Path:
    """Write a run folder of the default UNet with random weights (speed does not depend on training)."""
    import torch

    from catseg.models import create_model, save_weights
    from catseg.preprocess import Preprocess
    from catseg.run import RunConfig

    torch.manual_seed(0)
    model = create_model("unet", 3, 2, width=32, depth=4)
    with torch.no_grad():  # give BatchNorm believable statistics, so the masks are not all one class
        model.train()(torch.randn(4, 3, 128, 128))
    config = RunConfig(model="unet", model_kwargs={"width": 32, "depth": 4, "upsample": "transpose"}, in_channels=3,
                       classes=["background", "object"], colors=[[0, 0, 0], [128, 0, 0]], ignore_index=255,
                       preprocess=Preprocess(size=256), threshold=0.5)
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config.to_json()))
    save_weights(model.eval(), root / "model.safetensors")
    return root


def miou(a: np.ndarray, b: np.ndarray) -> float:
    """Mean IoU over the classes present in either mask."""
    scores = []
    for k in np.union1d(np.unique(a), np.unique(b)):
        inter, union = np.sum((a == k) & (b == k)), np.sum((a == k) | (b == k))
        scores.append(inter / union)
    return float(np.mean(scores))


def _openvino_version() -> str:
    try:
        import openvino
    except ImportError:
        return "not installed"
    return openvino.get_version().split("-")[0]


def timed(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def training_photos(run: Path, limit: int) -> list[np.ndarray]:
    """Return up to `limit` of the run's training photos (the int8 calibration set), or [] when gone."""
    from catseg.data import read_dataset
    from catseg.errors import CatsegError
    from catseg.images import read_image
    from catseg.run import read_run_config, read_splits

    try:
        info = read_dataset(read_run_config(run).dataset)
        return [read_image(info.image_path(stem)) for stem in read_splits(run).get("train", [])[:limit]]
    except CatsegError:
        return []


def int8_model(fp32: Path, photos: list[np.ndarray], out: Path) -> Path:
    """Write a static int8 (QDQ) quantisation of the file's convolutions, calibrated on `photos`."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"image": p} for p in photos])

        def get_next(self) -> dict | None:
            return next(self.items, None)

    prepared = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["Conv", "ConvTranspose"], activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, per_channel=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None, help="a trained run folder (default: random default UNet)")
    parser.add_argument("--photos", type=int, default=16, help="photos in the folder part (default 16)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    repeats = 2 if args.quick else 7

    import onnxruntime
    import torch

    from catseg.errors import CatsegError
    from catseg.export import export_onnx
    from catseg.hardware import precision_name
    from catseg.predict import Predictor
    from catseg.onnx_backend import OnnxPredictor

    flags = cpu_flags()
    print("cpu flags: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in flags.items()))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"cores {cores}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"onnxruntime {onnxruntime.__version__}, openvino {_openvino_version()}")
    work = Path(tempfile.mkdtemp(prefix="catseg-bench-export-"))
    run = args.run or random_run(work / "run")
    big = _photo(640, 1024, 0)  # 1024 wide, 640 tall
    sizes = [(480, 640), (375, 500), (640, 480), (333, 517), (512, 512), (720, 960)]
    folder = [_photo(*sizes[i % len(sizes)], seed=i + 1) for i in range(args.photos)]

    start = time.perf_counter()
    report = export_onnx(run, work / "model.onnx", force=True)
    print(f"export + parity check: {time.perf_counter() - start:.1f} s, min agreement {report.min_agreement:.4%}")

    backends: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    auto = Predictor.from_run(run, device="cpu")
    fp32 = Predictor.from_run(run, device="cpu", precision="fp32")
    auto_name = precision_name(auto.forward.dtype)
    if auto_name != "fp32":
        backends[f"pytorch eager {auto_name} (catseg predict's default here)"] = auto.predict
    backends["pytorch eager fp32"] = fp32.predict
    backends["onnxruntime fp32"] = OnnxPredictor(report.path).predict
    try:
        backends["openvino fp32 (--backend openvino)"] = OnnxPredictor(report.path, runtime="openvino").predict
    except CatsegError as exc:
        print(f"openvino: not measured ({exc})")
    calibration = (training_photos(args.run, 8) if args.run else []) or folder[:8]
    try:
        int8 = int8_model(report.path, calibration, work / "model.int8.onnx")
        backends[f"onnxruntime int8 (static QDQ convs, {len(calibration)} calib.)"] = OnnxPredictor(int8).predict
    except Exception as exc:  # noqa: BLE001  (quantisation tooling varies between onnxruntime versions: report it)
        print(f"int8: not measured ({exc.__class__.__name__}: {str(exc).splitlines()[0][:160]})")

    reference = {"fp32": [fp32.predict(p) for p in [big, *folder]], auto_name: [auto.predict(p) for p in [big, *folder]]}
    results = {}
    print(f"\n{'backend':48s} {'1024x640 s':>11s} {'folder img/s':>13s} {'mIoU vs fp32':>13s} "
          f"{'vs ' + auto_name:>9s} {'min agree':>10s}")
    for name, predict in backends.items():
        one = timed(lambda predict=predict: predict(big), repeats)
        start = time.perf_counter()
        masks = [predict(p) for p in folder]
        rate = len(folder) / (time.perf_counter() - start)
        masks = [predict(big), *masks]
        agree = {ref: float(np.mean([miou(m, r) for m, r in zip(masks, refs)])) for ref, refs in reference.items()}
        pixels = min(float((m == r).mean()) for m, r in zip(masks, reference["fp32"]))
        results[name] = {"one_photo_s": one, "folder_images_per_s": rate, "miou_vs": agree,
                         "min_pixel_agreement_vs_fp32": pixels}
        print(f"{name:48s} {one:11.3f} {rate:13.2f} {agree['fp32']:13.4f} {agree[auto_name]:9.4f} {pixels:10.4%}")
    print(json.dumps({"cpu_flags": flags, "cores": cores, "run": str(args.run or "random default UNet"),
                      "photo": [640, 1024], "folder": len(folder), "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
