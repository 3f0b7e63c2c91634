"""The openvino backend: OpenVINO runs `catseg export`'s file and gives what the PyTorch backend gives; it
names itself and fails loudly, never falling back to onnxruntime or PyTorch."""

from __future__ import annotations

import builtins
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

EXTRA = "the openvino backend needs the 'openvino' extra: pip install 'catseg[openvino]'"
pytest.importorskip("onnxruntime", reason=EXTRA)
pytest.importorskip("openvino", reason=EXTRA)

from catseg.errors import CatsegError
from catseg.export import CHECK_SIZES, MIN_AGREEMENT, export_onnx
from catseg.onnx_backend import OnnxPredictor
from catseg.predict import Predictor, open_predictor, predict_files
from catseg.preprocess import resize_image

FIXTURES = Path(__file__).parent / "fixtures"


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(60, 120, (h, w, 3)).astype(np.uint8)
    image[h // 4: h // 2 + 1, w // 4: w // 2 + 1] = 230
    return image


@pytest.fixture(params=["run-v1-scale-2class", "run-v1-stretch-3class"])
def run(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURES / request.param, tmp_path / "run"))


@pytest.mark.slow  # 10-40 s on 2 busy cores: PyTorch's windows over 1024x640 are the slow part
def test_openvino_masks_agree_with_pytorch_on_every_check_size(run: Path) -> None:
    """The export's parity bar, held by OpenVINO too: same photos and sizes as the export's own check."""
    reference = Predictor.from_run(run, device="cpu", precision="fp32")
    openvino = open_predictor(run, backend="openvino", threads=1)
    assert isinstance(openvino, OnnxPredictor) and openvino.runtime == "openvino"
    base = _photo(120, 90)
    for h, w in [(120, 90), *CHECK_SIZES]:
        photo = resize_image(base, h, w)
        probs = reference.predict_proba(photo)
        out = openvino.run(photo)
        t = reference.config.threshold if reference.config.num_classes == 2 else None
        want = ((probs[1] >= t) if t is not None else probs.argmax(0)).numpy().astype(np.uint8)
        assert out["mask"].shape == (h, w)
        assert (out["mask"] == want).mean() >= MIN_AGREEMENT, (h, w)
        assert np.abs(out["probs"] - probs.numpy()).max() < 2e-3, (h, w)


def test_openvino_backend_names_itself_and_writes_the_same_files(run: Path, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    photos = tmp_path / "in"
    photos.mkdir()
    for i, (h, w) in enumerate([(45, 61), (97, 33)]):
        Image.fromarray(_photo(h, w, seed=i)).save(photos / f"p{i}.png")
    with caplog.at_level(logging.INFO, logger="catseg"):
        onnx = predict_files(run, [str(photos)], tmp_path / "onnx", ("mask", "npy"), backend="onnx")
        ov = predict_files(run, [str(photos)], tmp_path / "ov", ("mask", "npy"), backend="openvino")
    assert "backend: OpenVINO" in caplog.text and "backend: onnxruntime" in caplog.text
    assert sorted(p.name for p in onnx) == sorted(p.name for p in ov)
    for name in ("p0.png", "p1.png"):
        a, b = np.asarray(Image.open(tmp_path / "onnx" / name)), np.asarray(Image.open(tmp_path / "ov" / name))
        assert a.shape == b.shape and (a == b).mean() >= MIN_AGREEMENT


def test_an_exported_file_runs_on_openvino_alone(tmp_path: Path) -> None:
    run = Path(shutil.copytree(FIXTURES / "run-v1-stretch-3class", tmp_path / "run"))
    path = export_onnx(run, tmp_path / "m.onnx", threads=1).path
    shutil.rmtree(run)  # the file carries everything
    predictor = open_predictor(path, backend="openvino")
    assert predictor.runtime == "openvino" and predictor.classes == ["background", "square", "disc"]
    assert predictor.predict(_photo(50, 70)).shape == (50, 70)


def test_openvino_fails_loudly_never_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(CatsegError, match="OpenVINO cannot load it"):
        open_predictor(tmp_path / "junk.onnx", backend="openvino")
    with pytest.raises(CatsegError, match="openvino backend runs on the CPU"):
        open_predictor(FIXTURES / "run-v1-stretch-3class", backend="openvino", device="cuda")
    real_import = builtins.__import__

    def no_openvino(name: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("No module named 'openvino'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    run = Path(shutil.copytree(FIXTURES / "run-v1-stretch-3class", tmp_path / "run"))
    with pytest.raises(CatsegError, match=r"pip install 'catseg\[openvino\]'"):
        open_predictor(run, backend="openvino")
    assert not (run / "model.onnx").exists()  # refused before exporting anything


def test_the_app_names_the_openvino_backend(tmp_path: Path) -> None:
    from catseg.app import Segmenter

    run = Path(shutil.copytree(FIXTURES / "run-v1-stretch-3class", tmp_path / "run"))
    segmenter = Segmenter(run, backend="openvino", threads=1)
    assert segmenter.info()["backend"] == "openvino"
    assert segmenter.predictor.predict(_photo(40, 30)).shape == (40, 30)
