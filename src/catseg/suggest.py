"""suggest(run, photos) -> the photos ranked by how unsure the model is, and labelme pre-annotations for the top N.

The score of a photo is a mean over its pixels (at the photo's own size), so photo size does not
bias the ranking; every score is 0 for a photo the model is sure and consistent about, and at most 1.

- `mirror` (the default): the total variation distance between the probabilities predicted for the
  photo and for its mirror image (flipped back), 0.5 * sum_k |p_k - p'_k|. It measures the model
  disagreeing with itself, a cheap two-member ensemble, so it flags regions the model gets wrong
  with confidence, which self-reported doubt misses; confusion along every object's outline, which
  every photo has, counts little. On the 60 validation photos of an efficientnet-lite0 run on the
  Oxford pets sample it followed the real per-photo error best (Spearman 0.65 against 1 - pet IoU;
  margin 0.55, entropy 0.48). It costs two predictions per photo, as mirror TTA does.
- `entropy`: the normalised entropy of the probabilities, -sum_k p_k log p_k / log K, the classic
  uncertainty-sampling baseline (one prediction, or two when the run uses mirror TTA).
- `margin`: 1 - (p_top1 - p_top2), the gap between the two leading classes.

Which photos to pre-annotate (`pick`):

- `diverse` (the default): the top N are chosen for uncertainty and variety together, after Zhdanov,
  "Diverse mini-batch Active Learning" (2019): the 10 N most uncertain photos are clustered into N
  groups by what the model sees in them (its deepest feature map, averaged over the photo), with
  k-means weighted by the score, and the photo nearest each group's centre is taken. Uncertainty alone
  takes the N most unusual photos, often N of one kind (on the pets sample, 20 uncertainty picks
  trained a worse model than 20 random photos); one photo per group spreads the labelling effort.
- `uncertain`: the N highest scores.

The pre-annotations are the masks `catseg predict` would write (mirror TTA as the run chose).
"""
from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from catseg.annotate import (
    LABELS_FILE,
    LabelmeOptions,
    annotation_path,
    check_labels_file,
    labelme_document,
    labelme_json_bytes,
)
from catseg.errors import CatsegError
from catseg.files import atomic_write_bytes
from catseg.images import read_image
from catseg.photo_files import check_readable, expand_inputs, output_paths
from catseg.predict import Predictor
from catseg.preprocess import model_input, resize_image

log = logging.getLogger(__name__)

SCORES = ("mirror", "entropy", "margin")  # the first is the default
PICKS = ("diverse", "uncertain")  # the first is the default
DIVERSE_POOL = 10  # diverse: cluster the POOL x N most uncertain photos (Zhdanov 2019's beta)
RANKING_FILE = "suggestions.csv"
_HEADER = ("path", "rank", "score")


@dataclass
class Suggestion:
    """One photo's place in the ranking."""

    path: Path
    score: float  # 0 = sure, 1 = as unsure as it gets
    shares: dict[str, float]  # predicted share of the photo's pixels per class
    rank: int = 0  # 1 = the most uncertain
    annotation: Path | None = None  # its labelme JSON: written now, or already there
    status: str = ""  # "written", "exists" (left alone) or "" (not in the top N)


