"""export_onnx(run) -> one self-contained .onnx file (photo in, mask out), checked against the PyTorch backend.

The graph is catseg.graph.PhotoGraph: a uint8 RGB photo (H, W, 3) of any size goes in; the run's size
policy (stretch, or scale with its sliding windows), normalisation, the model's padding, the resize of
the logits back to (H, W), mirror TTA when the run uses it, and the stored threshold or argmax are all
inside. Out come `mask` (H, W) uint8 and, unless `outputs="mask"`, `probs` (K, H, W) float32.
The file's metadata carries the classes, colours, threshold, input spec, the clean-up that is NOT in the
graph (connected components, applied by `catseg predict` after onnxruntime) and the catseg version.

Right after export the file is run by onnxruntime on photos of several sizes and its masks are compared
with the PyTorch backend's; below MIN_AGREEMENT of the pixels on any photo, nothing is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from catseg import __version__
from catseg.errors import CatsegError
from catseg.extras import require_extra
from catseg.files import atomic_write_bytes
from catseg.graph import PhotoGraph, exportable
from catseg.run import CONFIG_JSON, WEIGHTS, RunConfig, read_run_config, read_splits

log = logging.getLogger(__name__)

ONNX_FORMAT = "catseg-onnx"
ONNX_FORMAT_VERSION = 1
OUTPUTS = ("mask", "probs", "both")
OPSET = 18
MIN_AGREEMENT = 0.999  # share of pixels whose class must agree with the PyTorch backend, on every photo
# Sizes the parity check resizes a photo to: odd, multiples of 32, tall, wide, tiny, and one whose area factors
# (2.5, 4) put many resized values exactly on k + 0.5, where the order of float sums decides (height, width).
CHECK_SIZES = ((333, 517), (256, 384), (640, 160), (160, 640), (31, 29), (1024, 640))
EXPORT_SAMPLE = (37, 53)  # odd on purpose: a size-dependent Python branch would be frozen for odd sizes
INPUT_SPEC = "image: uint8 (H, W, 3) RGB, any H and W (H, W >= 1)"
POSTPROCESS_NOTE = ("not in the graph: the clean-up (connected components) is applied to the mask after "
                    "onnxruntime by `catseg predict`; other runtimes get the graph's mask before clean-up")


def require(module: str) -> Any:
    """Return an imported optional module of the 'export' extra, or a CatsegError naming the extra."""
    return require_extra(module, "export", "ONNX export and the onnx backend")


@dataclass
class Parity:
    """How one photo's onnxruntime mask compares with the PyTorch backend's."""

    name: str
    height: int
    width: int
    agreement: float  # share of pixels with the same class
    max_prob_diff: float  # largest probability difference (nan without a probs output)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "size": [self.height, self.width], "agreement": self.agreement,
                "max_prob_diff": None if np.isnan(self.max_prob_diff) else self.max_prob_diff}


@dataclass
class ExportReport:
    """What export_onnx wrote and how it compared with PyTorch."""

    path: Path
    outputs: list[str]
    flip: bool
    parity: list[Parity] = field(default_factory=list)
    required: float = MIN_AGREEMENT  # the share of pixels every photo had to agree on
    scales: tuple[float, ...] = (1.0,)  # the prediction sizes averaged inside (the run's tta.scales)

    @property
    def min_agreement(self) -> float:
        return min((p.agreement for p in self.parity), default=float("nan"))

    def summary(self) -> str:
        size = self.path.stat().st_size / 1e6 if self.path.is_file() else 0.0
        tta = ", mirror TTA inside" if self.flip else ""
        if len(self.scales) > 1:
            tta += f", sizes {'+'.join(f'{s:g}x' for s in self.scales)} inside"
        lines = [(f"wrote {self.path} ({size:.1f} MB, opset {OPSET}, outputs {'+'.join(self.outputs)}{tta})"),
                 (f"parity with the PyTorch backend (fp32, CPU) on {len(self.parity)} photos: every photo agrees on "
                  f">= {self.required:.1%} of pixels (min {self.min_agreement:.4%})")]
        lines += [f"  {p.name:28s} {p.height:5d} x {p.width:<5d} {p.agreement:9.4%}   max |dp| "
                  f"{p.max_prob_diff:.2e}" for p in self.parity]
        return "\n".join(lines)


def run_fingerprint(run_dir: Path, config: RunConfig) -> str:
    """Return a sha256 of the weights and of what config.json says about prediction, so that a stored
    export can tell when the run has changed since."""
    digest = hashlib.sha256((run_dir / WEIGHTS).read_bytes())
    doc = config.to_json()
    digest.update(json.dumps({k: doc[k] for k in ("model", "classes", "colors", "preprocess", "threshold", "tta",
                                                  "postprocess")}, sort_keys=True).encode())
    return digest.hexdigest()


def build_graph(model: torch.nn.Module, config: RunConfig, flip: bool) -> PhotoGraph:
    """Return the run's whole prediction as one module, in eval mode (the wrapper and the network)."""
    graph = PhotoGraph(model.float(), config.preprocess, config.num_classes, config.threshold, flip,
                       tuple(config.tta.get("scales", (1.0,))))
    return graph.eval()


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    # The TorchScript exporter is deprecated in favour of torch.export, which cannot serve every size here
    # (see catseg.models.padding); its deprecation notice is not news to the user.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message="Constant folding")
        yield


