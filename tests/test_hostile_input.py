"""Every class of bad input gets one clear error naming the file and the fix, in every command that reads it,
and nothing the user had is changed. Property-based tests (hypothesis) feed the readers arbitrary input.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from catseg.cli import main
from catseg.errors import CatsegError
from catseg.images import MAX_PIXELS_ENV, open_image, read_image, read_mask
from catseg.labelme import convert_labelme, shapes_to_mask

from conftest import make_tiny_dataset


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(h: int = 40, w: int = 50) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _bomb() -> bytes:
    """A 400-kilobyte PNG that would decode to 20000 x 20000 pixels (400 MB as grey, 1.2 GB as RGB)."""
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, format="PNG")
    return buf.getvalue()


# Bad photo contents, each with what the error must say.
def _truncated(h: int = 40, w: int = 50) -> bytes:
    data = _jpeg(h, w)
    return data[: len(data) * 2 // 3]  # the header reads, the pixels stop


BAD_PHOTOS = {
    "truncated": (_truncated, "truncated"),
    "zero-byte": (lambda: b"", "not an image"),
    "text-named-jpg": (lambda: b"<html>404 not found</html>", "not an image"),
    "bomb": (_bomb, "decompression bombs"),
}


def _dataset_with(tmp_path: Path, kind: str) -> tuple[Path, Path]:
    """A tiny dataset whose image img03 is replaced by a bad file of `kind` (as .jpg, of its mask's size where it
    has a size); return (dataset, that file)."""
    data = make_tiny_dataset(tmp_path / "data", count=10)
    bad = next((data / "images").glob("img03.*"))
    bad.unlink()
    target = data / "images" / "img03.jpg"
    h, w = read_mask(data / "masks" / "img03.png").shape
    target.write_bytes(_truncated(h, w) if kind == "truncated" else BAD_PHOTOS[kind][0]())
    return data, target


@pytest.mark.parametrize("kind", sorted(BAD_PHOTOS))
def test_bad_photo_in_a_dataset_check_and_train_name_the_file(kind: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    says = BAD_PHOTOS[kind][1]
    data, bad = _dataset_with(tmp_path, kind)
    before = bad.read_bytes()
    assert main(["check", str(data)]) == 1
    out = capsys.readouterr().out
    assert str(bad) in out and says in out
    run = tmp_path / "run"
    assert main(["train", str(data), "--out", str(run), "--model", "unet", "--width", "4", "--depth", "2", "--size",
                 "32", "--epochs", "1", "--batch-size", "4", "--precision", "fp32"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and says in err and "Traceback" not in err
    assert bad.read_bytes() == before


@pytest.mark.parametrize("kind", sorted(BAD_PHOTOS))
def test_bad_photo_given_to_predict_is_named_and_the_others_are_predicted(
        kind: str, tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make, says = BAD_PHOTOS[kind]
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "good.jpg").write_bytes(_jpeg())
    (photos / "bad.jpg").write_bytes(make())
    assert main(["predict", str(tiny_run), str(photos), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(photos / "bad.jpg") in err and says in err
    if kind == "truncated":  # its header reads, so it is found while decoding: the other photo was predicted
        assert (tmp_path / "out" / "good.png").is_file() and not (tmp_path / "out" / "bad.png").exists()
    else:  # refused from its header before anything was written
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", sorted(BAD_PHOTOS))
def test_bad_photo_behind_a_labelme_file_is_reported_by_convert(kind: str, tmp_path: Path) -> None:
    make, says = BAD_PHOTOS[kind]
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(make())
    (src / "a.json").write_text(json.dumps({"shapes": [], "imagePath": "a.jpg"}))
    with pytest.raises(CatsegError) as err:
        convert_labelme(src, tmp_path / "out")
    assert "a.json" in str(err.value) and says in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", sorted(BAD_PHOTOS))
def test_bad_photo_in_a_mask_folder_import_is_reported(kind: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    make, says = BAD_PHOTOS[kind]
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    (src / "images" / "a.jpg").write_bytes(make())
    (src / "masks" / "a.png").write_bytes(_png(np.zeros((40, 50), np.uint8)))
    (src / "images" / "b.jpg").write_bytes(_jpeg())
    (src / "masks" / "b.png").write_bytes(_png(np.zeros((40, 50), np.uint8)))
    assert main(["import", "masks", str(src), str(tmp_path / "out"), "--classes", "background,thing"]) == 2
    err = capsys.readouterr().err
    assert "a.jpg: " in err and (says in err or "cannot read this image" in err) and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_the_pixel_limit_can_be_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.png"
    path.write_bytes(_png(np.zeros((40, 50, 3), np.uint8)))
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")
    with pytest.raises(CatsegError, match=r"40 = 2,000 pixels, more than the limit of 1,000.*--max-pixels 2000"):
        read_image(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "2000")
    assert read_image(path).shape == (40, 50, 3)
    monkeypatch.delenv(MAX_PIXELS_ENV)
    data = make_tiny_dataset(tmp_path / "d", count=4)
    assert main(["--max-pixels", "100", "check", str(data)]) == 1
    assert "more than the limit of 100" in capsys.readouterr().out


def test_pils_own_pixel_guard_survives_opens_from_many_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """open_image lifts PIL's global guard while it reads a header (it applies its own); threads decoding the
    training cache must not leave it lifted for the rest of the process."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)  # PIL's default (importing labelme lifts it)
    data = _png(np.zeros((30, 40, 3), np.uint8))
    before = Image.MAX_IMAGE_PIXELS
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: open_image(data, "p.png").size, range(2000)))
    assert Image.MAX_IMAGE_PIXELS == before is not None


