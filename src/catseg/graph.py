"""The whole prediction of a run as one traceable module: a uint8 photo in, its mask and probabilities out.

`PhotoGraph` is what `catseg export` writes to ONNX. It repeats, with tensor operations only, what
`Predictor` does with OpenCV and Python loops, so the exported graph needs nothing beside it:

  resize    OpenCV's resize as catseg calls it (INTER_AREA when the photo shrinks, INTER_LINEAR when
            it grows), per axis as gathered taps and weights, rounded to whole values as OpenCV's
            uint8 output is; the mode is chosen per photo with `torch.where`, never a Python `if`.
            Bit-exact in onnxruntime too: sizes are computed in double (`f64`) and the taps are added
            in OpenCV's order (`ordered_sum`), since many area sums are exact ties k + 0.5
  scale     the sliding windows of `Preprocess.logits`: window starts, Gaussian weights and the
            blend are computed from the working image's shape, the windows run as one batch
  back      logits resized to the photo's (H, W) (bilinear), softmax, mirror TTA averaged, then
            the stored threshold (two classes) or argmax

Every size is read from the tensor's shape and kept a tensor, so tracing (torch.onnx.export with
dynamo=False) records the arithmetic instead of freezing the example's numbers. `exportable` swaps
adaptive pooling (PSPNet's pyramid) for an equivalent that serves inputs of any size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from catseg.preprocess import Preprocess

LINEAR_COEF_SCALE = 2048.0  # OpenCV's INTER_RESIZE_COEF_SCALE: uint8 linear weights are 11-bit fixed point


def dim(t: torch.Tensor, i: int) -> torch.Tensor:
    """Return t.shape[i] as a 0-d int64 tensor: traced as the shape's value, never frozen as a number."""
    size = t.shape[i]
    return size if isinstance(size, torch.Tensor) else torch.tensor(size, dtype=torch.int64)


def f64(size: torch.Tensor) -> torch.Tensor:
    """Return a 0-d size as a (1,) float64 tensor.

    The TorchScript exporter treats 0-d tensors as scalars and computes an operation between scalars in
    float32, whatever their dtype: a (1,) tensor keeps the double precision that OpenCV's and Python's
    arithmetic on sizes has (a scale factor 384 / 320 in float32 moved resize weights by 1e-7, enough to
    round some pixels to the next grey level).
    """
    return size.double().reshape(1)


def _const(value: int) -> torch.Tensor:
    return torch.full((), value, dtype=torch.int64)


