"""Setting up a training run: the planner's record, the decoded samples, a fresh model, class weights."""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from catseg.augment import cache_side
from catseg.cache import CachedSample, cache_fits_in_memory, cache_samples
from catseg.config import TrainConfig
from catseg.data import DatasetInfo
from catseg.errors import CatsegError
from catseg.losses import class_weights_from_frequency
from catseg.models import create_model
from catseg.planner import plan_training
from catseg.preprocess import Preprocess
from catseg.steps import frozen_encoder_bn

log = logging.getLogger(__name__)


def plan(config: TrainConfig, info: DatasetInfo, train_stems: list[str]) -> tuple[TrainConfig, dict[str, Any]]:
    """Return the settings the planner chose for --time-budget (unchanged without one) and its record."""
    if not config.time_budget or config.no_plan or config.resume:
        return config, {}
    plan = plan_training(config, info, train_stems, set(config.given))
    for reason in plan.reasons:
        log.info("plan: %s", reason)
    return plan.config, plan.to_json()


@contextlib.contextmanager
def decoded(info: DatasetInfo, config: TrainConfig, pre: Preprocess, train_stems: list[str],
             val_stems: list[str], processes: int = 1) -> Iterator[tuple[list[CachedSample], list[CachedSample]]]:
    """Yield the decoded training and validation samples, in memory or memory-mapped from a temporary
    folder that is removed afterwards, whatever happens. Each of the machine's training `processes` keeps
    its own copy, so each may take only its share of the memory."""
    side = cache_side(config.size, config.augment)
    on_disk = config.cache == "disk" or (
        config.cache == "auto" and not cache_fits_in_memory(len(train_stems) + len(val_stems), side, pre,
                                                            share=0.5 / max(1, processes)))
    cache_dir = Path(tempfile.mkdtemp(prefix="catseg-cache-")) if on_disk else None
    try:
        log.info("caching %d training and %d validation images at %dpx %s...", len(train_stems), len(val_stems),
                 side, f"on disk in {cache_dir} " if cache_dir else "")
        train_cache = cache_samples(info, train_stems, pre, side, disk_dir=cache_dir)
        val_cache = cache_samples(info, val_stems, pre, disk_dir=cache_dir / "val" if cache_dir else None)
        yield train_cache, val_cache
    finally:
        if cache_dir is not None:
            shutil.rmtree(cache_dir, ignore_errors=True)


def new_model(config: TrainConfig, info: DatasetInfo, kwargs: dict[str, Any], device: torch.device,
               in_channels: int = 3) -> torch.nn.Module:
    torch.manual_seed(config.seed)
    model = create_model(config.model, in_channels=in_channels, num_classes=info.num_classes, **kwargs)
    if hasattr(model, "frozen_encoder_bn"):
        model.frozen_encoder_bn = frozen_encoder_bn(config)
    return model.to(device, memory_format=torch.channels_last)


def class_weights(config: TrainConfig, samples: Sequence[CachedSample], info: DatasetInfo) -> list[float] | None:
    if config.class_weights == "none":
        return None
    if config.class_weights == "auto":
        counts = np.zeros(info.num_classes, dtype=np.int64)
        for s in samples:
            counts += np.bincount(s.mask.ravel(), minlength=256)[: info.num_classes]
        weights = class_weights_from_frequency(counts.tolist())
        log.info("class weights (auto): %s", ", ".join(f"{n} {w:.2f}" for n, w in zip(info.classes, weights)))
        return weights
    weights = [float(v) for v in config.class_weights.split(",")]
    if len(weights) != info.num_classes:
        raise CatsegError(f"--class-weights has {len(weights)} values; the dataset has {info.num_classes} classes "
                          f"({', '.join(info.classes)})")
    return weights
