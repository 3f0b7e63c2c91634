"""Tests for catseg.losses: CE parity, soft Dice behaviour, the ignore value and autocast."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from catseg.losses import SegmentationLoss, class_weights_from_frequency


def _assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    # torch.testing.assert_close costs half a second of imports on first use; this is enough here
    assert a.shape == b.shape and a.dtype == b.dtype and torch.allclose(a, b, rtol=1e-5, atol=1e-6), (a, b)


def _batch(k: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, k, 8, 8, generator=g)
    target = torch.randint(0, k, (2, 8, 8), generator=g)
    target[:, :2] = 255
    return logits, target


def _confident(target: torch.Tensor, k: int, scale: float) -> torch.Tensor:
    """Logits that put `scale` on the true class (class 0 on ignored pixels)."""
    safe = torch.where(target == 255, torch.zeros_like(target), target)
    return scale * F.one_hot(safe, k).permute(0, 3, 1, 2).float()


@pytest.mark.parametrize("kind", ["ce", "dice", "dice+ce"])
def test_perfect_prediction_gives_near_zero_loss(kind: str) -> None:
    _, target = _batch()
    loss = SegmentationLoss(kind, num_classes=3)(_confident(target, 3, 30.0), target)
    assert loss.item() == pytest.approx(0.0, abs=1e-4)
    bad = SegmentationLoss(kind, num_classes=3)(_confident((target + 1) % 3, 3, 30.0), target)
    assert bad.item() > 0.5


def test_ce_matches_torch_cross_entropy() -> None:
    logits, target = _batch()
    ours = SegmentationLoss("ce", num_classes=3)(logits, target)
    _assert_close(ours, F.cross_entropy(logits, target, ignore_index=255))
    w = [0.5, 2.0, 1.0]
    ours_w = SegmentationLoss("ce", num_classes=3, class_weights=w)(logits, target)
    _assert_close(ours_w, F.cross_entropy(logits, target, weight=torch.tensor(w), ignore_index=255))
    assert not torch.isclose(ours, ours_w)


def test_two_class_ce_is_bce_of_logit_difference() -> None:
    logits, target = _batch(k=2)
    keep = target != 255
    diff = (logits[:, 1] - logits[:, 0])[keep]
    bce = F.binary_cross_entropy_with_logits(diff, target[keep].float())
    _assert_close(SegmentationLoss("ce")(logits, target), bce)


def test_dice_loss_hand_computed() -> None:
    # one image, two pixels, both truth class 1; softmax gives p1 = 0.5 and 1.0 (approximately)
    logits = torch.tensor([[[[0.0, -50.0]], [[0.0, 50.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[1, 1]]])
    loss = SegmentationLoss("dice", smooth=0.5)(logits, target)
    # class 1: (2 * 1.5 + s) / (1.5 + 2 + s) ; class 0: mass 0.5, no truth -> (0 + s) / (0.5 + s)
    expected = 1 - ((3 + 0.5) / 4.0 + 0.5 / 1.0) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_dice_class_absent_from_truth_scores_one_only_without_predicted_mass() -> None:
    target = torch.zeros(1, 4, 4, dtype=torch.long)  # classes 1 and 2 never appear
    fn = SegmentationLoss("dice", num_classes=3)
    assert fn(_confident(target, 3, 40.0), target).item() == pytest.approx(0.0, abs=1e-6)
    # the same truth, but class 2 takes half the mass of every pixel: penalised, and finite
    logits = _confident(target, 3, 40.0)
    logits[:, 2] = 40.0
    loss = fn(logits, target).item()
    expected = 1 - ((2 * 8 + 1) / (8 + 16 + 1) + 1.0 + 1 / (8 + 1)) / 3
    assert loss == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="smooth"):
        SegmentationLoss("dice", smooth=0.0)


def test_dice_loss_decreases_as_prediction_improves() -> None:
    _, target = _batch()
    wrong = _confident((target + 1) % 3, 3, 5.0)
    right = _confident(target, 3, 5.0)
    fn = SegmentationLoss("dice", num_classes=3)
    losses = [fn((1 - a) * wrong + a * right, target).item() for a in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert all(x > y for x, y in zip(losses, losses[1:])), losses


@pytest.mark.parametrize("kind", ["ce", "dice", "dice+ce"])
def test_ignored_pixels_do_not_matter_and_get_zero_gradient(kind: str) -> None:
    logits, target = _batch()
    fn = SegmentationLoss(kind, num_classes=3, class_weights=[1.0, 2.0, 0.5])
    changed = logits.clone()
    changed[:, :, :2] = torch.randn(2, 3, 2, 8) * 10  # only rows 0-1, which are all 255
    _assert_close(fn(logits, target), fn(changed, target))
    x = logits.clone().requires_grad_(True)
    fn(x, target).backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad[:, :, :2].abs().max().item() == 0.0
    assert x.grad[:, :, 2:].abs().max().item() > 0.0


@pytest.mark.parametrize("kind", ["ce", "dice", "dice+ce"])
def test_all_ignored_batch_gives_zero_not_nan(kind: str) -> None:
    logits = torch.randn(1, 2, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), 255)
    loss = SegmentationLoss(kind)(logits, target)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_dice_plus_ce_is_the_sum() -> None:
    logits, target = _batch()
    parts = [SegmentationLoss(k, num_classes=3)(logits, target) for k in ("dice", "ce", "dice+ce")]
    _assert_close(parts[0] + parts[1], parts[2])


def test_bf16_autocast_input_gives_float32_loss() -> None:
    logits, target = _batch()
    conv = torch.nn.Conv2d(3, 3, 1)
    fn = SegmentationLoss("dice+ce", num_classes=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(logits)
        assert out.dtype == torch.bfloat16
        loss = fn(out, target)
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())
    loss.backward()
    assert torch.isfinite(conv.weight.grad).all()
    reference = fn(out.float(), target)
    _assert_close(loss, reference)


def test_class_weights_move_with_the_module() -> None:
    fn = SegmentationLoss("ce", num_classes=2, class_weights=[1.0, 3.0]).to(torch.float64)
    assert fn.class_weights is not None and fn.class_weights.dtype == torch.float64
    assert "class_weights" not in fn.state_dict()
    logits, target = _batch(k=2)
    expected = F.cross_entropy(logits, target, weight=torch.tensor([1.0, 3.0]), ignore_index=255)
    _assert_close(fn(logits, target), expected)


def test_invalid_arguments_are_reported() -> None:
    with pytest.raises(ValueError, match="dice, ce, dice\\+ce"):
        SegmentationLoss("focal")
    with pytest.raises(ValueError, match="one per class"):
        SegmentationLoss("ce", num_classes=3, class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        SegmentationLoss("ce", num_classes=2, class_weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="at least 2"):
        SegmentationLoss("ce", num_classes=1)
    with pytest.raises(ValueError, match=r"expected \(B, 3, H, W\)"):
        SegmentationLoss("ce", num_classes=3)(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="target shape"):
        SegmentationLoss("ce")(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))


def test_class_weights_from_frequency() -> None:
    w = class_weights_from_frequency([100, 25, 4])
    assert sum(w) / 3 == pytest.approx(1.0)
    # proportional to 1/sqrt(count): 1/10 : 1/5 : 1/2
    assert w[1] / w[0] == pytest.approx(2.0) and w[2] / w[0] == pytest.approx(5.0)
    inv = class_weights_from_frequency([100, 25, 4], mode="inverse")
    assert inv[2] / inv[0] == pytest.approx(25.0)
    assert class_weights_from_frequency([3, 7], mode="none") == [1.0, 1.0]


def test_class_weights_zero_count_class_gets_the_largest_weight() -> None:
    w = class_weights_from_frequency([400, 0, 100])
    assert all(math.isfinite(x) and x > 0 for x in w)
    assert w[1] == pytest.approx(w[2]) and w[2] == pytest.approx(2 * w[0])
    assert sum(w) / 3 == pytest.approx(1.0)
    with pytest.raises(ValueError, match="zero pixels"):
        class_weights_from_frequency([0, 0])
    with pytest.raises(ValueError, match="inverse_sqrt"):
        class_weights_from_frequency([1, 2], mode="log")
    with pytest.raises(ValueError, match=">= 0"):
        class_weights_from_frequency([1, -2])
