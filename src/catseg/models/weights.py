"""Model weights as safetensors files: no pickles, written atomically, loaded strictly."""

from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_model
from torch import nn

from catseg.errors import CatsegError


def save_weights(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Return `path` after writing the model's state dict to it as safetensors, atomically.

    The file is written next to `path` under a temporary name and renamed over it, so a crash never
    leaves a half-written weights file. Tied (shared) tensors are stored once (safetensors.save_model).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_model(model, tmp, metadata={"format": "pt"})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _tie_groups(state: dict[str, torch.Tensor]) -> list[list[str]]:
    """Return lists of state-dict names that share one tensor (tied weights)."""
    groups: dict[tuple, list[str]] = defaultdict(list)
    for name, tensor in state.items():
        if tensor.numel():
            groups[(tensor.device, tensor.data_ptr(), tensor.shape, tensor.stride())].append(name)
    return [names for names in groups.values() if len(names) > 1]


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Return `model` after loading weights saved by `save_weights`; CatsegError naming the file on any mismatch."""
    path = Path(path)
    if not path.is_file():
        raise CatsegError(f"weights file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            loaded = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as exc:  # safetensors raises its own error type for corrupt / foreign files
        raise CatsegError(f"cannot read weights file {path}: {exc} (is it a safetensors file?)") from exc
    own = model.state_dict()
    for names in _tie_groups(own):  # save_model stored one name of each tied group
        present = [n for n in names if n in loaded]
        for name in names:
            if present and name not in loaded:
                loaded[name] = loaded[present[0]]
    missing = sorted(set(own) - set(loaded))
    unexpected = sorted(set(loaded) - set(own))
    problems = [f"missing from the file: {k}" for k in missing[:10]]
    problems += [f"in the file but not in the model: {k}" for k in unexpected[:10]]
    if len(missing) > 10 or len(unexpected) > 10:
        problems.append(f"({len(missing)} missing and {len(unexpected)} unexpected in all)")
    problems += [f"{k}: file {tuple(loaded[k].shape)}, model {tuple(own[k].shape)}"
                 for k in own if k in loaded and loaded[k].shape != own[k].shape][:10]
    if problems:
        raise CatsegError(f"weights file {path} does not fit this {type(model).__name__} "
                          "(saved from another model or other options?)", problems)
    nn.Module.load_state_dict(model, loaded, strict=True)
    return model
