"""Tests for catseg.metrics: hand-computed confusions, NaN rules, ignore handling, reductions,
calibration and the threshold search."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from catseg.calibration import CalibrationAccumulator, ThresholdSearch
from catseg.metrics import MetricAccumulator, confusion_matrix, scores

# 3 classes, one ignored pixel (255) whose prediction must not count.
TARGET = np.array([[0, 0, 1, 1],
                   [2, 2, 1, 255]])
PRED = np.array([[0, 1, 1, 1],
                 [2, 0, 2, 0]])
# rows = truth, cols = prediction
EXPECTED_CM = np.array([[1, 1, 0],
                        [0, 2, 1],
                        [1, 0, 1]])


def test_confusion_matrix_hand_computed() -> None:
    cm = confusion_matrix(PRED, TARGET, num_classes=3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, EXPECTED_CM)


def test_confusion_matrix_torch_and_numpy_agree() -> None:
    rng = np.random.default_rng(0)
    target = rng.integers(0, 4, size=(3, 17, 23))
    target[rng.random(target.shape) < 0.1] = 255
    pred = rng.integers(0, 4, size=(3, 17, 23))
    from_numpy = confusion_matrix(pred, target, 4)
    from_torch = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target).to(torch.uint8), 4)
    mixed = confusion_matrix(torch.from_numpy(pred), target, 4)
    np.testing.assert_array_equal(from_numpy, from_torch)
    np.testing.assert_array_equal(from_numpy, mixed)
    assert from_numpy.sum() == (target != 255).sum()
    # and a loop-free brute force over pixels
    brute = np.zeros((4, 4), dtype=np.int64)
    keep = target != 255
    np.add.at(brute, (target[keep], pred[keep]), 1)
    np.testing.assert_array_equal(from_numpy, brute)


def test_confusion_matrix_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="outside the class ids"):
        confusion_matrix(np.array([[0, 1]]), np.array([[0, 3]]), num_classes=3)
    with pytest.raises(ValueError, match="prediction"):
        confusion_matrix(np.array([[0, 5]]), np.array([[0, 1]]), num_classes=3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int), num_classes=3)


def test_scores_hand_computed() -> None:
    s = scores(EXPECTED_CM, ["bg", "cat", "dog"])
    # class 0: TP 1, FP 1 (dog->bg), FN 1 ; class 1: TP 2, FP 1, FN 1 ; class 2: TP 1, FP 1, FN 1
    np.testing.assert_allclose(s["iou"], [1 / 3, 2 / 4, 1 / 3])
    np.testing.assert_allclose(s["dice"], [2 / 4, 4 / 6, 2 / 4])
    np.testing.assert_allclose(s["precision"], [1 / 2, 2 / 3, 1 / 2])
    np.testing.assert_allclose(s["recall"], [1 / 2, 2 / 3, 1 / 2])
    assert s["miou"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 3) / 3)
    assert s["mdice"] == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3)
    assert s["pixel_accuracy"] == pytest.approx(4 / 7)
    assert s["classes"] == ["bg", "cat", "dog"]


def test_perfect_prediction_scores_one() -> None:
    target = np.array([[0, 1], [1, 255]])
    s = scores(confusion_matrix(np.array([[0, 1], [1, 0]]), target, 2))
    np.testing.assert_array_equal(s["iou"], [1.0, 1.0])
    assert s["miou"] == 1.0 and s["mdice"] == 1.0 and s["pixel_accuracy"] == 1.0


def test_absent_class_is_nan_and_left_out_of_the_mean() -> None:
    cm = np.array([[3, 1, 0],
                   [0, 4, 0],
                   [0, 0, 0]])  # class 2 in neither truth nor prediction
    s = scores(cm)
    assert math.isnan(s["iou"][2]) and math.isnan(s["dice"][2])
    assert s["miou"] == pytest.approx((3 / 4 + 4 / 5) / 2)
    # predicted but absent from truth: a real 0, not NaN
    s2 = scores(np.array([[3, 1], [0, 0]]))
    assert s2["iou"][1] == 0.0 and s2["miou"] == pytest.approx((3 / 4 + 0) / 2)


def test_all_nan_gives_nan_without_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = scores(np.zeros((2, 2), dtype=np.int64))
        acc = MetricAccumulator(2)
        acc.update(np.zeros((2, 2), int), np.full((2, 2), 255))
        assert acc.summary()["per_image"]["miou"] is None
    assert math.isnan(s["miou"]) and math.isnan(s["pixel_accuracy"])


def test_ignored_pixels_change_nothing() -> None:
    rng = np.random.default_rng(1)
    target = rng.integers(0, 3, size=(2, 16, 16))
    target[:, :4] = 255
    pred = rng.integers(0, 3, size=target.shape)
    other = pred.copy()
    other[target == 255] = (other[target == 255] + 1) % 3
    assert (other != pred).any()
    acc_a, acc_b = MetricAccumulator(3), MetricAccumulator(3)
    acc_a.update_batch(pred, target)
    acc_b.update_batch(other, target)
    assert acc_a.summary() == acc_b.summary()
    assert acc_a.confusion.sum() == (target != 255).sum()


def test_dataset_and_per_image_reductions_differ() -> None:
    # Image A: 8 fg pixels, 6 found (plus 0 false positives) -> fg IoU 6/8; bg 8/10.
    # Image B: 1 fg pixel, missed; one false positive -> fg IoU 0/2; bg 14/16.
    a_t = np.zeros((4, 4), int); a_t[:2] = 1
    a_p = a_t.copy(); a_p[1, :2] = 0
    b_t = np.zeros((4, 4), int); b_t[0, 0] = 1
    b_p = np.zeros((4, 4), int); b_p[3, 3] = 1
    acc = MetricAccumulator(2, ["bg", "fg"])
    acc.update(a_p, a_t, name="a")
    acc.update(torch.from_numpy(b_p), torch.from_numpy(b_t), name="b")
    s = acc.summary()
    # dataset-wide: fg TP 6, FP 1, FN 3 -> 6/10; bg TP 22, FP 3, FN 1 -> 22/26
    assert s["dataset"]["per_class"]["fg"]["iou"] == pytest.approx(6 / 10)
    assert s["dataset"]["per_class"]["bg"]["iou"] == pytest.approx(22 / 26)
    assert s["dataset"]["miou"] == pytest.approx((6 / 10 + 22 / 26) / 2)
    # per-image: fg mean(6/8, 0) ; bg mean(8/10, 14/16)
    assert s["per_image"]["per_class"]["fg"]["iou"] == pytest.approx((6 / 8 + 0) / 2)
    assert s["per_image"]["per_class"]["bg"]["iou"] == pytest.approx((8 / 10 + 14 / 16) / 2)
    assert s["per_image"]["miou"] == pytest.approx(((6 / 8 + 8 / 10) / 2 + (0 + 14 / 16) / 2) / 2)
    assert s["per_image"]["per_class"]["fg"]["dice"] == pytest.approx((12 / 14 + 0) / 2)
    assert s["per_image"]["pixel_accuracy"] == pytest.approx((14 / 16 + 14 / 16) / 2)
    assert s["num_images"] == 2
    rows = acc.per_image_rows()
    assert [r["image"] for r in rows] == ["a", "b"]
    assert rows[1]["iou_fg"] == 0.0 and rows[0]["iou_fg"] == pytest.approx(6 / 8)


def test_per_image_skips_classes_absent_from_an_image() -> None:
    acc = MetricAccumulator(3, ["bg", "cat", "dog"])
    t1 = np.array([[0, 1], [1, 1]]); p1 = t1.copy()  # no dog: dog NaN in this image
    t2 = np.array([[0, 2], [2, 2]]); p2 = np.array([[0, 2], [2, 0]])  # no cat
    acc.update(p1, t1)
    acc.update(p2, t2)
    s = acc.summary()
    assert s["per_image"]["per_class"]["cat"]["iou"] == pytest.approx(1.0)  # not (1 + 0)/2 or (1 + 1)/2 by accident
    assert s["per_image"]["per_class"]["dog"]["iou"] == pytest.approx(2 / 3)
    assert s["per_image"]["per_class"]["bg"]["iou"] == pytest.approx((1 + 1 / 2) / 2)
    rows = acc.per_image_rows()
    assert rows[0]["iou_dog"] is None and rows[0]["image"] == "0"


def test_summary_shape_is_json_safe_with_none_for_nan() -> None:
    acc = MetricAccumulator(3, ["bg", "cat", "dog"])
    acc.update(np.array([[0, 1]]), np.array([[0, 1]]))
    acc.update(np.array([[1, 1]]), np.array([[255, 255]]))  # fully ignored image: all NaN, skipped
    s = acc.summary()
    text = json.dumps(s, allow_nan=False)  # raises on NaN
    assert json.loads(text) == s
    assert set(s) == {"num_images", "classes", "dataset", "per_image", "confusion_matrix", "top_confusions"}
    for part in ("dataset", "per_image"):
        assert set(s[part]) == {"miou", "mdice", "pixel_accuracy", "per_class"}
        assert set(s[part]["per_class"]) == {"bg", "cat", "dog"}
        assert s[part]["miou"] == 1.0
    assert s["per_image"]["per_class"]["dog"] == {"iou": None, "dice": None}
    assert s["dataset"]["per_class"]["dog"] == {"iou": None, "dice": None, "precision": None, "recall": None}
    assert s["top_confusions"] == []  # every counted pixel was right
    assert s["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]
    assert s["num_images"] == 2


def test_update_batch_equals_separate_updates() -> None:
    rng = np.random.default_rng(2)
    t = torch.from_numpy(rng.integers(0, 3, size=(4, 8, 8)))
    p = torch.from_numpy(rng.integers(0, 3, size=(4, 8, 8)))
    one, batch = MetricAccumulator(3), MetricAccumulator(3)
    for i in range(4):
        one.update(p[i], t[i])
    batch.update_batch(p, t)
    assert one.summary() == batch.summary()
    assert one.per_image_rows() == batch.per_image_rows()
    with pytest.raises(ValueError, match="update_batch"):
        one.update(p, t)


def test_accumulator_rejects_wrong_class_names() -> None:
    with pytest.raises(ValueError, match="one name per class"):
        MetricAccumulator(3, ["a", "b"])
    with pytest.raises(ValueError, match="repeat"):
        MetricAccumulator(2, ["a", "a"])


def test_ece_zero_for_calibrated_data() -> None:
    # For each confidence c (one per bin), exactly a fraction c of the pixels is right.
    n = 1000
    probs, target = [], []
    for c in (0.55, 0.65, 0.75, 0.85, 0.95):
        right = round(c * n)
        probs.append(torch.tensor([c, 1 - c]).view(2, 1).expand(2, n))
        target.append(torch.cat([torch.zeros(right), torch.ones(n - right)]).long())
    p = torch.cat(probs, dim=1).view(2, 5, n)
    t = torch.cat(target).view(5, n)
    cal = CalibrationAccumulator(n_bins=10)
    cal.update(p, t)
    assert cal.ece() == pytest.approx(0.0, abs=1e-6)
    bins = cal.bins()
    assert sum(bins["count"]) == 5 * n and bins["accuracy"][9] == pytest.approx(0.95)


def test_ece_one_for_confident_wrong_and_ignores_255() -> None:
    p = torch.zeros(2, 3, 4, 4)
    p[:, 0] = 1.0  # always sure of class 0 ...
    t = torch.ones(2, 4, 4, dtype=torch.long)  # ... which is always wrong
    t[:, 0] = 255
    cal = CalibrationAccumulator()
    cal.update(p, t)
    assert cal.ece() == pytest.approx(1.0)
    assert sum(cal.bins()["count"]) == 2 * 12
    # ignored pixels that happen to be right do not pull the error down
    t2 = torch.full((4, 4), 255, dtype=torch.long)
    cal.update(p[0], t2)
    assert cal.ece() == pytest.approx(1.0)


def test_ece_hand_computed_mixture() -> None:
    # bin 0.9: conf 0.9, 2 of 2 right (gap 0.1); bin 0.6: conf 0.6, 0 of 2 right (gap 0.6)
    p = torch.tensor([[0.9, 0.9, 0.6, 0.6], [0.1, 0.1, 0.4, 0.4]]).view(2, 1, 4)
    t = torch.tensor([[0, 0, 1, 1]])
    cal = CalibrationAccumulator(n_bins=10)
    cal.update(p, t)
    assert cal.ece() == pytest.approx(0.5 * 0.1 + 0.5 * 0.6)
    assert math.isnan(CalibrationAccumulator().ece())


def _brute_iou(prob: torch.Tensor, target: torch.Tensor, t: float) -> float:
    keep = target != 255
    pred = (prob >= t) & keep
    truth = (target == 1) & keep
    inter = (pred & truth).sum().item()
    union = (pred | truth).sum().item()
    return inter / union if union else math.nan


def test_threshold_search_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    target = (torch.rand(3, 20, 20, generator=g) < 0.3).long()
    target[torch.rand(3, 20, 20, generator=g) < 0.1] = 255
    # informative but noisy probabilities, with some on grid points exactly
    prob = (0.35 * (target == 1).float() + 0.65 * torch.rand(3, 20, 20, generator=g)).clamp(0, 1)
    prob[0, 0, :5] = torch.tensor([0.0, 0.01, 0.5, 0.99, 1.0])
    ts = ThresholdSearch()
    ts.update(prob[:2], target[:2])
    ts.update(torch.stack([1 - prob[2], prob[2]]), target[2])  # (2, H, W) softmax form
    assert len(ts.thresholds) == 99 and ts.thresholds[0] == 0.01 and ts.thresholds[-1] == 0.99
    brute = [_brute_iou(prob, target, t) for t in ts.thresholds]
    for t, b in zip(ts.thresholds, brute):
        assert ts.iou_at(t) == pytest.approx(b, abs=1e-12)
    best_t, best_iou = ts.best()
    assert best_iou == pytest.approx(max(brute))
    assert _brute_iou(prob, target, best_t) == pytest.approx(best_iou)
    assert 0.2 < best_t < 0.6


def test_threshold_search_edge_cases() -> None:
    ts = ThresholdSearch()
    assert ts.best()[0] == 0.5 and math.isnan(ts.best()[1])
    with pytest.raises(ValueError, match="not on the grid"):
        ts.iou_at(0.505)
    with pytest.raises(ValueError, match="truth 0, 1"):
        ts.update(torch.rand(4, 4), torch.full((4, 4), 2))
    with pytest.raises(ValueError, match="two classes"):
        ts.update(torch.rand(3, 4, 4), torch.zeros(4, 4, dtype=torch.long))
    # a perfectly separable case: every threshold in (0.2, 0.8] is perfect; the tie goes to 0.5
    ts.update(torch.tensor([[0.2, 0.8]]), torch.tensor([[0, 1]]))
    assert ts.best() == (0.5, 1.0)


def test_accumulators_work_across_inference_mode() -> None:
    target = torch.tensor([[0, 1], [1, 255]])
    probs = torch.stack([1 - target.clamp(max=1) * 0.8 - 0.1, target.clamp(max=1) * 0.8 + 0.1])
    with torch.inference_mode():
        ts, cal, acc = ThresholdSearch(), CalibrationAccumulator(), MetricAccumulator(2)
        ts.update(probs, target)
        cal.update(probs, target)
        acc.update(probs.argmax(0), target)
    ts.update(probs, target)  # outside, on state made inside
    cal.update(probs, target)
    acc.update(probs.argmax(0), target)
    assert ts.best() == (0.5, 1.0)
    assert cal.ece() == pytest.approx(0.1)
    assert acc.summary()["dataset"]["miou"] == 1.0
