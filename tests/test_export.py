"""ONNX export: the in-graph resize and windows, parity with PyTorch, every registered model, the known
traps (frozen sizes, eval mode, external data), and the onnx predict backend."""

from __future__ import annotations

import json
import logging
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnx", reason="the export tests need the 'export' extra: pip install 'catseg[export]'")
pytest.importorskip("onnxruntime", reason="the export tests need the 'export' extra: pip install 'catseg[export]'")

import onnx

from catseg.errors import CatsegError
from catseg.export import CHECK_SIZES, MIN_AGREEMENT, ONNX_FORMAT, build_graph, export_onnx, onnx_bytes, session_from
from catseg.graph import AdaptiveAvgPool2dGraph, PhotoGraph, resize_like_cv2
from catseg.models import create_model, list_models, preprocessing_for, save_weights
from catseg.predict import Predictor, open_predictor, predict_files
from catseg.preprocess import Preprocess, resize_image
from catseg.run import RunConfig
from catseg.onnx_backend import OnnxPredictor, open_run_export

FIXTURES = Path(__file__).parent / "fixtures"
# Sizes that a frozen Python branch or a padding computed once would get wrong: odd, multiples of 32 and
# of the UNet's 4, tall, wide, tiny.
SIZES = [(33, 47), (64, 64), (96, 128), (7, 40), (130, 31), (31, 130), (1, 1)]


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(60, 120, (h, w, 3)).astype(np.uint8)
    image[h // 4: h // 2 + 1, w // 4: w // 2 + 1] = 230
    return image


@pytest.fixture
def scale_run(tmp_path: Path) -> Path:
    """A copy of the pinned scale-policy run (two classes, mirror TTA, clean-up, 16 px windows over 24 px)."""
    return Path(shutil.copytree(FIXTURES / "run-v1-scale-2class", tmp_path / "scale"))


@pytest.fixture
def stretch_run(tmp_path: Path) -> Path:
    """A copy of the pinned stretch-policy run (three classes, mirror TTA, clean-up)."""
    return Path(shutil.copytree(FIXTURES / "run-v1-stretch-3class", tmp_path / "stretch"))


def _torch_predictor(run: Path, tta: bool | None = None) -> Predictor:
    return Predictor.from_run(run, device="cpu", precision="fp32", tta=tta)


def _raw_mask(predictor: Predictor, probs: torch.Tensor) -> np.ndarray:
    t = predictor.config.threshold if predictor.config.num_classes == 2 else None
    return ((probs[1] >= t) if t is not None else probs.argmax(0)).numpy().astype(np.uint8)


# ----------------------------------------------------------------------------- the graph in PyTorch
@pytest.mark.parametrize("h, w, oh, ow", [
    (640, 1024, 256, 256),  # area, both axes shrink, non-integer factor
    (512, 512, 256, 256),  # OpenCV's 2x2 fast path
    (96, 128, 32, 32), (768, 768, 256, 256),  # its fast path for other whole-number factors
    (20, 25, 32, 32),  # linear, both grow
    (100, 30, 32, 32), (30, 100, 32, 32),  # area asked, one axis grows: OpenCV's area-mode taps
    (32, 32, 32, 32), (1, 1, 32, 32), (37, 45, 24, 34),
])
def test_graph_resize_matches_opencv(h: int, w: int, oh: int, ow: int) -> None:
    image = np.random.default_rng(h * w).integers(0, 256, (h, w, 3)).astype(np.uint8)
    want = resize_image(image, oh, ow).astype(np.int16)
    got = resize_like_cv2(torch.from_numpy(image).permute(2, 0, 1).float(), torch.tensor(oh), torch.tensor(ow))
    got = got.permute(1, 2, 0).numpy().astype(np.int16)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1  # OpenCV's rounding of exact ties may differ between its versions
    assert (got != want).mean() < 0.002


@pytest.mark.parametrize("name", ["run-v1-scale-2class", "run-v1-stretch-3class"])
def test_graph_equals_the_predictor_in_pytorch(name: str) -> None:
    """Before any export: the traceable module gives the Predictor's probabilities (windows, TTA included)."""
    predictor = _torch_predictor(FIXTURES / name)
    graph = build_graph(predictor.model, predictor.config, predictor.tta)
    for h, w in SIZES:
        photo = _photo(h, w)
        with torch.no_grad():
            mask, probs = graph(torch.from_numpy(photo))
        want = predictor.predict_proba(photo)
        assert probs.shape == want.shape == (predictor.config.num_classes, h, w)
        assert torch.allclose(probs, want, atol=1e-5), (h, w)
        assert np.array_equal(mask.numpy(), _raw_mask(predictor, want))


def test_adaptive_pool_graph_equals_pytorch() -> None:
    x = torch.randn(2, 5, 13, 22)
    for size in ((1, 1), (2, 2), (3, 3), (6, 6), (4, 7)):
        torch.testing.assert_close(AdaptiveAvgPool2dGraph(size)(x), torch.nn.AdaptiveAvgPool2d(size)(x))


# ----------------------------------------------------------------------------- export and parity
def test_export_writes_one_checked_self_contained_file(scale_run: Path, tmp_path: Path) -> None:
    before = {p.name for p in scale_run.iterdir()}
    report = export_onnx(scale_run, threads=1)
    assert report.path == scale_run / "model.onnx"
    assert {p.name for p in scale_run.iterdir()} == before | {"model.onnx"}  # no external data file
    assert len(report.parity) >= 6 and report.min_agreement >= MIN_AGREEMENT
    sizes = {(p.height, p.width) for p in report.parity}
    assert {(256, 384), (333, 517), (640, 160), (160, 640)} <= sizes  # multiples of 32, odd, tall, wide
    assert "min" in report.summary() and "parity" in report.summary()
    model = onnx.load(str(report.path), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in model.graph.initializer)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["catseg_format"] == ONNX_FORMAT
    assert json.loads(meta["classes"]) == ["background", "square"]
    assert json.loads(meta["threshold"]) == pytest.approx(0.48)
    assert json.loads(meta["tta"]) == {"flip": True}
    assert json.loads(meta["postprocess"])["fill_holes"] is True and "not in the graph" in meta["postprocess_note"]
    assert "uint8 (H, W, 3)" in meta["input"] and meta["catseg_version"]
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["mask", "probs"]
    alone = tmp_path / "elsewhere" / "m.onnx"  # the file alone, away from the run folder, still runs
    alone.parent.mkdir()
    shutil.copy(report.path, alone)
    out = OnnxPredictor(alone, threads=1).run(_photo(50, 70))
    assert out["mask"].shape == (50, 70) and out["mask"].dtype == np.uint8
    assert out["probs"].shape == (2, 50, 70) and out["probs"].dtype == np.float32


@pytest.mark.parametrize("run_fixture", ["scale_run", "stretch_run"])
def test_sizes_are_not_frozen_at_export(run_fixture: str, request: pytest.FixtureRequest) -> None:
    """Exported with an odd 37 x 53 sample, the graph must serve sizes that are and are not multiples."""
    run = request.getfixturevalue(run_fixture)
    predictor = _torch_predictor(run)
    onnx_model = OnnxPredictor(export_onnx(run, threads=1).path, threads=1)
    for h, w in SIZES + [(256, 256), (37, 53), (300, 97)]:
        photo = _photo(h, w, seed=h + w)
        out = onnx_model.run(photo)
        want = predictor.predict_proba(photo)
        assert out["mask"].shape == (h, w) and out["probs"].shape == want.shape
        assert np.abs(out["probs"] - want.numpy()).max() < 1e-2, (h, w)  # a resize tie rounded the other way
        assert (out["mask"] == _raw_mask(predictor, want)).mean() >= (0.99 if h * w < 1000 else MIN_AGREEMENT)


def test_export_records_no_size_as_a_constant(stretch_run: Path) -> None:
    """A tensor size turned into a Python number (int(), .tolist(), a Python if) warns while tracing."""
    predictor = _torch_predictor(stretch_run)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        onnx_bytes(build_graph(predictor.model, predictor.config, True))
    ours = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning) and "catseg" in w.filename]
    assert not ours, [f"{w.filename}:{w.lineno}: {w.message}" for w in ours]


