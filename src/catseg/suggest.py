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
- `typical`: after Hacohen et al., "Active Learning on a Budget" (2022, TypiClust): with few labels the
  photos worth a person's time are typical ones of kinds the labelled photos do not cover yet. The photos
  and the run's own training and validation photos (from its dataset folder) are clustered together into
  (labelled + N) groups; the groups with the fewest labelled photos, largest first, each give their most
  typical photo (closest on average to its 20 nearest neighbours). The score does not enter the pick.

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
from catseg.data import DATASET_JSON, read_dataset
from catseg.errors import CatsegError
from catseg.files import atomic_write_bytes
from catseg.images import read_image
from catseg.photo_files import check_readable, expand_inputs, output_paths
from catseg.predict import Predictor
from catseg.run import read_splits
from catseg.suggest_pick import diverse_pick, photo_features, typical_pick

log = logging.getLogger(__name__)

SCORES = ("mirror", "entropy", "margin")  # the first is the default
PICKS = ("diverse", "uncertain", "typical")  # the first is the default
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
    diverse: int = 0  # how many photos lead the ranking as the pick chose them (0: sorted by score alone)
    pick: str = "diverse"
    labelled: int = 0  # --pick typical: the run's labelled photos it clustered with

    def summary(self, show: int = 10) -> str:
        """Return the text the CLI prints: the head of the ranking and where everything went."""
        lines = [f"ranked {len(self.ranking)} photos by {self.score} (0 = sure, 1 = unsure)"]
        if self.diverse and self.pick == "typical":
            lines.append(f"the first {self.diverse}: typical photos of the kinds least covered by the run's "
                         f"{self.labelled} labelled photos (--pick typical), then the rest by score")
        elif self.diverse:
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

    ranking, features = _rank(predictor, files, score, batch_size, threshold, variety=pick != "uncertain" and top > 0)
    labelled = _labelled_features(predictor, run_dir, files, batch_size) if features is not None and \
        pick == "typical" else None
    if features is not None:
        ranking = _picked_first(ranking, features, out, top, force, labelled)
    chosen = _choose(ranking, out, top, force)
    report_diverse = len(chosen) if features is not None else 0
    report = SuggestReport(score, ranking, ranking_file, out, skipped=[s.path for s in ranking if s.status == "exists"],
                           diverse=report_diverse, pick=pick, labelled=0 if labelled is None else len(labelled))
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


def _labelled_features(predictor: Predictor, run_dir: str | Path, photos: Sequence[Path],
                       batch_size: int) -> np.ndarray:
    """Return the features of the photos the run trained and validated on (its splits.json in its dataset),
    leaving out any that are among `photos`; none (with a warning) when the dataset is no longer there."""
    stems = [stem for part in read_splits(run_dir).values() for stem in part]
    dataset = Path(predictor.config.dataset) if predictor.config.dataset else None
    if not stems or dataset is None or not (dataset / DATASET_JSON).is_file():
        log.warning("--pick typical: the run's dataset (%s) is not there, so the photos it was trained on are "
                    "unknown; picking typical photos of every kind", dataset or "not recorded")
        return np.zeros((0, 1), dtype=np.float32)
    index = read_dataset(dataset).image_index()
    skip = {p.resolve() for p in photos}
    paths = [index[s] for s in stems if s in index and index[s].resolve() not in skip]
    found = [photo_features(predictor, [read_image(p) for p in paths[i:i + batch_size]])
             for i in range(0, len(paths), batch_size)]
    return np.concatenate(found) if found else np.zeros((0, 1), dtype=np.float32)


def _picked_first(ranking: list[Suggestion], features: dict[Path, np.ndarray], out_dir: Path, top: int,
                  force: bool, labelled: np.ndarray | None) -> list[Suggestion]:
    """Return the ranking with the pick's `top` photos first (of those without a JSON in out_dir, or all
    with force): diverse_pick's, or typical_pick's given the `labelled` photos' features; then the rest by
    score, renumbered."""
    open_ = [s for s in ranking if force or not annotation_path(out_dir, s.path).exists()]
    own = np.stack([features[s.path] for s in open_]) if open_ else None
    if own is None:
        picked = []
    elif labelled is None:
        picked = diverse_pick([s.score for s in open_], own, top)
    else:
        picked = typical_pick(own, labelled if len(labelled) else own[:0], top)
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
