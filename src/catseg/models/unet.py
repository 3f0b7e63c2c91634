"""The classic UNet (Ronneberger et al. 2015) of the course, with BatchNorm and same-size convolutions.

Level i (0 = full resolution) has width * 2**i channels; the bottleneck is level `depth`. With the
defaults (width 32, depth 4, transpose) it has about 7.8M parameters. Every layer is built in
`__init__`, so `.to()`, `.double()`, `state_dict()` and the optimiser see all of them.
"""

from __future__ import annotations

import torch
from torch import nn

from catseg.errors import CatsegError
from catseg.models.padding import padded_forward
from catseg.models.registry import register_model

UPSAMPLE_MODES = ("transpose", "bilinear")
MAX_DEPTH = 7


class DoubleConv(nn.Sequential):
    """(conv 3x3 -> BatchNorm -> ReLU) x 2; the convs have no bias because BatchNorm adds one."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    """Halve the resolution (max-pool 2x2), then DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))


class Up(nn.Module):
    """Double the resolution and halve the channels, concatenate the skip, then DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, mode: str) -> None:
        super().__init__()
        if mode == "transpose":
            self.up: nn.Module = nn.ConvTranspose2d(in_channels, in_channels // 2, 2, stride=2)
        else:
            # A 1x1 conv halves the channels after a fixed bilinear resize: fewer weights than a
            # transposed conv and no checkerboard artefacts.
            self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                    nn.Conv2d(in_channels, in_channels // 2, 1))
        self.conv = DoubleConv(in_channels // 2 + out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # x: (B, C, H/2, W/2), skip: (B, C/2, H, W) -> (B, C/2, H, W); sizes match because
        # the input was padded to a multiple of 2**depth.
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """UNet returning logits (B, num_classes, H, W) for input (B, in_channels, H, W), any H and W."""

    def __init__(self, in_channels: int = 3, num_classes: int = 2, width: int = 32, depth: int = 4,
                 upsample: str = "transpose") -> None:
        super().__init__()
        channels = [width * 2**i for i in range(depth + 1)]
        self.multiple = 2**depth
        self.stem = DoubleConv(in_channels, channels[0])
        self.downs = nn.ModuleList(Down(channels[i], channels[i + 1]) for i in range(depth))
        self.ups = nn.ModuleList(Up(channels[i + 1], channels[i], upsample) for i in reversed(range(depth)))
        self.head = nn.Conv2d(channels[0], num_classes, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        # Kaiming (He) init suits the conv -> BN -> ReLU blocks; BN starts as the identity.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return padded_forward(self._forward_padded, x, self.multiple)

    def _forward_padded(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W), H and W multiples
        skips = [self.stem(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.head(x)


@register_model("unet", "the course's UNet (DoubleConv + BatchNorm), trained from scratch; "
                        "options width, depth, upsample")
def unet(in_channels: int, num_classes: int, *, width: int = 32, depth: int = 4,
         upsample: str = "transpose") -> UNet:
    """Return a UNet after checking its options."""
    problems = []
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        problems.append(f"width={width!r}: a whole number of at least 1")
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= MAX_DEPTH:
        problems.append(f"depth={depth!r}: a whole number from 1 to {MAX_DEPTH}")
    if upsample not in UPSAMPLE_MODES:
        problems.append(f"upsample={upsample!r}: choose one of {', '.join(UPSAMPLE_MODES)}")
    if problems:
        raise CatsegError("invalid options for model 'unet'", problems)
    return UNet(in_channels, num_classes, width=width, depth=depth, upsample=upsample)
