from __future__ import annotations

import pytest
import torch

from catseg.preprocess import (
    gaussian_weight,
    sliding_window,
    window_starts,
    working_size,
)


@pytest.mark.parametrize("length, window, overlap", [(100, 32, 0.5), (33, 32, 0.5), (32, 32, 0.5), (500, 64, 0.25),
                                                     (10, 32, 0.5)])
def test_windows_cover_everything_with_the_overlap(length: int, window: int, overlap: float) -> None:
    starts = window_starts(length, window, overlap)
    covered = torch.zeros(length, dtype=torch.bool)
    for s in starts:
        covered[s:s + window] = True
    assert covered.all() and starts[0] == 0
    if length > window:
        assert starts[-1] == length - window
        assert max(b - a for a, b in zip(starts, starts[1:])) <= int(window * (1 - overlap))


def test_working_size() -> None:
    assert working_size(375, 500, 256, "stretch") == (256, 256)
    assert working_size(375, 500, 250, "scale") == (250, 333)
    assert working_size(4000, 6000, 256, "scale") == (256, 384)
    with pytest.raises(ValueError, match="unknown size policy"):
        working_size(10, 10, 8, "crop")


def test_gaussian_weight_peaks_in_the_middle() -> None:
    w = gaussian_weight(33, 17)
    assert w.shape == (33, 17) and w.max() == 1.0 and w.min() > 0
    assert w[16, 8] == 1.0 and w[4, 8] < w[10, 8] < w[16, 8] and w[16, 5] < w[16, 8]


def test_sliding_window_equals_one_pass_for_a_pointwise_model() -> None:
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 4, 1)  # each output pixel depends on its own input pixel only
    x = torch.randn(3, 70, 150)
    with torch.no_grad():
        tiled = sliding_window(model, x, patch=32)
        whole = model(x[None])[0]
    assert tiled.shape == (4, 70, 150)
    assert torch.allclose(tiled, whole, atol=1e-5)


def test_sliding_window_runs_bounded_windows_and_blends_them() -> None:
    seen = []

    def forward(batch: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(batch.shape))
        # a position-dependent "model": a ramp inside each window, so seams would show without blending
        ramp = torch.linspace(0, 1, batch.shape[-1])
        return batch[:, :1] * 0 + ramp

    out = sliding_window(forward, torch.zeros(3, 40, 200), patch=32, batch_size=4)
    assert all(shape[-2:] == (32, 32) and shape[0] <= 4 for shape in seen)
    assert out.shape == (1, 40, 200)
    jumps = (out[0, :, 1:] - out[0, :, :-1]).abs().max()
    assert jumps < 0.35  # overwriting instead of blending jumps by half the ramp (0.5) where a window starts


def test_small_input_is_one_pass() -> None:
    calls = []

    def forward(batch: torch.Tensor) -> torch.Tensor:
        calls.append(batch.shape)
        return batch

    sliding_window(forward, torch.ones(3, 20, 25), patch=32)
    assert calls == [torch.Size([1, 3, 20, 25])]


def test_prediction_windows_may_be_larger_than_the_training_crops() -> None:
    """window (0 = patch): a working image within one window runs in one pass, a larger one in windows of that
    side; config.json names the window only when it differs, and older runs read back with window = patch."""
    from catseg.preprocess import Preprocess

    calls = []

    def forward(batch: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(batch.shape[-2:]))
        return batch[:, :2]

    pre = Preprocess(36, "scale", patch=24, window=64)
    assert (pre.patch, pre.window) == (24, 64) and pre.windows(36, 60) == 1 and pre.windows(36, 100) == 3
    pre.logits(forward, torch.zeros(1, 36, 60, 3, dtype=torch.uint8))
    assert calls == [(36, 60)]  # one pass, not the 24 px crops' 2 x 4 windows
    calls.clear()
    pre.logits(forward, torch.zeros(1, 36, 100, 3, dtype=torch.uint8))
    assert calls and all(shape == (36, 64) for shape in calls)
    assert Preprocess.from_json(pre.to_json()) == pre and pre.to_json()["window"] == 64
    old = Preprocess(36, "scale", patch=24)
    assert old.window == 24 and "window" not in old.to_json() and Preprocess.from_json(old.to_json()) == old
