"""No stage may assume that class 0 is background: datasets whose id 0 is a real class (CamVid's Sky)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from catseg import planner
from catseg.annotate import labels_text, mask_to_shapes
from catseg.calibration import ThresholdSearch, threshold_target
from catseg.check import check_dataset
from catseg.classes import background_id
from catseg.data import DatasetWriter, dataset_json, read_dataset
from catseg.errors import CatsegError
from catseg.postprocess import (
    Postprocess,
    choose_postprocess,
    fill_holes,
    remove_small_components,
)
from catseg.predict import overlay
from catseg.preprocess import Preprocess
from catseg.run import RunConfig

STREET = ["sky", "road", "car"]  # id 0 is a real class


def _write(root: Path, masks: dict[str, np.ndarray], classes: list[str], **extra: object) -> Path:
    with DatasetWriter(root) as writer:
        for stem, mask in masks.items():
            buf = io.BytesIO()
            Image.new("RGB", (mask.shape[1], mask.shape[0])).save(buf, format="PNG")
            writer.write_image(stem, buf.getvalue(), ".png")
            writer.write_mask(stem, mask)
        writer.write_dataset_json({**dataset_json(classes), **extra})
    return root


@pytest.mark.parametrize("classes, declared, expected", [
    (["background", "pet"], "auto", 0), (["_background_", "pet"], "auto", 0), (["BG", "pet"], "auto", 0),
    (["sky", "road"], "auto", None), (["cat", "dog"], "auto", None),
    (["sky", "road"], 1, 1), (["background", "pet"], None, None)])
def test_background_rule(classes: list[str], declared: object, expected: int | None) -> None:
    assert background_id(classes, declared) == expected


def test_dataset_json_may_name_the_background_and_a_bad_value_is_refused(tmp_path: Path) -> None:
    mask = np.zeros((8, 8), np.uint8)
    assert read_dataset(_write(tmp_path / "auto", {"a": mask}, STREET)).background is None
    info = read_dataset(_write(tmp_path / "named", {"a": mask}, STREET, background=1))
    assert info.background == 1 and info.to_json()["background"] == 1
    assert read_dataset(_write(tmp_path / "none", {"a": mask}, ["background", "pet"], background=None)).background is None
    with pytest.raises(CatsegError, match="background is 3"):
        read_dataset(_write(tmp_path / "bad", {"a": mask}, STREET, background=3))


def test_run_config_stores_the_background_and_old_runs_decide_from_the_names(tmp_path: Path) -> None:
    config = RunConfig("unet", {}, 3, list(STREET), [[0, 0, 0]] * 3, 255, Preprocess(32))
    assert config.background is None and config.to_json()["background"] is None
    doc = config.to_json()
    doc["classes"] = ["background", "pet"]
    assert RunConfig.from_json(doc, tmp_path).background is None  # stored: kept
    del doc["background"]
    assert RunConfig.from_json(doc, tmp_path).background == 0  # written before it was stored: by name


def test_specks_of_class_0_are_removed_when_it_is_a_real_class() -> None:
    mask = np.ones((40, 40), np.uint8)  # road
    mask[:10] = 0  # sky
    mask[30, 30] = 0  # a one-pixel speck of sky on the road
    mask[5, 5] = 2  # a speck of car in the sky
    out = remove_small_components(mask, 0.01, background=None)
    assert out[30, 30] == 1 and out[5, 5] == 0  # each speck takes the class around it
    assert (out[:10] == 0).all() and (out[10:] == 1).all()
    # With class 0 as background, the old behaviour: background specks stay, others become background.
    old = remove_small_components(mask, 0.01)
    assert old[30, 30] == 0 and old[5, 5] == 0


def test_holes_are_those_of_the_named_background_and_none_without_one() -> None:
    mask = np.ones((40, 40), np.uint8)  # class 1 is background here
    mask[5:25, 5:25] = 2
    mask[10:15, 10:15] = 1  # enclosed by class 2
    mask[30:35, 30:35] = 0
    assert np.array_equal(fill_holes(mask, background=None), mask)
    out = fill_holes(mask, background=1)
    assert (out[10:15, 10:15] == 2).all() and (out[30:35, 30:35] == 0).all() and out[0, 0] == 1
    mask[10:15, 10:15] = 0
    assert (fill_holes(mask, background=1)[10:15, 10:15] == 0).all()  # class 0 is no hole there


def test_clean_up_without_background_never_tries_hole_filling_and_round_trips() -> None:
    truth = np.zeros((20, 20), np.uint8)
    _, tried = choose_postprocess([truth], [truth], 3, 255, background=None)
    assert not any("fill-holes" in name for name in tried)
    p = Postprocess(0.002, False, None)
    assert Postprocess.from_json(p.to_json()) == p
    assert Postprocess.from_json({"min_component_fraction": 0.002}).background == 0  # older runs
    assert not Postprocess(0.0, True, None).active


def test_overlay_paints_class_0_only_when_it_is_not_background() -> None:
    image = np.full((4, 4, 3), 100, np.uint8)
    mask = np.zeros((4, 4), np.uint8)
    mask[:, 2:] = 1
    colors = [[0, 0, 255], [255, 0, 0]]
    assert (overlay(image, mask, colors)[0, 0] == 100).all()
    painted = overlay(image, mask, colors, background=None)
    assert painted[0, 0, 2] > 100 and painted[0, 0, 0] < 100


def test_threshold_serves_the_class_that_is_not_background() -> None:
    probs = torch.tensor([0.2, 0.4, 0.6, 0.8])
    truth = torch.tensor([0, 1, 1, 1])
    for target in (1, 0, None):  # p >= 0.3 .. 0.4 separates them perfectly; ties go nearest 0.5
        search = ThresholdSearch(target=target)
        search.update(probs, truth)
        assert search.best() == (pytest.approx(0.4), pytest.approx(1.0))
    search = ThresholdSearch(target=0)
    search.update(probs, truth)
    assert search.iou_at(0.5) == pytest.approx(1 / 2)  # class 0: one true pixel, two below the threshold
    mean = ThresholdSearch(target=None)
    mean.update(probs, truth)
    assert mean.iou_at(0.5) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert threshold_target(0) == 1 and threshold_target(1) == 0 and threshold_target(None) is None


def test_labelme_output_names_class_0_when_it_is_real() -> None:
    mask = np.zeros((30, 30), np.uint8)
    mask[10:20, 10:20] = 1
    labels = [s["label"] for s in mask_to_shapes(mask, STREET, background=None)]
    assert labels == ["sky", "road"]  # the sky is drawn, the road over it; no _background_
    assert [s["label"] for s in mask_to_shapes(mask, ["background", "road", "car"])] == ["road"]
    assert labels_text(STREET, None) == "__ignore__\nsky\nroad\ncar\n"
    with pytest.raises(CatsegError, match="background is class 1"):
        mask_to_shapes(mask, STREET, background=1)


def test_statistics_count_class_0_as_objects_when_it_is_real(tmp_path: Path) -> None:
    only_sky = np.zeros((10, 10), np.uint8)
    half = np.zeros((10, 10), np.uint8)
    half[5:] = 1
    street = read_dataset(_write(tmp_path / "street", {"a": only_sky, "b": half}, STREET))
    stats = planner.data_stats(street, street.stems())
    assert stats.median_object_fraction == pytest.approx(0.5)  # sky 1.0 and 0.5, road 0.5
    assert check_dataset(street.root).empty_masks == []
    pets = read_dataset(_write(tmp_path / "pets", {"a": only_sky, "b": half}, ["background", "pet", "toy"]))
    assert planner.data_stats(pets, pets.stems()).median_object_fraction == pytest.approx(0.5)  # the pet only
    assert check_dataset(pets.root).empty_masks == ["masks/a.png"]
    assert json.loads((pets.root / "dataset.json").read_text()).get("background") is None


def test_predict_labelme_and_overlays_of_a_run_without_background_round_trip(tiny_run: Path, tmp_path: Path) -> None:
    """The tiny run with its classes renamed so that class 0 is a real one: labelme output names it, labels.txt
    lists it on the id-0 line, and `catseg convert` gives back the predicted masks and a dataset without
    background."""
    import shutil

    from catseg.cli import main
    from catseg.images import read_mask
    from catseg.labelme import convert_labelme

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    doc = json.loads((run / "config.json").read_text())
    doc["classes"], doc["background"], doc["threshold"] = ["sky", "square"], None, 0.5  # a two-epoch model
    (run / "config.json").write_text(json.dumps(doc))
    photos, out = tmp_path / "photos", tmp_path / "ann"
    photos.mkdir()
    rng = np.random.default_rng(0)
    image = rng.integers(60, 120, (60, 80, 3)).astype(np.uint8)
    image[10:40, 20:60] = 230
    Image.fromarray(image).save(photos / "p.png")
    assert main(["predict", str(run), str(photos), "--out", str(out), "--format", "labelme,mask,overlay"]) == 0
    assert (out / "labels.txt").read_text() == "__ignore__\nsky\nsquare\n"
    labels = {s["label"] for s in json.loads((out / "p.json").read_text())["shapes"]}
    assert "_background_" not in labels and "sky" in labels
    convert_labelme(out, tmp_path / "ds", labels_file=out / "labels.txt")
    predicted, back = read_mask(out / "p.png"), read_mask(tmp_path / "ds" / "masks" / "p.png")
    assert (predicted == back).mean() > 0.9  # a two-epoch model: its specks under 20 px are not drawn
    assert read_dataset(tmp_path / "ds").background is None
    painted = np.asarray(Image.open(out / "p_overlay.jpg")).astype(int)
    sky = (predicted == 0) & (np.abs(painted - image).sum(-1) > 30)
    assert sky.sum() > 0.5 * (predicted == 0).sum()  # class 0 is painted too


def test_check_says_which_class_is_background(tmp_path: Path) -> None:
    mask = np.zeros((8, 8), np.uint8)
    street = check_dataset(_write(tmp_path / "street", {"a": mask}, STREET))
    assert street.background is None and "background none: class 0 'sky'" in street.format()
    pets = check_dataset(_write(tmp_path / "pets", {"a": mask}, ["background", "pet"]))
    assert "background class 0 'background'" in pets.format()
