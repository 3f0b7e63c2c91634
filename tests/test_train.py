from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_dataset
from safetensors.torch import load_file

from catseg.config import TrainConfig
from catseg.data import read_dataset
from catseg.errors import CatsegError
from catseg.train import choose_split, fit, learning_rate


def _config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(dataset=str(data), out=str(out), width=4, depth=2, size=32, epochs=1, batch_size=4, lr=1e-2,
                precision="fp32")
    base.update(kw)
    return TrainConfig(**base).validate()


def test_seeded_split_is_stable_and_disjoint(tiny_dataset: Path) -> None:
    info = read_dataset(tiny_dataset)
    train, val = choose_split(info, TrainConfig(dataset="x", out="y", seed=3, val_fraction=0.3))
    again = choose_split(info, TrainConfig(dataset="x", out="y", seed=3, val_fraction=0.3))
    other = choose_split(info, TrainConfig(dataset="x", out="y", seed=4, val_fraction=0.3))
    assert (train, val) == again
    assert (train, val) != other
    assert len(val) == 3 and not set(train) & set(val) and sorted(train + val) == info.stems()


def test_named_splits_are_used_and_test_is_held_out(tmp_path: Path) -> None:
    stems = [f"img{i:02d}" for i in range(10)]
    data = make_tiny_dataset(tmp_path / "d", splits={"trainval": stems[:8], "test": stems[8:]})
    train, val = choose_split(read_dataset(data), TrainConfig(dataset="x", out="y"))
    assert not (set(train) | set(val)) & set(stems[8:])
    assert len(train) + len(val) == 8
    data2 = make_tiny_dataset(tmp_path / "d2", splits={"train": stems[:6], "val": stems[6:9]})
    assert choose_split(read_dataset(data2), TrainConfig(dataset="x", out="y")) == (stems[:6], stems[6:9])


def test_unknown_split_name_lists_the_names(tiny_dataset: Path) -> None:
    with pytest.raises(CatsegError, match="no split named 'nope'"):
        choose_split(read_dataset(tiny_dataset), TrainConfig(dataset="x", out="y", val_split="nope"))


