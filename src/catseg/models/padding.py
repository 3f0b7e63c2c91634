"""Let networks that need sides divisible by 2**k take any input size: pad, run, crop back."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def padded_forward(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                   multiple: int) -> torch.Tensor:
    """Return forward(x) for any H, W: x is padded up to a multiple of `multiple`, the logits cropped back.

    Padding is at the bottom and right only, so cropping is a plain slice. It uses 'replicate'
    (the border pixels repeated):
      - 'reflect' needs the pad to be smaller than the side (a 1 x 1 or 7 x 40 input would fail),
        and a branch on the size would be frozen into a traced / ONNX-exported graph;
      - zeros would add a flat band of the mean colour that no training crop contains, which
        skews the activations near the crop edge;
      - replicate continues the image for any size >= 1 and exports to ONNX as Pad(mode='edge').
    No Python branch depends on the size, so a traced graph (torch.jit.trace, ONNX export with
    dynamo=False) serves every input size. torch.export with dynamic H, W instead guards on whether
    the pad is zero (inside F.pad), so its graph only fits sizes padded like the example's.
    """
    h, w = x.shape[-2:]
    # ceil(h / m) * m - h: symbolic shapes (torch.export) see the padded side as a multiple of m.
    pad_h = (h + multiple - 1) // multiple * multiple - h
    pad_w = (w + multiple - 1) // multiple * multiple - w
    x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")  # (B, C, H + pad_h, W + pad_w)
    return forward(x)[..., :h, :w]  # (B, K, H, W)
