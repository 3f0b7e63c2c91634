"""Model weights as safetensors files: no pickles, written atomically, loaded strictly."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import nn

from catseg.errors import CatsegError
from catseg.files import atomic_write_bytes


def save_weights(model: nn.Module, path: str | os.PathLike[str], metadata: dict[str, str] | None = None) -> Path:
    """Return `path` after writing the model's state dict to it as safetensors, atomically and durably.

    The bytes go to a temporary file beside `path` that is flushed and renamed over it, so a crash or a
    full disk never leaves a half-written weights file. Tied (shared) tensors are stored once. `metadata`
    (strings) goes into the file's header, e.g. which epoch the weights are from.
    """
    state = model.state_dict()
    for names in _tie_groups(state):
        for name in names[1:]:
            state.pop(name)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    atomic_write_bytes(path, save({k: v.clone() if _shares_storage(v) else v for k, v in tensors.items()},
                                  metadata={"format": "pt", **(metadata or {})}))
    return Path(path)


def _shares_storage(tensor: torch.Tensor) -> bool:
    """True for a view into a larger storage (safetensors stores whole, non-overlapping tensors only)."""
    return tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size()


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """Return the header metadata of a safetensors file ({} when it has none or cannot be read)."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except Exception:  # a foreign or corrupt file: load_weights names it when it matters
        return {}


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