def test_export_is_in_eval_mode_even_when_handed_a_training_module() -> None:
    """BatchNorm must use its running statistics and dropout must be off inside the file, whatever mode
    the wrapper or the network were left in."""
    model = create_model("smp-pspnet", 3, 3, encoder="resnet18")  # BatchNorm and Dropout2d
    model.train()
    with torch.no_grad():  # move the running statistics away from the batch statistics
        model(torch.rand(2, 3, 64, 64) * 3 + 1)
    pre = Preprocess(size=64, **preprocessing_for("smp-pspnet", {"encoder": "resnet18"}))
    graph = PhotoGraph(model, pre, 3).train()  # the wrapper in training mode too
    data = onnx_bytes(graph)
    photo = _photo(70, 90)
    session = session_from(data, threads=1)
    first, second = session.run(None, {"image": photo}), session.run(None, {"image": photo})
    np.testing.assert_array_equal(first[1], second[1])  # no dropout
    with torch.no_grad():
        _, want = PhotoGraph(model.eval(), pre, 3).eval()(torch.from_numpy(photo))
    np.testing.assert_allclose(first[1], want.numpy(), atol=1e-4)


def _write_run(root: Path, name: str, resize: str, classes: int = 2, seed: int = 0, window: int = 0) -> Path:
    """Write a run folder with random tiny weights for model `name` (no training)."""
    kwargs = {"width": 4, "depth": 3} if name == "unet" else {"encoder": "resnet18", "encoder_weights": None}
    torch.manual_seed(seed)
    model = create_model(name, 3, classes, **kwargs).eval()
    norm = preprocessing_for(name, kwargs)
    pre = Preprocess(size=64, resize=resize, patch=48 if resize == "scale" else 0, window=window, **norm)
    config = RunConfig(model=name, model_kwargs=kwargs, in_channels=3, classes=[f"c{i}" for i in range(classes)],
                       colors=[[40 * i, 0, 0] for i in range(classes)], ignore_index=255, preprocess=pre,
                       threshold=0.5 if classes == 2 else None)
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(config.to_json()))
    save_weights(model, root / "model.safetensors")
    return root


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n.startswith("smp-") else n
                                  for n in list_models()])  # the smp models take 3-8 s each on 2 cores
