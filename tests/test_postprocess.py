from __future__ import annotations

import numpy as np

from catseg.postprocess import (
    Postprocess,
    choose_postprocess,
    fill_holes,
    remove_small_components,
)


def _blob() -> np.ndarray:
    mask = np.zeros((40, 40), np.uint8)
    mask[5:25, 5:25] = 1
    return mask


def test_small_specks_are_dropped_big_objects_kept() -> None:
    mask = _blob()
    mask[35, 35] = 1  # one-pixel speck
    mask[30:32, 2:4] = 2  # a 4-pixel speck of another class
    out = remove_small_components(mask, 0.01)  # 16 pixels of 1600
    assert out[35, 35] == 0 and (out[30:32, 2:4] == 0).all()
    assert (out[5:25, 5:25] == 1).all()
    assert mask[35, 35] == 1  # the input is not modified


def test_holes_enclosed_by_one_class_are_filled_border_regions_are_not() -> None:
    mask = _blob()
    mask[10:15, 10:15] = 0  # a hole inside the blob
    mask[0:3, 30:40] = 1
    mask[0:2, 33:36] = 0  # background touching the border, next to class 1: not a hole
    out = fill_holes(mask)
    assert (out[10:15, 10:15] == 1).all()
    assert (out[0:2, 33:36] == 0).all()
    two = _blob()
    two[10:15, 10:15] = 0
    two[10:15, 12] = 2  # the hole touches class 2 as well: ambiguous, left alone
    assert (fill_holes(two)[10:15, 10:11] == 0).all()


def test_choice_keeps_clean_up_only_when_it_helps() -> None:
    truth = [_blob() for _ in range(3)]
    clean = [t.copy() for t in truth]
    chosen, scores = choose_postprocess(clean, truth, 2, 255)
    assert chosen == Postprocess() and not chosen.active and scores["none"] == 1.0
    noisy = []
    for t in truth:
        p = t.copy()
        p[30:32, 30:32] = 1
        p[12:14, 12:14] = 0
        noisy.append(p)
    chosen, scores = choose_postprocess(noisy, truth, 2, 255)
    assert chosen.active and chosen(noisy[0]).tolist() == truth[0].tolist()
    assert max(scores.values()) == 1.0 > scores["none"]


def test_round_trip_through_json() -> None:
    p = Postprocess(0.002, True)
    assert Postprocess.from_json(p.to_json()) == p
    assert Postprocess.from_json(None) == Postprocess() == Postprocess.from_json({})


def _fill_holes_one_region_at_a_time(mask: np.ndarray) -> np.ndarray:
    """The plain definition, region by region (slow: one pass over the image per region)."""
    import cv2

    out = mask.copy()
    count, labels = cv2.connectedComponents((mask == 0).astype(np.uint8), connectivity=4)
    border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])).tolist())
    for region in range(1, count):
        if region in border:
            continue
        inside = labels == region
        ring = cv2.dilate(inside.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~inside
        neighbours = np.unique(mask[ring])
        if len(neighbours) == 1 and neighbours[0] != 0:
            out[inside] = neighbours[0]
    return out


def test_fill_holes_matches_the_region_by_region_definition() -> None:
    rng = np.random.default_rng(0)
    for trial in range(200):
        h, w = (int(v) for v in rng.integers(5, 40, 2))
        classes = int(rng.integers(2, 5))
        mask = (rng.random((h, w)) < rng.uniform(0.2, 0.8)) * rng.integers(1, classes, (h, w))
        mask = mask.astype(np.uint8)
        if trial % 3 == 0:  # larger blobs, so that real holes occur
            mask = np.kron(mask, np.ones((3, 3), np.uint8))
        assert np.array_equal(fill_holes(mask), _fill_holes_one_region_at_a_time(mask)), trial
