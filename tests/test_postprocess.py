from __future__ import annotations

import numpy as np

from catseg.postprocess import Postprocess, choose_postprocess, fill_holes, remove_small_components


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