def onnx_bytes(graph: PhotoGraph, outputs: str = "both") -> bytes:
    """Return the serialised ONNX model of a PhotoGraph (one file, no external data), before metadata.

    A copy is exported, in eval mode (the wrapper and the network: BatchNorm's running statistics, no
    dropout), with adaptive pooling in a form that serves any input size (catseg.graph.exportable).
    """
    names = {"mask": ["mask"], "probs": ["probs"], "both": ["mask", "probs"]}[outputs]
    graph = exportable(graph)

    class _Selected(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.graph = graph

        def forward(self, image: torch.Tensor) -> Any:
            mask, probs = self.graph(image)
            chosen = {"mask": mask, "probs": probs}
            return tuple(chosen[n] for n in names)

    sample = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (*EXPORT_SAMPLE, graph.pre.channels),
                                                                 dtype=np.uint8))
    axes = {"image": {0: "height", 1: "width"}, "mask": {0: "height", 1: "width"},
            "probs": {1: "height", 2: "width"}}
    buf = io.BytesIO()
    wrapper = _Selected().eval()
    with _quiet_exporter(), torch.no_grad():
        torch.onnx.export(wrapper, (sample,), buf, dynamo=False, opset_version=OPSET, input_names=["image"],
                          output_names=names, dynamic_axes={k: v for k, v in axes.items() if k in ["image", *names]},
                          do_constant_folding=True)
    return buf.getvalue()


def _metadata(config: RunConfig, outputs: str, flip: bool, fingerprint: str) -> dict[str, str]:
    pre = config.preprocess
    return {
        "catseg_format": ONNX_FORMAT, "catseg_format_version": str(ONNX_FORMAT_VERSION),
        "catseg_version": __version__, "model": config.model,
        "classes": json.dumps(config.classes), "colors": json.dumps(config.colors),
        "background": json.dumps(config.background),
        "threshold": json.dumps(config.threshold if config.num_classes == 2 else None),
        "input": INPUT_SPEC,
        "outputs": json.dumps({"mask": ["mask"], "probs": ["probs"], "both": ["mask", "probs"]}[outputs]),
        "preprocess": json.dumps(pre.to_json()),
        "size_policy": ("stretch: the photo is resized to size x size inside the graph" if pre.whole_image else
                        "scale: shorter side -> size inside the graph, patch x patch windows overlapping by half, "
                        "blended with a Gaussian weight, all inside the graph"),
        "tta": json.dumps({"flip": flip, **({"scales": config.tta["scales"]} if "scales" in config.tta else {})}),
        "postprocess": json.dumps(config.postprocess), "postprocess_note": POSTPROCESS_NOTE,
        "source_fingerprint": fingerprint,
    }


def _with_metadata(data: bytes, meta: dict[str, str]) -> bytes:
    onnx = require("onnx")
    model = onnx.load_from_string(data)
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name, model.producer_version = "catseg", __version__
    model.doc_string = "catseg: photo -> class mask. " + INPUT_SPEC
    onnx.checker.check_model(model)
    return model.SerializeToString()


def check_photos(run_dir: Path, config: RunConfig, check: Sequence[str] = (), limit: int = 4,
                 sizes: Sequence[tuple[int, int]] = CHECK_SIZES) -> list[tuple[str, np.ndarray]]:
    """Return (name, photo) pairs for the parity check: the --check photos, else up to `limit` of the run's
    validation photos, else a generated one; and the first of them resized to each of `sizes`."""
    from catseg.images import read_image
    from catseg.photo_files import expand_inputs
    from catseg.preprocess import resize_image

    files: list[Path] = expand_inputs(check) if check else _validation_photos(config, read_splits(run_dir))
    photos = [(f.name, read_image(f)) for f in files[:limit]]
    if not photos:
        photos = [("generated", _generated_photo(480, 640))]
    base_name, base = photos[0]
    photos += [(f"{base_name}@{h}x{w}", resize_image(base, h, w)) for h, w in sizes]
    return photos


def _validation_photos(config: RunConfig, splits: dict[str, list[str]]) -> list[Path]:
    from catseg.data import read_dataset

    try:
        info = read_dataset(config.dataset)
        return [info.image_path(stem) for stem in splits.get("val", [])[:8]]
    except CatsegError:  # the dataset was moved or deleted since training: fall back to other photos
        return []


