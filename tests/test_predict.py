from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from catseg.errors import CatsegError
from catseg.predict import Predictor, expand_inputs, predict_files


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(60, 120, (h, w, 3)).astype(np.uint8)
    image[h // 4: h // 2, w // 4: w // 2] = 230
    return image


@pytest.mark.parametrize("h, w", [(33, 47), (900, 900), (375, 500), (1, 1)])
def test_prediction_has_the_photos_own_size(tiny_run: Path, h: int, w: int) -> None:
    predictor = Predictor.from_run(tiny_run, device="cpu")
    probs = predictor.predict_proba(_photo(h, w))
    assert probs.shape == (2, h, w) and probs.dtype == torch.float32
    assert torch.allclose(probs.sum(0), torch.ones(h, w), atol=1e-5)
    mask = predictor.predict(_photo(h, w))
    assert mask.shape == (h, w) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}


def test_threshold_overrides_the_stored_one(tiny_run: Path) -> None:
    from catseg.postprocess import Postprocess

    predictor = Predictor.from_run(tiny_run, device="cpu")
    predictor.postprocess = Postprocess()  # compare raw thresholds, without the clean-up the run may have chosen
    probs = predictor.predict_proba(_photo(40, 40))
    assert predictor.labels_from_proba(probs, 1e-6).sum() == (probs[1] >= 1e-6).sum()
    assert predictor.labels_from_proba(probs, 0.999999).sum() <= predictor.labels_from_proba(probs, 0.5).sum()
    stored = predictor.config.threshold
    assert np.array_equal(predictor.predict(_photo(40, 40)), (probs[1] >= stored).numpy().astype(np.uint8))
    with pytest.raises(CatsegError, match="between 0 and 1"):
        predictor.labels_from_proba(probs, 1.5)


def test_a_read_only_photo_at_the_working_size_predicts_without_a_warning(tiny_run: Path) -> None:
    """np.asarray(PIL image) is read-only; at the working size it reaches torch unresized, and torch warns
    about (and would write through) memory it may not write: the photo is copied instead."""
    import warnings

    from dataclasses import replace

    predictor = Predictor.from_run(tiny_run, device="cpu")
    side = predictor.pre.size
    # The stored (stretch) policy stacks photos into a new batch; the scale policy passes one photo on as it
    # is, which is where torch met the read-only memory.
    for pre in (predictor.pre, replace(predictor.pre, resize="scale", patch=side, window=0)):
        predictor.pre = pre
        photo = _photo(side, side + 9)
        photo.flags.writeable = False
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            probs = predictor.predict_proba(photo)
        assert probs.shape == (2, side, side + 9)
        assert np.array_equal(photo, _photo(side, side + 9))


def test_batch_equals_single(tiny_run: Path) -> None:
    predictor = Predictor.from_run(tiny_run, device="cpu", precision="fp32")
    photos = [_photo(30, 41, 1), _photo(64, 20, 2)]
    batch = predictor.predict_proba_batch(photos)
    for photo, probs in zip(photos, batch):
        assert torch.allclose(probs, predictor.predict_proba(photo), atol=1e-4)


def _save(path: Path, image: Image.Image, **kw) -> Path:
    image.save(path, **kw)
    return path


def test_predict_files_every_format_and_mode(tiny_run: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    rgb = Image.fromarray(_photo(37, 53))
    _save(src / "rgb.jpg", rgb)
    _save(src / "grey.png", rgb.convert("L"))
    _save(src / "rgba.png", rgb.convert("RGBA"))
    _save(src / "pal.png", rgb.convert("P"))
    _save(src / "deep.png", Image.fromarray((np.asarray(rgb.convert("L"), np.uint16) * 257)))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    _save(src / "rotated.jpg", rgb, exif=exif)
    out = tmp_path / "out"
    written = predict_files(tiny_run, [str(src)], out, formats=["mask", "overlay", "prob", "npy"], device="cpu")
    assert len(written) == 6 * 5
    for stem in ("rgb", "grey", "rgba", "pal", "deep"):
        mask = Image.open(out / f"{stem}.png")
        assert mask.mode == "P" and mask.size == (53, 37)
        assert Image.open(out / f"{stem}_overlay.jpg").size == (53, 37)
        prob = np.asarray(Image.open(out / f"{stem}_prob_square.png"))
        assert prob.dtype in (np.uint16, np.int32) and prob.shape == (37, 53)
        assert np.load(out / f"{stem}_prob.npy").shape == (2, 37, 53)
    # EXIF orientation is applied: the mask has the photo's displayed (rotated) size.
    assert Image.open(out / "rotated.png").size == (37, 53)
    p0 = np.asarray(Image.open(out / "rgb_prob_background.png"), np.float64)
    p1 = np.asarray(Image.open(out / "rgb_prob_square.png"), np.float64)
    assert np.allclose((p0 + p1) / 65535.0, 1.0, atol=2e-4)


def test_predict_refuses_to_overwrite(tiny_run: Path, tmp_path: Path) -> None:
    photo = _save(tmp_path / "a.png", Image.fromarray(_photo(20, 30)))
    out = tmp_path / "out"
    predict_files(tiny_run, [str(photo)], out, device="cpu")
    before = (out / "a.png").read_bytes()
    (out / "a.png").write_bytes(b"user edit")
    with pytest.raises(CatsegError, match="already exist"):
        predict_files(tiny_run, [str(photo)], out, device="cpu")
    assert (out / "a.png").read_bytes() == b"user edit"
    predict_files(tiny_run, [str(photo)], out, device="cpu", force=True)
    assert (out / "a.png").read_bytes() == before


def test_inputs_globs_and_errors(tmp_path: Path) -> None:
    for name in ("a.jpg", "b.png", "notes.txt", "._a.jpg"):  # ._a.jpg: a macOS resource fork, not a photo
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in expand_inputs([str(tmp_path / "*.jpg")])] == ["a.jpg"]
    assert [p.name for p in expand_inputs([str(tmp_path)])] == ["a.jpg", "b.png"]
    with pytest.raises(CatsegError) as info:
        expand_inputs([str(tmp_path / "missing.jpg"), str(tmp_path / "*.gif")])
    assert "missing.jpg: no such file" in str(info.value) and "matches no file" in str(info.value)
    assert "nothing was written" in str(info.value)


