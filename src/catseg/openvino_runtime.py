"""OpenVINO as a runtime for the .onnx files `catseg export` writes (`--backend openvino`, extra 'openvino').

The exported graph is the whole prediction (resize, normalisation, windows, TTA, threshold), so OpenVINO
runs the same file onnxruntime runs; catseg.onnx_backend.OnnxPredictor does the rest (metadata, clean-up,
threshold) for either runtime. OpenVINO is asked for f32 inference: on CPUs with bf16 units its default
would run the convolutions in bf16, and the masks would drift from the PyTorch fp32 backend's that the
export's parity check compares with.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from catseg.errors import CatsegError
from catseg.extras import require_extra

log = logging.getLogger(__name__)

CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}  # never bf16 behind the user's back


def require_openvino() -> Any:
    """Return the imported openvino module, or a CatsegError naming the extra to install."""
    return require_extra("openvino", "openvino", "the openvino backend")


class OpenVinoModel:
    """An exported catseg .onnx file compiled by OpenVINO for the CPU: image in, named outputs out."""

    def __init__(self, path: Path, threads: int = 0) -> None:
        ov = require_openvino()
        core = ov.Core()
        config: dict[str, Any] = dict(CONFIG)
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            model = core.read_model(str(path))
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own for damaged or unsupported files
            raise CatsegError(f"{path}: OpenVINO cannot load it ({exc.__class__.__name__}: "
                              f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''})") from exc
        self.metadata = _metadata(model)
        # An output tensor can carry several names (OpenVINO may add its own): keep the graph's.
        self.outputs = [next((n for n in ("mask", "probs") if n in o.get_names()), o.get_any_name())
                        for o in self.compiled.outputs]
        self.request = self.compiled.create_infer_request()
        self.description = f"OpenVINO {ov.get_version()} (CPU, f32)"

    def run(self, image: np.ndarray) -> list[np.ndarray]:
        """Return the outputs, in self.outputs' order, for one (H, W, 3) uint8 photo."""
        result = self.request.infer({"image": image})
        return [np.array(result[output], copy=True) for output in self.compiled.outputs]


def _metadata(model: Any) -> dict[str, str]:
    """Return the ONNX file's metadata_props, which OpenVINO keeps under rt_info 'framework'."""
    info = model.get_rt_info()
    if "framework" not in info:
        return {}
    return {key: model.get_rt_info(["framework", key]).astype(str) for key in info["framework"]}
