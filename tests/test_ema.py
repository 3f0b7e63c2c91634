"""--ema: a moving average of the weights is what validation scores and what the run keeps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from catseg.config import TrainConfig
from catseg.ema import WeightAverage
from catseg.errors import CatsegError
from catseg.train import fit


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))


def test_the_average_follows_the_weights_at_the_decay_after_a_ramp() -> None:
    net = _net()
    avg = WeightAverage(net, decay=0.9)
    start = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
    avg.update(net)  # ramp: decay (1 + 0) / (10 + 0) = 0.1, so 90% of the way
    shadow = dict(zip(avg.names, avg.shadow))
    assert torch.allclose(shadow["0.weight"], start + 0.9)
    for _ in range(200):
        avg.update(net)
    assert avg.current_decay() == 0.9
    assert torch.allclose(dict(zip(avg.names, avg.shadow))["0.weight"], start + 1.0, atol=1e-5)
    net(torch.randn(2, 3, 8, 8))  # BatchNorm counts a batch: integer buffers are copied, not averaged
    avg.update(net)
    assert dict(zip(avg.names, avg.shadow))["1.num_batches_tracked"].item() == 1


def test_applied_swaps_the_average_in_and_the_weights_back() -> None:
    net = _net()
    avg = WeightAverage(net, decay=0.99)
    own = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.mul_(3.0)
    moved = net[0].weight.detach().clone()
    with avg.applied(net):
        assert torch.equal(net[0].weight, own)  # no update yet: the average is the start
    assert torch.equal(net[0].weight, moved)
    state = avg.state_dict()
    again = WeightAverage(net, decay=0.99)
    again.load_state_dict(state)
    assert again.updates == avg.updates and all(torch.equal(a, b) for a, b in zip(again.shadow, avg.shadow))


def test_a_run_with_ema_keeps_the_average_and_resumes_it(tmp_path: Path, tiny_dataset: Path) -> None:
    out = tmp_path / "run"
    fit(TrainConfig(dataset=str(tiny_dataset), out=str(out), width=4, depth=2, size=32, epochs=1, batch_size=4,
                    lr=1e-2, precision="fp32", ema=0.5).validate())
    state = torch.load(out / "train_state.pt", weights_only=True)
    kept = load_file(out / "model.safetensors")
    average, last = state["ema"]["shadow"], state["model"]
    assert state["ema"]["updates"] == state["step"] > 0
    # One epoch, so its validation is the best: the run keeps the average, not the last step's weights.
    floats = [k for k in kept if kept[k].is_floating_point()]
    assert all(torch.equal(kept[k], average[k]) for k in floats)
    assert any(not torch.equal(kept[k], last[k]) for k in floats)
    assert json.loads((out / "config.json").read_text())["train"]["ema"] == 0.5
    # Resumed with one more epoch, the average carries on from the checkpoint's.
    config = json.loads((out / "config.json").read_text())
    config["train"]["epochs"] = 2
    (out / "config.json").write_text(json.dumps(config))
    fit(TrainConfig(dataset=str(tiny_dataset), out=str(out), resume=True))
    resumed = torch.load(out / "train_state.pt", weights_only=True)
    assert resumed["ema"]["updates"] == resumed["step"] == 2 * state["step"]


def test_a_run_no_validation_improved_still_keeps_the_average(tmp_path: Path, tiny_dataset: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from catseg.run import BestEpoch

    monkeypatch.setattr(BestEpoch, "beaten_by", lambda self, val_miou: False)  # as when validation gives NaN
    out = tmp_path / "run"
    fit(TrainConfig(dataset=str(tiny_dataset), out=str(out), width=4, depth=2, size=32, epochs=1, batch_size=4,
                    lr=1e-2, precision="fp32", ema=0.5).validate())
    state = torch.load(out / "train_state.pt", weights_only=True)
    kept = load_file(out / "model.safetensors")
    floats = [k for k in kept if kept[k].is_floating_point()]
    assert all(torch.equal(kept[k], state["ema"]["shadow"][k]) for k in floats)


def test_ema_of_one_or_more_is_refused() -> None:
    with pytest.raises(CatsegError, match="--ema 1.0: give a decay per step below 1"):
        TrainConfig(dataset="d", out="o", ema=1.0).validate()
    with pytest.raises(CatsegError, match="--ema -0.5: .* and not below 0"):
        TrainConfig(dataset="d", out="o", ema=-0.5).validate()
