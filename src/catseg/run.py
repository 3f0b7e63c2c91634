"""The run folder: everything `predict`, `evaluate` and later stages need, described by config.json.

    RUN/config.json        model name + kwargs, classes, colours, normalisation, size policy,
                           threshold, training settings, scores, versions
    RUN/model.safetensors  weights of the best epoch (by validation mIoU); its header names that epoch
    RUN/train_state.pt     the checkpoint for --resume, one file: weights, optimizer, scaler, schedule
                           position, RNG states, history and best score (tensors and plain values only,
                           loaded with weights_only=True)
    RUN/splits.json        the train and val stems
    RUN/metrics.csv        one row per validated epoch
    RUN/curves.png         loss and mIoU curves

Every file of a run folder is written here: `RunFolder` is the only writer, `read_run_config` the reader.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from catseg.classes import AUTO, background_id
from catseg.config import RESIZE, TrainConfig
from catseg.errors import CatsegError
from catseg.files import atomic_write_bytes, atomic_write_json, check_replaceable, swap_in_place
from catseg.models import save_weights
from catseg.models.weights import read_metadata
from catseg.preprocess import Preprocess

log = logging.getLogger(__name__)

RUN_FORMAT = "catseg-run"
RUN_VERSION = 1
CONFIG_JSON = "config.json"
WEIGHTS = "model.safetensors"
LAST_WEIGHTS = "last.safetensors"  # written by catseg before the one-file checkpoint; still read by --resume
TRAIN_STATE = "train_state.pt"
SPLITS_JSON = "splits.json"
METRICS_CSV = "metrics.csv"
CURVES_PNG = "curves.png"
NEW_SUFFIX = ".new"  # --force trains the replacement of OUT in OUT.new
BEST_METADATA = "catseg_best"  # model.safetensors header: the BestEpoch of the weights, as JSON


@dataclass
class RunConfig:
    """What config.json says: enough to rebuild the model and its preprocessing without any flag."""

    model: str
    model_kwargs: dict[str, Any]
    in_channels: int
    classes: list[str]
    colors: list[list[int]]
    ignore_index: int
    preprocess: Preprocess  # size policy, normalisation: how photos become inputs and logits cover them
    threshold: float | None = None  # two classes: foreground probability cut-off chosen on validation
    postprocess: dict[str, Any] = field(default_factory=dict)  # catseg.postprocess.Postprocess, chosen on val
    tta: dict[str, Any] = field(default_factory=dict)  # {"flip": true} when mirroring helped on validation
    train: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    dataset: str = ""
    background: Any = AUTO  # the background class id or None (catseg.classes); AUTO: from the name of class 0

    def __post_init__(self) -> None:
        self.background = background_id(self.classes, self.background)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": RUN_FORMAT,
            "version": RUN_VERSION,
            "model": {"name": self.model, "kwargs": self.model_kwargs, "in_channels": self.in_channels},
            "classes": self.classes,
            "background": self.background,
            "colors": self.colors,
            "ignore_index": self.ignore_index,
            "preprocess": self.preprocess.to_json(),
            "threshold": self.threshold,
            "postprocess": self.postprocess,
            "tta": self.tta,
            "dataset": self.dataset,
            "train": self.train,
            "scores": self.scores,
            "versions": self.versions,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any], path: Path) -> RunConfig:
        try:
            if doc.get("format") != RUN_FORMAT:
                raise KeyError(f"format is {doc.get('format')!r}, expected {RUN_FORMAT!r}")
            if doc.get("version") != RUN_VERSION:
                raise KeyError(f"version {doc.get('version')!r}; this catseg reads version {RUN_VERSION}")
            pre = doc["preprocess"]
            if pre.get("resize", "stretch") not in RESIZE:
                raise ValueError(f"size policy {pre.get('resize')!r} is unknown to this catseg; upgrade catseg")
            return cls(
                model=doc["model"]["name"], model_kwargs=dict(doc["model"]["kwargs"]),
                in_channels=int(doc["model"]["in_channels"]), classes=list(doc["classes"]),
                colors=[list(c) for c in doc["colors"]], ignore_index=int(doc["ignore_index"]),
                preprocess=Preprocess.from_json(pre),
                threshold=doc.get("threshold"), postprocess=dict(doc.get("postprocess") or {}),
                tta=dict(doc.get("tta") or {}),
                train=dict(doc.get("train", {})), scores=dict(doc.get("scores", {})),
                versions=dict(doc.get("versions", {})), dataset=doc.get("dataset", ""),
                background=doc.get("background", AUTO),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CatsegError(f"{path}: not a catseg run description ({exc}). Train one with `catseg train`.") from exc


def read_run_config(run_dir: str | Path) -> RunConfig:
    """Return the RunConfig of a run folder with weights, with a clear error when it is not one."""
    run_dir = Path(run_dir)
    config = read_run_config_unchecked(run_dir)
    if not (run_dir / WEIGHTS).is_file():
        raise CatsegError(f"{run_dir / WEIGHTS}: missing; the run has not finished an epoch yet.")
    best = weights_best(run_dir)
    if best is not None and best.epoch != config.scores.get("best_epoch"):
        # Training stopped between writing the weights and config.json: the weights' own header is right.
        log.warning("%s: config.json describes epoch %s but the weights are from epoch %d (training stopped "
                    "between the two writes); using the weights' threshold. `catseg train --resume --out %s` "
                    "rewrites config.json.", run_dir, config.scores.get("best_epoch"), best.epoch, run_dir)
        epochs = int(config.scores.get("epochs") or best.epoch)
        config = replace(config, threshold=best.threshold, scores={**config.scores, **best.scores(epochs)})
    return config


def read_run_config_unchecked(run_dir: Path) -> RunConfig:
    """Return what config.json says, whether or not the run has weights yet (--resume reads it so)."""
    path = run_dir / CONFIG_JSON
    if not path.is_file():
        raise CatsegError(f"{run_dir}: no {CONFIG_JSON}; give a run folder written by `catseg train --out`.")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise CatsegError(f"{path}: not valid JSON ({type(exc).__name__}: {exc}).") from exc
    if not isinstance(doc, dict):
        raise CatsegError(f"{path}: not a catseg run description (not a JSON object). Train one with `catseg train`.")
    return RunConfig.from_json(doc, path)


def read_splits(run_dir: str | Path) -> dict[str, list[str]]:
    path = Path(run_dir) / SPLITS_JSON
    if not path.is_file():
        return {}
    return {k: list(v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}


def versions() -> dict[str, str]:
    """Return the versions that produced a run, for the record."""
    import platform

    import numpy
    import torch

    from catseg import __version__

    out = {"catseg": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
           "python": platform.python_version()}
    try:
        import segmentation_models_pytorch as smp

        out["segmentation_models_pytorch"] = smp.__version__
    except ImportError:
        pass
    return out


def write_metrics_csv(path: Path, history: Sequence[dict[str, Any]]) -> None:
    """Write one CSV row per epoch (the union of every row's columns)."""
    if not history:
        return
    columns = list(history[0].keys())
    for row in history[1:]:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


def plot_curves(path: Path, history: Sequence[dict[str, Any]], classes: Sequence[str]) -> None:
    """Write loss and validation-IoU curves to a PNG (matplotlib's object API: no global backend, no pyplot,
    so a notebook's own figures are left alone and threads do not share state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(10, 3.8))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax1.plot(epochs, [r["val_loss"] for r in history], "o-", label="validation")
    ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.legend(), ax1.grid(alpha=0.3)
    ax2.plot(epochs, [r["val_miou"] for r in history], "o-", lw=2, label="mIoU")
    for name in classes:
        key = f"val_iou_{name}"
        if any(key in r for r in history):
            ax2.plot(epochs, [r.get(key, float("nan")) for r in history], "--", alpha=0.7, label=name)
    ax2.set_xlabel("epoch"), ax2.set_ylabel("validation IoU"), ax2.set_ylim(0, 1), ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())


def prepare_run_dir(config: TrainConfig) -> tuple[Path, Path | None]:
    """Return (the folder to train into, the run folder it will replace or None).

    A new run goes straight into `config.out`. With --force over an existing run, the old run stays untouched
    while the new one trains in the sibling `OUT.new`, which replaces OUT only once training has finished;
    an interrupted replacement is resumed with `--resume --out OUT.new`. Only a folder catseg wrote (its
    config.json says format catseg-run) is ever replaced, and never the dataset being trained on.
    """
    run_dir = Path(config.out)
    if config.resume:
        if not (run_dir / TRAIN_STATE).is_file():
            raise CatsegError(f"{run_dir}: nothing to resume (no {TRAIN_STATE}). Start it without --resume.")
        return run_dir, None
    if not run_dir.exists() or (run_dir.is_dir() and not any(run_dir.iterdir())):
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir, None
    if not config.force:
        raise CatsegError(f"{run_dir}: already exists and is not empty. Choose another --out, add --resume "
                          "to continue it, or --force to replace it (the old run is kept until the new one has "
                          "finished).")
    check_replaceable(run_dir, CONFIG_JSON, "a catseg run folder", RUN_FORMAT, inputs=[config.dataset])
    staging = run_dir.with_name(run_dir.name + NEW_SUFFIX)
    if staging.exists():
        check_replaceable(staging, CONFIG_JSON, "a catseg run folder", RUN_FORMAT, inputs=[config.dataset])
        shutil.rmtree(staging)
    staging.mkdir()
    return staging, run_dir


def replace_run(staging: Path, target: Path) -> Path:
    """Move the finished run `staging` over `target` (still a catseg run folder) and return where it is now."""
    if target.exists():
        try:
            check_replaceable(target, CONFIG_JSON, "a catseg run folder", RUN_FORMAT)
        except CatsegError as exc:
            log.warning("the new run stays in %s: %s", staging, exc)
            return staging
    swap_in_place(staging, target)
    return target


def read_checkpoint(run_dir: Path) -> dict[str, Any]:
    """Return the resume checkpoint of a run folder: tensors and plain values only (never unpickles objects)."""
    path = run_dir / TRAIN_STATE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CatsegError(f"{run_dir}: nothing to resume (no {TRAIN_STATE}). Start it without --resume.") from None
    except Exception as exc:  # pickle.UnpicklingError for a foreign object, RuntimeError for a damaged zip
        raise CatsegError(f"{path}: not a catseg checkpoint that can be loaded safely ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}). catseg loads tensors and plain values "
                          "only; start the run again without --resume.") from exc
    if not isinstance(state, dict) or "epoch" not in state or "optimizer" not in state:
        raise CatsegError(f"{path}: not a catseg checkpoint (no epoch and optimizer state). Start the run again "
                          "without --resume.")
    return state


def weights_best(run_dir: Path) -> BestEpoch | None:
    """Return the BestEpoch recorded in model.safetensors' header (None for weights written before catseg did)."""
    text = read_metadata(run_dir / WEIGHTS).get(BEST_METADATA)
    if not text:
        return None
    try:
        return BestEpoch.from_json(json.loads(text))
    except (json.JSONDecodeError, TypeError):
        return None


@dataclass
class BestEpoch:
    """The epoch whose weights are in model.safetensors, and what it scored on validation."""

    epoch: int = 0  # 0 = none validated yet
    val_miou: float = math.nan
    threshold: float | None = None  # two classes: the foreground cut-off chosen with these weights
    val_ece: float | None = None
    val_iou_at_threshold: float | None = None
    postprocess_val_miou: dict[str, float] = field(default_factory=dict)  # every finish candidate, at the end

    def beaten_by(self, val_miou: float) -> bool:
        """Return True when a validation mIoU improves on this one (NaN never does)."""
        return math.isfinite(val_miou) and (not math.isfinite(self.val_miou) or val_miou > self.val_miou)

    def scores(self, epochs: int) -> dict[str, Any]:
        """Return config.json's "scores" entry."""
        return {"best_epoch": self.epoch, "val_miou": self.val_miou, "val_ece": self.val_ece,
                "val_iou_at_threshold": self.val_iou_at_threshold, "epochs": epochs,
                "postprocess_val_miou": self.postprocess_val_miou}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> BestEpoch:
        return cls(**{k: v for k, v in doc.items() if k in cls.__dataclass_fields__})


class RunFolder:
    """Writes a run folder: the only place its files are written, so what they hold always agrees."""

    def __init__(self, root: Path, config: RunConfig) -> None:
        self.root = root
        self.config = config  # without threshold and scores: those come from the BestEpoch at each write

    def write_splits(self, train: Sequence[str], val: Sequence[str]) -> None:
        atomic_write_json(self.root / SPLITS_JSON, {"train": list(train), "val": list(val)})

    def save_best(self, model: torch.nn.Module, best: BestEpoch, history: Sequence[dict[str, Any]],
                  epochs: int) -> None:
        """Write the best weights (their header names the epoch, score and threshold) and, right after,
        config.json with the same threshold and scores. A stop between the two leaves the header as the
        truth: read_run_config and --resume both prefer it."""
        save_weights(model, self.root / WEIGHTS, metadata={BEST_METADATA: json.dumps(best.to_json())})
        self.write_config(best, history, epochs, plot=False)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Write the resume checkpoint as one file, atomically and durably (tensors and plain values only)."""
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.root / TRAIN_STATE, buf.getvalue())

    def write_config(self, best: BestEpoch, history: Sequence[dict[str, Any]], epochs: int, plot: bool = True,
                     **final: Any) -> RunConfig:
        """Write config.json (the best scores so far; `final` sets e.g. tta and postprocess), metrics.csv and,
        with `plot`, curves.png; return the RunConfig written."""
        if final:
            self.config = replace(self.config, **final)
        written = replace(self.config, threshold=best.threshold, scores=best.scores(epochs))
        atomic_write_json(self.root / CONFIG_JSON, written.to_json())
        write_metrics_csv(self.root / METRICS_CSV, history)
        if history and plot:
            plot_curves(self.root / CURVES_PNG, history, self.config.classes)
        return written
