"""fit(config) -> run folder: train a segmentation model, keep the best epoch by validation mIoU.

The loop reads top to bottom in `fit`: set up, resume, then one epoch at a time (train, validate and
keep the best, checkpoint), then finish (choose mirror TTA and clean-up on validation, write the run).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from catseg import checkpoint
from catseg.augment import AugmentedDataset, rare_class_ids, seed_worker
from catseg.cache import CachedSample, band_preprocess, with_train_statistics
from catseg.config import TrainConfig
from catseg.data import DatasetInfo, choose_split, read_dataset
from catseg.distributed import Dist, session
from catseg.ema import WeightAverage
from catseg.errors import CatsegError
from catseg.hardware import (Forward, default_workers, intra_op_threads, precision_name, resolve_device,
                             resolve_precision)
from catseg.losses import SegmentationLoss
from catseg.models import load_weights, model_kwargs, preprocessing_for
from catseg.planner import resolve_auto
from catseg.preprocess import Preprocess
from catseg.run import WEIGHTS, BestEpoch, RunConfig, RunFolder, prepare_run_dir, replace_run, versions
from catseg.steps import Clock, StepContext, grown_size, learning_rate, param_groups, timed_batches, train_step
from catseg.train_setup import class_weights, decoded, new_model, plan
from catseg.validation import choose_finish, validate

log = logging.getLogger(__name__)

# The finish costs about this many validations (two predictions of each validation photo, then the clean-ups
# scored): CamVid with 256 px windows, 15 s a validation, finished in about 50 s. Each --try-scales size s adds
# two predictions of s * s the pixels (Preprocess.scaled: windows grow with it) and the clean-ups of two more
# candidates (about one validation).
FINISH_VALIDATIONS = 3.0
# A run of at most this many epochs (--epochs, no time budget) validates every one: skipping some would leave
# its curve and its choice of best epoch a point or two, for little time saved.
VALIDATE_EVERY_EPOCH_UP_TO = 10


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


@dataclass
class _Window:
    """Training figures since the last validated epoch (one metrics.csv row sums them)."""

    waited: float = 0.0
    loss_sum: float = 0.0
    images: int = 0
    steps: int = 0
    seconds: float = 0.0


@dataclass
class Training:
    """Everything one run holds while it trains."""

    config: TrainConfig
    info: DatasetInfo
    folder: RunFolder
    ctx: StepContext
    optimizer: torch.optim.Optimizer
    dataset: AugmentedDataset
    val_cache: list[CachedSample]
    workers: int
    clock: Clock
    epoch: int = 0
    step: int = 0
    lr: float = 0.0
    epoch_seconds: float = 0.0  # training time of the latest epoch
    history: list[dict[str, Any]] = field(default_factory=list)
    best: BestEpoch = field(default_factory=BestEpoch)
    window: _Window = field(default_factory=_Window)
    val_seconds: float = 0.0  # validation time so far, kept to a small share of the training time
    last_line: float = 0.0
    last_files: float = 0.0
    last_checkpoint: float = field(default_factory=time.perf_counter)
    batch: int = 0  # batches done in the current epoch (a checkpoint taken mid-epoch resumes after them)
    skip: int = 0  # batches of the first epoch after a mid-epoch resume that were already trained
    stop_signal: int = 0  # SIGINT or SIGTERM received: checkpoint after this step and stop
    replaces: Path | None = None  # --force: the old run folder this one replaces when it has finished
    resume_rng: dict[str, Any] | None = None  # RNG states to restore once the skipped batches are drawn
    finish_reserve: float = 0.0  # seconds of the time budget kept for the finish (taken after epoch 1)
    dist: Dist = field(default_factory=Dist)  # the processes training together (catseg.distributed)
    train_ctx: StepContext | None = None  # ctx with the DistributedDataParallel forward; None: ctx itself
    ema: WeightAverage | None = None  # --ema: the moving average of the weights that validation scores and keeps

    @property
    def steps_per_epoch(self) -> int:
        return self._per_rank // self.config.batch_size if self._drop_last else 1

    @property
    def _drop_last(self) -> bool:
        return self._per_rank > self.config.batch_size

    @property
    def _per_rank(self) -> int:
        return self.dist.samples_per_rank(len(self.dataset))


# ----------------------------------------------------------------------------- fit
def fit(config: TrainConfig, progress: Progress | None = None) -> FitResult:
    """Train a model as `config` says and return what it reached; the run folder is `config.out`.

    `progress`, when given, is called after every step with a StepReport (the CLI draws a bar with it).
    SIGINT and SIGTERM write a checkpoint and stop with TrainingStopped, which says how to resume.
    Under torchrun every process calls fit; they train one model together (catseg.distributed) and only
    rank 0 writes the run folder, logs and reports progress.
    """
    started = time.perf_counter()
    config.validate()
    with session(config.device) as dist:
        return _fit(config, progress if dist.is_main else None, started, dist)


def _fit(config: TrainConfig, progress: Progress | None, started: float, dist: Dist) -> FitResult:
    state: dict[str, Any] | None = None
    if config.resume:
        config, state = checkpoint.load_resume(Path(config.out), config)
    info = read_dataset(config.dataset)
    train_stems, val_stems = choose_split(info, config)
    config, plan_doc = dist.main_decides(lambda: plan(config, info, train_stems))
    config, notes = resolve_auto(config)
    for note in notes:
        log.info("%s", note)
    device = dist.place(resolve_device(config.device))
    dtype = resolve_precision(config.precision, device)  # a bad device fails here, before decoding
    workers = config.workers if config.workers >= 0 else default_workers(device, dist.local_world)
    kwargs = model_kwargs(config.model, config)
    norm = preprocessing_for(config.model, kwargs)
    pre = Preprocess(config.size, config.resize, config.patch, config.window, tuple(norm["mean"]), tuple(norm["std"]))
    pre = band_preprocess(pre, info)  # band images: per-band statistics instead of the model's RGB ones
    # an unknown model or encoder fails here, before decoding
    model = new_model(config, info, kwargs, device, pre.channels)
    # nothing of an old run is touched before this point; rank 0 decides, the others learn its answer
    run_dir, replaces = dist.main_decides(lambda: prepare_run_dir(config))
    if state is not None:
        replaces = Path(state["replaces"]) if state.get("replaces") else None
    threads = (intra_op_threads(workers, dist.local_world) if device.type == "cpu"
               else contextlib.nullcontext(torch.get_num_threads()))
    with threads as used_threads, decoded(info, config, pre, train_stems, val_stems, dist.local_world) as (
            train_cache, val_cache):
        pre = with_train_statistics(pre, train_cache)
        run_config = RunConfig(
            model=config.model, model_kwargs=kwargs, in_channels=pre.channels, classes=info.classes,
            colors=[list(c) for c in info.colors], ignore_index=info.ignore_index, preprocess=pre,
            train={**config.to_dict(), "out": str(replaces or run_dir), "precision_used": precision_name(dtype),
                   "device_used": str(device), "workers_used": workers, "threads_used": used_threads,
                   "plan": plan_doc, "distributed": dist.record(device, config.batch_size)},
            versions=versions(), dataset=str(Path(config.dataset).resolve()), background=info.background)
        training = _set_up(config, info, RunFolder(run_dir, run_config), train_cache, val_cache,
                           Forward(model, device, dtype), workers)
        training.replaces, training.dist = replaces, dist
        if dist.is_main:
            training.folder.write_splits(train_stems, val_stems)
            if state is None:
                training.folder.write_config(training.best, [], 0, plot=False)  # marks the folder as catseg's run
        elapsed_before = checkpoint.resume(training, state) if state is not None else 0.0
        training.train_ctx = dist.wrap(training.ctx, config.batch_size)
        if training._per_rank < 2:
            raise CatsegError(f"{info.root}: {len(training.dataset)} training images for {dist.world} processes: each "
                              "needs at least 2. Start fewer processes.")
        training.clock = dist.clock(_start_clock(config, started, elapsed_before, training.steps_per_epoch,
                                                 training.finish_reserve))
        training.ctx.model.train()
        if training.clock.finished(training.step) and training.epoch == 0:
            log.warning("the time budget was spent before training started (decoding and set-up took %.0fs); "
                        "training one step so that the run has weights. Give a longer --time-budget.",
                        time.perf_counter() - started)
        with checkpoint.stop_requests(training):
            while training.epoch == 0 or not training.clock.finished(training.step):
                _train_one_epoch(training, progress)
                improved = _validate_and_keep_best(training) if dist.agree(_validation_due(training)) else False
                _write_progress(training, improved)
        dist.check_in_step(training.ctx.model)
        if not dist.is_main:  # rank 0 alone chooses the finish on the whole validation set and writes it
            return FitResult(replaces or run_dir, training.epoch, training.best.epoch, float(training.best.val_miou),
                             training.best.threshold, time.perf_counter() - started, training.history)
        return _finish(training, started)


# ----------------------------------------------------------------------------- set up
def _set_up(config: TrainConfig, info: DatasetInfo, folder: RunFolder, train_cache: list[CachedSample],
            val_cache: list[CachedSample], forward: Forward, workers: int) -> Training:
    """Return the training state before its first step: loss, optimizer, augmented data."""
    pre = folder.config.preprocess
    weights = class_weights(config, train_cache, info)
    loss_fn = SegmentationLoss(config.loss, info.num_classes, info.ignore_index, weights).to(forward.device)
    optimizer = torch.optim.AdamW(param_groups(forward.model, config), lr=config.lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if forward.dtype == torch.float16 else None
    ctx = StepContext(forward, pre, loss_fn, info.num_classes, info.ignore_index, scaler)
    focus = rare_class_ids(train_cache, info.num_classes, info.background) if config.oversample else []
    dataset = AugmentedDataset(train_cache, pre, config.augment, info.ignore_index, config.seed, focus, config.oversample)
    if len(dataset) < 2:
        # BatchNorm cannot normalise a batch of one image (pooling layers see one value per channel).
        raise CatsegError(f"{info.root}: {len(dataset)} training image after the validation split; "
                          "training needs at least 2. Add images or lower --val-fraction.")
    training = Training(config, info, folder, ctx, optimizer, dataset, val_cache, workers, Clock(time.perf_counter()))
    training.ema = WeightAverage(forward.model, config.ema) if config.ema else None
    return training


def _start_clock(config: TrainConfig, started: float, elapsed_before: float, steps_per_epoch: int,
                 reserve: float = 0.0) -> Clock:
    budget = config.time_budget_s
    loop_start = time.perf_counter() - elapsed_before
    if budget is None:
        return Clock(loop_start, total_steps=config.epochs * steps_per_epoch)
    # The budget counts from the start of fit (decoding included), less what an earlier session trained and
    # the finish's reserve when a resumed run had already set it aside.
    return Clock(loop_start, deadline=started + budget - elapsed_before - reserve)


# ----------------------------------------------------------------------------- one epoch
def _train_one_epoch(t: Training, progress: Progress | None) -> None:
    """Run the optimisation steps of one epoch (fewer when the clock runs out during it), writing a checkpoint
    every --checkpoint-every seconds and when a stop is requested."""
    config, device = t.config, t.ctx.device
    t.epoch += 1
    if config.size_start:
        t.dataset.set_size(grown_size(config, t.clock.progress(t.step)))
    t.dataset.set_epoch(t.dist.stream(t.epoch))  # each rank augments with its own random stream
    torch.manual_seed(config.seed * 1000 + t.epoch)
    sampler = t.dist.sampler(t.dataset, config.seed, t.epoch)  # this rank's share; None: one process
    loader = torch.utils.data.DataLoader(
        t.dataset, batch_size=config.batch_size, shuffle=sampler is None, sampler=sampler, drop_last=t._drop_last,
        num_workers=t.workers, worker_init_fn=seed_worker, pin_memory=device.type == "cuda", persistent_workers=False,
        generator=torch.Generator().manual_seed(t.dist.stream(config.seed * 1000 + t.epoch)))
    epoch_start, n_steps, t.batch = time.perf_counter(), 0, 0
    batches = timed_batches(loader)
    if t.skip:  # resumed mid-epoch: draw the batches already trained (same order and augmentation), unused
        for _ in zip(range(t.skip), batches):
            t.batch += 1
        t.skip = 0
        checkpoint.set_rng_state(t.resume_rng)
        t.resume_rng = None
    for wait, (images, masks) in batches:
        t.window.waited += wait
        t.lr = learning_rate(t.clock.progress(t.step), config.lr, config.warmup)
        for group in t.optimizer.param_groups:
            group["lr"] = t.lr * group.get("lr_scale", 1.0)
        loss = train_step(t.train_ctx or t.ctx, t.optimizer, images, masks)
        if not math.isfinite(loss):
            checkpoint.diverged(t, f"the loss is {loss}")
        if t.ema is not None:
            t.ema.update(t.ctx.model)
        t.step += 1
        t.batch += 1
        n_steps += 1
        t.window.steps += 1
        t.window.loss_sum += loss * len(images)
        t.window.images += len(images)
        if progress is not None:
            seen = n_steps * config.batch_size * t.dist.world  # by every process
            progress(StepReport(t.epoch, n_steps, t.steps_per_epoch, loss, t.lr,
                                seen / max(1e-9, time.perf_counter() - epoch_start)))
        if t.clock.finished(t.step):
            break
        if t.dist.agree(bool(t.stop_signal)) if t.dist.enabled else t.stop_signal:
            checkpoint.stop_now(t)
        if t.dist.is_main and time.perf_counter() - t.last_checkpoint >= config.checkpoint_every:
            checkpoint.write_checkpoint(t)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t.batch = 0  # the epoch is complete
    t.epoch_seconds = time.perf_counter() - epoch_start
    t.window.seconds += t.epoch_seconds


def _validation_due(t: Training) -> bool:
    """Return True when this epoch is validated. Short epochs are validated less often early on, so
    validation stays a few percent of the time; the last 30% of training, where the best weights almost
    always are, is validated every epoch, and so are the first and the last, and every epoch of a run of
    at most VALIDATE_EVERY_EPOCH_UP_TO epochs (the choice would otherwise hang on the machine's timing)."""
    if t.clock.deadline is None and t.config.epochs <= VALIDATE_EVERY_EPOCH_UP_TO:
        return True
    train_elapsed = t.clock.elapsed() - t.val_seconds
    return (t.clock.finished(t.step) or t.epoch == 1 or t.clock.progress(t.step) >= 0.7
            or t.val_seconds <= 0.04 * train_elapsed)


def _validate_and_keep_best(t: Training) -> bool:
    """Validate, add the metrics.csv row, keep the weights if they are the best so far; return whether."""
    val_start = time.perf_counter()
    with _averaged(t):
        val = validate(t.ctx, t.val_cache, t.info.classes, t.config.batch_size, t.dist, t.info.background)
    val_time = time.perf_counter() - val_start
    t.val_seconds += val_time
    w = t.window
    w.loss_sum, w.images = (float(v) for v in t.dist.sum([np.array(w.loss_sum), np.array(w.images)]))  # every rank's
    row = {"epoch": t.epoch, "steps": w.steps, "train_loss": w.loss_sum / max(1, w.images), **val,
           "images_per_s": w.images / max(1e-9, w.seconds), "data_wait_frac": w.waited / max(1e-9, w.seconds),
           "lr": t.lr, "seconds": t.epoch_seconds + time.perf_counter() - val_start, "elapsed": t.clock.elapsed()}
    t.window = _Window()
    t.history.append(row)
    if t.epoch == 1 and t.clock.deadline is not None and not t.finish_reserve:
        # The finish (choose_finish: the validation photos predicted plain and mirrored, then every clean-up
        # scored) comes after the loop; keep its time inside the budget. Rank 0's figure, so every rank agrees.
        validations = FINISH_VALIDATIONS + sum(2 * v * v + 1 for v in t.config.try_scale_list)
        reserve = t.finish_reserve = float(t.dist.broadcast(validations * val_time))
        t.clock.deadline -= reserve
        fits = max(1, int((t.clock.deadline - t.clock.loop_start) // max(1e-9, row["seconds"])))
        log.info("time budget %s: the first epoch (%d steps + validation) took %.1fs, so about %d epochs fit",
                 t.config.time_budget, row["steps"], row["seconds"], fits)
        log.debug("%.1fs of the budget kept for the finish", reserve)
    improved = t.best.beaten_by(val["val_miou"])
    if improved:
        t.best = BestEpoch(t.epoch, val["val_miou"], val.get("threshold"), val["val_ece"],
                           val.get("val_iou_at_threshold"))
        if t.dist.is_main:
            with _averaged(t):
                t.folder.save_best(t.ctx.model, t.best, t.history, t.epoch)
    # Every validated epoch is in metrics.csv; the log gets improvements and a line every 10 s, so epochs
    # of a fraction of a second (small data) do not flood the terminal.
    if improved or time.perf_counter() - t.last_line >= 10.0:
        t.last_line = time.perf_counter()
        log.info("epoch %d: train loss %.4f, val loss %.4f, val mIoU %.4f%s, %.1f img/s, data wait %.0f%%, %.0fs%s",
                 t.epoch, row["train_loss"], row["val_loss"], row["val_miou"], " (best)" if improved else "",
                 row["images_per_s"], 100 * row["data_wait_frac"], row["seconds"], t.clock.eta(t.step))
    return improved


def _averaged(t: Training) -> contextlib.AbstractContextManager[None]:
    """Within the block the model holds the weights validation scores: the moving average with --ema."""
    return t.ema.applied(t.ctx.model) if t.ema is not None else contextlib.nullcontext()


def _write_progress(t: Training, improved: bool) -> None:
    """After an epoch: write the checkpoint whenever the best changed (so a resumed run starts from the same best),
    every --checkpoint-every seconds, at the end and on a stop request; metrics.csv and the plot at most every
    20 s. The best weights and their config.json were already written by _validate_and_keep_best. Rank 0
    alone writes; a stop request is rank 0's, so every rank stops after the same step."""
    done = t.clock.finished(t.step)
    if t.dist.is_main and (improved or done or t.stop_signal
                           or time.perf_counter() - t.last_checkpoint >= t.config.checkpoint_every):
        checkpoint.write_checkpoint(t)
    if not done and t.dist.agree(bool(t.stop_signal)):
        checkpoint.stop_now(t)
    if t.dist.is_main and (done or time.perf_counter() - t.last_files >= 20.0):
        t.last_files = time.perf_counter()
        t.folder.write_config(t.best, t.history, t.epoch)


# ----------------------------------------------------------------------------- finish
def _finish(t: Training, started: float) -> FitResult:
    """Choose mirror TTA and clean-up on validation with the best weights, write the final run files."""
    model = t.ctx.model
    if not (t.folder.root / WEIGHTS).is_file():  # no validation scored (e.g. NaN): keep what validation would have
        with _averaged(t):
            t.folder.save_best(model, t.best, t.history, t.epoch)
    load_weights(model, t.folder.root / WEIGHTS)
    choice = choose_finish(t.ctx, t.val_cache, t.best.threshold, t.info.background, t.config.try_scale_list)
    t.best.postprocess_val_miou = choice.tried
    log.info("on validation (mIoU): %s", ", ".join(f"{k} {v:.4f}" for k, v in choice.tried.items()))
    sizes = (f"the photo also predicted at {', '.join(f'{s:g}' for s in choice.scales[1:])}x the working size, "
             if len(choice.scales) > 1 else "")
    log.info("prediction will use: %s%s%s", "mirror test-time augmentation, " if choice.mirror else "", sizes,
             f"clean-up {choice.cleanup.describe()}" if choice.cleanup.active else "no clean-up")
    tta: dict[str, Any] = {"flip": True} if choice.mirror else {}
    if len(choice.scales) > 1:
        tta["scales"] = list(choice.scales)
    t.folder.write_config(t.best, t.history, t.epoch, postprocess=choice.cleanup.to_json() if choice.cleanup.active
                          else {}, tta=tta)
    where = replace_run(t.folder.root, t.replaces) if t.replaces is not None else t.folder.root
    return FitResult(where, t.epoch, t.best.epoch, float(t.best.val_miou), t.best.threshold,
                     time.perf_counter() - started, t.history)