def test_every_registered_model_exports_with_parity(name: str, tmp_path: Path) -> None:
    """The contract: each registered model, tiny random weights, both size policies, sizes that are and
    are not multiples of 32, and the area factors of 2.5 whose ties once rounded differently in onnxruntime.
    Random weights leave the classes nearly tied almost everywhere, so this holds the graph to the same bar
    as a trained run's."""
    for resize in ("stretch", "scale"):
        run = _write_run(tmp_path / resize, name, resize, classes=3)
        report = export_onnx(run, threads=1, check_sizes=((97, 131), (96, 128), (150, 41), (160, 100)))
        assert report.required == MIN_AGREEMENT
        assert max(p.max_prob_diff for p in report.parity) < 5e-3, report.summary()


def test_prediction_windows_larger_than_the_crops_export_with_parity(tmp_path: Path) -> None:
    """window 96 over 48 px training crops: working images within 96 px run in one pass, larger ones in 96 px
    windows, in the graph as in Predictor."""
    run = _write_run(tmp_path / "run", "unet", "scale", classes=3, window=96)
    assert json.loads((run / "config.json").read_text())["preprocess"]["window"] == 96
    report = export_onnx(run, threads=1, check_sizes=((97, 131), (64, 64), (150, 41), (64, 200)))
    assert max(p.max_prob_diff for p in report.parity) < 5e-3, report.summary()


def test_check_photos_are_used_for_parity(scale_run: Path, tiny_dataset: Path) -> None:
    report = export_onnx(scale_run, check=[str(tiny_dataset / "images")], threads=1)
    assert report.parity[0].name == "img00.png" and len(report.parity) == 4 + len(CHECK_SIZES)


def test_no_tta_exports_without_mirroring(scale_run: Path, tmp_path: Path) -> None:
    report = export_onnx(scale_run, tmp_path / "plain.onnx", tta=False, threads=1)
    onnx_model = OnnxPredictor(report.path, threads=1)
    assert onnx_model.info.flip is False
    photo = _photo(45, 61)
    want = _torch_predictor(scale_run, tta=False).predict_proba(photo)
    np.testing.assert_allclose(onnx_model.run(photo)["probs"], want.numpy(), atol=2e-3)


