"""Predictor.from_run(path).predict(image) -> mask at the image's own size; predict_files for the CLI."""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from catseg.annotate import (LABELS_FILE, LabelmeOptions, check_labels_file, labelme_document, labelme_json_bytes,
                              split_annotated)
from catseg.bands import BAND_EXTENSIONS, false_colour, read_bands
from catseg.errors import CatsegError
from catseg.files import atomic_write_bytes
from catseg.hardware import Forward, precision_name, resolve_device, resolve_precision
from catseg.images import IMAGE_EXTENSIONS, mask_png_bytes, read_image
from catseg.models import create_model, load_weights, rebuild_kwargs
from catseg.photo_files import check_readable as _check_readable
from catseg.photo_files import expand_inputs
from catseg.photo_files import output_paths as _output_paths
from catseg.postprocess import Postprocess
from catseg.run import WEIGHTS, RunConfig, read_run_config
from catseg.shards import Shard

log = logging.getLogger(__name__)

FORMATS = ("mask", "overlay", "prob", "npy", "labelme")
# PyTorch eager; onnxruntime on the run's (or a given file's) ONNX export; OpenVINO on that same file.
BACKENDS = ("torch", "onnx", "openvino")


class Predictor:
    """A trained model with its preprocessing, rebuilt from a run folder alone."""

    def __init__(self, config: RunConfig, model: torch.nn.Module, device: torch.device, dtype: torch.dtype,
                 tta: bool | None = None, tta_scales: Sequence[float] | None = None) -> None:
        self.config = config
        self.pre = config.preprocess
        self.forward = Forward(model.eval(), device, dtype)
        self.postprocess = Postprocess.from_json(config.postprocess)  # chosen on validation at training
        # Also average over the horizontally flipped photo: as asked, else as chosen on validation at training.
        self.tta = bool(config.tta.get("flip", False)) if tta is None else tta
        # ...and over these multiples of the working size: as asked, else as chosen on validation at training
        self.tta_scales = _scales(config.tta.get("scales", (1.0,)) if tta_scales is None else tta_scales)
        if not self.tta_scales or any(not 0.25 <= v <= 4.0 for v in self.tta_scales):
            if tta_scales is None:
                raise CatsegError(f"the run's config.json: \"tta\": \"scales\" {config.tta.get('scales')!r} is not a "
                                  "list of factors between 0.25 and 4; correct it (e.g. [1.0, 1.5]) or delete it")
            raise CatsegError(f"--tta-scales {','.join(map(str, tta_scales))}: give factors between 0.25 and 4, "
                              "e.g. 0.75,1,1.25")

    @property
    def background(self) -> int | None:
        """The background class id, or None when every class is real (catseg.classes)."""
        return self.config.background

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str = "auto", precision: str = "auto", tta: bool | None = None,
                 tta_scales: Sequence[float] | None = None) -> Predictor:
        """Return a Predictor for the best weights of a run folder. `tta` None mirrors the photo when training
        found that it helps on validation (config.json "tta"); True or False decides it here."""
        run_dir = Path(run_dir)
        config = read_run_config(run_dir)
        model = create_model(config.model, in_channels=config.in_channels, num_classes=config.num_classes,
                             **rebuild_kwargs(config.model, config.model_kwargs))
        load_weights(model, run_dir / WEIGHTS)
        dev = resolve_device(device)
        model.to(dev, memory_format=torch.channels_last)
        return cls(config, model, dev, resolve_precision(precision, dev), tta, tta_scales)

    @property
    def model(self) -> torch.nn.Module:
        return self.forward.model

    @property
    def device(self) -> torch.device:
        return self.forward.device

    @property
    def classes(self) -> list[str]:
        return self.config.classes

    @torch.inference_mode()
    def predict_proba_batch(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Return per-class probabilities (K, H, W) float32 on the CPU for each (H, W, 3) uint8 photo, each at
        its own size: the photo is resized by the run's size policy, and the logits (not the mask) are
        resized back, so edges stay smooth. With test-time augmentation the probabilities of every
        flip and scale are averaged."""
        wrong = [im.shape for im in images if im.ndim != 3 or im.shape[2] != self.pre.channels]
        if wrong:
            raise CatsegError(f"an image of shape {wrong[0]}: this model takes {self.pre.channels} channel(s) "
                              f"({'bands' if self.pre.bands else 'RGB'}); give images like the ones it was trained on")
        flips = (False, True) if self.tta else (False,)
        sums: list[torch.Tensor | None] = [None] * len(images)
        for scale in self.tta_scales:
            pre = self.pre.scaled(scale)
            for flip in flips:
                batch = [np.ascontiguousarray(im[:, ::-1]) if flip else im for im in images]
                for i, (im, lg) in enumerate(zip(images, pre.photo_logits(self.forward, batch, self.device))):
                    probs = F.interpolate(lg[None], size=im.shape[:2], mode="bilinear", align_corners=False)[0]
                    probs = probs.softmax(0)
                    probs = probs.flip(-1) if flip else probs
                    sums[i] = probs if sums[i] is None else sums[i] + probs
        runs = len(self.tta_scales) * len(flips)
        return [(total / runs).cpu() for total in sums if total is not None]

    def predict_proba(self, image: np.ndarray) -> torch.Tensor:
        """Return (K, H, W) float32 probabilities for one (H, W, 3) uint8 photo."""
        return self.predict_proba_batch([image])[0]

    def labels_from_proba(self, probs: torch.Tensor, threshold: float | None = None) -> np.ndarray:
        """Return (H, W) uint8 class ids: argmax, or for two classes foreground where p >= threshold."""
        threshold = self.config.threshold if threshold is None else threshold
        if self.config.num_classes == 2 and threshold is not None:
            if not 0.0 < threshold < 1.0:
                raise CatsegError(f"--threshold {threshold}: must be between 0 and 1")
            labels = (probs[1] >= threshold).numpy().astype(np.uint8)
        else:
            labels = probs.argmax(0).numpy().astype(np.uint8)
        return self.postprocess(labels) if self.postprocess.active else labels

    def predict(self, image: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """Return the (H, W) uint8 class-id mask of one photo, at the photo's own size."""
        return self.labels_from_proba(self.predict_proba(image), threshold)


def _scales(values: Any) -> tuple[float, ...]:
    """Return the size factors as floats; () when they are not a list of finite numbers (the caller says so)."""
    try:
        scales = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return ()
    return scales if all(math.isfinite(v) for v in scales) else ()


def overlay(image: np.ndarray, mask: np.ndarray, colors: Sequence[Sequence[int]], alpha: float = 0.5,
            background: int | None = 0) -> np.ndarray:
    """Return the photo with every class but background (all of them when `background` is None) painted in
    its colour and outlined in white, so that dark palette colours stay visible on dark subjects."""
    palette = np.zeros((256, 3), dtype=np.float32)
    palette[: len(colors)] = np.asarray(colors, dtype=np.float32)
    painted = palette[mask]
    labelled = ((mask != background) & (mask < len(colors)))[..., None]
    blend = np.where(labelled, (1 - alpha) * image.astype(np.float32) + alpha * painted, image.astype(np.float32))
    edges = _boundaries(mask, thickness=max(1, min(mask.shape) // 300))
    blend[edges] = 255.0
    return np.clip(blend + 0.5, 0, 255).astype(np.uint8)


def _boundaries(mask: np.ndarray, thickness: int) -> np.ndarray:
    """Return a boolean map of pixels where the class changes, `thickness` pixels wide."""
    edges = np.zeros(mask.shape, dtype=bool)
    edges[:-1, :] |= mask[:-1, :] != mask[1:, :]
    edges[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    if thickness > 1:
        edges = cv2.dilate(edges.astype(np.uint8), np.ones((thickness, thickness), np.uint8)) > 0
    return edges


def _encode(fmt: str, image: np.ndarray, probs: torch.Tensor | None, mask: np.ndarray,
            colors: Sequence[Sequence[int]], background: int | None = 0) -> list[bytes]:
    if fmt == "mask":
        return [mask_png_bytes(mask, colors)]
    if fmt == "overlay":
        buf = io.BytesIO()
        Image.fromarray(overlay(image, mask, colors, background=background)).save(buf, format="JPEG", quality=92)
        return [buf.getvalue()]
    assert probs is not None  # predict_files refuses prob/npy for a model without probabilities
    if fmt == "prob":
        out = []
        for k in range(probs.shape[0]):
            buf = io.BytesIO()
            Image.fromarray((probs[k].numpy() * 65535.0 + 0.5).astype(np.uint16)).save(buf, format="PNG")
            out.append(buf.getvalue())
        return out
    buf = io.BytesIO()
    np.save(buf, probs.numpy().astype(np.float32))
    return [buf.getvalue()]


def predict_files(run_dir: str | Path, inputs: Sequence[str], out_dir: str | Path, formats: Sequence[str] = ("mask",),
                  threshold: float | None = None, device: str = "auto", batch_size: int = 4,
                  force: bool = False, tta: bool | None = None, tta_scales: Sequence[float] | None = None,
                  backend: str | None = None, labelme: LabelmeOptions | None = None,
                  shard: Shard | None = None) -> list[Path]:
    """Predict every input photo and write the chosen formats into out_dir; return the written paths.

    `run_dir` is a run folder, or a .onnx file written by `catseg export`. `backend` "torch" (PyTorch, the
    default for a run folder), "onnx" (onnxruntime: the file given, or the run's own RUN/model.onnx,
    exported on first use) or "openvino" (OpenVINO on that same file); None picks by what `run_dir` is.
    Every backend writes the same formats.
    Every output name is checked before anything is written, so a refusal leaves no partial output.
    With the labelme format (polygons shaped by `labelme`), photos whose <stem>.json is already in
    out_dir are skipped (and logged) unless force, and out_dir gets a labels.txt for `catseg convert --labels`.
    With `shard` I/N, only the I-th of N blocks of the sorted inputs is predicted (and only its photos are
    opened); output names and clashes are still worked out on every input, so N shards into one out_dir
    write exactly what one process would.
    """
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise CatsegError(f"--format {','.join(formats)}: choose from {', '.join(FORMATS)}")
    if batch_size < 1:
        raise CatsegError(f"--batch-size {batch_size}: must be at least 1")
    pre = read_run_config(run_dir).preprocess if Path(run_dir).suffix.lower() != ".onnx" else None
    bands = pre if pre is not None and pre.bands else None
    if bands is not None and (backend == "onnx" or "labelme" in formats):
        raise CatsegError(f"{run_dir}: a model of {bands.channels} bands predicts with --backend torch and the "
                          "formats mask, overlay, prob and npy")
    files = expand_inputs(inputs, IMAGE_EXTENSIONS + BAND_EXTENSIONS if bands else IMAGE_EXTENSIONS)
    every = files
    if shard is not None:
        every = sorted(dict.fromkeys(files), key=str)
        files = shard.select(every)
        log.info("shard %s: %d of %d photos", shard, len(files), len(every))
    _check_readable(files, bands.channels if bands else None)
    out_dir = Path(out_dir)
    predictor = open_predictor(run_dir, backend, device=device, tta=tta, tta_scales=tta_scales)
    if isinstance(predictor, Predictor):
        colors = predictor.config.colors
    else:
        colors = predictor.colors
        needs_probs = [f for f in formats if f in ("prob", "npy")]
        if needs_probs and not predictor.has_probs:
            raise CatsegError(f"{predictor.path} was exported with --outputs mask: it has no probabilities for "
                              f"--format {','.join(needs_probs)}; export again with --outputs both")
    plan = _output_paths(every, out_dir, formats, predictor.classes)
    plan = {f: plan[f] for f in files}
    labels_txt = None
    if "labelme" in formats:
        labelme = (labelme or LabelmeOptions()).validate()
        files, skipped = split_annotated(files, out_dir, force)
        if skipped:
            log.info("skipped %d photo(s) whose labelme JSON is already in %s (--force replaces them): %s",
                     len(skipped), out_dir, ", ".join(map(str, skipped)))
        plan = {f: plan[f] for f in files}
        labels_txt = check_labels_file(out_dir, predictor.classes, force, predictor.background)
    _check_out_dir(every, out_dir, formats)
    existing = [p for outs in plan.values() for paths in outs.values() for p in paths if p.exists()]
    if existing and not force:
        raise CatsegError(f"{len(existing)} output files already exist (first: {existing[0]}). "
                          "Choose another --out or pass --force to overwrite them.")
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if labels_txt is not None:
        atomic_write_bytes(out_dir / LABELS_FILE, labels_txt.encode("utf-8"))
        written.append(out_dir / LABELS_FILE)
    unreadable: list[str] = []
    for start in range(0, len(files), batch_size):
        chunk, images = _decode_chunk(files[start:start + batch_size], unreadable, bands.channels if bands else None)
        for f, image, (probs, mask) in zip(chunk, images, _predict_chunk(predictor, images, threshold)):
            if bands is not None and "overlay" in formats:  # overlays are drawn on the false-colour preview
                image = false_colour(image, bands.preview)
            for fmt, paths in plan[f].items():
                encoded = ([_labelme_bytes(f, paths[0], mask, predictor.classes, labelme, run_dir, predictor.background)]
                           if fmt == "labelme" else _encode(fmt, image, probs, mask, colors, predictor.background))
                for path, data in zip(paths, encoded):
                    atomic_write_bytes(path, data)
                    written.append(path)
        log.info("predicted %d/%d", min(start + batch_size, len(files)), len(files))
    if unreadable:
        raise CatsegError(f"{len(unreadable)} of {len(files)} photos could not be decoded (the other "
                          f"{len(files) - len(unreadable)} were predicted into {out_dir})", unreadable)
    return written


def _decode_chunk(chunk: Sequence[Path], unreadable: list[str], channels: int | None = None
                  ) -> tuple[list[Path], list[np.ndarray]]:
    """Return the photos of `chunk` that decode and their pixels (band images of `channels` bands when given);
    a damaged file (a truncated download whose header still reads) is added to `unreadable` instead of
    stopping the photos after it."""
    kept, images = [], []
    for f in chunk:
        try:
            images.append(read_image(f) if channels is None else read_bands(f, channels=channels))
            kept.append(f)
        except CatsegError as exc:
            unreadable.append(str(exc))
    return kept, images


def _check_out_dir(files: Sequence[Path], out_dir: Path, formats: Sequence[str]) -> None:
    """Refuse an --out that holds input photos: image outputs there are named like photos (`a.png` for
    `a.jpg`'s mask, beside an input `a.png`), so one typo would overwrite the user's photos. labelme JSONs
    alone may go beside their photos (labelme's own layout; existing JSONs are skipped unless --force)."""
    if set(formats) <= {"labelme"}:
        return
    out = out_dir.resolve()
    inside = [f for f in files if f.resolve().parent == out]
    if inside:
        raise CatsegError(f"{out_dir}: holds {len(inside)} of the input photos (first: {inside[0]}); predicted "
                          "masks written there could replace photos. Choose another --out folder.")


def _labelme_bytes(photo: Path, json_path: Path, mask: np.ndarray, classes: Sequence[str],
                   options: LabelmeOptions | None, run_dir: str | Path, background: int | None = 0) -> bytes:
    doc = labelme_document(photo, json_path, mask, classes, options or LabelmeOptions(), background=background,
                           description=f"predicted by catseg ({Path(run_dir).resolve().name})")
    return labelme_json_bytes(doc)


def _predict_chunk(predictor: Any, images: Sequence[np.ndarray], threshold: float | None
                   ) -> list[tuple[torch.Tensor | None, np.ndarray]]:
    """Return (probabilities, mask) per photo from either backend."""
    if isinstance(predictor, Predictor):
        return [(probs, predictor.labels_from_proba(probs, threshold))
                for probs in predictor.predict_proba_batch(images)]
    return predictor.predict_batch(images, threshold)


def _graph_scales_problem(backend: str, asked: Sequence[float], graph: Sequence[float]) -> str:
    """Say that --tta-scales cannot change the sizes exported into an ONNX graph."""
    return (f"--tta-scales {','.join(f'{v:g}' for v in asked)}: the {backend} backend predicts at the sizes exported "
            f"into its graph ({','.join(f'{float(v):g}' for v in graph)}, the run's choice); give those or none, or "
            "use --backend torch for others")


def open_predictor(source: str | Path, backend: str | None = None, device: str = "auto", tta: bool | None = None,
                   tta_scales: Sequence[float] | None = None, threads: int = 0) -> Any:
    """Return a Predictor (backend "torch") or a catseg.onnx_backend.OnnxPredictor (backend "onnx", or
    "openvino": the same file run by OpenVINO) for a run folder or an exported .onnx file, logging which
    backend runs; never falls back from one to another."""
    source = Path(source)
    is_file = source.suffix.lower() == ".onnx"
    backend = backend or ("onnx" if is_file else "torch")
    if backend not in BACKENDS:
        raise CatsegError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "torch":
        if is_file:
            raise CatsegError(f"{source}: an exported ONNX file runs on the onnx or openvino backend; drop "
                              "--backend torch, or give the run folder it came from")
        predictor = Predictor.from_run(source, device=device, tta=tta, tta_scales=tta_scales)
        log.info("backend: PyTorch %s on %s (%s)", torch.__version__, predictor.device,
                 precision_name(predictor.forward.dtype))
        return predictor
    from catseg.onnx_backend import OnnxPredictor, open_run_export

    problems = []
    if device == "cuda":
        problems.append(f"--device cuda: the {backend} backend runs on the CPU; use --backend torch for a GPU")
    if tta_scales is not None and not is_file:  # the run's sizes go into the graph; the same ones may be named
        stored = _scales(read_run_config(source).tta.get("scales", (1.0,)))
        if _scales(tta_scales) != stored:
            problems.append(_graph_scales_problem(backend, tta_scales, stored))
    if problems:
        raise CatsegError(f"cannot predict with the {backend} backend", problems)
    runtime = "onnxruntime"
    if backend == "openvino":
        from catseg.openvino_runtime import require_openvino

        require_openvino()  # before any export: a missing extra is the user's one problem
        runtime = "openvino"
    if not is_file:
        return open_run_export(source, tta=tta, threads=threads, runtime=runtime)
    predictor = OnnxPredictor(source, threads, runtime)
    if tta_scales is not None and _scales(tta_scales) != predictor.info.scales:
        raise CatsegError(f"{source}: cannot predict with the {backend} backend",
                          [_graph_scales_problem(backend, tta_scales, predictor.info.scales)])
    if tta is not None and tta != predictor.info.flip:
        raise CatsegError(f"{source}: mirror TTA is {'on' if predictor.info.flip else 'off'} inside this file; "
                          f"--{'no-' if not tta else ''}tta cannot change it. Export again with "
                          f"`catseg export RUN --{'no-' if not tta else ''}tta`, or predict the run folder")
    return predictor
