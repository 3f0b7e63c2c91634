"""OnnxPredictor: an exported .onnx file run by onnxruntime (or OpenVINO), giving what the PyTorch Predictor gives.

The file carries everything it needs (catseg.export writes the classes, colours, threshold, mirror-TTA
choice and clean-up into its metadata), so `catseg predict MODEL.onnx ...` needs no run folder.
`catseg predict RUN ... --backend onnx` uses the run's own export, RUN/model.onnx, made on first use
and made again when the run's weights or prediction settings have changed since. `--backend openvino`
runs the same file with OpenVINO instead (catseg.openvino_runtime); the predictor says which runtime it is.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from catseg.classes import AUTO, background_id
from catseg.errors import CatsegError
from catseg.export import ONNX_FORMAT, export_onnx, require, run_fingerprint, session_from
from catseg.postprocess import Postprocess
from catseg.run import read_run_config

log = logging.getLogger(__name__)

RUN_EXPORT = "model.onnx"
RUNTIMES = ("onnxruntime", "openvino")


@dataclass(frozen=True)
class OnnxInfo:
    """What an exported file's metadata says."""

    classes: list[str]
    colors: list[list[int]]
    threshold: float | None
    flip: bool
    postprocess: dict[str, Any]
    fingerprint: str
    version: str
    background: int | None = None  # catseg.classes; files exported before it was stored: from the names
    scales: tuple[float, ...] = (1.0,)  # the prediction sizes averaged inside the graph (the run's tta.scales)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @classmethod
    def from_metadata(cls, meta: dict[str, str], path: Path) -> OnnxInfo:
        if meta.get("catseg_format") != ONNX_FORMAT:
            raise CatsegError(f"{path}: not an ONNX file written by `catseg export` (no catseg metadata); "
                              "export the run with `catseg export RUN --out FILE.onnx`")
        try:
            tta = json.loads(meta["tta"])
            return cls(classes=list(json.loads(meta["classes"])), colors=[list(c) for c in json.loads(meta["colors"])],
                       threshold=json.loads(meta["threshold"]), flip=bool(tta["flip"]),
                       scales=tuple(float(v) for v in tta.get("scales", (1.0,))),
                       postprocess=dict(json.loads(meta["postprocess"])), fingerprint=meta.get("source_fingerprint", ""),
                       version=meta.get("catseg_version", "?"),
                       background=background_id(json.loads(meta["classes"]),
                                                json.loads(meta["background"]) if "background" in meta else AUTO))
        except (KeyError, TypeError, ValueError) as exc:
            raise CatsegError(f"{path}: its catseg metadata is damaged ({exc}); export the run again") from exc


