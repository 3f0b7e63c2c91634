"""Defaults for many classes and small objects: object widths, rare classes, the plan, rare-class crops."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA
from PIL import Image

from catseg import plan_pretrained, planner
from catseg.augment import AugmentedDataset, focus_crop, rare_class_ids
from catseg.cache import CachedSample
from catseg.classes import rare
from catseg.config import TrainConfig
from catseg.data import DatasetWriter, dataset_json, read_dataset
from catseg.objects import object_widths, typical_width
from catseg.preprocess import Preprocess

STREET = ["sky", "road", "pole", "person"]


def _street_mask(h: int = 60, w: int = 80) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[h // 2:] = 1
    mask[5:55, 10:13] = 2  # a pole 3 px wide
    mask[30:50, 40:48] = 3  # a person 8 px wide
    return mask


def _write(root: Path, masks: list[np.ndarray], classes: list[str]) -> Path:
    with DatasetWriter(root) as writer:
        for i, mask in enumerate(masks):
            buf = io.BytesIO()
            Image.new("RGB", (mask.shape[1], mask.shape[0])).save(buf, format="PNG")
            writer.write_image(f"m{i}", buf.getvalue(), ".png")
            writer.write_mask(f"m{i}", mask)
        writer.write_dataset_json(dataset_json(classes))
    return root


def test_object_width_is_the_thickness_not_the_length() -> None:
    mask = _street_mask()
    found = object_widths(mask, [1, 2, 3])
    assert found[2][0].tolist() == [3] and found[2][1].tolist() == [150]
    assert found[3][0].tolist() == pytest.approx([7], abs=1)  # 8 px wide, to within a pixel
    assert found[1][0][0] > 20  # the road is 30 rows tall and cut by the border, which is no edge
    line = np.zeros((9, 9), np.uint8)
    line[:, 4] = 1
    assert object_widths(line, [1])[1][0].tolist() == [1]
    # The typical width is what most pixels sit in: many specks hardly count.
    assert typical_width(np.array([1.0, 1.0, 1.0, 9.0]), np.array([1, 1, 1, 97])) == pytest.approx(8.76)


def test_rare_classes_leave_background_out() -> None:
    assert rare([1000, 10, 500], background=None) == [1]
    assert rare([5, 1000, 10], background=0) == [2]
    assert rare([5, 1000, 10], background=None) == [0, 2]


def test_data_stats_find_rare_and_thin_classes(tmp_path: Path) -> None:
    info = read_dataset(_write(tmp_path / "street", [_street_mask()] * 4, STREET))
    stats = planner.data_stats(info, info.stems())
    assert stats.rare_classes == []  # the pole is 3% of the pixels, the person 3.3%
    assert stats.thin_class == "pole" and stats.thin_width == pytest.approx(3 / 80)
    small = _street_mask(200, 300)
    info = read_dataset(_write(tmp_path / "wide", [small] * 3, STREET))
    stats = planner.data_stats(info, info.stems())
    assert stats.rare_classes == ["pole", "person"] and stats.thin_width == pytest.approx(3 / 300)


def _fake_pretrained(config: TrainConfig, size: int, num_classes: int, repeats: int = 3, channels: int = 3) -> float:
    return 0.33 * (size / 160) ** 2


def _street_stats(i: object, s: object) -> planner.DataStats:
    # CamVid as measured: 367 photos 480x360, poles ~5.4 px of 480 wide, five classes under 2% of the pixels
    return planner.DataStats(367, 360, 0.036, 0.003, ["Pole", "SignSymbol", "Fence", "Pedestrian", "Bicyclist"],
                             "Pole", 5.4 / 480, median_long_side=480)


@pytest.fixture
def info(tmp_path: Path):
    return read_dataset(_write(tmp_path / "d", [_street_mask()] * 4, STREET))


def test_thin_and_rare_classes_shape_the_pretrained_plan(info, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plan_pretrained, "pretrained_seconds_per_step", _fake_pretrained)
    monkeypatch.setattr(planner, "data_stats", _street_stats)
    monkeypatch.setattr(planner.lite, "installed", lambda: {"efficientnet-lite0": True})
    plan = planner.plan_training(TrainConfig(dataset="d", out="r", time_budget="10m"), info, info.stems(), set())
    c = plan.config
    # Whole photos would need 3 px / (5.4 / 480) = 267 px, so 256 (poles 2.9 px wide): instead, 256 px crops
    # of the photos at their own 480x360 keep the poles 5.4 px wide for the cost of a 256 px step.
    assert c.model == "smp-unet" and (c.resize, c.size, c.patch) == ("scale", 360, planner.CROP)
    assert c.window == plan_pretrained.CROP_WINDOW  # a 480x360 working image: one pass when predicting
    assert any(r.startswith(f"window {plan_pretrained.CROP_WINDOW}:") for r in plan.reasons)
    assert any(r.startswith("resize scale, shorter side 360px, crops of 256px: Pole objects") and "5.4px wide" in r
               for r in plan.reasons)
    assert any("about" in r and "at 256px crops in 10m" in r for r in plan.reasons)
    assert c.class_weights == "auto" and c.oversample == 0.0  # crops are drawn anywhere in the photo
    assert any(r.startswith("oversample off") for r in plan.reasons)
    assert all(plan.to_json()[k] == getattr(c, k) for k in ("resize", "patch", "window", "size"))
    # ...and the finish also tries the photos predicted 1.5x larger, where the poles are wider
    assert c.try_scales == plan_pretrained.THIN_TRY_SCALE == "1.5" and plan.to_json()["try_scales"] == "1.5"
    assert any(r.startswith("try scales 1.5: Pole objects are thin") for r in plan.reasons)
    kept = planner.plan_training(TrainConfig(dataset="d", out="r", time_budget="10m", try_scales=""), info,
                                 info.stems(), {"try_scales"}).config
    assert kept.try_scales == ""  # given (here: none) is kept
    # Large photos are scaled down only as far as keeps the thin objects CROP_THIN_PX wide
    monkeypatch.setattr(planner, "data_stats", lambda i, s: replace(_street_stats(i, s), median_short_side=1800,
                                                                    median_long_side=2400))
    big = planner.plan_training(TrainConfig(dataset="d", out="r", time_budget="10m"), info, info.stems(), set()).config
    assert big.resize == "scale" and big.size == round(1800 * planner.CROP_THIN_PX / (2400 * 5.4 / 480))
    # Whole photos when asked (--resize stretch): the size that keeps poles about 3 px wide, and rare-class crops
    monkeypatch.setattr(planner, "data_stats", _street_stats)
    plan = planner.plan_training(TrainConfig(dataset="d", out="r", time_budget="10m", resize="stretch"), info,
                                 info.stems(), {"resize"})
    c = plan.config
    assert (c.resize, c.size, c.patch) == ("stretch", 256, 0)
    assert any("Pole objects are typically" in r for r in plan.reasons)
    assert c.class_weights == "auto" and c.oversample == planner.OVERSAMPLE
    assert any(r.startswith("oversample 0.33") and "Bicyclist" in r for r in plan.reasons)
    assert any(r.startswith("loss dice+ce kept") for r in plan.reasons)
    assert plan.to_json()["oversample"] == planner.OVERSAMPLE
    given = planner.plan_training(TrainConfig(dataset="d", out="r", time_budget="10m", size=160, oversample=0.0),
                                  info, info.stems(), {"size", "oversample"}).config
    assert (given.size, given.oversample) == (160, 0.0)


def test_thin_classes_raise_the_unet_floor(info, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(planner, "seconds_per_step", lambda config, size, width, k, repeats=2, channels=3: 1e-6 * size * size * width)
    monkeypatch.setattr(planner, "data_stats", _street_stats)
    plan = planner.plan_training(TrainConfig(dataset="d", out="r", model="unet", time_budget="2m"), info,
                                 info.stems(), {"model"})
    assert plan.config.size == 256 and plan.config.oversample == planner.OVERSAMPLE
    assert plan.config.width == 16  # the narrow width at the floor, not only the widest candidate


def test_pets_keep_their_plan(info, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two classes, big objects: no floor, no oversampling (the sizes are pinned in test_planner)."""
    monkeypatch.setattr(plan_pretrained, "pretrained_seconds_per_step", _fake_pretrained)
    monkeypatch.setattr(planner, "data_stats", lambda i, s: planner.DataStats(240, 333, 0.38, 0.38, [], "pet", 0.4))
    monkeypatch.setattr(planner.lite, "installed", lambda: {"efficientnet-lite0": True})
    plan = planner.plan_training(TrainConfig(dataset="d", out="r", time_budget="10m"), info, info.stems(), set())
    assert plan.config.oversample == 0.0 and plan.config.class_weights == "none"
    assert not any("oversample" in r or "typically" in r for r in plan.reasons)


