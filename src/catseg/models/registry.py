"""A small timm-style registry: models are factory functions registered by name.

A factory is `factory(in_channels: int, num_classes: int, *, kw=default, ...) -> nn.Module`. Its
keyword-only parameters ARE the model's options: `create_model` checks user kwargs against them,
and `model_kwargs` picks them out of a training config, so a new option needs no second list.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from catseg.errors import CatsegError

Factory = Callable[..., nn.Module]
# (kwargs after defaults, in_channels) -> {"mean": [...], "std": [...]}
Preprocessing = Callable[[Mapping[str, Any], int], dict[str, list[float]]]

# Models trained from scratch see pixels scaled to [0, 1] and then centred to [-1, 1]; the value
# is channel-agnostic, so it also holds for 1-channel or hyperspectral inputs.
DEFAULT_MEAN = 0.5
DEFAULT_STD = 0.5


def _centred(kwargs: Mapping[str, Any], in_channels: int) -> dict[str, list[float]]:
    return {"mean": [DEFAULT_MEAN] * in_channels, "std": [DEFAULT_STD] * in_channels}


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: its factory and what the rest of catseg needs to know about it."""

    name: str
    description: str
    factory: Factory
    defaults: dict[str, Any]
    preprocessing: Preprocessing = _centred
    # Values that replace the stored kwargs when a trained model is rebuilt from its run folder,
    # so that e.g. pretrained encoder weights are not downloaded again only to be overwritten.
    rebuild_overrides: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, description: str, *, preprocessing: Preprocessing | None = None,
                   rebuild_overrides: Mapping[str, Any] | None = None) -> Callable[[Factory], Factory]:
    """Return a decorator that registers a model factory under `name` (timm style)."""

    def decorator(factory: Factory) -> Factory:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")  # a programming error, not user input
        params = inspect.signature(factory).parameters.values()
        defaults = {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
        _REGISTRY[name] = ModelEntry(name, description, factory, defaults, preprocessing or _centred,
                                     dict(rebuild_overrides or {}))
        return factory

    return decorator


def get_entry(name: str) -> ModelEntry:
    """Return the registry entry for `name`; CatsegError listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise CatsegError(f"unknown model {name!r}; choose one of: {', '.join(list_models())} "
                          "(`catseg models` describes them)") from None


def list_models() -> list[str]:
    """Return the registered model names, sorted."""
    return sorted(_REGISTRY)


def describe_models() -> dict[str, str]:
    """Return {model name: one-line description}, sorted by name."""
    return {name: _REGISTRY[name].description for name in list_models()}


def _check_kwargs(entry: ModelEntry, kwargs: Mapping[str, Any]) -> None:
    unknown = sorted(set(kwargs) - set(entry.defaults))
    if unknown:
        allowed = ", ".join(f"{k}={v!r}" for k, v in entry.defaults.items()) or "none"
        raise CatsegError(f"model {entry.name!r} does not take option(s) {', '.join(unknown)}; "
                          f"it takes: {allowed}")


def create_model(name: str, in_channels: int = 3, num_classes: int = 2, **kwargs: Any) -> nn.Module:
    """Return a new model that maps (B, in_channels, H, W) to logits (B, num_classes, H, W), any H, W.

    To rebuild a trained model without fetching pretrained weights again, pass
    `**rebuild_kwargs(name, stored_kwargs)` and then `load_weights`.
    """
    entry = get_entry(name)
    _check_kwargs(entry, kwargs)
    problems = []
    for what, value in (("in_channels", in_channels), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            problems.append(f"{what}={value!r}: must be a whole number of at least 1")
    if problems:
        raise CatsegError(f"cannot create model {name!r}", problems)
    return entry.factory(in_channels, num_classes, **kwargs)


def model_kwargs(name: str, config_like: Any) -> dict[str, Any]:
    """Return the options model `name` takes, read from a TrainConfig-like object (defaults fill gaps).

    The result is JSON-friendly and is what a run stores to rebuild the model later.
    """
    entry = get_entry(name)
    return {key: getattr(config_like, key, default) for key, default in entry.defaults.items()}


def rebuild_kwargs(name: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Return stored `kwargs` with pretrained-weight loading switched off, for rebuilding a trained model.

    The trained weights are loaded right after with `load_weights`, so downloading or reading the
    original encoder weights again would only cost time, and fail offline.
    """
    entry = get_entry(name)
    _check_kwargs(entry, kwargs)
    return {**kwargs, **entry.rebuild_overrides}


def preprocessing_for(name: str, kwargs: Mapping[str, Any] | None = None,
                      in_channels: int = 3) -> dict[str, list[float]]:
    """Return {"mean": [...], "std": [...]} (one value per input channel) that the model expects.

    Inputs are normalised as `(pixel / 255 - mean) / std`. `unet` uses 0.5 / 0.5; smp models use
    the statistics their encoder's pretrained weights were trained with (ImageNet for most), also
    when starting from random weights, so a run's normalisation never depends on that choice.
    """
    entry = get_entry(name)
    kwargs = dict(kwargs or {})
    _check_kwargs(entry, kwargs)
    return entry.preprocessing({**entry.defaults, **kwargs}, in_channels)