@dataclass
class SuggestReport:
    """What `suggest` ranked and wrote."""

    score: str
    ranking: list[Suggestion]
    ranking_file: Path
    out_dir: Path
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # photos whose JSON was already in out_dir
    diverse: int = 0  # how many photos lead the ranking as diverse_pick chose them (0: sorted by score alone)

    def summary(self, show: int = 10) -> str:
        """Return the text the CLI prints: the head of the ranking and where everything went."""
        lines = [f"ranked {len(self.ranking)} photos by {self.score} (0 = sure, 1 = unsure)"]
        if self.diverse:
            lines.append(f"the first {self.diverse}: uncertain photos of {self.diverse} different kinds (--pick diverse), "
                         "then the rest by score")
        lines.append(f"{'rank':>4s} {'score':>6s}  photo")
        for s in self.ranking[:show]:
            mark = {"written": "  (pre-annotated)", "exists": "  (already annotated: left alone)"}.get(s.status, "")
            lines.append(f"{s.rank:4d} {s.score:6.3f}  {s.path}{mark}")
        if len(self.ranking) > show:
            lines.append(f"   ... {len(self.ranking) - show} more in the ranking file")
        lines.append(f"ranking: {self.ranking_file}")
        lines.append(f"wrote {len(self.written)} labelme pre-annotations to {self.out_dir}"
                     + (f"; {len(self.skipped)} photos already had one (--force replaces them)" if self.skipped else ""))
        if self.written:
            lines.append(f"next: correct them in labelme ({self.out_dir}), then "
                         f"catseg convert ... --labels {self.out_dir / LABELS_FILE}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- scores
def pixel_uncertainty(probs: torch.Tensor, score: str = "mirror", mirrored: torch.Tensor | None = None) -> torch.Tensor:
    """Return (H, W) uncertainty in [0, 1] from (K, H, W) probabilities; `mirror` also needs the probabilities
    predicted for the mirrored photo, flipped back onto the photo (`mirrored`, (K, H, W))."""
    k = probs.shape[0]
    if score == "entropy":
        return -(probs * probs.clamp_min(1e-12).log()).sum(0) / math.log(k)
    if score == "margin":
        top = probs.topk(2, dim=0).values
        return 1.0 - (top[0] - top[1])
    if score == "mirror":
        if mirrored is None:
            raise ValueError("the mirror score needs the mirrored prediction")
        return 0.5 * (probs - mirrored).abs().sum(0)
    raise ValueError(f"score {score!r}: choose from {', '.join(SCORES)}")


def uncertainty(probs: torch.Tensor, score: str = "mirror", mirrored: torch.Tensor | None = None) -> float:
    """Return one photo's score: the mean over its pixels of `pixel_uncertainty`."""
    return float(pixel_uncertainty(probs.float(), score, None if mirrored is None else mirrored.float()).mean())


def _predict(predictor: Predictor, images: Sequence[np.ndarray], score: str) -> list[tuple[torch.Tensor, float]]:
    """Return (probabilities for the mask, score) per photo. For `mirror` the predictor runs without TTA and
    both views are predicted here; the mask then uses their mean (mirror TTA) when the run chose it."""
    plain = predictor.predict_proba_batch(images)
    if score != "mirror":
        return [(p, uncertainty(p, score)) for p in plain]
    flipped = [f.flip(-1) for f in predictor.predict_proba_batch([np.ascontiguousarray(im[:, ::-1]) for im in images])]
    tta = bool(predictor.config.tta.get("flip", False))
    return [((p + f) / 2 if tta else p, uncertainty(p, score, f)) for p, f in zip(plain, flipped)]


# ----------------------------------------------------------------------------- variety
@torch.inference_mode()
def photo_features(predictor: Predictor, images: Sequence[np.ndarray]) -> np.ndarray:
    """Return (N, C) unit vectors, one per photo: the model's deepest feature map (the output of the last
    convolution at the coarsest resolution it reaches, its encoder's last stage), averaged over the photo.
    Each photo is resized to one training window (size x size, or patch x patch under --resize scale)."""
    deepest: dict[str, torch.Tensor] = {}

    def keep(module: torch.nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.ndim == 4:
            area = output.shape[-2] * output.shape[-1]
            if "x" not in deepest or area <= deepest["x"].shape[-2] * deepest["x"].shape[-1]:
                deepest["x"] = output  # the last one at the coarsest resolution so far

    side = predictor.pre.size if predictor.pre.whole_image else predictor.pre.patch
    batch = np.stack([resize_image(im, side, side) for im in images])
    handles = [m.register_forward_hook(keep) for m in predictor.model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        predictor.forward(predictor.pre.normalise(torch.from_numpy(model_input(batch)).to(predictor.device)))
    finally:
        for h in handles:
            h.remove()
    pooled = deepest["x"].float().mean(dim=(2, 3))
    return torch.nn.functional.normalize(pooled, dim=1).cpu().numpy()


def diverse_pick(scores: Sequence[float], features: np.ndarray, k: int, pool: int = DIVERSE_POOL,
                 seed: int = 0, iterations: int = 30) -> list[int]:
    """Return the indices of k photos, most uncertain first: of the pool x k highest `scores`, cluster the
    `features` rows into k groups with k-means weighted by the score (k-means++ start), and take the member
    nearest each centre. Deterministic for the same input."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # stable: ties keep the input order
    k = min(k, len(order))
    if k <= 0:
        return []
    cand = np.array(order[: max(k, pool * k)])
    x = features[cand].astype(np.float64)
    w = np.asarray([scores[i] for i in cand], dtype=np.float64) + 1e-6
    rng = np.random.default_rng(seed)
    centres = [x[int(np.argmax(w))]]  # the start: the most uncertain photo, then k-means++ draws
    for _ in range(1, k):
        p = w * _squared_distances(x, np.asarray(centres)).min(axis=1)
        centres.append(x[int(rng.choice(len(x), p=p / p.sum()))] if p.sum() > 0 else x[len(centres)])
    c = np.asarray(centres)
    for _ in range(iterations):
        assign = _squared_distances(x, c).argmin(1)
        moved = np.array([(w[assign == j, None] * x[assign == j]).sum(0) / w[assign == j].sum()
                          if (assign == j).any() else c[j] for j in range(k)])
        if np.allclose(moved, c):
            break
        c = moved
    picked: list[int] = []
    dist = _squared_distances(x, c)
    for j in range(k):
        for i in np.argsort(dist[:, j], kind="stable"):  # the member nearest this centre not taken yet
            if int(cand[i]) not in picked:
                picked.append(int(cand[i]))
                break
    return sorted(picked, key=lambda i: (-scores[i], i))


def _squared_distances(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Return (len(x), len(centres)) squared Euclidean distances."""
    return ((x[:, None, :] - centres[None]) ** 2).sum(-1)


# ----------------------------------------------------------------------------- the stage
def suggest(run_dir: str | Path, inputs: Sequence[str], out_dir: str | Path | None = None, top: int = 10,
            score: str = "mirror", labelme: LabelmeOptions | None = None, device: str = "auto",
            batch_size: int = 4, threshold: float | None = None, force: bool = False,
            pick: str = "diverse") -> SuggestReport:
    """Return the photos ranked by the run's uncertainty (most uncertain first), after writing the ranking
    (out_dir/suggestions.csv) and labelme pre-annotations for the top `top` photos that have none in out_dir.
    With pick `diverse` those `top` photos are chosen for uncertainty and variety together (module doc) and
    lead the ranking; the rest follow by score.

    out_dir defaults to the one folder given as input, so labelme opens photos and pre-annotations together.
    Annotations already in out_dir are never replaced unless force.
    """
    labelme = (labelme or LabelmeOptions()).validate()
    problems = []
    if score not in SCORES:
        problems.append(f"--score {score!r}: choose from {', '.join(SCORES)}")
    if pick not in PICKS:
        problems.append(f"--pick {pick!r}: choose from {', '.join(PICKS)}")
    if top < 0:
        problems.append(f"--top {top}: give 0 (ranking only) or more")
    if batch_size < 1:
        problems.append(f"--batch-size {batch_size}: must be at least 1")
    if problems:
        raise CatsegError("bad suggest options", problems)
    files = expand_inputs(inputs)
    check_readable(files)
    out = _out_dir(inputs, out_dir)
    ranking_file = out / RANKING_FILE
    _check_ranking_file(ranking_file)
    predictor = Predictor.from_run(run_dir, device=device, tta=False if score == "mirror" else None)
    output_paths(files, out, ["labelme"], predictor.classes)  # refuses photos whose JSONs would share a name
    labels_txt = check_labels_file(out, predictor.classes, force, predictor.background) if top else None

    ranking, features = _rank(predictor, files, score, batch_size, threshold, variety=pick == "diverse" and top > 0)
    if features is not None:
        ranking = _diverse_first(ranking, features, out, top, force)
    chosen = _choose(ranking, out, top, force)
    report_diverse = len(chosen) if features is not None else 0
    report = SuggestReport(score, ranking, ranking_file, out, skipped=[s.path for s in ranking if s.status == "exists"],
                           diverse=report_diverse)
    out.mkdir(parents=True, exist_ok=True)
    if chosen and labels_txt is not None:
        atomic_write_bytes(out / LABELS_FILE, labels_txt.encode("utf-8"))
    for start in range(0, len(chosen), batch_size):
        part = chosen[start:start + batch_size]
        images = [read_image(s.path) for s in part]
        for s, (probs, _) in zip(part, _predict(predictor, images, score)):
            mask = predictor.labels_from_proba(probs, threshold)
            doc = labelme_document(s.path, s.annotation, mask, predictor.classes, labelme,
                                   description=f"suggested by catseg ({Path(run_dir).resolve().name}, "
                                               f"{score} {s.score:.3f}, rank {s.rank})",
                                   ignore_index=predictor.config.ignore_index, background=predictor.background)
            atomic_write_bytes(s.annotation, labelme_json_bytes(doc))
            report.written.append(s.annotation)
    atomic_write_bytes(ranking_file, _ranking_csv(ranking, predictor.classes))
    log.info("ranked %d photos; %d pre-annotations written to %s", len(ranking), len(report.written), out)
    return report


def _out_dir(inputs: Sequence[str], out_dir: str | Path | None) -> Path:
    if out_dir is not None:
        return Path(out_dir)
    if len(inputs) == 1 and Path(inputs[0]).is_dir():
        return Path(inputs[0])
    raise CatsegError("give --out: with several inputs, or files or patterns, there is no one photo folder to write "
                      "the pre-annotations beside")


def _check_ranking_file(path: Path) -> None:
    """Refuse to replace a file named like the ranking that catseg did not write (its own is replaced)."""
    if not path.exists():
        return
    try:
        with path.open(encoding="utf-8", newline="") as f:
            header = tuple(next(csv.reader(f), ()))[:3]
    except (OSError, UnicodeDecodeError):
        header = ()
    if path.is_dir() or header != _HEADER:
        raise CatsegError(f"{path}: exists and is not a ranking catseg wrote; refusing to replace it. Move it, or "
                          "choose another --out")


def _rank(predictor: Predictor, files: Sequence[Path], score: str, batch_size: int, threshold: float | None,
          variety: bool = False) -> tuple[list[Suggestion], dict[Path, np.ndarray] | None]:
    """Return the photos sorted by score (and, with variety, each photo's features for diverse_pick)."""
    found = []
    features: dict[Path, np.ndarray] = {}
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        images = [read_image(f) for f in chunk]
        for f, (probs, value) in zip(chunk, _predict(predictor, images, score)):
            mask = predictor.labels_from_proba(probs, threshold)
            counts = np.bincount(mask.reshape(-1), minlength=len(predictor.classes))[: len(predictor.classes)]
            found.append(Suggestion(f, value, {c: float(n) / mask.size for c, n in zip(predictor.classes, counts)}))
        if variety:
            features.update(zip(chunk, photo_features(predictor, images)))
        log.info("scored %d/%d", min(start + batch_size, len(files)), len(files))
    found.sort(key=lambda s: (-s.score, str(s.path)))  # ties broken by path: the same photos give the same ranking
    _number(found)
    return found, (features if variety else None)


def _number(ranking: list[Suggestion]) -> None:
    for rank, s in enumerate(ranking, start=1):
        s.rank = rank


def _diverse_first(ranking: list[Suggestion], features: dict[Path, np.ndarray], out_dir: Path, top: int,
                   force: bool) -> list[Suggestion]:
    """Return the ranking with diverse_pick's `top` photos first (of those without a JSON in out_dir, or all
    with force), then the rest by score, renumbered."""
    open_ = [s for s in ranking if force or not annotation_path(out_dir, s.path).exists()]
    picked = diverse_pick([s.score for s in open_], np.stack([features[s.path] for s in open_]), top) if open_ else []
    first = [open_[i] for i in picked]
    taken = {id(s) for s in first}
    reordered = first + [s for s in ranking if id(s) not in taken]
    _number(reordered)
    return reordered


def _choose(ranking: list[Suggestion], out_dir: Path, top: int, force: bool) -> list[Suggestion]:
    """Return the first `top` photos of the ranking that have no JSON in out_dir (any, with force)."""
    chosen: list[Suggestion] = []
    for s in ranking:
        if len(chosen) == top:
            break
        s.annotation = annotation_path(out_dir, s.path)
        if s.annotation.exists() and not force:
            s.status = "exists"
            continue
        s.status = "written"
        chosen.append(s)
    for s in ranking:  # photos below the cut that were annotated before
        if not s.status and annotation_path(out_dir, s.path).exists():
            s.annotation, s.status = annotation_path(out_dir, s.path), "exists"
    return chosen


def _ranking_csv(ranking: Sequence[Suggestion], classes: Sequence[str]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*_HEADER, *(f"share_{c}" for c in classes), "annotation", "annotation_status"])
    for s in ranking:
        writer.writerow([str(s.path), s.rank, f"{s.score:.6f}", *(f"{s.shares[c]:.4f}" for c in classes),
                         "" if s.annotation is None else str(s.annotation), s.status])
    return buf.getvalue().encode("utf-8")
