"""The training recipe's parts: growing sizes, sparse validation, mirror TTA chosen on validation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from catseg.augment import AugmentedDataset
from catseg.cache import CachedSample
from catseg.config import TrainConfig
from catseg.errors import CatsegError
from catseg.preprocess import Preprocess
from catseg.steps import grown_size
from catseg.train import fit


def _config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(dataset=str(data), out=str(out), width=4, depth=2, size=32, epochs=1, batch_size=4, lr=1e-2,
                precision="fp32")
    base.update(kw)
    return TrainConfig(**base).validate()


# ----------------------------------------------------------------------------- growing sizes
def test_size_grows_from_start_to_size_by_sixty_percent() -> None:
    config = TrainConfig(dataset="d", out="o", size=128, size_start=80)
    sizes = [grown_size(config, p / 10) for p in range(11)]
    assert sizes[0] == 80 and sizes[6:] == [128] * 5
    assert all(a <= b for a, b in zip(sizes, sizes[1:])) and all(s % 16 == 0 for s in sizes)


def test_size_start_is_checked() -> None:
    with pytest.raises(CatsegError, match="--size-start 300"):
        TrainConfig(dataset="d", out="o", size=128, size_start=300).validate()
    with pytest.raises(CatsegError, match="goes with --resize stretch"):
        TrainConfig(dataset="d", out="o", size=128, size_start=64, resize="scale").validate()


def test_growing_run_trains_at_the_smaller_size_first(tmp_path: Path, tiny_dataset: Path) -> None:
    sizes = []
    import catseg.train as train_module

    real = AugmentedDataset.set_size

    def spy(self: AugmentedDataset, size: int) -> None:
        sizes.append(size)
        real(self, size)

    original = train_module.AugmentedDataset.set_size
    train_module.AugmentedDataset.set_size = spy
    try:
        fit(_config(tiny_dataset, tmp_path / "run", size=64, size_start=32, epochs=6))
    finally:
        train_module.AugmentedDataset.set_size = original
    assert sizes[0] == 32 and sizes[-1] == 64 and len(sizes) == 6


def test_set_size_changes_the_sample_size() -> None:
    sample = CachedSample("a", np.zeros((48, 48, 3), np.uint8), np.zeros((48, 48), np.uint8))
    dataset = AugmentedDataset([sample, sample], Preprocess(32), "light", 255, seed=0)
    assert dataset[0][0].shape == (32, 32, 3)
    dataset.set_size(16)
    dataset.set_epoch(1)
    assert dataset[0][0].shape == (16, 16, 3) and dataset[0][1].shape == (16, 16)


# ----------------------------------------------------------------------------- validation cadence
def test_short_epochs_are_validated_sparsely_but_the_last_always(tmp_path: Path, tiny_dataset: Path) -> None:
    out = tmp_path / "run"
    result = fit(_config(tiny_dataset, out, epochs=40, batch_size=2))
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    epochs = [int(r["epoch"]) for r in rows]
    assert epochs[0] == 1 and epochs[-1] == 40 and result.epochs == 40
    assert sum(int(r["steps"]) for r in rows) == 40 * 4  # every step is counted in some row
    config = json.loads((out / "config.json").read_text())
    assert config["scores"]["epochs"] == 40
    # From 70% of training on, every epoch is validated.
    assert set(range(29, 41)) <= set(epochs)


# ----------------------------------------------------------------------------- mirror TTA chosen on validation
def test_mirror_tta_is_chosen_on_validation_and_used_by_default(tiny_run: Path, tmp_path: Path) -> None:
    import shutil

    from catseg.predict import Predictor

    config = json.loads((tiny_run / "config.json").read_text())
    tried = config["scores"]["postprocess_val_miou"]
    assert "none" in tried and "mirror-tta" in tried
    best_plain = max(v for k, v in tried.items() if not k.startswith("mirror-tta"))
    best_mirror = max(v for k, v in tried.items() if k.startswith("mirror-tta"))
    assert config["tta"] == ({"flip": True} if best_mirror > best_plain + 1e-4 else {})
    assert Predictor.from_run(tiny_run, device="cpu").tta == bool(config["tta"].get("flip"))
    # A run that chose mirroring predicts with it unless told not to.
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    config["tta"] = {"flip": True}
    (run / "config.json").write_text(json.dumps(config))
    assert Predictor.from_run(run, device="cpu").tta is True
    assert Predictor.from_run(run, device="cpu", tta=False).tta is False


def test_config_json_follows_every_new_best_epoch(tmp_path: Path, tiny_dataset: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """config.json is rewritten at most every 20 s, except when the best weights change: its threshold and
    scores must always describe model.safetensors, even if training stops right there."""
    out = tmp_path / "run"
    state: dict = {"epoch": 0, "saved": None}
    seen: list[tuple[int, int]] = []
    import catseg.run as run_module

    real_save = run_module.save_weights

    def save(model, path, **kw):
        real_save(model, path, **kw)
        if path.name == "model.safetensors":
            state["saved"] = state["epoch"]

    def progress(report) -> None:
        if report.step == 1 and state["saved"] is not None:  # first step after an epoch's bookkeeping
            seen.append((json.loads((out / "config.json").read_text())["scores"]["best_epoch"], state["saved"]))
        state["epoch"] = report.epoch

    monkeypatch.setattr(run_module, "save_weights", save)
    fit(_config(tiny_dataset, out, epochs=8, batch_size=2, lr=3e-2), progress=progress)
    assert len({saved for _, saved in seen}) >= 2  # the best moved at least once after epoch 1
    assert all(written == saved for written, saved in seen)