def _axis_taps(n_in: torch.Tensor, n_out: torch.Tensor, area: torch.Tensor, area_mode: torch.Tensor,
               clamp_edge: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (index, weight), each (n_out, taps): which input samples make each output sample of one axis.

    area: OpenCV's resizeArea (no axis grows): weights are the shares of each input sample inside the
    output sample's footprint. Otherwise two linear taps s, s + 1 with 11-bit fixed-point weights (whole
    numbers summing to 2048): half-pixel INTER_LINEAR, or OpenCV's 'area-mode' taps when INTER_AREA is
    asked but some axis grows (area_mode). OpenCV sets the weight of edge samples to 0 along x only
    (clamp_edge); along y it clamps the rows and keeps the weights.
    """
    n_in_f = f64(n_in)
    scale = n_in_f / f64(n_out)  # OpenCV's scale_x (double)
    taps = (torch.floor(scale).long() + 2).reshape(())  # a footprint covers at most ceil(scale) + 1 samples
    d = torch.arange(n_out, dtype=torch.float64)[:, None]  # (n_out, 1)
    k = torch.arange(taps, dtype=torch.float64)[None, :]  # (1, taps)
    lo = d * scale
    first = torch.floor(lo)
    j = first + k
    overlap = (torch.minimum((d + 1) * scale, j + 1) - torch.maximum(lo, j)).clamp(min=0)
    cell = torch.minimum(scale, n_in_f - lo)  # OpenCV's cellWidth
    area_w = torch.where(j < n_in_f, overlap / cell, torch.zeros_like(overlap))
    f_lin = (d + 0.5) * scale - 0.5
    s_am = torch.floor(d * scale)
    frac_am = (d + 1) - (s_am + 1) / scale
    frac_am = torch.where(frac_am <= 0, torch.zeros_like(frac_am), frac_am - torch.floor(frac_am))
    s = torch.where(area_mode, s_am, torch.floor(f_lin))
    frac = torch.where(area_mode, frac_am, f_lin - torch.floor(f_lin)).float().double()  # OpenCV's fx is a float
    if clamp_edge:
        frac = torch.where((s < 0) | (s >= n_in_f - 1), torch.zeros_like(frac), frac)
    w0, w1 = torch.round((1 - frac) * LINEAR_COEF_SCALE), torch.round(frac * LINEAR_COEF_SCALE)
    lin_w = torch.where(k == 0, w0, torch.where(k == 1, w1, torch.zeros_like(k + d)))
    lin_i = s + torch.clamp(k, max=1)
    index = torch.where(area, j, lin_i).clamp(min=0)
    index = torch.minimum(index, n_in_f - 1).long()
    return index, torch.where(area, area_w, lin_w).float()


def ordered_sum(x: torch.Tensor, dim_: int) -> torch.Tensor:
    """Return x summed over `dim_` one term after another, in float32, as OpenCV's loops add.

    Float sums round differently in another order, and a resize whose exact value is a tie (k + 0.5, common
    for factors like 1.5 or 2.5) then rounds to another grey level. A reduction's order is the runtime's
    choice; CumSum's is not (out[i] = out[i - 1] + x[i]), so the exported graph sums with it. In PyTorch
    (whose cumsum accumulates in double) the terms are added in a Python loop over the few taps.
    """
    if torch.onnx.is_in_onnx_export():
        return x.cumsum(dim_).select(dim_, -1)
    total = x.select(dim_, 0)
    for k in range(1, x.shape[dim_]):
        total = total + x.select(dim_, k)
    return total


def _gather(x: torch.Tensor, index: torch.Tensor, dim_: int) -> torch.Tensor:
    """Return x (C, H, W) gathered along dim 1 or 2 by an (n_out, taps) index: (C, n_out, taps, W) or
    (C, H, n_out, taps)."""
    n_out, taps = dim(index, 0), dim(index, 1)
    gathered = x.index_select(dim_, index.reshape(-1))
    if dim_ == 1:
        return gathered.reshape(dim(x, 0), n_out, taps, dim(x, 2))
    return gathered.reshape(dim(x, 0), dim(x, 1), n_out, taps)


def resize_like_cv2(x: torch.Tensor, height: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """Return x (C, H, W), float holding uint8 values, resized to (height, width) as
    catseg.preprocess.resize_image does with OpenCV (INTER_AREA when the area shrinks, else
    INTER_LINEAR), with OpenCV's uint8 arithmetic: area sums in float32 rounded to even (block sums for
    whole-number factors), linear in 11-bit fixed point with its vector unit's shifts. Horizontal
    first, as OpenCV. The rounding of exact ties can still differ by 1 on a few pixels."""
    h_in, w_in = dim(x, 1), dim(x, 2)
    shrink = height * width < h_in * w_in  # resize_image's choice of INTER_AREA
    no_growth = (h_in >= height) & (w_in >= width)  # OpenCV: scale_x >= 1 and scale_y >= 1
    area, area_mode = shrink & no_growth, shrink & ~no_growth
    cols, col_w = _axis_taps(w_in, width, area, area_mode, clamp_edge=True)
    rows, row_w = _axis_taps(h_in, height, area, area_mode, clamp_edge=False)
    horizontal = ordered_sum(_gather(x, cols, 2) * col_w, 3)  # (C, H, width); exact whole numbers when linear
    g = _gather(horizontal, rows, 1)  # (C, height, taps, width)
    row_w = row_w[:, :, None]  # (height, taps, 1)
    by_area = ordered_sum(g * row_w, 2)
    # OpenCV's fast path for whole-number factors sums each block exactly, then multiplies by the float
    # 1 / (block area) (its 2x2 vector path: (sum + 2) >> 2); other factors round the float sum.
    fast = (h_in % height == 0) & (w_in % width == 0)
    block = ((h_in // height) * (w_in // width)).float()
    total = torch.round(by_area * block)  # the exact block sum where fast
    two_by_two = (h_in == 2 * height) & (w_in == 2 * width)  # the vector path is for 2x2 blocks only, not 4x1
    by_fast = torch.where(two_by_two, torch.floor(total / 4 + 0.5), torch.round(total * (1.0 / block)))
    by_area = torch.where(fast, by_fast, torch.round(by_area))
    # OpenCV's vector unit: ((b0 * (S0 >> 4)) >> 16) + ((b1 * (S1 >> 4)) >> 16), then (v + 2) >> 2.
    g64, b64 = torch.floor(g.double() / 16), row_w.double()
    by_linear = torch.floor((torch.floor(g64 * b64 / 65536).sum(2) + 2) / 4).float()
    return torch.where(area, by_area, by_linear).clamp(0, 255)


def scale_working_size(height: torch.Tensor, width: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the working (height, width) of the scale policy: shorter side -> size, as
    catseg.preprocess.working_size computes it (double precision, ties to even)."""
    h, w = f64(height), f64(width)
    factor = size / torch.minimum(h, w)
    return (torch.round(h * factor).long().clamp(min=1).reshape(()),
            torch.round(w * factor).long().clamp(min=1).reshape(()))


