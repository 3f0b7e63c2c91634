"""The finish's choice on validation: prediction sizes (--try-scales) beside mirror TTA and clean-up."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from catseg.cache import CachedSample
from catseg.hardware import Forward
from catseg.losses import SegmentationLoss
from catseg.preprocess import Preprocess
from catseg.steps import StepContext
from catseg.validation import choose_finish


class WideOnly(nn.Module):
    """Finds bright lines well only when they are wider than its 3x3 view: class 1 where the 3x3 mean of channel
    0 exceeds 0.7. A 2 px line (mean 0.67) is missed at its own size (p = 0.34) and found, with margin, in the
    photo twice as large (means 0.79-0.96 once the logits are resized back), so the average finds it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = F.avg_pool2d(x[:, :1], 3, stride=1, padding=1, count_include_pad=False)
        return torch.cat([torch.zeros_like(mean), 20 * (mean - 0.7)], dim=1)


def _context(resize: str) -> StepContext:
    pre = Preprocess(size=32, resize=resize, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return StepContext(Forward(WideOnly().eval(), torch.device("cpu"), channels_last=False), pre,
                       SegmentationLoss(num_classes=2), num_classes=2, ignore_index=255)


def _lines(count: int, width: int) -> list[CachedSample]:
    """Photos of one vertical bright line each (class 1), `width` px wide; width 0: blank photos."""
    samples = []
    for i in range(count):
        image = np.zeros((32, 32, 3), np.uint8)
        mask = np.zeros((32, 32), np.uint8)
        x = 6 + 3 * i
        image[:, x:x + width] = 255
        mask[:, x:x + width] = 1
        samples.append(CachedSample(f"s{i}", image, mask))
    return samples


@pytest.mark.parametrize("resize", ["stretch", "scale"])
def test_a_larger_prediction_is_kept_only_when_it_raises_validation_miou(resize: str) -> None:
    ctx = _context(resize)
    thin = choose_finish(ctx, _lines(4, 2), threshold=None, background=0, scales=[2.0])
    assert thin.scales == (1.0, 2.0)  # the 2 px lines are found only with the larger prediction averaged in
    assert thin.tried["scales-1+2"] > thin.tried["none"] + 0.2
    assert {"none", "mirror-tta", "scales-1+2", "mirror-tta+scales-1+2"} <= set(thin.tried)
    blank = choose_finish(ctx, _lines(4, 0), threshold=None, background=0, scales=[2.0])
    assert blank.scales == (1.0,) and not blank.mirror  # every candidate ties: nothing dearer is kept
    none = choose_finish(ctx, _lines(4, 2), threshold=None, background=0)
    assert none.scales == (1.0,) and not any("scales" in k for k in none.tried)  # nothing asked, nothing tried
