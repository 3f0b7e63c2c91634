"""Distributed training: real torchrun processes (gloo on this CPU), and the pieces around them."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_dataset

import catseg
from catseg.cli import main
from catseg.distributed import Dist, torchrun_command

TINY = ["--model", "unet", "--width", "4", "--depth", "2", "--size", "32", "--batch-size", "2", "--lr", "0.01",
        "--precision", "fp32", "--device", "cpu", "--workers", "0"]


def _torchrun(tmp_path: Path, nproc: int, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m torch.distributed.run --nproc-per-node N -m catseg train ...` as a user would, with every
    rank writing its final weights to tmp_path/ranks."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(catseg.__file__).parents[1]), env.get("PYTHONPATH", "")])
    env["CATSEG_RANK_WEIGHTS_DIR"] = str(tmp_path / "ranks")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               "-m", "catseg", "train", *args]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done


def _state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _single_process_validation(run: Path, batch_size: int) -> dict:
    """Validate the run's saved best weights in this one process, as training validates."""
    from catseg.cache import cache_samples
    from catseg.data import read_dataset
    from catseg.hardware import Forward
    from catseg.losses import SegmentationLoss
    from catseg.predict import Predictor
    from catseg.run import read_splits
    from catseg.steps import StepContext
    from catseg.validation import validate

    predictor = Predictor.from_run(run, device="cpu", precision="fp32")
    config = predictor.config
    info = read_dataset(config.dataset)
    samples = cache_samples(info, read_splits(run)["val"], config.preprocess)
    loss = SegmentationLoss(config.train["loss"], config.num_classes, config.ignore_index, None)
    ctx = StepContext(Forward(predictor.model, torch.device("cpu")), config.preprocess, loss, config.num_classes,
                      config.ignore_index)
    return validate(ctx, samples, config.classes, batch_size)


@pytest.mark.slow
def test_two_gloo_processes_train_one_model(tmp_path: Path) -> None:
    data = make_tiny_dataset(tmp_path / "data", count=12)
    done = _torchrun(tmp_path, 2, str(data), "--out", "run", "--epochs", "3", "--val-fraction", "0.25", *TINY)
    # One run folder, written by rank 0 alone; one log (rank 0's) and one summary.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "ranks", "run"]
    assert done.stderr.count("caching 9 training and 3 validation images") == 1
    assert done.stdout.count("run folder: run") == 1
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train"]["distributed"] == {"world_size": 2, "backend": "gloo", "nodes": 1, "per_device_batch": 2,
                                              "global_batch": 4, "sync_batchnorm": False}
    # 9 training images, 2 ranks: ceil(9 / 2) = 5 each, 2 steps of 2 per epoch on every rank.
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["steps"]) for r in rows] == [2, 2, 2]
    # The ranks end with identical weights (BatchNorm statistics included), and they are the run's last weights.
    rank0, rank1 = _state(tmp_path / "ranks" / "rank0.safetensors"), _state(tmp_path / "ranks" / "rank1.safetensors")
    last = {k: v.contiguous() for k, v in torch.load(tmp_path / "run" / "train_state.pt", weights_only=True)["model"].items()}
    assert rank0.keys() == rank1.keys() == last.keys()
    assert any("running_mean" in k for k in rank0)
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]) and torch.equal(rank0[key], last[key]), key
    # Validation was sharded (each rank scored its own images) and summed: the scores are those one process
    # computes for the saved best weights over all three validation images.
    single = _single_process_validation(tmp_path / "run", batch_size=2)
    scores = config["scores"]
    best = next(r for r in rows if int(r["epoch"]) == scores["best_epoch"])
    assert scores["val_miou"] == pytest.approx(single["val_miou"], abs=1e-12)
    assert config["threshold"] == single["threshold"]
    assert scores["val_iou_at_threshold"] == pytest.approx(single["val_iou_at_threshold"], abs=1e-12)
    assert scores["val_ece"] == pytest.approx(single["val_ece"], rel=1e-7)  # float sums in another order
    for name in config["classes"]:
        assert float(best[f"val_iou_{name}"]) == pytest.approx(single[f"val_iou_{name}"], rel=1e-5)
    # The loss is a per-batch mean (Dice over the batch), so it depends on the batching: ranks scored blocks
    # of 1 and 2 images with --batch-size 2, as one process does with batch 1 for image 1 and batch 2 for 2, 3.
    assert float(best["val_loss"]) == pytest.approx(_loss_in_blocks(tmp_path / "run", [1, 2]), rel=1e-5)


def _loss_in_blocks(run: Path, blocks: list[int]) -> float:
    """Return the validation loss of the saved best weights with the images scored in these consecutive blocks."""
    from catseg import validation

    original = validation.validation_batches

    def blocked(samples, batch_size, whole_image):  # type: ignore[no-untyped-def]
        start = 0
        for size in blocks:
            yield from original(samples[start:start + size], batch_size, whole_image)
            start += size

    validation.validation_batches = blocked
    try:
        out = _single_process_validation(run, batch_size=2)
    finally:
        validation.validation_batches = original
    return out["val_loss"]