def _window_starts(length: torch.Tensor, window: torch.Tensor, overlap: float) -> torch.Tensor:
    """Return int64 starts of windows covering `length`, as catseg.preprocess.window_starts."""
    stride = torch.floor(f64(window) * (1.0 - overlap)).clamp(min=1)
    span = f64(length - window)  # 0 when the window covers the side
    count = torch.ceil(span / stride) + 1
    i = torch.arange(count.long().reshape(()), dtype=torch.float64)
    return torch.round(i * span / (count - 1).clamp(min=1)).long()


def _gaussian(n: torch.Tensor) -> torch.Tensor:
    """Return catseg.preprocess.gaussian_weight's per-axis factor (n,) float64, peak 1."""
    nf = f64(n)
    x = torch.arange(n, dtype=torch.float64) - (nf - 1) / 2
    return torch.exp(-0.5 * (x / torch.clamp(nf / 8, min=1.0)) ** 2)


def sliding_window_graph(forward: nn.Module, x: torch.Tensor, patch: int, overlap: float,
                         static_channels: int = 0) -> torch.Tensor:
    """Return logits (K, H, W) of x (C, H, W) from patch x patch windows blended by a Gaussian weight, as
    catseg.preprocess.sliding_window, with the windows gathered and scattered by index (no Python loop).

    static_channels: when every window is patch x patch (patch <= the working image's shorter side), the
    number of channels, so that the network sees a fixed input shape, which models with adaptive
    pooling (PSPNet) need to be exported; 0 when windows can be smaller.
    """
    channels, height, width = dim(x, 0), dim(x, 1), dim(x, 2)
    wh, ww = torch.clamp(height, max=patch), torch.clamp(width, max=patch)
    rows = _window_starts(height, wh, overlap)[:, None] + torch.arange(wh)[None, :]  # (ny, wh)
    cols = _window_starts(width, ww, overlap)[:, None] + torch.arange(ww)[None, :]  # (nx, ww)
    ny, nx = dim(rows, 0), dim(cols, 0)
    flat = (rows[:, None, :, None] * width + cols[None, :, None, :]).reshape(-1)  # (ny * nx * wh * ww,)
    windows = x.reshape(channels, -1).index_select(1, flat).reshape(channels, ny * nx, wh, ww)
    windows = windows.permute(1, 0, 2, 3)  # (B, C, wh, ww)
    if static_channels:
        windows = windows.reshape(-1, static_channels, patch, patch)
    logits = forward(windows).float()  # (B, K, wh, ww)
    weight = torch.outer(_gaussian(wh), _gaussian(ww))
    weight = torch.clamp(weight / weight.max(), min=1e-3).float()  # (wh, ww)
    classes = dim(logits, 1)
    values = (logits * weight).permute(1, 0, 2, 3).reshape(classes, -1)  # (K, B * wh * ww)
    total = torch.zeros(classes, height * width).scatter_add(1, flat[None].expand(classes, -1), values)
    norm = torch.zeros(height * width).scatter_add(0, flat, weight[None].expand(ny * nx, -1, -1).reshape(-1))
    return (total / norm).reshape(classes, height, width)


class AdaptiveAvgPool2dGraph(nn.Module):
    """nn.AdaptiveAvgPool2d as two small matrix products whose bins come from the input's shape.

    The TorchScript exporter can only export adaptive pooling to a fixed size when it knows the input's
    size (PSPNet's pyramid pools to 1, 2, 3 and 6 bins); this form serves any input size. Bins are
    PyTorch's: [floor(i * n / o), ceil((i + 1) * n / o)).
    """

    def __init__(self, output_size: tuple[int, int]) -> None:
        super().__init__()
        self.output_size = output_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, oh, ow)
        if self.output_size == (1, 1):
            return x.mean((2, 3), keepdim=True)
        rows = _bins(dim(x, 2), self.output_size[0])  # (oh, H)
        cols = _bins(dim(x, 3), self.output_size[1])  # (ow, W)
        return torch.matmul(torch.matmul(rows, x), cols.t())