def test_sixteen_bit_and_palette_photos_are_read(tmp_path: Path) -> None:
    grey16 = Image.fromarray((np.arange(40 * 50).reshape(40, 50) * 30).astype(np.uint16))
    grey16.save(tmp_path / "g.png")
    palette = Image.fromarray(np.arange(40 * 50, dtype=np.uint8).reshape(40, 50) % 7, mode="L").convert("P")
    palette.save(tmp_path / "p.png")
    for name in ("g.png", "p.png"):
        image = read_image(tmp_path / name)
        assert image.shape == (40, 50, 3) and image.dtype == np.uint8 and image.max() > 0


def test_mask_values_outside_the_classes_stop_train_and_evaluate_naming_the_mask(
        tmp_path: Path, tiny_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_tiny_dataset(tmp_path / "data", count=10)
    mask_path = data / "masks" / "img04.png"
    mask = read_mask(mask_path)
    mask[0, 0] = 7
    mask_path.write_bytes(_png(mask))
    assert main(["train", str(data), "--out", str(tmp_path / "run"), "--model", "unet", "--width", "4", "--depth", "2",
                 "--size", "32", "--epochs", "1", "--batch-size", "4", "--precision", "fp32", "--val-fraction",
                 "0.3"]) == 2
    err = capsys.readouterr().err
    assert f"{mask_path}: mask values 7 are not class ids" in err and "catseg check" in err
    # evaluate, on every image of the dataset (img04 among them)
    info = json.loads((data / "dataset.json").read_text())
    info["splits"] = {"all": [f"img{i:02d}" for i in range(10)]}
    (data / "dataset.json").write_text(json.dumps(info))
    assert main(["evaluate", str(tiny_run), str(data), "--split", "all", "--out", str(tmp_path / "ev")]) == 2
    assert f"{mask_path}: mask values 7 are not class ids" in capsys.readouterr().err
    assert not (tmp_path / "ev").exists()


def test_mask_of_another_size_stops_evaluate_naming_both_files(tmp_path: Path, tiny_run: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    data = make_tiny_dataset(tmp_path / "data", count=4, splits={"all": [f"img{i:02d}" for i in range(4)]})
    (data / "masks" / "img01.png").write_bytes(_png(np.zeros((9, 9), np.uint8)))
    assert main(["evaluate", str(tiny_run), str(data), "--split", "all", "--out", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err
    assert "img01" in err and "9x9" in err and "catseg check" in err


def test_sixteen_bit_mask_beyond_255_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "m.png"
    Image.fromarray(np.full((4, 4), 300, np.uint16)).save(path)
    with pytest.raises(CatsegError, match="m.png: mask values go up to 300"):
        read_mask(path)


@pytest.mark.parametrize("content, says", [
    (b"\xff\xfe{\x00\"\x00", "not valid JSON"),  # UTF-16, not UTF-8
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"shapes": "none"}', "no 'shapes' list"),
    (b"\x00\x01\x02", "not valid JSON"),
])
def test_hostile_labelme_json_is_reported_by_file(content: bytes, says: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jpg").write_bytes(_jpeg())
    (src / "bad.json").write_bytes(content)
    with pytest.raises(CatsegError) as err:
        convert_labelme(src, tmp_path / "out")
    assert "bad.json" in str(err.value) and says in str(err.value)


def test_labelme_image_path_is_untrusted(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.json").write_text(json.dumps({"shapes": [], "imagePath": str(secret)}))
    (src / "b.json").write_text(json.dumps({"shapes": [], "imagePath": "../secret.txt"}))
    with pytest.raises(CatsegError) as err:
        convert_labelme(src, tmp_path / "out")
    assert str(err.value).count("is not an image file") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.txt", "src"]  # nothing written outside


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (Path("/tmp/catseg-pwned-by-pickle"),))


def test_a_pickled_object_in_place_of_tensors_is_refused_and_never_run(tiny_run: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    marker = Path("/tmp/catseg-pwned-by-pickle")
    marker.unlink(missing_ok=True)
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    payload = pickle.dumps(_Evil())
    (run / "model.safetensors").write_bytes(payload)
    photo = tmp_path / "p.png"
    photo.write_bytes(_png(np.zeros((30, 40, 3), np.uint8)))
    assert main(["predict", str(run), str(photo), "--out", str(tmp_path / "out")]) == 2
    assert "model.safetensors" in capsys.readouterr().err
    (run / "train_state.pt").write_bytes(payload)
    assert main(["train", "x", "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "train_state.pt: not a catseg checkpoint that can be loaded safely" in err
    assert not marker.exists()


def test_pickle_inside_a_torch_zip_checkpoint_is_refused(tiny_run: Path, tmp_path: Path) -> None:
    import torch

    marker = Path("/tmp/catseg-pwned-by-pickle")
    marker.unlink(missing_ok=True)
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    torch.save({"epoch": 1, "optimizer": _Evil()}, run / "train_state.pt")
    from catseg.run import read_checkpoint

    with pytest.raises(CatsegError, match="loaded safely"):
        read_checkpoint(run)
    assert not marker.exists()


# ----------------------------------------------------------------------------- property-based
_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_SETTINGS
@given(st.binary(max_size=2048))
def test_image_and_mask_readers_raise_only_catseg_errors_on_any_bytes(data: bytes) -> None:
    for read in (lambda: open_image(data, "x"), lambda: read_mask_bytes(data)):
        try:
            read()
        except CatsegError:
            pass


def read_mask_bytes(data: bytes) -> np.ndarray:
    from catseg.images import mask_ids

    return mask_ids(open_image(data, "m.png"), "m.png")


@_SETTINGS
@given(st.integers(0, 10_000), st.data())
def test_damaged_real_images_raise_only_catseg_errors(seed: int, data: st.DataObject) -> None:
    """Real PNG/JPEG/GIF bytes with a cut or a flipped byte: a damaged download, the common case."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    fmt = data.draw(st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]))
    Image.fromarray(rng.integers(0, 255, (17, 23, 3), dtype=np.uint8)).save(buf, format=fmt)
    raw = bytearray(buf.getvalue())
    cut = data.draw(st.integers(0, len(raw)))
    raw = raw[:cut] if data.draw(st.booleans()) else raw
    if raw and data.draw(st.booleans()):
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    try:
        image = open_image(bytes(raw), "x")
        from catseg.images import to_rgb_array

        to_rgb_array(image)
    except CatsegError:
        pass


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)

_shape = st.fixed_dictionaries({
    "label": st.one_of(st.sampled_from(["cat", "_background_", "__ignore__", "dog", ""]), _json_values),
    "points": st.one_of(st.lists(st.lists(st.floats(-50, 80) | st.just(float("nan")), min_size=0, max_size=3), max_size=6),
                        _json_values),
    "shape_type": st.one_of(st.sampled_from(["polygon", "rectangle", "circle", "line", "linestrip", "point", "mask"]),
                            _json_values),
}, optional={"mask": _json_values, "group_id": _json_values})


@_SETTINGS
@given(st.lists(_shape, max_size=5))
def test_rasterising_any_shapes_that_pass_validation_succeeds(shapes: list) -> None:
    """The rasteriser's callers validate each shape first (shape_problem, as convert does); whatever passes is
    drawn, and whatever does not is refused with a ValueError (an internal invariant), never another error."""
    from catseg.shapes import shape_problem

    ids = {"_background_": 0, "cat": 1, "__ignore__": 255}
    valid = all(shape_problem(s) is None and s.get("label") in ids for s in shapes)
    try:
        mask = shapes_to_mask(shapes, 24, 32, ids)
    except ValueError:
        assert not valid
    else:
        assert mask.shape == (24, 32) and mask.dtype == np.uint8


@_SETTINGS
@given(st.one_of(st.fixed_dictionaries({"shapes": st.lists(_shape, max_size=3)},
                                       optional={"imagePath": _json_values, "imageHeight": _json_values,
                                                 "imageWidth": _json_values, "imageData": _json_values}),
                 _json_values))
def test_converting_any_labelme_document_raises_only_catseg_errors(tmp_path_factory: pytest.TempPathFactory,
                                                                   doc: object) -> None:
    root = tmp_path_factory.mktemp("hyp")
    (root / "src").mkdir()
    (root / "src" / "a.png").write_bytes(_png(np.zeros((24, 32, 3), np.uint8)))
    (root / "src" / "a.json").write_text(json.dumps(doc))
    try:
        convert_labelme(root / "src", root / "out")
    except CatsegError:
        pass
    assert {p.name for p in root.iterdir()} <= {"src", "out"}
