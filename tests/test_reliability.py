"""Nothing lost: --force that cannot destroy a run, exact resume, signals, divergence and a full disk.

Each test asserts both the message a person sees and that nothing they had was lost.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import catseg.files
import catseg.train
import catseg.train_setup
from catseg.cli import main
from catseg.config import TrainConfig
from catseg.errors import CatsegError
from catseg.run import read_run_config
from catseg.checkpoint import TrainingStopped
from catseg.train import fit

from conftest import make_tiny_dataset


def _config(data: Path, out: Path, **kw: object) -> TrainConfig:
    base = dict(dataset=str(data), out=str(out), model="unet", width=4, depth=2, size=32, epochs=2, batch_size=4,
                lr=1e-2, augment="light", precision="fp32", workers=0)
    base.update(kw)
    return TrainConfig(**base).validate()  # type: ignore[arg-type]


def _state(run: Path) -> dict:
    return torch.load(run / "train_state.pt", weights_only=True)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _stop_at(step: int, signum: int = signal.SIGINT):
    """A progress callback that sends this process `signum` after optimisation step `step` (as Ctrl-C would)."""
    seen = {"n": 0}

    def progress(report: object) -> None:
        seen["n"] += 1
        if seen["n"] == step:
            os.kill(os.getpid(), signum)

    return progress


# ----------------------------------------------------------------------------- exact resume
def test_a_run_stopped_mid_epoch_and_resumed_ends_with_the_same_weights(tmp_path: Path) -> None:
    data = make_tiny_dataset(tmp_path / "d", count=16)
    whole = fit(_config(data, tmp_path / "whole", epochs=4))
    with pytest.raises(TrainingStopped, match=r"SIGINT received: stopped at epoch 2, step 4.*--resume --out") as err:
        fit(_config(data, tmp_path / "split", epochs=4), progress=_stop_at(4))  # 3 steps an epoch: mid-epoch 2
    assert err.value.exit_code == 130
    assert _state(tmp_path / "split")["batch"] == 1
    resumed = fit(TrainConfig(dataset=str(data), out=str(tmp_path / "split"), resume=True))
    assert resumed.epochs == whole.epochs == 4
    a, b = _state(tmp_path / "whole")["model"], _state(tmp_path / "split")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Which epochs are validated depends on timing, so the best epochs may differ; when they agree, so do the weights.
    best_a, best_b = read_run_config(tmp_path / "whole"), read_run_config(tmp_path / "split")
    if best_a.scores["best_epoch"] == best_b.scores["best_epoch"]:
        wa, wb = (load_file(str(tmp_path / r / "model.safetensors")) for r in ("whole", "split"))
        assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_sigterm_writes_a_checkpoint_and_says_how_to_resume(tmp_path: Path) -> None:
    data = make_tiny_dataset(tmp_path / "d")
    with pytest.raises(TrainingStopped, match="SIGTERM") as err:
        fit(_config(data, tmp_path / "run", epochs=5), progress=_stop_at(3, signal.SIGTERM))
    assert err.value.exit_code == 143 and f"catseg train --resume --out {tmp_path / 'run'}" in str(err.value)
    state = _state(tmp_path / "run")
    assert state["step"] == 3 and state["optimizer"]["state"]  # the optimizer's moments travel with the weights
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone after training


@pytest.mark.slow
def test_sigkill_of_a_real_training_process_then_resume_to_the_end(tmp_path: Path) -> None:
    data = make_tiny_dataset(tmp_path / "d", count=16)
    run = tmp_path / "run"
    args = [sys.executable, "-m", "catseg.cli", "-q", "train", str(data), "--out", str(run), "--model", "unet",
            "--width", "4", "--depth", "2", "--size", "32", "--epochs", "40", "--batch-size", "4", "--lr", "0.01",
            "--precision", "fp32", "--workers", "0", "--checkpoint-every", "0"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if (run / "train_state.pt").is_file():
                try:
                    if _state(run)["step"] >= 10:
                        break
                except Exception:  # noqa: BLE001 - read while the rename lands; try again
                    pass
            time.sleep(0.05)
        assert proc.poll() is None, "training ended before it could be killed: " + proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = _state(run)["step"]
    assert 10 <= killed_at < 120  # 40 epochs x 3 steps
    done = subprocess.run([sys.executable, "-m", "catseg.cli", "-q", "train", str(data), "--out", str(run),
                           "--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert _state(run)["step"] == 120 and read_run_config(run).scores["epochs"] == 40
    assert not list(run.glob(".*.tmp"))  # no temporary file left behind


# ----------------------------------------------------------------------------- --force
def test_force_keeps_the_old_run_until_the_new_one_has_finished(tmp_path: Path) -> None:
    data = make_tiny_dataset(tmp_path / "d")
    run = tmp_path / "run"
    fit(_config(data, run, epochs=1))
    before = _snapshot(run)
    # A typo in --encoder after --force: refused before anything is decoded or deleted.
    with pytest.raises(CatsegError, match="nonsense"):
        fit(_config(data, run, model="smp-unet", encoder="nonsense", encoder_weights="none", force=True))
    assert _snapshot(run) == before and not (tmp_path / "run.new").exists()
    # A replacement stopped half-way: the old run is intact, the new one waits in run.new and resumes there.
    with pytest.raises(TrainingStopped, match=r"--resume --out \S*run\.new"):
        fit(_config(data, run, epochs=3, force=True), progress=_stop_at(2))
    assert _snapshot(run) == before and (tmp_path / "run.new" / "train_state.pt").is_file()
    result = fit(TrainConfig(dataset=str(data), out=str(tmp_path / "run.new"), resume=True))
    assert result.run_dir == run and not (tmp_path / "run.new").exists()
    assert read_run_config(run).scores["epochs"] == 3 and read_run_config(run).train["out"] == str(run)


def test_force_replaces_only_a_folder_catseg_wrote(tmp_path: Path, tiny_dataset: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "settings"}')  # a config.json that is not catseg's
    with pytest.raises(CatsegError, match="is not a catseg run folder.*refusing"):
        fit(_config(tiny_dataset, mine, force=True))
    assert (mine / "config.json").read_text() == '{"my": "settings"}' and len(list(mine.iterdir())) == 1


def test_demo_force_refuses_a_folder_it_did_not_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "work"
    (folder / "labelme").mkdir(parents=True)
    (folder / "labelme" / "a.json").write_text("{}")
    assert main(["demo", "--out", str(folder), "--force"]) == 2
    assert "is not a catseg demo folder" in capsys.readouterr().err
    assert (folder / "labelme" / "a.json").read_text() == "{}"


def test_replaced_on_success_puts_the_old_folder_back_on_failure(tmp_path: Path) -> None:
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "summary.json").write_text('{"old": 1}')
    with pytest.raises(RuntimeError):
        with catseg.files.replaced_on_success(folder, "summary.json", "an evaluation folder"):
            folder.mkdir()
            (folder / "half.csv").write_text("x")
            raise RuntimeError("crash half-way")
    assert _snapshot(folder) == {"summary.json": b'{"old": 1}'} and not (tmp_path / "eval.previous").exists()
    with catseg.files.replaced_on_success(folder, "summary.json", "an evaluation folder"):
        folder.mkdir()
        (folder / "summary.json").write_text('{"new": 1}')
    assert _snapshot(folder) == {"summary.json": b'{"new": 1}'} and not (tmp_path / "eval.previous").exists()


# ----------------------------------------------------------------------------- best weights and config.json
def test_config_json_and_weights_always_agree_on_the_best_epoch(tmp_path: Path, tiny_dataset: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    run = tmp_path / "run"
    fit(_config(tiny_dataset, run, epochs=3))
    config = json.loads((run / "config.json").read_text())
    from catseg.run import weights_best

    best = weights_best(run)
    assert best is not None and best.epoch == config["scores"]["best_epoch"] and best.threshold == config["threshold"]
    # A stop between writing the weights and config.json: readers trust the weights' own header.
    config["scores"]["best_epoch"], config["threshold"] = 99, 0.123
    (run / "config.json").write_text(json.dumps(config))
    with caplog.at_level("WARNING"):
        assert read_run_config(run).threshold == best.threshold
    assert "training stopped between the two writes" in caplog.text


def test_resume_never_overwrites_newer_best_weights(tmp_path: Path, tiny_dataset: Path) -> None:
    run = tmp_path / "run"
    fit(_config(tiny_dataset, run, epochs=2))
    state = _state(run)
    best_bytes = (run / "model.safetensors").read_bytes()
    from catseg.run import weights_best

    on_disk = weights_best(run)
    # As if the process died after writing model.safetensors but before the checkpoint that records it.
    state["best"] = {"epoch": 0, "val_miou": float("nan")}
    torch.save(state, run / "train_state.pt")
    config = json.loads((run / "config.json").read_text())
    config["train"]["epochs"] = 3
    (run / "config.json").write_text(json.dumps(config))
    fit(TrainConfig(dataset=str(tiny_dataset), out=str(run), resume=True))
    after = weights_best(run)
    assert after is not None and after.val_miou >= on_disk.val_miou
    if after.epoch == on_disk.epoch:
        assert (run / "model.safetensors").read_bytes() == best_bytes


# ----------------------------------------------------------------------------- divergence
def test_a_loss_that_turns_nan_stops_and_keeps_what_was_good(tmp_path: Path, tiny_dataset: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    real_step, calls = catseg.train.train_step, {"n": 0}

    def step(*args: object) -> float:
        calls["n"] += 1
        loss = real_step(*args)
        return float("nan") if calls["n"] == 6 else loss

    monkeypatch.setattr(catseg.train, "train_step", step)
    with pytest.raises(CatsegError, match=r"diverged at epoch 3, step 5: the loss is nan.*best weights so far "
                                          r"\(epoch [12].*nothing was overwritten"):
        fit(_config(tiny_dataset, run, epochs=5, checkpoint_every=0.0))
    state = _state(run)
    assert state["step"] == 5 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert read_run_config(run).scores["best_epoch"] in (1, 2)


def test_weights_that_are_no_longer_finite_are_never_checkpointed(tmp_path: Path, tiny_dataset: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    real_step, calls = catseg.train.train_step, {"n": 0}

    def step(ctx, optimizer, images, masks) -> float:  # type: ignore[no-untyped-def]
        calls["n"] += 1
        loss = real_step(ctx, optimizer, images, masks)
        if calls["n"] == 3:
            with torch.no_grad():
                next(ctx.model.parameters()).fill_(float("inf"))
        return loss

    monkeypatch.setattr(catseg.train, "train_step", step)
    with pytest.raises(CatsegError, match="weights are no longer finite"):
        fit(_config(tiny_dataset, run, epochs=5, checkpoint_every=0.0))
    assert _state(run)["step"] == 2


# ----------------------------------------------------------------------------- a full disk
def _disk_fills_after(monkeypatch: pytest.MonkeyPatch, writes: int) -> None:
    """Let `writes` files be written, then make every further write fail half-way with ENOSPC."""
    real_fdopen, count = os.fdopen, {"n": 0}

    class Filling:
        def __init__(self, fd: int, mode: str = "r", *a: object, **k: object) -> None:
            self.f = real_fdopen(fd, mode, *a, **k)

        def __enter__(self) -> Filling:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

        def __getattr__(self, name: str) -> object:
            return getattr(self.f, name)

        def write(self, data: bytes) -> int:
            count["n"] += 1
            if count["n"] > writes:
                self.f.write(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

    monkeypatch.setattr(catseg.files.os, "fdopen", Filling)


def test_a_full_disk_during_predict_is_a_clear_error_and_keeps_earlier_outputs(
        tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        Image.fromarray(np.full((30, 40, 3), 60 * i, np.uint8)).save(photos / f"p{i}.png")
    out = tmp_path / "out"
    assert main(["predict", str(tiny_run), str(photos), "--out", str(out)]) == 0
    first = _snapshot(out)
    _disk_fills_after(monkeypatch, writes=2)
    assert main(["predict", str(tiny_run), str(photos), "--out", str(out), "--force"]) == 2
    err = capsys.readouterr().err
    assert "the disk is full" in err and "p2.png" in err
    assert _snapshot(out) == first  # every file is the old or the whole new one; no temporary files


def test_a_full_disk_while_checkpointing_keeps_the_last_checkpoint(tmp_path: Path, tiny_dataset: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    fit(_config(tiny_dataset, run, epochs=1))
    config = json.loads((run / "config.json").read_text())
    config["train"]["epochs"] = 3
    (run / "config.json").write_text(json.dumps(config))
    before = _snapshot(run)
    _disk_fills_after(monkeypatch, writes=0)
    with pytest.raises(CatsegError, match="the disk is full"):
        fit(TrainConfig(dataset=str(tiny_dataset), out=str(run), resume=True))
    after = _snapshot(run)
    assert after["train_state.pt"] == before["train_state.pt"] and after["model.safetensors"] == before["model.safetensors"]
    assert not [name for name in after if name.endswith(".tmp")]


# ----------------------------------------------------------------------------- settings
@pytest.mark.parametrize("weights", ["0,0", "nan,1", "1,inf", "-1,2", "a,b"])
def test_bad_class_weights_are_refused_before_training(weights: str) -> None:
    with pytest.raises(CatsegError, match="--class-weights"):
        TrainConfig(dataset="d", out="o", class_weights=weights).validate()


def test_an_unknown_model_is_reported_before_any_photo_is_decoded(tmp_path: Path, tiny_dataset: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(*a: object, **k: object) -> None:
        raise AssertionError("decoded the dataset before checking the model")

    monkeypatch.setattr(catseg.train_setup, "cache_samples", no_decoding)
    with pytest.raises(CatsegError, match="unet"):  # the message lists the models there are
        fit(_config(tiny_dataset, tmp_path / "run", model="unet3000"))
    assert not (tmp_path / "run").exists()


def test_the_dataset_index_is_listed_once_per_training(tmp_path: Path, tiny_dataset: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import catseg.data

    real, calls = catseg.data.image_files_by_stem, []

    def counting(folder: Path) -> dict:
        calls.append(folder)
        return real(folder)

    monkeypatch.setattr(catseg.data, "image_files_by_stem", counting)
    fit(_config(tiny_dataset, tmp_path / "run", epochs=1))
    assert len(calls) == 1