@pytest.mark.slow
def test_time_budget_stops_every_rank_after_the_same_step(tmp_path: Path) -> None:
    data = make_tiny_dataset(tmp_path / "data", count=10)
    _torchrun(tmp_path, 2, str(data), "--out", "run", "--time-budget", "8s", "--no-plan", *TINY)
    rank0, rank1 = _state(tmp_path / "ranks" / "rank0.safetensors"), _state(tmp_path / "ranks" / "rank1.safetensors")
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # same steps, same learning rates
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["scores"]["epochs"] >= 1 and config["train"]["distributed"]["world_size"] == 2


def test_nproc_restarts_the_command_under_torchrun(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert torchrun_command(["-q", "train", "d", "--nproc", "4", "--out", "r"], 4)[1:] == [
        "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4", "-m", "catseg", "-q", "train", "d",
        "--out", "r"]
    assert "--nproc=2" not in torchrun_command(["train", "d", "--nproc=2"], 2)
    started: list[list[str]] = []
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(os, "execv", lambda exe, argv: started.append(argv))
    monkeypatch.setattr("catseg.train.fit", lambda *a, **k: pytest.fail("fit ran instead of torchrun"))
    main(["train", str(tmp_path), "--out", str(tmp_path / "r"), "--nproc", "2"])
    assert started and started[0][-5:] == ["catseg", "train", str(tmp_path), "--out", str(tmp_path / "r")]


def test_a_single_process_is_its_own_world() -> None:
    one = Dist()
    assert not one.enabled and one.is_main
    assert one.select([1, 2, 3]) == [1, 2, 3] and one.sampler([1, 2], 0, 1) is None
    assert one.stream(7) == 7 and one.samples_per_rank(9) == 9
    assert one.main_decides(lambda: 5) == 5 and one.agree(True) and one.broadcast("x") == "x"
    four = Dist(rank=3, world=4)
    assert four.samples_per_rank(9) == 3 and four.stream(7) == 31
    assert [x for r in range(4) for x in Dist(rank=r, world=4).select(list(range(10)))] == list(range(10))
    assert four.record(torch.device("cpu"), 8)["global_batch"] == 32


@pytest.mark.slow
def test_a_killed_rank_then_resume_with_another_number_of_processes(tmp_path: Path) -> None:
    """SIGKILL one of two training processes mid-run (torchrun then stops the other), resume the run with one
    process: it continues from the last checkpoint, with the schedule recomputed for the new world size."""
    import signal
    import time

    data = make_tiny_dataset(tmp_path / "data", count=12)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(catseg.__file__).parents[1]), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "catseg",
               "-q", "train", str(data), "--out", "run", "--epochs", "30", "--checkpoint-every", "0", *TINY]
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state_file = tmp_path / "run" / "train_state.pt"
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            try:
                if torch.load(state_file, weights_only=True)["step"] >= 6:
                    break
            except Exception:  # noqa: BLE001 - not written yet, or the rename is landing
                pass
            time.sleep(0.1)
        workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert proc.poll() is None and len(workers) == 2, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
        os.kill(int(workers[1]), signal.SIGKILL)  # one rank dies; torchrun tears the other down
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    killed = torch.load(state_file, weights_only=True)
    assert killed["world"] == 2 and 6 <= killed["step"] < 30 * 2  # 10 training images, 2 ranks: 2 steps an epoch
    done = _torchrun(tmp_path, 1, "x", "--out", "run", "--resume")
    assert "checkpoint was written by 2 process(es), this run has 1" in done.stderr
    final = torch.load(state_file, weights_only=True)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert final["epoch"] == 30 and final["world"] == 1 and config["scores"]["epochs"] == 30
    # one process, 10 images, batch 2: 5 steps an epoch, counted from the epoch it continued at
    assert final["step"] == 30 * 5


@pytest.mark.parametrize("name, kwargs", [("unet", {"width": 4, "depth": 2}),
                                          ("smp-unet", {"encoder": "tu-efficientnet_b0", "encoder_weights": "none"})])
def test_sync_batchnorm_keeps_the_weights_and_their_names(name: str, kwargs: dict) -> None:
    from catseg.distributed import sync_batchnorm
    from catseg.models import create_model

    torch.manual_seed(0)
    model = create_model(name, in_channels=3, num_classes=2, **kwargs).eval()
    params = {id(p) for p in model.parameters()}
    x = torch.rand(1, 3, 64, 64)
    before, keys = model(x), list(model.state_dict())
    synced = sync_batchnorm(model)
    norms = [m for m in synced.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, torch.nn.SyncBatchNorm) for m in norms)
    assert list(synced.state_dict()) == keys and {id(p) for p in synced.parameters()} == params
    assert torch.equal(synced(x), before)  # evaluation needs no process group; BatchNormAct kept its activation