class OnnxPredictor:
    """An exported catseg model run on the CPU by onnxruntime, or by OpenVINO (runtime="openvino")."""

    def __init__(self, path: str | Path, threads: int = 0, runtime: str = "onnxruntime") -> None:
        self.path = Path(path)
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
        if not self.path.is_file():
            raise CatsegError(f"{self.path}: no such file; export a run with `catseg export RUN --out {self.path}`")
        self.runtime = runtime
        if runtime == "openvino":
            from catseg.openvino_runtime import OpenVinoModel

            model = OpenVinoModel(self.path, threads)
            meta, self.outputs, self._run, self.description = (model.metadata, model.outputs, model.run,
                                                               model.description)
        else:
            meta = self._open_onnxruntime(threads)
        self.info = OnnxInfo.from_metadata(meta, self.path)
        self.postprocess = Postprocess.from_json(self.info.postprocess)
        log.info("backend: %s, %s", self.description, self.path)

    def _open_onnxruntime(self, threads: int) -> dict[str, str]:
        ort = require("onnxruntime")
        try:
            session = session_from(self.path, threads)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types for damaged files
            raise CatsegError(f"{self.path}: onnxruntime cannot load it ({exc.__class__.__name__}: "
                              f"{str(exc).splitlines()[0][:200]})") from exc
        self.session = session
        self.outputs = [o.name for o in session.get_outputs()]
        self._run = lambda image: session.run(None, {"image": image})
        self.description = f"onnxruntime {ort.__version__} ({', '.join(session.get_providers())})"
        return dict(session.get_modelmeta().custom_metadata_map)

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    @property
    def background(self) -> int | None:
        return self.info.background

    @property
    def colors(self) -> list[list[int]]:
        return self.info.colors

    @property
    def has_probs(self) -> bool:
        return "probs" in self.outputs

    def run(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Return the graph's outputs ("mask" (H, W) uint8, "probs" (K, H, W) float32) for one photo."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) uint8 photo, got {image.dtype} {image.shape}")
        return dict(zip(self.outputs, self._run(np.ascontiguousarray(image))))

    def predict_batch(self, images: Sequence[np.ndarray], threshold: float | None = None
                      ) -> list[tuple[torch.Tensor | None, np.ndarray]]:
        """Return (probabilities (K, H, W) or None, cleaned mask (H, W) uint8) for each photo, as
        Predictor.labels_from_proba gives them: a threshold other than the stored one needs probs."""
        custom = threshold is not None and threshold != self.info.threshold and self.info.num_classes == 2
        if custom and not 0.0 < threshold < 1.0:  # type: ignore[operator]
            raise CatsegError(f"--threshold {threshold}: must be between 0 and 1")
        if custom and not self.has_probs:
            raise CatsegError(f"{self.path} was exported with --outputs mask: --threshold needs its probabilities; "
                              "export again with --outputs both")
        results = []
        for image in images:
            out = self.run(image)
            probs = torch.from_numpy(out["probs"]) if "probs" in out else None
            if custom:
                mask = (out["probs"][1] >= threshold).astype(np.uint8)
            elif "mask" in out:
                mask = out["mask"]
            else:
                mask = _labels(out["probs"], self.info.threshold)
            results.append((probs, self.postprocess(mask) if self.postprocess.active else mask))
        return results

    def predict(self, image: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """Return the (H, W) uint8 class-id mask of one photo, clean-up applied."""
        return self.predict_batch([image], threshold)[0][1]


def _labels(probs: np.ndarray, threshold: float | None) -> np.ndarray:
    if threshold is not None and probs.shape[0] == 2:
        return (probs[1] >= threshold).astype(np.uint8)
    return probs.argmax(0).astype(np.uint8)


def run_export_path(run_dir: Path, flip: bool, stored_flip: bool) -> Path:
    """Return where a run keeps its own export: RUN/model.onnx with the run's TTA choice, else a sibling."""
    if flip == stored_flip:
        return run_dir / RUN_EXPORT
    return run_dir / ("model-tta.onnx" if flip else "model-no-tta.onnx")


def open_run_export(run_dir: str | Path, tta: bool | None = None, threads: int = 0,
                    runtime: str = "onnxruntime") -> OnnxPredictor:
    """Return an OnnxPredictor for a run folder's own export, exporting it first when it is missing or
    older than the run's weights and settings (the export's parity check runs onnxruntime)."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    stored = bool(config.tta.get("flip", False))
    flip = stored if tta is None else bool(tta)
    path = run_export_path(run_dir, flip, stored)
    fingerprint = run_fingerprint(run_dir, config)
    if path.is_file():
        try:
            predictor = OnnxPredictor(path, threads, runtime)
            if predictor.info.fingerprint == fingerprint:
                return predictor
            log.info("%s is older than the run's weights or settings: exporting again", path)
        except CatsegError as exc:
            log.warning("%s cannot be used (%s): exporting again", path, exc)
    log.info("exporting %s to %s (first use of the onnx backend)", run_dir, path)
    report = export_onnx(run_dir, path, outputs="both", tta=flip, force=True, threads=threads)
    log.info("parity with the PyTorch backend: min %.4f%% of pixels agree on %d photos",
             100 * report.min_agreement, len(report.parity))
    return OnnxPredictor(path, threads, runtime)