def test_learning_rate_warms_up_then_decays() -> None:
    assert learning_rate(0.0, 1.0, 0.1) == pytest.approx(0.01)
    assert learning_rate(0.05, 1.0, 0.1) == pytest.approx(0.5)
    assert learning_rate(0.1, 1.0, 0.1) == pytest.approx(1.0)
    values = [learning_rate(p / 100, 1.0, 0.1) for p in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert learning_rate(1.0, 1.0, 0.1) == pytest.approx(0.01)


def test_fit_writes_a_self_describing_run(tiny_run: Path) -> None:
    for name in ("config.json", "model.safetensors", "train_state.pt", "splits.json",
                 "metrics.csv", "curves.png"):
        assert (tiny_run / name).is_file(), name
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["format"] == "catseg-run"
    assert config["classes"] == ["background", "square"]
    assert config["model"] == {"name": "unet", "kwargs": {"width": 4, "depth": 2, "upsample": "transpose"},
                               "in_channels": 3}
    assert config["preprocess"]["size"] == 32 and len(config["preprocess"]["mean"]) == 3
    assert 0 < config["threshold"] < 1
    assert config["train"]["epochs"] == 2 and config["versions"]["torch"] == torch.__version__
    rows = list(csv.DictReader((tiny_run / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for key in ("train_loss", "val_loss", "val_miou", "val_iou_background", "val_iou_square", "images_per_s", "lr",
                "seconds", "val_ece", "data_wait_frac"):
        assert rows[0][key] != "", key
    assert config["scores"]["best_epoch"] in (1, 2)
    best = max(rows, key=lambda r: float(r["val_miou"]))
    assert float(best["val_miou"]) == pytest.approx(config["scores"]["val_miou"], rel=1e-4)
    splits = json.loads((tiny_run / "splits.json").read_text())
    assert len(splits["train"]) == 8 and len(splits["val"]) == 2
    # weights are plain tensors in safetensors, BatchNorm statistics included
    tensors = load_file(str(tiny_run / "model.safetensors"))
    assert any(k.endswith("running_mean") for k in tensors)


def test_training_learns_the_tiny_task(tmp_path: Path) -> None:
    data = make_tiny_dataset(tmp_path / "d", count=12)
    result = fit(_config(data, tmp_path / "run", epochs=20, width=8, augment="none", lr=1e-2))
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < losses[0] * 0.7
    assert result.best_miou > 0.75


def test_existing_run_is_refused_then_replaced_with_force(tmp_path: Path, tiny_dataset: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(CatsegError, match="already exists"):
        fit(_config(tiny_dataset, out))
    with pytest.raises(CatsegError, match="not a catseg run folder"):
        fit(_config(tiny_dataset, out, force=True))
    assert (out / "notes.txt").read_text() == "mine"


def test_resume_continues_where_it_stopped(tmp_path: Path, tiny_dataset: Path) -> None:
    out = tmp_path / "run"
    fit(_config(tiny_dataset, out, epochs=1))
    first = torch.load(out / "train_state.pt", weights_only=True)["model"]
    # The stored settings say one epoch: resuming finds nothing left to do and keeps the weights.
    result = fit(TrainConfig(dataset=str(tiny_dataset), out=str(out), resume=True))
    assert result.epochs == 1
    again = torch.load(out / "train_state.pt", weights_only=True)["model"]
    assert all(torch.equal(first[k], again[k]) for k in first)
    # With more epochs stored, resume trains epoch 2 only and keeps epoch 1's metrics row.
    config = json.loads((out / "config.json").read_text())
    config["train"]["epochs"] = 2
    (out / "config.json").write_text(json.dumps(config))
    result = fit(TrainConfig(dataset=str(tiny_dataset), out=str(out), resume=True))
    assert [r["epoch"] for r in result.history] == [1, 2]


def test_resume_removes_temporaries_a_killed_write_left_and_nothing_else(tmp_path: Path, tiny_dataset: Path) -> None:
    out = tmp_path / "run"
    fit(_config(tiny_dataset, out, epochs=1))
    stale = out / ".train_state.pt.k2phq7fd.tmp"  # the name atomic_write_bytes gives; SIGKILL before its rename
    stale.write_bytes(b"half a checkpoint")
    mine = [out / ".notes.tmp", out / "notes.k2phq7fd.tmp"]  # not catseg's pattern: left alone
    for path in mine:
        path.write_text("mine")
    fit(TrainConfig(dataset=str(tiny_dataset), out=str(out), resume=True))
    assert not stale.exists()
    assert all(path.read_text() == "mine" for path in mine)


def test_resume_without_state_is_a_clear_error(tmp_path: Path, tiny_dataset: Path) -> None:
    with pytest.raises(CatsegError, match="nothing to resume"):
        fit(TrainConfig(dataset=str(tiny_dataset), out=str(tmp_path / "none"), resume=True))


def test_three_classes_and_time_budget(tmp_path: Path) -> None:
    data = make_tiny_dataset(tmp_path / "d", classes=("background", "square", "disc"))
    result = fit(_config(data, tmp_path / "run", time_budget="4s", epochs=1000))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["threshold"] is None and config["classes"] == ["background", "square", "disc"]
    assert 1 <= result.epochs < 1000  # the budget, not --epochs, ended training


def test_time_budget_keeps_time_for_the_finish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """The finish (TTA and clean-up chosen on validation) runs after the loop: its time comes out of the budget,
    about FINISH_VALIDATIONS validations, so a budget ends the whole command in about that time."""
    import re

    from catseg import train

    real = train.validate

    def slow(*args, **kwargs):
        time.sleep(0.4)
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "validate", slow)
    data = make_tiny_dataset(tmp_path / "d")
    with caplog.at_level("DEBUG", logger="catseg.train"):
        fit(_config(data, tmp_path / "run", time_budget="5s", epochs=1000))
    kept = [float(m.group(1)) for r in caplog.records
            if (m := re.match(r"([0-9.]+)s of the budget kept", r.getMessage()))]
    assert len(kept) == 1 and kept[0] >= train.FINISH_VALIDATIONS * 0.4 - 0.05  # the log rounds to 0.1 s


def test_a_short_run_validates_every_epoch_however_slow_validation_is(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a budget, a run of few epochs validates each one, even where validation costs more than the 4% of
    training that would skip it in a long run (which made a 3-epoch distributed test depend on timing)."""
    from catseg import train

    real_validate = train.validate

    def slow(*args, **kwargs):
        time.sleep(0.3)
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(train, "validate", slow)
    result = fit(_config(make_tiny_dataset(tmp_path / "d"), tmp_path / "run", epochs=3))
    assert [r["epoch"] for r in result.history] == [1, 2, 3]


def test_resume_keeps_the_finish_reserve_aside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reserve is taken after epoch 1; a run resumed later still keeps it aside, so that a resumed budget
    does not overrun by the finish."""
    from catseg import train

    real_validate, real_clock = train.validate, train._start_clock

    def slow(*args, **kwargs):
        time.sleep(0.4)
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(train, "validate", slow)
    data, out = make_tiny_dataset(tmp_path / "d"), tmp_path / "run"
    fit(_config(data, out, time_budget="3s", epochs=1000))
    saved = torch.load(out / "train_state.pt", weights_only=True)["finish_reserve"]
    assert saved >= train.FINISH_VALIDATIONS * 0.4 - 0.05
    clocks = []

    def spy(config, started, elapsed_before, steps_per_epoch, reserve=0.0):
        clock = real_clock(config, started, elapsed_before, steps_per_epoch, reserve)
        clocks.append((started, elapsed_before, reserve, clock))
        return clock

    monkeypatch.setattr(train, "_start_clock", spy)
    fit(TrainConfig(dataset=str(data), out=str(out), resume=True))
    (started, elapsed_before, reserve, clock), = clocks
    assert reserve == pytest.approx(saved)
    assert clock.deadline == pytest.approx(started + 3.0 - elapsed_before - saved)


def test_class_weights_count_must_match(tmp_path: Path, tiny_dataset: Path) -> None:
    with pytest.raises(CatsegError, match="2 classes"):
        fit(_config(tiny_dataset, tmp_path / "run", class_weights="1,2,3"))


def test_all_ignored_validation_still_trains_and_writes_valid_json(tmp_path: Path) -> None:
    from catseg.images import mask_png_bytes, read_mask

    stems = [f"img{i:02d}" for i in range(10)]
    data = make_tiny_dataset(tmp_path / "d", splits={"train": stems[:8], "val": stems[8:]})
    for stem in stems[8:]:
        mask = read_mask(data / "masks" / f"{stem}.png")
        (data / "masks" / f"{stem}.png").write_bytes(mask_png_bytes(mask * 0 + 255))
    result = fit(_config(data, tmp_path / "run", epochs=1))
    assert result.epochs == 1
    def no_nan(token: str) -> None:
        raise AssertionError(f"config.json holds {token}, which is not JSON")

    config = json.loads((tmp_path / "run" / "config.json").read_text(), parse_constant=no_nan)
    assert config["scores"]["val_miou"] is None and config["scores"]["best_epoch"] == 0
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_scale_policy_trains_on_crops_and_predicts_any_size(tmp_path: Path) -> None:
    from catseg.predict import Predictor

    data = make_tiny_dataset(tmp_path / "d", count=10)
    fit(_config(data, tmp_path / "run", size=32, resize="scale", patch=16, epochs=2))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["preprocess"]["resize"] == "scale" and config["preprocess"]["patch"] == 16
    predictor = Predictor.from_run(tmp_path / "run", device="cpu")
    calls = []
    original = predictor.model.forward
    predictor.model.forward = lambda x: (calls.append(tuple(x.shape)), original(x))[1]
    probs = predictor.predict_proba(np.zeros((60, 900, 3), np.uint8))
    assert probs.shape == (2, 60, 900)
    assert all(shape[-2:] == (16, 16) for shape in calls) and sum(s[0] for s in calls) > 10


def test_a_given_window_reaches_the_run_and_its_predictions(tmp_path: Path) -> None:
    """--window 48 over 16 px crops: config.json records it, and a prediction covers the 32 px working image in
    windows of (up to) 48 px instead of the training crop's 16."""
    from catseg.predict import Predictor

    data = make_tiny_dataset(tmp_path / "d", count=10)
    fit(_config(data, tmp_path / "run", size=32, resize="scale", patch=16, window=48, epochs=1))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["preprocess"]["patch"], config["preprocess"]["window"]) == (16, 48)
    assert config["train"]["window"] == 48
    predictor = Predictor.from_run(tmp_path / "run", device="cpu", tta=False)
    calls = []
    original = predictor.model.forward
    predictor.model.forward = lambda x: (calls.append(tuple(x.shape)), original(x))[1]
    predictor.predict_proba(np.zeros((32, 40, 3), np.uint8))
    assert calls == [(1, 3, 32, 40)]  # the whole working image in one pass
    calls.clear()
    predictor.predict_proba(np.zeros((32, 200, 3), np.uint8))
    assert sum(shape[0] for shape in calls) > 1 and all(shape[-2:] == (32, 48) for shape in calls)  # batched windows


def test_patch_needs_the_scale_policy() -> None:
    with pytest.raises(CatsegError, match="--patch goes with --resize scale"):
        TrainConfig(dataset="d", out="r", patch=64).validate()


def test_disk_cache_trains_the_same_as_memory(tmp_path: Path, tiny_dataset: Path) -> None:
    import glob
    import tempfile

    before = set(glob.glob(str(Path(tempfile.gettempdir()) / "catseg-cache-*")))
    memory = fit(_config(tiny_dataset, tmp_path / "m", epochs=2, cache="memory", augment="none"))
    disk = fit(_config(tiny_dataset, tmp_path / "d", epochs=2, cache="disk", augment="none"))
    assert [r["train_loss"] for r in memory.history] == pytest.approx([r["train_loss"] for r in disk.history],
                                                                      rel=1e-5)
    assert set(glob.glob(str(Path(tempfile.gettempdir()) / "catseg-cache-*"))) == before  # cleaned up


def test_cache_estimate_says_when_memory_is_not_enough() -> None:
    from catseg.cache import cache_fits_in_memory
    from catseg.preprocess import Preprocess

    assert cache_fits_in_memory(100, 256, Preprocess(256))
    assert not cache_fits_in_memory(10**9, 256, Preprocess(256))


def test_clean_up_choice_is_recorded_and_applied(tiny_run: Path) -> None:
    from catseg.postprocess import Postprocess
    from catseg.predict import Predictor

    config = json.loads((tiny_run / "config.json").read_text())
    assert "postprocess" in config and "none" in config["scores"]["postprocess_val_miou"]
    predictor = Predictor.from_run(tiny_run, device="cpu")
    assert predictor.postprocess == Postprocess.from_json(config["postprocess"])
    predictor.postprocess = Postprocess(0.5, False)  # drops every object smaller than half the photo
    probs = torch.zeros(2, 20, 20)
    probs[1, 2:5, 2:5] = 1.0
    assert predictor.labels_from_proba(probs, 0.5).sum() == 0


def test_progress_callback_sees_every_step(tmp_path: Path, tiny_dataset: Path) -> None:
    reports = []
    fit(_config(tiny_dataset, tmp_path / "run", epochs=2), progress=reports.append)
    assert [(r.epoch, r.step) for r in reports] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert all(r.steps_per_epoch == 2 and r.loss > 0 and r.lr > 0 and r.images_per_s > 0 for r in reports)


def test_fit_leaves_process_settings_as_it_found_them(tmp_path: Path, tiny_dataset: Path) -> None:
    """A library call must not change torch's thread count or matplotlib's backend for the whole process."""
    import matplotlib
    import torch

    before_threads, before_backend = torch.get_num_threads(), matplotlib.get_backend()
    torch.set_num_threads(1)
    try:
        fit(TrainConfig(dataset=str(tiny_dataset), out=str(tmp_path / "run"), width=4, depth=2, size=32, epochs=1,
                        batch_size=4, precision="fp32", workers=0).validate())
        assert torch.get_num_threads() == 1
        assert matplotlib.get_backend() == before_backend
        assert (tmp_path / "run" / "curves.png").is_file()
    finally:
        torch.set_num_threads(before_threads)


def test_a_pretrained_encoder_learns_at_a_fraction_of_the_rate() -> None:
    from catseg.models import create_model
    from catseg.steps import param_groups

    model = create_model("smp-unet", 3, 2, encoder="efficientnet-lite0", encoder_weights="none")
    encoder = {id(p) for p in model.net.encoder.parameters()}
    config = TrainConfig(dataset="d", out="o", model="smp-unet", encoder_weights="imagenet", encoder_lr=0.1)
    groups = param_groups(model, config)
    assert [g["lr_scale"] for g in groups] == [0.1, 1.0]
    assert {id(p) for p in groups[0]["params"]} == encoder
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(model.parameters()))
    # From scratch, every weight is new: one rate for all.
    scratch = param_groups(model, TrainConfig(dataset="d", out="o", model="smp-unet", encoder_weights="none"))
    assert len(scratch) == 1 and scratch[0]["lr_scale"] == 1.0


def test_a_frozen_encoder_batchnorm_keeps_its_statistics_while_the_decoder_learns() -> None:
    from types import SimpleNamespace

    from catseg.train_setup import new_model

    info = SimpleNamespace(num_classes=2)
    config = TrainConfig(dataset="d", out="o", model="smp-unet", encoder_weights="none", encoder_bn="frozen")
    kwargs = {"encoder": "efficientnet-lite0", "encoder_weights": "none", "decoder_width": 64}
    model = new_model(config, info, kwargs, torch.device("cpu"))
    bns = [m for m in model.net.encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    decoder_bn = next(m for m in model.net.decoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = [m.running_mean.clone() for m in bns]
    decoder_before = decoder_bn.running_mean.clone()
    model.eval()
    model.train()  # validation switches back and forth: the encoder's BatchNorm must stay frozen
    assert bns and not any(m.training for m in bns) and decoder_bn.training
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss = model(torch.randn(2, 3, 64, 64) * 3 + 1).logsumexp(1).mean()
    loss.backward()
    opt.step()
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, bns))
    assert not torch.equal(decoder_before, decoder_bn.running_mean)
    assert any(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in bns)  # the affine still learns
    # The default (auto) freezes them for pretrained weights only: an encoder from scratch has no statistics to keep.
    from catseg.steps import frozen_encoder_bn

    assert frozen_encoder_bn(TrainConfig(dataset="d", out="o", model="smp-unet", encoder_weights="imagenet"))
    assert not frozen_encoder_bn(TrainConfig(dataset="d", out="o", model="smp-unet", encoder_weights="none"))
    assert not frozen_encoder_bn(TrainConfig(dataset="d", out="o", encoder_weights="imagenet", encoder_bn="train"))
    plain = new_model(TrainConfig(dataset="d", out="o", model="smp-unet", encoder_weights="none"), info, kwargs,
                      torch.device("cpu"))
    plain.train()
    assert all(m.training for m in plain.net.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with pytest.raises(CatsegError, match="--encoder-bn"):
        TrainConfig(dataset="d", out="o", encoder_bn="freeze").validate()
    with pytest.raises(CatsegError, match="--encoder-bn frozen keeps"):
        TrainConfig(dataset="d", out="o", encoder_bn="frozen", encoder_weights="none").validate()
