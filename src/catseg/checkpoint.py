"""The resume checkpoint: one file with everything a run needs to continue exactly where it stopped.

`write_checkpoint` saves weights, optimizer, scaler, schedule position (epoch, step, batch within the epoch),
the Python/NumPy/torch random states, history and best score, atomically; `resume` puts them back, so on a
CPU an interrupted and resumed run ends with the same weights as one that never stopped. SIGINT/SIGTERM
become a checkpoint and a TrainingStopped error that says how to resume; a loss or weights that are no
longer finite stop the run without overwriting anything good.
"""

from __future__ import annotations

import contextlib
import logging
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from catseg.config import TrainConfig
from catseg.ema import WeightAverage
from catseg.errors import CatsegError
from catseg.files import remove_stale_temporaries
from catseg.models import load_weights
from catseg.run import (LAST_WEIGHTS, TRAIN_STATE, WEIGHTS, BestEpoch, read_checkpoint,
                        read_run_config_unchecked, weights_best)

if TYPE_CHECKING:
    from catseg.train import Training

log = logging.getLogger(__name__)


def resume(training: Training, state: dict[str, Any]) -> float:
    """Load the checkpoint into `training` (weights, optimizer, scaler, position, RNG, history, best) and
    return the seconds trained before. A best epoch newer than the checkpoint's (the weights were written,
    then the process stopped before the checkpoint) is kept, so a resumed run never overwrites better weights."""
    t = training
    if "model" in state:
        t.ctx.model.load_state_dict(state["model"])
    else:  # a run written before the one-file checkpoint
        load_weights(t.ctx.model, t.folder.root / LAST_WEIGHTS)
    t.optimizer.load_state_dict(state["optimizer"])
    if t.ema is not None and state.get("ema"):
        t.ema.load_state_dict(state["ema"])
    elif t.ema is not None:  # a checkpoint without an average (an older run): the average starts from here
        t.ema = WeightAverage(t.ctx.model, t.ema.decay)
    if t.ctx.scaler is not None and state.get("scaler"):
        t.ctx.scaler.load_state_dict(state["scaler"])
    t.epoch, t.step, t.batch = int(state["epoch"]), int(state["step"]), int(state.get("batch", 0))
    t.history, t.best = list(state["history"]), BestEpoch.from_json(dict(state["best"]))
    t.val_seconds = float(state.get("val_seconds", 0.0))
    t.finish_reserve = float(state.get("finish_reserve", 0.0))  # the resumed clock keeps it aside again
    t.window = type(t.window)(**state.get("window", {}))
    saved_world = int(state.get("world", 1))
    if saved_world != t.dist.world:
        # Another number of processes: an epoch has another number of steps. Continue at the start of the
        # epoch the checkpoint was in (a partly trained epoch runs again whole) with the step count and so the
        # schedule recomputed for this world size.
        done = t.epoch - (1 if t.batch else 0)
        log.info("the checkpoint was written by %d process(es), this run has %d: continuing after epoch %d with "
                 "%d steps an epoch (was %d steps at the checkpoint)", saved_world, t.dist.world, done,
                 t.steps_per_epoch, t.step)
        t.epoch, t.step, t.batch = done, done * t.steps_per_epoch, 0
    if t.batch:  # stopped mid-epoch: run that epoch again from its start, skipping the batches already trained
        t.epoch, t.skip = t.epoch - 1, t.batch
    stored = weights_best(t.folder.root)
    if stored is not None and stored.epoch > t.best.epoch:
        log.info("the best weights on disk (epoch %d) are newer than the checkpoint's; keeping them", stored.epoch)
        t.best = stored
    if t.dist.is_main and (t.folder.root / WEIGHTS).is_file():
        t.folder.write_config(t.best, t.history, t.epoch)  # config.json agrees with model.safetensors again
    set_rng_state(state.get("rng"))
    t.resume_rng = state.get("rng") if t.skip else None
    log.info("resuming %s at epoch %d, step %d", t.folder.root, t.epoch + (1 if t.skip else 0), t.step)
    return float(state["elapsed"])


