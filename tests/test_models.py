"""Models: the contract every registered model keeps, the UNet, the registry, encoder weights, weight files."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
from torch import nn

from catseg.config import TrainConfig
from catseg.errors import CatsegError
from catseg.models import (
    create_model,
    describe_models,
    list_models,
    load_weights,
    model_kwargs,
    preprocessing_for,
    rebuild_kwargs,
    register_model,
    registry,
    save_weights,
)
from catseg.models.unet import UNet

IMAGENET_MEAN = [0.485, 0.456, 0.406]


def tiny_kwargs(name: str) -> dict:
    """The smallest options of each model that still exercise its whole forward."""
    if name == "unet":
        return {"width": 4, "depth": 3}
    if name.startswith("smp-"):
        return {"encoder": "resnet18"}
    return {}


def tiny(name: str, in_channels: int = 3, num_classes: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(name, in_channels, num_classes, **tiny_kwargs(name))


def warm_up(model: nn.Module, in_channels: int = 3) -> nn.Module:
    """Move BatchNorm statistics away from their initial values, so that a lost buffer shows."""
    model.train()
    with torch.no_grad():
        model(torch.rand(2, in_channels, 32, 32) * 3 + 1)
    return model.eval()


# ----------------------------------------------------------------------------- the contract
@pytest.mark.parametrize("name", list_models())
class TestContract:
    def test_logits_at_input_size(self, name: str) -> None:
        model = tiny(name).eval()
        with torch.no_grad():
            for h, w in ((33, 47), (64, 64), (7, 40)):
                assert model(torch.randn(1, 3, h, w)).shape == (1, 2, h, w)

    def test_backward_reaches_every_parameter(self, name: str) -> None:
        model = tiny(name).train()
        logits = model(torch.randn(2, 3, 33, 47))
        nn.functional.cross_entropy(logits, torch.randint(0, 2, (2, 33, 47))).backward()
        for pname, p in model.named_parameters():
            assert p.grad is not None, pname
            assert torch.isfinite(p.grad).all(), pname
        assert any(p.grad.abs().sum() > 0 for p in model.parameters())

    def test_weights_round_trip(self, name: str, tmp_path: Path) -> None:
        x = torch.randn(1, 3, 33, 47)
        model = warm_up(tiny(name, seed=0))
        fresh = tiny(name, seed=1).eval()
        with torch.no_grad():
            expected = model(x)
            assert not torch.equal(fresh(x), expected)  # else the round trip proves nothing
            save_weights(model, tmp_path / "model.safetensors")
            load_weights(fresh, tmp_path / "model.safetensors")
            assert torch.equal(fresh(x), expected)

    def test_channels_last(self, name: str) -> None:
        model = warm_up(tiny(name))
        x = torch.randn(2, 3, 33, 47)
        with torch.no_grad():
            expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        with torch.no_grad():
            got = model(x.to(memory_format=torch.channels_last))
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        model.train()
        model(x.to(memory_format=torch.channels_last)).mean().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())

    @pytest.mark.parametrize("in_channels, num_classes", [(1, 1), (5, 5), (3, 2)])
    def test_input_channels_and_classes(self, name: str, in_channels: int, num_classes: int) -> None:
        model = tiny(name, in_channels, num_classes).eval()
        with torch.no_grad():
            assert model(torch.randn(1, in_channels, 33, 47)).shape == (1, num_classes, 33, 47)


@pytest.mark.parametrize("name", [n if n == "unet" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in list_models()])
def test_large_input_keeps_its_size(name: str) -> None:
    model = tiny(name).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 900, 900)).shape == (1, 2, 900, 900)


# ----------------------------------------------------------------------------- unet
def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_unet_default_is_the_course_size() -> None:
    assert 7_600_000 < n_params(create_model("unet")) < 7_900_000


def test_unet_options_change_its_size() -> None:
    base = n_params(create_model("unet", width=8, depth=3))
    assert 3.5 < n_params(create_model("unet", width=16, depth=3)) / base < 4.1  # convs scale with width**2
    assert n_params(create_model("unet", width=8, depth=4)) > 3 * base
    bilinear = create_model("unet", width=8, depth=3, upsample="bilinear")
    assert n_params(bilinear) < base
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in bilinear.modules())
    assert any(isinstance(m, nn.Upsample) for m in bilinear.modules())
    with torch.no_grad():
        assert bilinear.eval()(torch.randn(1, 3, 21, 50)).shape == (1, 2, 21, 50)


def test_unet_batchnorm_is_registered_and_learns_statistics() -> None:
    depth = 3
    model = create_model("unet", width=4, depth=depth)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 2 * (2 * depth + 1)  # two per DoubleConv: stem, each Down, each Up
    assert sum(k.endswith("running_mean") for k in model.state_dict()) == len(bns)
    before = [bn.running_mean.clone() for bn in bns]
    model.eval()(torch.randn(2, 3, 16, 16))
    assert all(torch.equal(b, bn.running_mean) for b, bn in zip(before, bns))
    model.train()(torch.randn(2, 3, 16, 16) + 2)
    assert all(not torch.equal(b, bn.running_mean) for b, bn in zip(before, bns))


def test_unet_to_moves_every_buffer() -> None:
    model = warm_up(create_model("unet", width=4, depth=2)).double()
    floats = [b for b in model.buffers() if b.is_floating_point()]
    assert floats and all(b.dtype == torch.float64 for b in floats)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 20, 20, dtype=torch.float64)).dtype == torch.float64


def test_unet_takes_hyperspectral_input() -> None:
    model = create_model("unet", in_channels=400, num_classes=3, width=4, depth=2).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 400, 18, 13)).shape == (1, 3, 18, 13)


def test_unet_is_kaiming_initialised() -> None:
    model = UNet(width=32, depth=4)
    conv = model.downs[2][1][0]  # 128 -> 256 channels, 3 x 3
    fan_out = conv.out_channels * 9
    # PyTorch's default would give 1 / sqrt(3 * fan_in) = 0.017; He (fan_out) gives 0.029
    assert conv.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.1)


# ----------------------------------------------------------------------------- registry
def test_describe_models_has_one_line_per_model() -> None:
    described = describe_models()
    assert list(described) == list_models()
    assert {"unet", "smp-unet", "smp-fpn", "smp-deeplabv3plus"} <= set(described)
    assert all(text and "\n" not in text for text in described.values())


def test_unknown_model_lists_the_names() -> None:
    with pytest.raises(CatsegError) as err:
        create_model("segformer-xxl")
    assert "segformer-xxl" in str(err.value)
    assert all(name in str(err.value) for name in list_models())


def test_unknown_option_says_what_is_allowed() -> None:
    with pytest.raises(CatsegError, match=r"'unet' does not take option\(s\) encoder.*width=32.*depth=4.*upsample"):
        create_model("unet", encoder="resnet18")
    with pytest.raises(CatsegError, match=r"width.*encoder='resnet34'.*encoder_weights"):
        create_model("smp-unet", width=8)


def test_bad_option_values_are_reported_together() -> None:
    with pytest.raises(CatsegError) as err:
        create_model("unet", width=0, depth=9, upsample="nearest")
    assert len(err.value.problems) == 3
    assert "transpose, bilinear" in str(err.value)
    with pytest.raises(CatsegError, match="num_classes=0"):
        create_model("unet", num_classes=0)


def test_unknown_encoder_suggests_valid_ones() -> None:
    with pytest.raises(CatsegError, match=r"'resnet181'.*resnet18"):
        create_model("smp-unet", encoder="resnet181")


def test_model_kwargs_picks_the_models_options_from_a_config() -> None:
    config = TrainConfig(model="unet", width=8, depth=3, upsample="bilinear", encoder="resnet18")
    assert model_kwargs("unet", config) == {"width": 8, "depth": 3, "upsample": "bilinear"}
    assert model_kwargs("smp-fpn", config) == {"encoder": "resnet18", "encoder_weights": "auto", "decoder_width": 0}
    assert model_kwargs("smp-linknet", config) == {"encoder": "resnet18", "encoder_weights": "auto"}


def test_rebuild_never_reads_the_pretrained_weights(tmp_path: Path) -> None:
    config = TrainConfig(encoder="resnet18", encoder_weights=str(tmp_path / "gone.pth"))
    kwargs = model_kwargs("smp-unet", config)
    with pytest.raises(CatsegError, match="gone.pth"):
        create_model("smp-unet", **kwargs)
    rebuilt = rebuild_kwargs("smp-unet", kwargs)
    assert rebuilt == {"encoder": "resnet18", "encoder_weights": None, "decoder_width": 0}
    assert isinstance(create_model("smp-unet", **rebuilt), nn.Module)
    assert rebuild_kwargs("unet", {"width": 8}) == {"width": 8}


def test_decoder_width_narrows_the_decoder_and_is_rebuilt_from_the_run() -> None:
    def decoder_params(model: nn.Module) -> int:
        return sum(p.numel() for p in model.net.decoder.parameters())

    default = create_model("smp-unet", encoder="efficientnet-lite0", encoder_weights="none")
    narrow = create_model("smp-unet", encoder="efficientnet-lite0", encoder_weights="none", decoder_width=64)
    convs = [m for m in narrow.net.decoder.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs][::2] == [64, 32, 16, 8, 4]  # two convs per level, halving
    assert decoder_params(narrow) < decoder_params(default) / 5
    x = torch.rand(1, 3, 96, 64)
    assert narrow.eval()(x).shape == (1, 2, 96, 64)
    fpn = create_model("smp-fpn", encoder="efficientnet-lite0", encoder_weights="none", decoder_width=64)
    assert fpn.eval()(x).shape == (1, 2, 96, 64)
    kwargs = model_kwargs("smp-unet", TrainConfig(decoder_width=64))
    rebuilt = create_model("smp-unet", **rebuild_kwargs("smp-unet", kwargs))
    assert kwargs["decoder_width"] == 64
    assert rebuilt.state_dict().keys() == narrow.state_dict().keys()
    assert decoder_params(rebuilt) == decoder_params(narrow)
    for bad in (4, 2000, 1.5, True):
        with pytest.raises(CatsegError, match="decoder_width"):
            create_model("smp-unet", encoder="efficientnet-lite0", decoder_width=bad)
    with pytest.raises(CatsegError, match="decoder_width"):  # LinkNet has no width to set
        create_model("smp-linknet", encoder="efficientnet-lite0", decoder_width=64)


def test_register_model_adds_a_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_model("one-by-one", "a 1x1 conv")
    def one_by_one(in_channels: int, num_classes: int, *, bias: bool = True) -> nn.Module:
        return nn.Conv2d(in_channels, num_classes, 1, bias=bias)

    assert "one-by-one" in list_models() and describe_models()["one-by-one"] == "a 1x1 conv"
    assert create_model("one-by-one", 4, 3, bias=False).bias is None
    assert model_kwargs("one-by-one", object()) == {"bias": True}
    with pytest.raises(ValueError, match="twice"):
        register_model("one-by-one", "again")(one_by_one)


def test_preprocessing_matches_the_encoder() -> None:
    assert preprocessing_for("unet", {}, in_channels=4) == {"mean": [0.5] * 4, "std": [0.5] * 4}
    assert preprocessing_for("smp-unet", {"encoder": "resnet18"})["mean"] == IMAGENET_MEAN
    assert preprocessing_for("smp-unet", {"encoder": "xception"})["mean"] == [0.5] * 3
    assert preprocessing_for("smp-fpn", {"encoder": "tu-inception_v3"})["std"] == [0.5] * 3  # timm's own metadata
    grey = preprocessing_for("smp-unet", {"encoder": "resnet18"}, in_channels=1)
    assert grey["mean"] == [pytest.approx(sum(IMAGENET_MEAN) / 3)] and len(grey["std"]) == 1
    assert preprocessing_for("smp-unet", {}, in_channels=5)["mean"] == IMAGENET_MEAN + IMAGENET_MEAN[:2]


# ----------------------------------------------------------------------------- encoder weights
def resnet18_state(seed: int = 3) -> dict[str, torch.Tensor]:
    """An encoder state dict whose values are known and unlike any initialisation."""
    from segmentation_models_pytorch.encoders import get_encoder

    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) if v.is_floating_point() else v + 7
            for k, v in get_encoder("resnet18", weights=None).state_dict().items()}


def save_state(state: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_encoder_weights_from_a_local_file(tmp_path: Path, suffix: str) -> None:
    state = resnet18_state()
    path = save_state(state, tmp_path / f"resnet18{suffix}")
    model = create_model("smp-unet", encoder="resnet18", encoder_weights=str(path))
    loaded = model.net.encoder.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_encoder_weights_from_a_classifier_checkpoint(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    classifier = {f"module.{k}": v for k, v in torchvision.models.resnet18(weights=None).state_dict().items()}
    assert any(".fc." in k for k in classifier)
    path = save_state({"state_dict": classifier}, tmp_path / "tv.pth")  # wrapped, as training scripts save
    encoder = create_model("smp-fpn", encoder="resnet18", encoder_weights=str(path)).net.encoder
    assert torch.equal(encoder.layer4[1].conv2.weight, classifier["module.layer4.1.conv2.weight"])


def test_timm_weights_into_a_timm_universal_encoder(tmp_path: Path) -> None:
    import timm

    state = timm.create_model("resnet10t", pretrained=False).state_dict()
    path = save_state(state, tmp_path / "timm.pth")
    encoder = create_model("smp-unet", encoder="tu-resnet10t", encoder_weights=str(path)).net.encoder
    assert torch.equal(encoder.state_dict()["model.layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])


def test_encoder_weights_adapt_the_first_conv_to_the_channels(tmp_path: Path) -> None:
    rgb = resnet18_state()["conv1.weight"]  # (64, 3, 7, 7)
    path = save_state(resnet18_state(), tmp_path / "rgb.pth")
    grey = create_model("smp-unet", in_channels=1, encoder="resnet18", encoder_weights=str(path))
    torch.testing.assert_close(grey.net.encoder.conv1.weight, rgb.sum(1, keepdim=True))  # grey = R = G = B
    five = create_model("smp-unet", in_channels=5, encoder="resnet18", encoder_weights=str(path))
    torch.testing.assert_close(five.net.encoder.conv1.weight, rgb[:, [0, 1, 2, 0, 1]] * 3 / 5)  # smp's rule


def test_encoder_weights_that_do_not_fit(tmp_path: Path) -> None:
    foreign = save_state({"backbone.stem.weight": torch.zeros(3)}, tmp_path / "foreign.pth")
    with pytest.raises(CatsegError, match="foreign.pth has no tensor this encoder uses"):
        create_model("smp-unet", encoder="resnet18", encoder_weights=str(foreign))
    smaller = save_state(resnet18_state(), tmp_path / "resnet18.pth")
    with pytest.raises(CatsegError, match=r"resnet18.pth does not fit[\s\S]*layer1.2"):
        create_model("smp-unet", encoder="resnet34", encoder_weights=str(smaller))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CatsegError, match="cannot read encoder weights file .*garbage.pth"):
        create_model("smp-unet", encoder="resnet18", encoder_weights=str(garbage))
    with pytest.raises(CatsegError, match="'ssl'"):  # a name that is neither a file nor a weight set
        create_model("smp-unet", encoder="resnet18", encoder_weights="imagenet21k")


def test_imagenet_offline_says_how_to_fix_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import segmentation_models_pytorch.encoders as smp_encoders

    calls = []

    def offline(*args: object, **kwargs: object) -> str:
        calls.append(args)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(smp_encoders, "hf_hub_download", offline)
    create_model("smp-unet", encoder="resnet18", encoder_weights="none")
    assert not calls, "random initialisation must not touch the network"
    with pytest.raises(CatsegError) as err:
        create_model("smp-unet", encoder="resnet18", encoder_weights="imagenet")
    assert calls, "the download was never attempted"
    text = str(err.value)
    assert "no internet" in text and "--encoder-weights /path/to/file" in text
    assert "https://huggingface.co/smp-hub/resnet18.imagenet/" in text


# ----------------------------------------------------------------------------- weight files
def test_save_weights_is_safetensors_and_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file

    path = tmp_path / "w.safetensors"
    model = create_model("unet", width=4, depth=2)
    save_weights(model, path)
    assert set(load_file(str(path))) == set(model.state_dict())
    original = path.read_bytes()

    import errno
    import os as _os

    import catseg.files

    real_fdopen = _os.fdopen

    class HalfWritten:  # the disk fills up after part of the file was written
        def __init__(self, fd: int, mode: str) -> None:
            self.f = real_fdopen(fd, mode)

        def __enter__(self) -> "HalfWritten":
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

        def write(self, data: bytes) -> int:
            self.f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(catseg.files.os, "fdopen", HalfWritten)
    with pytest.raises(CatsegError, match="disk is full"):
        save_weights(create_model("unet", width=4, depth=2), path)
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_tied_weights_round_trip(tmp_path: Path) -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)
            self.b.weight = self.a.weight

    model, fresh = Tied(), Tied()
    save_weights(model, tmp_path / "tied.safetensors")
    load_weights(fresh, tmp_path / "tied.safetensors")
    assert torch.equal(fresh.b.weight, model.a.weight) and fresh.a.weight is fresh.b.weight


def test_load_weights_of_another_model_names_the_file_and_keys(tmp_path: Path) -> None:
    path = save_weights(create_model("unet", width=4, depth=2), tmp_path / "small.safetensors")
    wider = r"small.safetensors does not fit[\s\S]*stem.0.weight: file \(4, 3, 3, 3\), model \(8, 3, 3, 3\)"
    with pytest.raises(CatsegError, match=wider):
        load_weights(create_model("unet", width=8, depth=2), path)
    with pytest.raises(CatsegError, match=r"small.safetensors[\s\S]*missing from the file: downs.2"):
        load_weights(create_model("unet", width=4, depth=3), path)
    with pytest.raises(CatsegError, match=r"small.safetensors[\s\S]*in the file but not in the model: downs.0"):
        load_weights(create_model("smp-linknet", encoder="resnet18"), path)


def test_load_weights_refuses_missing_and_foreign_files(tmp_path: Path) -> None:
    model = create_model("unet", width=4, depth=2)
    with pytest.raises(CatsegError, match="nothing.safetensors does not exist"):
        load_weights(model, tmp_path / "nothing.safetensors")
    pickled = tmp_path / "pickled.safetensors"
    torch.save(model.state_dict(), pickled)
    with pytest.raises(CatsegError, match="cannot read weights file .*pickled.safetensors"):
        load_weights(model, pickled)