def _bins(n: torch.Tensor, bins: int) -> torch.Tensor:
    """Return the (bins, n) averaging matrix of adaptive pooling along one axis."""
    i = torch.arange(bins)[:, None]
    start = torch.div(i * n, bins, rounding_mode="floor")
    end = torch.div((i + 1) * n + bins - 1, bins, rounding_mode="floor")
    j = torch.arange(n)[None, :]
    inside = (j >= start) & (j < end)
    return inside.float() / (end - start).float()


class PSPBlockGraph(nn.Module):
    """smp's PSPBlock (pool to n x n bins, 1x1 conv, resize back) with exportable pooling: under ONNX export
    smp switches to F.interpolate(mode='area'), which the TorchScript exporter cannot export for inputs
    whose size it does not know."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.pool = AdaptiveAvgPool2dGraph((block.pool_size, block.pool_size))
        self.conv = block.pool[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(self.pool(x))
        return F.interpolate(y, size=x.shape[2:], mode="bilinear", align_corners=True)


def exportable(model: nn.Module) -> nn.Module:
    """Return a copy of the model whose adaptive average pools (and smp's PSPNet blocks around them) are
    replaced by forms with the same results that export for inputs of any size."""
    import copy

    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if type(module).__name__ == "PSPBlock" and hasattr(module, "pool_size"):
            replacement: nn.Module = PSPBlockGraph(module)
        elif isinstance(module, nn.AdaptiveAvgPool2d):
            size = module.output_size
            size = (size, size) if isinstance(size, int) else tuple(size)
            if None in size:  # keeps that side as it is: not used by any registered model
                continue
            replacement = AdaptiveAvgPool2dGraph(size)  # type: ignore[arg-type]
        else:
            continue
        parent, _, attr = name.rpartition(".")
        if parent and not _is_inside_replaced(model, parent):
            setattr(model.get_submodule(parent), attr, replacement)
    return model


def _is_inside_replaced(model: nn.Module, path: str) -> bool:
    """Return True when a module on `path` was already replaced (its children are gone from the model)."""
    try:
        model.get_submodule(path)
    except AttributeError:
        return True
    return False


class PhotoGraph(nn.Module):
    """(H, W, C) uint8 photo -> (H, W) uint8 class mask and (K, H, W) float32 probabilities, any H and W."""

    def __init__(self, model: nn.Module, pre: Preprocess, num_classes: int, threshold: float | None = None,
                 flip: bool = False, scales: tuple[float, ...] = (1.0,)) -> None:
        super().__init__()
        self.model = model
        self.pre = pre
        # the working size's multiples averaged over, as Predictor: each a fixed policy, so a Python loop traces
        self.policies = [pre.scaled(s) for s in scales]
        self.threshold = threshold if num_classes == 2 else None
        self.flip = flip
        self.register_buffer("mean", torch.tensor(pre.mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(pre.std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the (H, W) uint8 mask (before clean-up) and (K, H, W) probabilities of an (H, W, C) photo."""
        total = []
        for pre in self.policies:
            total.append(self.probabilities(image, pre))  # (K, H, W)
            if self.flip:  # mirror TTA: the mirrored photo's probabilities, mirrored back, averaged in
                total.append(self.probabilities(image.flip(1), pre).flip(-1))
        probs = total[0] if len(total) == 1 else torch.stack(total).mean(0)
        if self.threshold is not None:
            mask = probs[1] >= self.threshold
        else:
            mask = probs.argmax(0)
        return mask.to(torch.uint8), probs

    def probabilities(self, image: torch.Tensor, pre: Preprocess | None = None) -> torch.Tensor:
        """Return (K, H, W) probabilities of one (H, W, C) uint8 photo under size policy `pre` (default the
        run's; Preprocess.scaled for the other prediction sizes), without TTA."""
        pre = pre or self.pre
        size = pre.size
        shape = image.shape[0], image.shape[1]  # ints when eager, 0-d tensors when traced
        height, width = dim(image, 0), dim(image, 1)
        x = image.permute(2, 0, 1).float()  # (C, H, W), values 0-255
        if pre.whole_image:
            x = resize_like_cv2(x, _const(size), _const(size)).reshape(pre.channels, size, size)  # static
        else:
            x = resize_like_cv2(x, *scale_working_size(height, width, size))
        x = (x[None] / 255.0 - self.mean) / self.std  # (1, C, h, w), as Preprocess.normalise
        if pre.whole_image:
            logits = self.model(x).float()
        else:
            logits = sliding_window_graph(self.model, x[0], pre.window, pre.overlap,
                                          pre.channels if pre.window <= size else 0)[None]
        logits = F.interpolate(logits, size=shape, mode="bilinear", align_corners=False)
        return logits.softmax(1)[0]