def test_focus_crop_keeps_a_rare_pixel() -> None:
    mask = np.zeros((50, 50), np.uint8)
    mask[45:47, 2:4] = 2
    image = np.zeros((50, 50, 3), np.uint8)
    rng = np.random.default_rng(0)
    for _ in range(20):
        img, m = focus_crop(image, mask, [2, 3], rng)
        assert (m == 2).any() and img.shape[:2] == m.shape and 30 <= m.shape[0] <= 50
    assert focus_crop(image, mask, [3], rng)[1] is mask  # the class is not there: the whole sample


def test_oversampling_shows_rare_classes_more_often() -> None:
    mask = np.zeros((64, 64), np.uint8)
    mask[60:62, 1:3] = 1
    samples = [CachedSample("a", np.zeros((64, 64, 3), np.uint8), mask)] * 4
    assert rare_class_ids(samples, 2, background=0) == [1]

    def share(oversample: float) -> float:
        ds = AugmentedDataset(samples, Preprocess(32), "light", 255, seed=0, focus=[1], oversample=oversample)
        return float(np.mean([(ds[i % 4][1] == 1).float().mean() for i in range(200)]))

    assert share(1.0) > 1.3 * share(0.0)
    scale = AugmentedDataset(samples, Preprocess(32, "scale", 32), "light", 255, seed=0, focus=[1], oversample=1.0)
    assert scale.oversample == 0.0  # --resize scale trains on crops already