def _generated_photo(h: int, w: int) -> np.ndarray:
    """Return a smooth photo-like test image with an ellipse on it."""
    import cv2

    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (6, 8, 3)).astype(np.uint8)
    image = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.ogrid[:h, :w]
    inside = ((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 4)) ** 2 < 1
    image[inside] = 230
    return image


def compare(session: Any, predictor: Any, photos: Sequence[tuple[str, np.ndarray]]) -> list[Parity]:
    """Return the Parity of each photo: onnxruntime session against a PyTorch Predictor, masks before clean-up."""
    names = [o.name for o in session.get_outputs()]
    rows = []
    for name, photo in photos:
        ref = predictor.predict_proba(photo)
        threshold = predictor.config.threshold if predictor.config.num_classes == 2 else None
        want = ((ref[1] >= threshold) if threshold is not None else ref.argmax(0)).numpy().astype(np.uint8)
        got = dict(zip(names, session.run(None, {"image": photo})))
        mask = got["mask"] if "mask" in got else _labels(got["probs"], threshold)
        diff = float(np.abs(got["probs"] - ref.numpy()).max()) if "probs" in got else float("nan")
        rows.append(Parity(name, photo.shape[0], photo.shape[1], float((mask == want).mean()), diff))
    return rows


def _labels(probs: np.ndarray, threshold: float | None) -> np.ndarray:
    if threshold is not None and probs.shape[0] == 2:
        return (probs[1] >= threshold).astype(np.uint8)
    return probs.argmax(0).astype(np.uint8)


def session_from(data: bytes | Path, threads: int = 0) -> Any:
    """Return an onnxruntime CPU InferenceSession for a model (bytes or path); threads 0 = onnxruntime's default."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # warnings about unused initialisers are noise to the user
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    source = str(data) if isinstance(data, Path) else data
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


def export_onnx(run_dir: str | Path, out: str | Path | None = None, outputs: str = "both",
                check: Sequence[str] = (), tta: bool | None = None, force: bool = False,
                threads: int = 0, min_agreement: float = MIN_AGREEMENT,
                check_sizes: Sequence[tuple[int, int]] = CHECK_SIZES) -> ExportReport:
    """Export a run folder to one .onnx file (default RUN/model.onnx), check parity, and return the report.

    `tta` None keeps the run's mirror-TTA choice (config.json "tta"); True or False decides it here.
    Nothing is written when the masks agree on less than `min_agreement` of the pixels of any photo
    (the --check photos or the run's validation photos, and the first resized to `check_sizes`).
    """
    from catseg.models import create_model, load_weights, rebuild_kwargs
    from catseg.predict import Predictor

    require("onnx")
    require("onnxruntime")
    run_dir = Path(run_dir)
    if outputs not in OUTPUTS:
        raise CatsegError(f"--outputs {outputs!r}: choose one of {', '.join(OUTPUTS)}")
    config = read_run_config(run_dir)
    path = Path(out) if out is not None else run_dir / "model.onnx"
    if path.suffix.lower() != ".onnx":
        raise CatsegError(f"--out {path}: give a file name ending in .onnx")
    if path.exists() and not force:
        raise CatsegError(f"{path}: already exists. Choose another --out or pass --force to replace it.")
    if config.in_channels != 3 or config.preprocess.bands:
        raise CatsegError(f"{run_dir}: the model takes {config.in_channels} input channels; the exported graph "
                          "takes 8-bit RGB photos, so only photo runs can be exported (band images: use "
                          "`catseg predict RUN`)")
    flip = bool(config.tta.get("flip", False)) if tta is None else bool(tta)
    photos = check_photos(run_dir, config, check, sizes=check_sizes)
    model = create_model(config.model, in_channels=config.in_channels, num_classes=config.num_classes,
                         **rebuild_kwargs(config.model, config.model_kwargs))
    load_weights(model, run_dir / WEIGHTS)
    data = onnx_bytes(build_graph(model, config, flip), outputs)
    data = _with_metadata(data, _metadata(config, outputs, flip, run_fingerprint(run_dir, config)))
    predictor = Predictor(config, model, torch.device("cpu"), torch.float32, tta=flip)
    report = ExportReport(path, ["mask", "probs"] if outputs == "both" else [outputs], flip,
                          compare(session_from(data, threads), predictor, photos), min_agreement,
                          tuple(predictor.tta_scales))
    bad = [p for p in report.parity if p.agreement < min_agreement]
    if bad:
        raise CatsegError(f"the exported graph disagrees with the PyTorch backend on {len(bad)} of "
                          f"{len(report.parity)} photos (below {min_agreement:.1%} of pixels); nothing was written. "
                          "Please report this as a catseg bug, with the run's config.json",
                          [f"{p.name} ({p.height} x {p.width}): {p.agreement:.4%}" for p in bad])
    atomic_write_bytes(path, data)
    log.info("exported %s to %s", run_dir / CONFIG_JSON, path)
    return report
