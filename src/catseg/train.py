"""fit(config) -> run folder: train a segmentation model, keep the best epoch by validation mIoU."""

from __future__ import annotations

import io
import logging
import math
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from catseg.config import TrainConfig
from catseg.data import DatasetInfo, atomic_write_bytes, atomic_write_json, read_dataset
from catseg.errors import CatsegError
from catseg.loading import (AugmentedDataset, CachedSample, cache_fits_in_memory, cache_samples, cache_side,
                            seed_worker)
from catseg.losses import SegmentationLoss, class_weights_from_frequency
from catseg.models import create_model, load_weights, model_kwargs, preprocessing_for, save_weights
from catseg.planner import plan_training
from catseg.run import (LAST_WEIGHTS, SPLITS_JSON, TRAIN_STATE, WEIGHTS, RunConfig, prepare_run_dir, versions,
                        write_run_files)
from catseg.runtime import configure_threads, default_workers, precision_name, resolve_device, resolve_precision
from catseg.steps import StepContext, choose_finish, estimate_epoch_seconds, timed_batches, train_step, validate

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    """What a finished training run reached and where it is."""

    run_dir: Path
    epochs: int
    best_epoch: int
    best_miou: float
    threshold: float | None
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        thr = f", threshold {self.threshold:.2f}" if self.threshold is not None else ""
        return (f"trained {self.epochs} epochs in {self.seconds:.0f}s; best validation mIoU {self.best_miou:.4f} "
                f"at epoch {self.best_epoch}{thr}\nrun folder: {self.run_dir}")


@dataclass
class StepReport:
    """Where training is, after one optimisation step (for progress displays)."""

    epoch: int
    step: int  # within the epoch, from 1
    steps_per_epoch: int
    loss: float
    lr: float
    images_per_s: float


Progress = Callable[[StepReport], None]


# ----------------------------------------------------------------------------- splits
def choose_split(info: DatasetInfo, config: TrainConfig) -> tuple[list[str], list[str]]:
    """Return (train stems, val stems): named splits when the dataset or flags give them, else a seeded
    split of everything outside a 'test' split."""
    available = set(info.stems())
    if not available:
        raise CatsegError(f"{info.root}: no image with a mask. Run `catseg check {info.root}`.")

    def named(name: str) -> list[str]:
        if name not in info.splits:
            raise CatsegError(f"{info.root}: no split named {name!r}; dataset.json has: "
                              f"{', '.join(info.splits) or 'none'}")
        return list(info.splits[name])

    val = named(config.val_split) if config.val_split else (
        named("val") if "val" in info.splits else named("validation") if "validation" in info.splits else None)
    if config.train_split:
        pool = named(config.train_split)
    elif "train" in info.splits:
        pool = named("train")
    elif "trainval" in info.splits:
        pool = named("trainval")
    else:
        held_out = set(info.splits.get("test", []))
        pool = sorted(available - held_out)
    missing = sorted(set(pool + (val or [])) - available)
    if missing:
        raise CatsegError(f"{info.root}: the split names {len(missing)} stems with no image/mask pair "
                          f"(first: {missing[:5]}). Run `catseg check {info.root}`.")
    if val is None:
        if len(pool) < 2:
            raise CatsegError(f"{info.root}: {len(pool)} image(s); training needs at least 2 (one to validate on).")
        shuffled = sorted(pool)
        random.Random(config.seed).shuffle(shuffled)
        n_val = min(len(shuffled) - 1, max(1, round(len(shuffled) * config.val_fraction)))
        val, train = sorted(shuffled[:n_val]), sorted(shuffled[n_val:])
    else:
        train = sorted(set(pool) - set(val))
    if not train or not val:
        raise CatsegError(f"{info.root}: the split leaves {len(train)} training and {len(val)} validation images; "
                          "both need at least one.")
    return train, sorted(val)


