"""Object-level recall by size, the largest confusions, and the evaluate table, on masks with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from catseg.evaluate import format_summary
from catseg.metrics import MetricAccumulator, top_confusions
from catseg.objects import ObjectRecall, format_object_recall, size_bucket

STREET = ["sky", "road", "pole", "person"]  # no background: sky makes objects too


def _street() -> tuple[np.ndarray, np.ndarray]:
    """Truth: sky above road (both large), three poles and three people of known sizes; a prediction
    that finds some of them."""
    truth = np.zeros((200, 300), np.uint8)
    truth[100:] = 1
    truth[20:120, 10:14] = 2  # pole: 400 px, small, found
    truth[20:120, 40:42] = 2  # pole: 200 px, small, 40% predicted: missed
    truth[110:150, 250:300] = 2  # pole: 2000 px, medium, found
    truth[150:155, 100:105] = 3  # person: 25 px, small, missed (predicted as road)
    truth[150:160, 150:160] = 3  # person: 100 px, small, exactly half found: counts as found
    truth[100:200, 180:240] = 3  # person: 6000 px, medium, found
    truth[0:5, 295:300] = 255  # ignored pixels are no object
    pred = truth.copy()
    pred[pred == 255] = 0
    pred[20:80, 40:42] = 0  # 120 of 200 pole pixels lost
    pred[150:155, 100:105] = 1
    pred[150:155, 150:160] = 1  # 50 of 100 lost
    return truth, pred


def test_size_buckets_follow_coco() -> None:
    assert [size_bucket(a) for a in (1, 1023, 1024, 9215, 9216, 10**6)] == [0, 0, 1, 1, 2, 2]


def test_objects_are_counted_and_found_per_class_and_size() -> None:
    truth, pred = _street()
    recall = ObjectRecall(STREET, background=None)
    recall.update(pred, truth)
    doc = recall.summary()
    assert doc["per_class"]["pole"]["small"] == {"objects": 2, "found": 1, "recall": 0.5}
    assert doc["per_class"]["pole"]["medium"] == {"objects": 1, "found": 1, "recall": 1.0}
    assert doc["per_class"]["person"]["small"] == {"objects": 2, "found": 1, "recall": 0.5}
    assert doc["per_class"]["person"]["medium"]["found"] == 1
    assert doc["per_class"]["sky"]["large"] == {"objects": 1, "found": 1, "recall": 1.0}  # a real class here
    assert doc["per_class"]["pole"]["large"] == {"objects": 0, "found": 0, "recall": None}
    assert doc["all"]["small"] == {"objects": 4, "found": 2, "recall": 0.5}
    table = "\n".join(format_object_recall(doc))
    assert "1/2 50%" in table and "all classes" in table


def test_background_makes_no_objects_and_accumulates_over_images() -> None:
    truth, pred = _street()
    recall = ObjectRecall(["background", *STREET[1:]], background=0)
    recall.update(pred, truth)
    recall.update(truth.clip(0, 3), truth)  # a perfect second image
    doc = recall.summary()
    assert "background" not in doc["per_class"]
    assert doc["per_class"]["pole"]["small"] == {"objects": 4, "found": 3, "recall": 0.75}
    with pytest.raises(ValueError, match="differ in shape"):
        recall.update(pred[:10], truth)


def test_top_confusions_rank_by_the_share_of_the_true_class() -> None:
    cm = np.array([[1000, 50, 0],   # sky: 5% taken for road
                   [10, 900, 90],   # road: 9% taken for pole
                   [0, 30, 70]])    # pole: 30% taken for road (fewer pixels, the largest share)
    top = top_confusions(cm, ["sky", "road", "pole"], count=3)
    assert [(c["truth"], c["predicted"]) for c in top] == [("pole", "road"), ("road", "pole"), ("sky", "road")]
    assert top[0]["pixels"] == 30 and top[0]["share"] == pytest.approx(0.3)
    assert top_confusions(np.diag([5, 5]), ["a", "b"]) == []  # no mistakes: nothing to list


def test_printed_table_sorts_classes_worst_first_and_shows_confusions_and_objects() -> None:
    truth, pred = _street()
    acc = MetricAccumulator(4, STREET)
    acc.update(pred, truth)
    summary = acc.summary()
    recall = ObjectRecall(STREET, None)
    recall.update(pred, truth)
    summary.update({"split": "val", "dataset_dir": "ds", "out_dir": "out", "objects": recall.summary()})
    text = format_summary(summary)
    rows = [line.split()[0] for line in text.splitlines()[2:6]]
    ious = [summary["dataset"]["per_class"][n]["iou"] for n in rows]
    assert ious == sorted(ious) and set(rows) == set(STREET)
    assert "pole as sky" in text and "objects found" in text
    # the class mean leaves ignored pixels out: every class scored, the mean over the four
    assert summary["dataset"]["miou"] == pytest.approx(np.mean(ious))
    assert summary["dataset"]["per_class"]["pole"]["recall"] == pytest.approx((2600 - 120) / 2600)
