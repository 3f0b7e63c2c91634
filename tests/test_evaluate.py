from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from catseg.errors import CatsegError
from catseg.evaluate import evaluate, format_summary
from catseg.predict import Predictor


def test_evaluate_defaults_to_the_runs_validation_images(tiny_run: Path, tmp_path: Path) -> None:
    config = json.loads((tiny_run / "config.json").read_text())
    summary = evaluate(tiny_run, config["dataset"], out_dir=tmp_path / "ev", device="cpu")
    assert summary["split"] == "val" and summary["num_images"] == 2
    on_disk = json.loads((tmp_path / "ev" / "summary.json").read_text())
    for reduction in ("dataset", "per_image"):
        assert set(on_disk[reduction]["per_class"]) == {"background", "square"}
        for name in ("background", "square"):
            assert set(on_disk[reduction]["per_class"][name]) >= {"iou", "dice"}
        assert "miou" in on_disk[reduction]
    assert len(on_disk["confusion_matrix"]) == 2
    assert (tmp_path / "ev" / "per_image.csv").read_text().count("\n") == 3
    assert "background" in format_summary(summary)


def test_scores_match_a_hand_computation(tiny_run: Path, tmp_path: Path) -> None:
    from catseg.data import read_dataset
    from catseg.images import read_image, read_mask

    config = json.loads((tiny_run / "config.json").read_text())
    info = read_dataset(config["dataset"])
    predictor = Predictor.from_run(tiny_run, device="cpu")
    summary = evaluate(tiny_run, config["dataset"], split="all" if False else None, out_dir=tmp_path / "e",
                       device="cpu", predictor=predictor)
    val = json.loads((tiny_run / "splits.json").read_text())["val"]
    tp = fp = fn = 0
    for stem in val:
        pred = predictor.predict(read_image(info.image_path(stem)))
        truth = read_mask(info.mask_path(stem))
        keep = truth != 255
        tp += int(((pred == 1) & (truth == 1) & keep).sum())
        fp += int(((pred == 1) & (truth == 0) & keep).sum())
        fn += int(((pred == 0) & (truth == 1) & keep).sum())
    expected = tp / (tp + fp + fn) if tp + fp + fn else math.nan
    got = summary["dataset"]["per_class"]["square"]["iou"]
    assert (got is None and math.isnan(expected)) or got == pytest.approx(expected)


def test_named_split_threshold_and_refusals(tiny_run: Path, tmp_path: Path) -> None:
    config = json.loads((tiny_run / "config.json").read_text())
    loose = evaluate(tiny_run, config["dataset"], split="train", out_dir=tmp_path / "a", threshold=0.001, device="cpu")
    strict = evaluate(tiny_run, config["dataset"], split="train", out_dir=tmp_path / "b", threshold=0.999, device="cpu")
    assert loose["num_images"] == 8 and loose["threshold"] == 0.001
    cm_loose, cm_strict = np.array(loose["confusion_matrix"]), np.array(strict["confusion_matrix"])
    assert cm_loose[:, 1].sum() >= cm_strict[:, 1].sum()
    with pytest.raises(CatsegError, match="already exists"):
        evaluate(tiny_run, config["dataset"], split="train", out_dir=tmp_path / "a", device="cpu")
    with pytest.raises(CatsegError, match="not a split"):
        evaluate(tiny_run, config["dataset"], split="holdout", out_dir=tmp_path / "c", device="cpu")


def test_other_classes_are_refused(tiny_run: Path, tmp_path: Path) -> None:
    from conftest import make_tiny_dataset

    other = make_tiny_dataset(tmp_path / "three", classes=("background", "square", "disc"))
    with pytest.raises(CatsegError, match="differ from the run"):
        evaluate(tiny_run, other, out_dir=tmp_path / "e", device="cpu")


def test_evaluate_records_tta(tiny_run: Path, tmp_path: Path) -> None:
    config = json.loads((tiny_run / "config.json").read_text())
    summary = evaluate(tiny_run, config["dataset"], out_dir=tmp_path / "t", device="cpu", tta=True)
    assert summary["tta"] == {"flip": True, "scales": [1.0]}


def test_force_never_deletes_a_folder_evaluate_did_not_write(tiny_run: Path, tmp_path: Path) -> None:
    config = json.loads((tiny_run / "config.json").read_text())
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "todo.txt").write_text("precious")
    with pytest.raises(CatsegError, match="not an evaluation folder"):
        evaluate(tiny_run, config["dataset"], out_dir=mine, device="cpu", force=True)
    assert (mine / "todo.txt").read_text() == "precious"
    evaluate(tiny_run, config["dataset"], out_dir=tmp_path / "ev", device="cpu")
    evaluate(tiny_run, config["dataset"], out_dir=tmp_path / "ev", device="cpu", force=True)  # its own: replaced
    assert (tmp_path / "ev" / "summary.json").is_file()