@pytest.mark.slow
def test_real_camvid_statistics(tmp_path: Path) -> None:
    from catseg.cli import main

    src = SHARED_DATA / "camvid"
    if not src.is_dir():
        pytest.skip(f"CamVid is not at {src} (the shared data)")
    classes = "Sky,Building,Pole,Road,Pavement,Tree,SignSymbol,Fence,Car,Pedestrian,Bicyclist"
    assert main(["-q", "import", "masks", str(src), str(tmp_path / "ds"), "--split", "train=train,trainannot",
                 "--split", "val=val,valannot", "--classes", classes, "--ignore-id", "11"]) == 0
    info = read_dataset(tmp_path / "ds")
    stats = planner.data_stats(info, info.splits["train"])
    assert info.background is None and stats.thin_class == "Pole"
    assert stats.rare_classes == ["Pole", "SignSymbol", "Fence", "Pedestrian", "Bicyclist"]
    assert 4.5 / 480 < stats.thin_width < 6.5 / 480  # poles: 5-5.6 px wide (area-weighted) in 480 px photos
    assert planner.thin_floor(stats, plan_pretrained.PRETRAINED_SIZES)[0] in (256, 288)  # depending on the masks sampled


def test_a_mask_of_one_class_has_a_finite_width() -> None:
    widths, areas = object_widths(np.full((10, 20), 3, np.uint8), [3])[3]
    assert np.isfinite(widths).all() and areas.tolist() == [200]


@pytest.mark.slow
def test_real_pets_get_no_floor_and_no_oversampling(tmp_path: Path) -> None:
    from catseg.cli import main

    src = SHARED_DATA / "oxford-pets-sample"
    if not src.is_dir():
        pytest.skip(f"the pets sample is not at {src} (the shared data)")
    assert main(["-q", "import", "oxford-pets", str(src), str(tmp_path / "pets")]) == 0
    info = read_dataset(tmp_path / "pets")
    stats = planner.data_stats(info, info.stems())
    assert info.background == 0 and stats.rare_classes == [] and stats.thin_width > 0.3  # pets fill their photos
    assert planner.thin_floor(stats, plan_pretrained.PRETRAINED_SIZES) == (plan_pretrained.PRETRAINED_SIZES[0], "")