def test_bad_format_and_clashing_names(tiny_run: Path, tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    for d in ("x", "y"):
        _save(tmp_path / d / "same.png", Image.fromarray(_photo(20, 20)))
    with pytest.raises(CatsegError, match="choose from mask, overlay, prob, npy"):
        predict_files(tiny_run, [str(tmp_path / "x")], tmp_path / "o", formats=["jpeg"])
    with pytest.raises(CatsegError, match="same output name"):
        predict_files(tiny_run, [str(tmp_path / "x"), str(tmp_path / "y")], tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_unreadable_photo_names_the_file(tiny_run: Path, tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    good = _save(tmp_path / "good.png", Image.fromarray(_photo(20, 30)))
    with pytest.raises(CatsegError, match="broken.jpg: cannot read this image") as info:
        predict_files(tiny_run, [str(good), str(bad)], tmp_path / "o", device="cpu")
    assert "nothing was written" in str(info.value)
    assert not (tmp_path / "o").exists()


def test_not_a_run_folder(tmp_path: Path) -> None:
    with pytest.raises(CatsegError, match="no config.json"):
        Predictor.from_run(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "something"}))
    with pytest.raises(CatsegError, match="not a catseg run"):
        Predictor.from_run(tmp_path)


def test_flip_tta_is_mirror_symmetric_and_averages(tiny_run: Path) -> None:
    plain = Predictor.from_run(tiny_run, device="cpu", precision="fp32")
    tta = Predictor.from_run(tiny_run, device="cpu", precision="fp32", tta=True)
    photo = _photo(37, 53, 3)
    mirrored = np.ascontiguousarray(photo[:, ::-1])
    p, pm = tta.predict_proba(photo), tta.predict_proba(mirrored)
    assert torch.allclose(p, pm.flip(-1), atol=1e-5)
    expected = (plain.predict_proba(photo) + plain.predict_proba(mirrored).flip(-1)) / 2
    assert torch.allclose(p, expected, atol=1e-5)
    scaled = Predictor.from_run(tiny_run, device="cpu", precision="fp32", tta_scales=(0.75, 1.0, 1.25))
    assert scaled.predict_proba(photo).shape == (2, 37, 53)
    with pytest.raises(CatsegError, match="--tta-scales"):
        Predictor.from_run(tiny_run, device="cpu", tta_scales=(10.0,))


@pytest.mark.parametrize("stored", ["1.5", [1.0, 9.0], [1.0, "big"], []])
def test_a_broken_stored_size_list_names_config_json(tiny_run: Path, tmp_path: Path, stored: object) -> None:
    import shutil

    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    doc = json.loads((run / "config.json").read_text())
    doc["tta"] = {**doc.get("tta", {}), "scales": stored}
    (run / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CatsegError, match=r"config.json: \"tta\": \"scales\".*between 0.25 and 4"):
        Predictor.from_run(run, device="cpu")
    assert Predictor.from_run(run, device="cpu", tta_scales=(1.0,)).tta_scales == (1.0,)  # asked: the stored is not read


def test_class_names_cannot_steer_output_paths(tiny_run: Path, tmp_path: Path) -> None:
    from catseg.photo_files import output_paths as _output_paths

    plan = _output_paths([tmp_path / "a.png"], tmp_path / "out", ["prob"], ["background", "../../etc/x", "cat/dog"])
    paths = plan[tmp_path / "a.png"]["prob"]
    assert all(p.parent == tmp_path / "out" for p in paths)
    assert [p.name for p in paths] == ["a_prob_background.png", "a_prob__.._etc_x.png", "a_prob_cat_dog.png"]


def test_prediction_does_not_load_the_training_stack() -> None:
    """predict needs the run's Preprocess only: not albumentations, the augmentation module or matplotlib."""
    import subprocess
    import sys

    code = ("import sys, catseg.predict; "
            "print(sorted(m for m in ('albumentations', 'catseg.augment', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