def write_checkpoint(t: Training) -> None:
    """Write the one-file checkpoint (refusing weights that are no longer finite: the last good one stays)."""
    model_state = {k: v.detach().to("cpu", copy=True) for k, v in t.ctx.model.state_dict().items()}
    bad = [k for k, v in model_state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        diverged(t, f"the weights are no longer finite ({bad[0]})")
    t.folder.save_checkpoint({
        "model": model_state, "optimizer": t.optimizer.state_dict(),
        "scaler": t.ctx.scaler.state_dict() if t.ctx.scaler is not None else {},
        "epoch": t.epoch, "step": t.step, "batch": t.batch, "elapsed": t.clock.elapsed(),
        "val_seconds": t.val_seconds, "finish_reserve": t.finish_reserve, "window": asdict(t.window),
        "history": t.history, "best": t.best.to_json(),
        "rng": rng_state(), "replaces": str(t.replaces) if t.replaces else "", "world": t.dist.world,
        "ema": t.ema.state_dict() if t.ema is not None else {}})
    t.last_checkpoint = time.perf_counter()


def diverged(t: Training, what: str) -> None:
    """Stop a run whose loss or weights are no longer finite, saying what on disk is still good."""
    kept = (f"The best weights so far (epoch {t.best.epoch}, validation mIoU {t.best.val_miou:.4f}) are in "
            f"{t.folder.root / WEIGHTS}" if t.best.epoch else "No epoch was validated yet, so there are no best weights")
    raise CatsegError(f"training diverged at epoch {t.epoch}, step {t.step}: {what}. {kept}; the last good "
                      f"checkpoint is {t.folder.root / TRAIN_STATE} (nothing was overwritten). Train again with a "
                      "lower --lr, or with --precision fp32.")


def rng_state() -> dict[str, Any]:
    """Return the Python, NumPy and torch random states as tensors and plain values (weights_only-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state(),
                             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any] | None) -> None:
    if not state:
        return
    random.setstate(_as_tuple(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


class TrainingStopped(CatsegError):
    """SIGINT or SIGTERM stopped training after a checkpoint; `exit_code` is the shell's 128 + signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


@contextlib.contextmanager
def stop_requests(t: Training) -> Iterator[None]:
    """While training, SIGINT (Ctrl-C) and SIGTERM (a scheduler's pre-emption notice) ask the loop to write
    a checkpoint after the current step and stop, instead of killing it mid-write."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request(signum: int, frame: Any) -> None:
        t.stop_signal = signum

    saved = {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def stop_now(t: Training) -> None:
    """Write a checkpoint (rank 0) and raise TrainingStopped, which says how to resume."""
    if t.dist.is_main:
        write_checkpoint(t)
    name = signal.Signals(t.stop_signal).name
    where = t.folder.root  # with --force over an old run: RUN.new, which replaces RUN once it has finished
    raise TrainingStopped(f"{name} received: stopped at epoch {t.epoch}, step {t.step}, after writing a checkpoint. "
                          f"Continue with: catseg train --resume --out {where}", t.stop_signal)


def load_resume(run_dir: Path, config: TrainConfig) -> tuple[TrainConfig, dict[str, Any]]:
    """Return the stored settings (with this call's device) and the saved training state."""
    state = read_checkpoint(run_dir)
    for path in remove_stale_temporaries(run_dir):  # a killed process's unfinished write; the old file is intact
        log.info("removed %s, left unfinished by a stopped process", path.name)
    stored = read_run_config_unchecked(run_dir).train
    resumed = TrainConfig.from_dict({**stored, "resume": True, "force": False, "device": config.device,
                                     "out": str(run_dir), "no_plan": True})  # the stored settings were planned
    return resumed.validate(), state
