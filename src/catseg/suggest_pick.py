"""Which photos `catseg suggest` pre-annotates: uncertain ones of different kinds, or typical ones of unlabelled kinds.

- `diverse_pick`: Zhdanov, "Diverse mini-batch Active Learning" (2019): the pool x N most uncertain photos
  are clustered into N groups with k-means weighted by the score, and the photo nearest each centre is taken.
- `typical_pick`: Hacohen, Dekel and Weinshall, "Active Learning on a Budget" (ICML 2022, TypiClust): with
  few labels, the photos worth labelling are the typical ones of the kinds the labelled photos do not cover
  yet; uncertain photos are then often outliers. The unlabelled and the already labelled photos are clustered
  together into (labelled + N) groups; N times, the group with the fewest labelled photos (the largest among
  those) gives its most typical unlabelled photo (the highest inverse mean distance to its nearest
  neighbours), which then counts as labelled.

Both work on `photo_features`: what the model sees in a photo, one unit vector each.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from catseg.predict import Predictor
from catseg.preprocess import model_input, resize_image

DIVERSE_POOL = 10  # diverse: cluster the POOL x N most uncertain photos (Zhdanov 2019's beta)
TYPICAL_NEIGHBOURS = 20  # typical: typicality from the mean distance to this many nearest neighbours (TypiClust's)
_CHUNK = 1024  # rows of a distance matrix computed at once: bounded memory for large photo folders


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


def kmeans(x: np.ndarray, k: int, weights: np.ndarray | None = None, seed: int = 0, iterations: int = 30) -> np.ndarray:
    """Return (k, C) centres of the rows of x by k-means weighted by `weights` (k-means++ start from the
    heaviest row, the first of equals). Deterministic for the same input."""
    w = np.ones(len(x)) if weights is None else np.asarray(weights, dtype=np.float64) + 1e-6
    rng = np.random.default_rng(seed)
    centres = [x[int(np.argmax(w))]]
    for _ in range(1, k):
        p = w * squared_distances(x, np.asarray(centres)).min(axis=1)
        centres.append(x[int(rng.choice(len(x), p=p / p.sum()))] if p.sum() > 0 else x[len(centres)])
    c = np.asarray(centres)
    for _ in range(iterations):
        assign = squared_distances(x, c).argmin(1)
        moved = np.array([(w[assign == j, None] * x[assign == j]).sum(0) / w[assign == j].sum()
                          if (assign == j).any() else c[j] for j in range(k)])
        if np.allclose(moved, c):
            break
        c = moved
    return c


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
    c = kmeans(x, k, np.asarray([scores[i] for i in cand]), seed, iterations)
    picked: list[int] = []
    dist = squared_distances(x, c)
    for j in range(k):
        for i in np.argsort(dist[:, j], kind="stable"):  # the member nearest this centre not taken yet
            if int(cand[i]) not in picked:
                picked.append(int(cand[i]))
                break
    return sorted(picked, key=lambda i: (-scores[i], i))


def typical_pick(features: np.ndarray, labelled: np.ndarray, k: int, seed: int = 0,
                 neighbours: int = TYPICAL_NEIGHBOURS) -> list[int]:
    """Return the indices of k rows of `features` (unlabelled photos), in the order picked: cluster them with
    the `labelled` rows (photos already labelled, possibly none) into len(labelled) + k groups; k times, of
    the groups with unlabelled photos left, the one with the fewest labelled members (ties: the most members)
    gives its most typical unlabelled photo (within the group, as TypiClust), which then counts as labelled.
    Deterministic for the same input."""
    n = len(features)
    k = min(k, n)
    if k <= 0:
        return []
    x = np.concatenate([features, labelled]).astype(np.float64) if len(labelled) else features.astype(np.float64)
    groups = min(len(x), len(labelled) + k)
    assign = squared_distances(x, kmeans(x, groups, seed=seed)).argmin(1)
    sizes = np.bincount(assign, minlength=groups)
    covered = np.bincount(assign[n:], minlength=groups)
    typical: dict[int, dict[int, float]] = {}  # group -> {unlabelled row: typicality within the group}
    picked: list[int] = []
    for _ in range(k):
        taken = set(picked)
        open_groups = {int(assign[i]) for i in range(n) if i not in taken}
        group = min(open_groups, key=lambda g: (covered[g], -sizes[g], g))
        if group not in typical:
            members = np.flatnonzero(assign == group)
            values = _typicality(x[members], min(neighbours, len(members) - 1))
            typical[group] = {int(i): float(v) for i, v in zip(members, values) if i < n}
        best = max((i for i in typical[group] if i not in taken), key=lambda i: (typical[group][i], -i))
        picked.append(best)
        covered[group] += 1
    return picked


def _typicality(x: np.ndarray, neighbours: int) -> np.ndarray:
    """Return each row's inverse mean Euclidean distance to its `neighbours` nearest other rows (inf: none)."""
    if neighbours <= 0:
        return np.ones(len(x))
    out = np.empty(len(x))
    for start in range(0, len(x), _CHUNK):
        d = squared_distances(x[start:start + _CHUNK], x)
        d[np.arange(len(d)), np.arange(start, start + len(d))] = np.inf  # not its own neighbour
        near = np.partition(d, neighbours - 1, axis=1)[:, :neighbours]
        out[start:start + len(d)] = 1.0 / (np.sqrt(np.maximum(near, 0)).mean(1) + 1e-12)
    return out


def squared_distances(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Return (len(x), len(centres)) squared Euclidean distances (|a|^2 + |b|^2 - 2ab: no (N, K, C) array)."""
    d = (x * x).sum(1)[:, None] + (centres * centres).sum(1)[None] - 2.0 * x @ centres.T
    return np.maximum(d, 0.0)