# ----------------------------------------------------------------------------- schedule
def learning_rate(progress: float, peak: float, warmup: float) -> float:
    """Return the learning rate at a point (0..1) of training: linear warm-up, then cosine decay to 1%."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return peak * max(progress / warmup, 0.01)
    t = (progress - warmup) / max(1e-9, 1.0 - warmup)
    return peak * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t)))


# ----------------------------------------------------------------------------- fit
def fit(config: TrainConfig, progress: Progress | None = None) -> FitResult:
    """Train a model as `config` says and return what it reached; the run folder is `config.out`.

    `progress`, when given, is called after every step with a StepReport (the CLI draws a bar with it).
    """
    started = time.perf_counter()
    config.validate()
    run_dir = Path(config.out)
    state: dict[str, Any] | None = None
    if config.resume:
        config, state = _load_resume(run_dir, config)
    info = read_dataset(config.dataset)
    train_stems, val_stems = choose_split(info, config)
    run_dir = prepare_run_dir(config)
    plan_doc: dict[str, Any] = {}
    if config.time_budget and not config.no_plan and not config.resume:
        plan = plan_training(config, info, train_stems, set(config.given))
        config, plan_doc = plan.config, plan.to_json()
        for reason in plan.reasons:
            log.info("plan: %s", reason)
    resolve_precision(config.precision, resolve_device(config.device))  # fail on a bad device before decoding
    side = cache_side(config.size, config.augment)
    on_disk = config.cache == "disk" or (
        config.cache == "auto" and not cache_fits_in_memory(len(train_stems) + len(val_stems), side, config.resize))
    cache_dir = Path(tempfile.mkdtemp(prefix="catseg-cache-")) if on_disk else None
    try:
        log.info("caching %d training and %d validation images at %dpx %s...", len(train_stems), len(val_stems),
                 side, f"on disk in {cache_dir} " if cache_dir else "")
        train_cache = cache_samples(info, train_stems, side, config.resize, disk_dir=cache_dir)
        val_cache = cache_samples(info, val_stems, config.size, config.resize, disk_dir=cache_dir / "val"
                                  if cache_dir else None)
        return _fit_cached(config, info, run_dir, state, train_stems, val_stems, train_cache, val_cache, started,
                           progress, plan_doc)
    finally:
        if cache_dir is not None:
            shutil.rmtree(cache_dir, ignore_errors=True)


def _fit_cached(config: TrainConfig, info: DatasetInfo, run_dir: Path, state: dict[str, Any] | None,
                train_stems: list[str], val_stems: list[str], train_cache: list[CachedSample],
                val_cache: list[CachedSample], started: float, progress: Progress | None,
                plan_doc: dict[str, Any]) -> FitResult:
    """Train on decoded samples; the rest of fit(), after the data is in memory or mapped from disk."""
    device = resolve_device(config.device)
    dtype = resolve_precision(config.precision, device)
    workers = config.workers if config.workers >= 0 else default_workers(device)
    threads = configure_threads(workers) if device.type == "cpu" else torch.get_num_threads()

    torch.manual_seed(config.seed)
    kwargs = model_kwargs(config.model, config)
    model = create_model(config.model, in_channels=3, num_classes=info.num_classes, **kwargs)
    pre = preprocessing_for(config.model, kwargs)
    channels_last = True
    model.to(device, memory_format=torch.channels_last)
    weights = _class_weights(config, train_cache, info)
    loss_fn = SegmentationLoss(config.loss, info.num_classes, info.ignore_index, weights).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    patch = config.patch or config.size
    ctx = StepContext(model, loss_fn, device, dtype, pre["mean"], pre["std"], channels_last, info.num_classes,
                   info.ignore_index, scaler, config.resize, patch)

    run_config = RunConfig(
        model=config.model, model_kwargs=kwargs, in_channels=3, classes=info.classes,
        colors=[list(c) for c in info.colors], ignore_index=info.ignore_index, mean=pre["mean"], std=pre["std"],
        size=config.size, resize=config.resize, patch=patch,
        train={**config.to_dict(), "precision_used": precision_name(dtype), "device_used": str(device),
               "workers_used": workers, "threads_used": threads, "plan": plan_doc},
        versions=versions(), dataset=str(Path(config.dataset).resolve()),
    )
    atomic_write_json(run_dir / SPLITS_JSON, {"train": train_stems, "val": val_stems})

    dataset = AugmentedDataset(train_cache, config.size, config.augment, info.ignore_index, config.seed,
                               config.resize, patch)
    if len(dataset) < 2:
        # BatchNorm cannot normalise a batch of one image (pooling layers see one value per channel).
        raise CatsegError(f"{info.root}: {len(dataset)} training image after the validation split; "
                          "training needs at least 2. Add images or lower --val-fraction.")
    drop_last = len(dataset) > config.batch_size
    steps_per_epoch = len(dataset) // config.batch_size if drop_last else 1
    epoch, step, elapsed_before, history, best = 0, 0, 0.0, [], {"val_miou": float("nan"), "epoch": 0}
    if state is not None:
        load_weights(model, run_dir / LAST_WEIGHTS)
        optimizer.load_state_dict(state["optimizer"])
        epoch, step, elapsed_before = int(state["epoch"]), int(state["step"]), float(state["elapsed"])
        history, best = list(state["history"]), dict(state["best"])
        log.info("resuming %s after epoch %d", run_dir, epoch)

    budget = config.time_budget_s
    total_steps = None if budget else config.epochs * steps_per_epoch
    if budget:
        estimate = estimate_epoch_seconds(ctx, dataset, val_cache, config.batch_size, steps_per_epoch)
        fits = max(1, int((budget - (time.perf_counter() - started)) // estimate))
        log.info("time budget %s: one epoch (%d steps + validation) takes about %.1fs, so about %d epochs fit",
                 config.time_budget, steps_per_epoch, estimate, fits)
    loop_start = time.perf_counter() - elapsed_before
    deadline = None if budget is None else started + budget - elapsed_before

    model.train()
    last_line = last_files = 0.0
    val_seconds = 0.0  # validation time so far, kept to a small share of the training time
    pending = {"waited": 0.0, "loss_sum": 0.0, "images": 0, "steps": 0, "seconds": 0.0}
    while True:
        if total_steps is not None and step >= total_steps:
            break
        if deadline is not None and time.perf_counter() >= deadline:
            break
        epoch += 1
        if config.size_start:
            dataset.set_size(_grown_size(config, _progress(loop_start, deadline, step, total_steps)))
        dataset.set_epoch(epoch)
        torch.manual_seed(config.seed * 1000 + epoch)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=config.batch_size, shuffle=True, drop_last=drop_last, num_workers=workers,
            worker_init_fn=seed_worker, pin_memory=device.type == "cuda", persistent_workers=False,
            generator=torch.Generator().manual_seed(config.seed * 1000 + epoch))
        epoch_start, n_steps = time.perf_counter(), 0
        for wait, (images, masks) in timed_batches(loader):
            pending["waited"] += wait
            lr = learning_rate(_progress(loop_start, deadline, step, total_steps), config.lr, config.warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = train_step(ctx, optimizer, images, masks)
            if not math.isfinite(loss):
                raise CatsegError(f"training diverged at epoch {epoch} step {step} (loss {loss}). "
                                  "Lower --lr, or use --precision fp32.")
            step += 1
            n_steps += 1
            pending["steps"] += 1
            pending["loss_sum"] += loss * len(images)
            pending["images"] += len(images)
            if progress is not None:
                progress(StepReport(epoch, n_steps, steps_per_epoch, loss, lr,
                                    n_steps * config.batch_size / max(1e-9, time.perf_counter() - epoch_start)))
            if total_steps is not None and step >= total_steps:
                break
            if deadline is not None and time.perf_counter() >= deadline:
                break
        if device.type == "cuda":
            torch.cuda.synchronize()
        pending["seconds"] += time.perf_counter() - epoch_start
        finished = (total_steps is not None and step >= total_steps) or (
            deadline is not None and time.perf_counter() >= deadline)
        # Short epochs are validated less often early on, so validation stays a few percent of the time;
        # the last 30% of training, where the best weights almost always are, is validated every epoch.
        train_elapsed = time.perf_counter() - loop_start - val_seconds
        if not (finished or epoch == 1 or _progress(loop_start, deadline, step, total_steps) >= 0.7
                or val_seconds <= 0.04 * train_elapsed):
            continue
        val_start = time.perf_counter()
        val = validate(ctx, val_cache, info.classes, config.batch_size)
        val_seconds += time.perf_counter() - val_start
        row = {"epoch": epoch, "steps": pending["steps"], "train_loss": pending["loss_sum"] / max(1, pending["images"]),
               **val, "images_per_s": pending["images"] / max(1e-9, pending["seconds"]),
               "data_wait_frac": pending["waited"] / max(1e-9, pending["seconds"]),
               "lr": lr, "seconds": time.perf_counter() - epoch_start, "elapsed": time.perf_counter() - loop_start}
        pending = dict.fromkeys(pending, 0)
        history.append(row)
        improved = _is_better(val["val_miou"], best["val_miou"])
        if improved:
            best = {"val_miou": val["val_miou"], "epoch": epoch, "threshold": val.get("threshold"),
                    "val_ece": val["val_ece"], "val_iou_at_threshold": val.get("val_iou_at_threshold")}
            save_weights(model, run_dir / WEIGHTS)
        # Every validated epoch is in metrics.csv; the log gets improvements and a line every 10 s, so epochs
        # of a fraction of a second (small data) do not flood the terminal.
        if improved or time.perf_counter() - last_line >= 10.0:
            last_line = time.perf_counter()
            log.info("epoch %d: train loss %.4f, val loss %.4f, val mIoU %.4f%s, %.1f img/s, data wait %.0f%%, %.0fs%s",
                     epoch, row["train_loss"], row["val_loss"], row["val_miou"], " (best)" if improved else "",
                     row["images_per_s"], 100 * row["data_wait_frac"], row["seconds"],
                     _eta(deadline, total_steps, step, row["elapsed"]))
        # The resume state and the plot are rewritten at most every 20 s (and at the end); config.json
        # also whenever the best weights change, so its threshold always belongs to model.safetensors.
        if finished or time.perf_counter() - last_files >= 20.0:
            last_files = time.perf_counter()
            _checkpoint(run_dir, model, optimizer, epoch, step, time.perf_counter() - loop_start,
                        history, best)
            write_run_files(run_dir, run_config, history, best, info.classes, epoch)
        elif improved:
            write_run_files(run_dir, run_config, history, best, info.classes, epoch, plot=False)

    if not (run_dir / WEIGHTS).is_file():
        save_weights(model, run_dir / WEIGHTS)
    load_weights(model, run_dir / WEIGHTS)
    mirror, cleanup, tried = choose_finish(ctx, val_cache, best.get("threshold"))
    run_config.postprocess = cleanup.to_json() if cleanup.active else {}
    run_config.tta = {"flip": True} if mirror else {}
    best["postprocess_val_miou"] = tried
    log.info("on validation (mIoU): %s", ", ".join(f"{k} {v:.4f}" for k, v in tried.items()))
    log.info("prediction will use: %s%s", "mirror test-time augmentation, " if mirror else "",
             f"clean-up {cleanup.describe()}" if cleanup.active else "no clean-up")
    write_run_files(run_dir, run_config, history, best, info.classes, epoch)
    return FitResult(run_dir, epoch, int(best["epoch"]), float(best["val_miou"]), best.get("threshold"),
                     time.perf_counter() - started, history)


def _grown_size(config: TrainConfig, progress: float) -> int:
    """Return the training size at a point of training under --size-start: linear growth from size_start
    to size over the first 60%, in steps of 16 pixels."""
    grown = config.size_start + (config.size - config.size_start) * min(1.0, progress / 0.6)
    return min(config.size, max(config.size_start, int(grown) // 16 * 16))


def _progress(loop_start: float, deadline: float | None, step: int, total_steps: int | None) -> float:
    """Return how far training is (0..1): by the clock under a time budget, else by steps."""
    if deadline is not None:
        return (time.perf_counter() - loop_start) / max(1e-9, deadline - loop_start)
    return step / max(1, total_steps or 1)


def _eta(deadline: float | None, total_steps: int | None, step: int, elapsed: float) -> str:
    """Return ', about Xm Ys left' for the per-epoch log line ('' when done)."""
    if deadline is not None:
        left = deadline - time.perf_counter()
    else:
        left = (total_steps - step) * elapsed / max(1, step) if total_steps else 0.0
    if left <= 0:
        return ""
    minutes, seconds = divmod(int(left + 0.5), 60)
    return f", about {minutes}m{seconds:02d}s left" if minutes else f", about {seconds}s left"


def _is_better(value: float, best: float) -> bool:
    return math.isfinite(value) and (not math.isfinite(best) or value > best)


def _class_weights(config: TrainConfig, samples: Sequence[CachedSample], info: DatasetInfo) -> list[float] | None:
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


def _checkpoint(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch: int, step: int,
                elapsed: float, history: list[dict[str, Any]], best: dict[str, Any]) -> None:
    save_weights(model, run_dir / LAST_WEIGHTS)
    buf = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "epoch": epoch, "step": step, "elapsed": elapsed,
                "history": history, "best": best}, buf)
    atomic_write_bytes(run_dir / TRAIN_STATE, buf.getvalue())


def _load_resume(run_dir: Path, config: TrainConfig) -> tuple[TrainConfig, dict[str, Any]]:
    """Return the stored settings (with this call's device) and the saved training state."""
    from catseg.run import read_run_config

    if not (run_dir / TRAIN_STATE).is_file():
        raise CatsegError(f"{run_dir}: nothing to resume (no {TRAIN_STATE}). Start it without --resume.")
    stored = read_run_config(run_dir).train
    resumed = TrainConfig.from_dict({**stored, "resume": True, "force": False, "device": config.device,
                                     "out": str(run_dir), "no_plan": True})  # the stored settings were planned
    state = torch.load(run_dir / TRAIN_STATE, map_location="cpu", weights_only=True)
    return resumed.validate(), state