@pytest.mark.parametrize("run_fixture", ["scale_run", "stretch_run"])
def test_the_runs_chosen_prediction_sizes_are_inside_the_graph(run_fixture: str, request: pytest.FixtureRequest,
                                                               tmp_path: Path) -> None:
    """A run whose finish kept the photo also predicted 1.5x larger (config.json tta.scales): the torch backend
    and the exported graph both average the two sizes (and the mirror), and the file's metadata says so."""
    run = request.getfixturevalue(run_fixture)
    doc = json.loads((run / "config.json").read_text())
    doc["tta"] = {"flip": True, "scales": [1.0, 1.5]}
    (run / "config.json").write_text(json.dumps(doc))
    torch_predictor = _torch_predictor(run)
    assert torch_predictor.tta_scales == (1.0, 1.5)
    photo = _photo(45, 61)
    want = torch_predictor.predict_proba(photo)
    plain = Predictor.from_run(run, device="cpu", precision="fp32", tta_scales=(1.0,)).predict_proba(photo)
    assert not torch.allclose(want, plain, atol=1e-3)  # the larger prediction changes the probabilities
    report = export_onnx(run, tmp_path / "scales.onnx", threads=1)
    assert report.min_agreement >= MIN_AGREEMENT and "sizes 1x+1.5x inside" in report.summary()
    meta = {p.key: p.value for p in onnx.load(str(report.path), load_external_data=False).metadata_props}
    assert json.loads(meta["tta"]) == {"flip": True, "scales": [1.0, 1.5]}
    onnx_model = OnnxPredictor(report.path, threads=1)
    assert onnx_model.info.scales == (1.0, 1.5)
    np.testing.assert_allclose(onnx_model.run(photo)["probs"], want.numpy(), atol=5e-3)
    # naming the graph's own sizes is accepted (a script may pass the run's choice); others are refused
    assert open_predictor(report.path, tta_scales=(1, 1.5)).info.scales == (1.0, 1.5)
    with pytest.raises(CatsegError, match="--tta-scales 1: .*graph \\(1,1.5, the run's choice\\)"):
        open_predictor(report.path, tta_scales=(1.0,))
    with pytest.raises(CatsegError, match="--tta-scales 1,2: .*graph \\(1,1.5, the run's choice\\)"):
        open_predictor(run, backend="onnx", tta_scales=(1.0, 2.0))


def test_mask_only_export(stretch_run: Path, tmp_path: Path) -> None:
    report = export_onnx(stretch_run, tmp_path / "mask.onnx", outputs="mask", threads=1)
    onnx_model = OnnxPredictor(report.path, threads=1)
    assert onnx_model.outputs == ["mask"] and not onnx_model.has_probs
    assert report.min_agreement >= MIN_AGREEMENT


def test_export_refuses_bad_requests(stretch_run: Path, tmp_path: Path) -> None:
    with pytest.raises(CatsegError, match="--outputs 'masks'"):
        export_onnx(stretch_run, outputs="masks")
    with pytest.raises(CatsegError, match="ending in .onnx"):
        export_onnx(stretch_run, tmp_path / "model.pt")
    (tmp_path / "taken.onnx").write_bytes(b"mine")
    with pytest.raises(CatsegError, match="already exists.*--force"):
        export_onnx(stretch_run, tmp_path / "taken.onnx")
    assert (tmp_path / "taken.onnx").read_bytes() == b"mine"
    with pytest.raises(CatsegError, match="no config.json"):
        export_onnx(tmp_path)


def test_parity_failure_writes_nothing(stretch_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from catseg import export

    real = export.compare

    def worse(*args, **kwargs):
        rows = real(*args, **kwargs)
        rows[1].agreement = 0.95
        return rows

    monkeypatch.setattr(export, "compare", worse)
    with pytest.raises(CatsegError, match="disagrees with the PyTorch backend on 1 of .*nothing was written"):
        export_onnx(stretch_run, threads=1)
    assert not (stretch_run / "model.onnx").exists()


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch, stretch_run: Path) -> None:
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)  # as if not installed
    with pytest.raises(CatsegError, match=r"pip install 'catseg\[export\]'"):
        export_onnx(stretch_run)


# ----------------------------------------------------------------------------- the onnx backend
def _inputs(folder: Path) -> Path:
    folder.mkdir()
    for i, (h, w) in enumerate([(45, 61), (64, 64), (97, 33)]):
        Image.fromarray(_photo(h, w, seed=i)).save(folder / f"p{i}.png")
    return folder


def test_onnx_backend_writes_what_the_torch_backend_writes(scale_run: Path, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import catseg.hardware

    # PyTorch's CPU default is bf16 where the CPU has it; the onnx backend computes in fp32 like PyTorch's fp32.
    monkeypatch.setattr(catseg.hardware, "cpu_has_bf16", lambda: False)
    photos = _inputs(tmp_path / "in")
    formats = ("mask", "overlay", "prob", "npy")
    with caplog.at_level(logging.INFO, logger="catseg"):
        torch_files = predict_files(scale_run, [str(photos)], tmp_path / "torch", formats, device="cpu")
        onnx_files = predict_files(scale_run, [str(photos)], tmp_path / "onnx", formats, backend="onnx")
    assert "backend: PyTorch" in caplog.text and "backend: onnxruntime" in caplog.text
    assert (scale_run / "model.onnx").is_file()  # the run's own export, made on first use
    assert sorted(p.name for p in torch_files) == sorted(p.name for p in onnx_files)
    for i in range(3):
        a = np.asarray(Image.open(tmp_path / "torch" / f"p{i}.png"))
        b = np.asarray(Image.open(tmp_path / "onnx" / f"p{i}.png"))
        assert a.shape == b.shape and (a == b).mean() >= MIN_AGREEMENT  # clean-up applied after onnxruntime too
        pa, pb = np.load(tmp_path / "torch" / f"p{i}_prob.npy"), np.load(tmp_path / "onnx" / f"p{i}_prob.npy")
        assert pa.shape == pb.shape and np.abs(pa - pb).max() < 2e-3


def test_run_export_is_reused_and_renewed_when_the_run_changes(stretch_run: Path) -> None:
    first = open_run_export(stretch_run, threads=1)
    stamp = (stretch_run / "model.onnx").stat().st_mtime_ns
    open_run_export(stretch_run, threads=1)
    assert (stretch_run / "model.onnx").stat().st_mtime_ns == stamp  # reused
    doc = json.loads((stretch_run / "config.json").read_text())
    doc["postprocess"] = {}
    (stretch_run / "config.json").write_text(json.dumps(doc))
    renewed = open_run_export(stretch_run, threads=1)
    assert renewed.info.fingerprint != first.info.fingerprint and not renewed.postprocess.active
    assert open_run_export(stretch_run, tta=False, threads=1).path.name == "model-no-tta.onnx"


def test_predict_an_onnx_file_alone(scale_run: Path, tmp_path: Path) -> None:
    path = export_onnx(scale_run, tmp_path / "cat.onnx", threads=1).path
    shutil.rmtree(scale_run)  # the file carries everything
    photos = _inputs(tmp_path / "in")
    written = predict_files(path, [str(photos)], tmp_path / "out", ("mask", "overlay"))
    assert len(written) == 6
    low = predict_files(path, [str(photos / "p0.png")], tmp_path / "low", ("mask",), threshold=0.01)
    high = predict_files(path, [str(photos / "p0.png")], tmp_path / "high", ("mask",), threshold=0.99)
    assert np.asarray(Image.open(low[0])).sum() >= np.asarray(Image.open(high[0])).sum()


def test_onnx_backend_fails_loudly_never_falls_back(stretch_run: Path, tmp_path: Path) -> None:
    photos = _inputs(tmp_path / "in")
    path = export_onnx(stretch_run, tmp_path / "m.onnx", outputs="mask", threads=1).path
    with pytest.raises(CatsegError, match="exported with --outputs mask.*--format prob"):
        predict_files(path, [str(photos)], tmp_path / "a", ("mask", "prob"))
    with pytest.raises(CatsegError, match="runs on the onnx or openvino backend"):
        predict_files(path, [str(photos)], tmp_path / "b", backend="torch")
    with pytest.raises(CatsegError, match="mirror TTA is on inside this file"):
        predict_files(path, [str(photos)], tmp_path / "c", tta=False)
    with pytest.raises(CatsegError, match="--device cuda"):
        predict_files(stretch_run, [str(photos)], tmp_path / "d", backend="onnx", device="cuda")
    with pytest.raises(CatsegError, match="--tta-scales 0.75,1: .* sizes exported into its graph \\(1, the run"):
        predict_files(stretch_run, [str(photos)], tmp_path / "e", backend="onnx", tta_scales=(0.75, 1.0))
    with pytest.raises(CatsegError, match="--tta-scales 1,1.5: .*graph \\(1,"):
        predict_files(path, [str(photos)], tmp_path / "e", tta_scales=(1.0, 1.5))
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(CatsegError, match="onnxruntime cannot load it"):
        predict_files(tmp_path / "junk.onnx", [str(photos)], tmp_path / "f")
    assert not any((tmp_path / d).exists() for d in "abcdef")


def test_cli_export_then_predict(stretch_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from catseg.cli import main

    out = tmp_path / "cli.onnx"
    assert main(["export", str(stretch_run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "parity with the PyTorch backend" in printed
    assert re.search(r"min (99\.9\d|100\.0)\d*%", printed)
    photos = _inputs(tmp_path / "in")
    assert main(["predict", str(out), str(photos), "--out", str(tmp_path / "pred")]) == 0
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["p0.png", "p1.png", "p2.png"]
    assert main(["export", str(stretch_run), "--out", str(out)]) == 2  # exists, no --force
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("shape", [(640, 160), (160, 640), (320, 320), (333, 517), (256, 384)])
def test_in_graph_resize_equals_opencv_for_block_and_fractional_factors(shape: tuple[int, int]) -> None:
    """4x1 blocks are not OpenCV's 2x2 vector path (a 640x160 photo came out 1 off on 12% of its pixels)."""
    import cv2

    from catseg.graph import resize_like_cv2
    from catseg.preprocess import resize_image

    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (*shape, 3)).astype(np.uint8), (5, 5), 0)
    expected = resize_image(image, 160, 160)
    got = resize_like_cv2(torch.from_numpy(image).permute(2, 0, 1).float(), torch.tensor(160), torch.tensor(160))
    assert np.array_equal(got.permute(1, 2, 0).numpy().astype(np.uint8), expected)


class _ResizeOnly(torch.nn.Module):
    """The in-graph resize alone: (H, W, 3) uint8 and the (height, width) to reach -> (height, width, 3) uint8."""

    def forward(self, image: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        x = resize_like_cv2(image.permute(2, 0, 1).float(), size[0], size[1])
        return x.round().to(torch.uint8).permute(1, 2, 0)


@pytest.mark.parametrize("shape", [(1024, 640), (640, 1024), (1200, 900), (256, 384), (333, 517)])
def test_onnxruntime_resizes_exactly_as_opencv(shape: tuple[int, int], tmp_path: Path) -> None:
    """Area factors such as 2.5 put many sums exactly on k + 0.5; summed in another order than OpenCV's, a
    pixel then rounds to the next grey level (0.3% of a 1024x640 photo did, and a real model's mask fell
    below the parity bar). The exported graph must add the taps in OpenCV's order, whatever the runtime."""
    import cv2

    path = tmp_path / "resize.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_ResizeOnly(), (torch.zeros(37, 53, 3, dtype=torch.uint8), torch.tensor([20, 30])),
                          str(path), dynamo=False, opset_version=18, input_names=["image", "size"],
                          output_names=["out"], dynamic_axes={"image": {0: "h", 1: "w"}, "out": {0: "oh", 1: "ow"}})
    session = session_from(path)
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (shape[0] // 16, shape[1] // 16, 3)).astype(np.uint8)
    photo = cv2.resize(small, shape[::-1], interpolation=cv2.INTER_CUBIC)  # smooth, like a photo
    photo = np.clip(photo.astype(np.int16) + rng.integers(-3, 4, photo.shape), 0, 255).astype(np.uint8)
    for size in ((256, 256), (200, 320), (97, 61)):
        got = session.run(None, {"image": photo, "size": np.array(size)})[0]
        want = resize_image(photo, *size)
        assert got.shape == want.shape
        assert np.array_equal(got, want), f"{shape} -> {size}: {(got != want).mean():.4%} of values differ"


class _WorkingSize(torch.nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        from catseg.graph import dim, scale_working_size

        return torch.stack(scale_working_size(dim(image, 0), dim(image, 1), self.size))


def test_onnxruntime_computes_working_sizes_in_double(tmp_path: Path) -> None:
    """The exporter computes arithmetic between 0-d tensors in float32: 1233 x 1152 at 320 is 342.5 x 320
    exactly, which Python's double rounds to 342 and float32 did not."""
    from catseg.preprocess import working_size

    path = tmp_path / "size.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_WorkingSize(320), (torch.zeros(37, 53, 1, dtype=torch.uint8),), str(path), dynamo=False,
                          opset_version=18, input_names=["image"], dynamic_axes={"image": {0: "h", 1: "w"}})
    session = session_from(path)
    for h, w in ((1233, 1152), (1152, 1233), (1485, 1152), (2682, 2304), (333, 517), (31, 29)):
        got = session.run(None, {"image": np.zeros((h, w, 1), np.uint8)})[0]
        assert tuple(got.tolist()) == working_size(h, w, 320, "scale"), (h, w)
