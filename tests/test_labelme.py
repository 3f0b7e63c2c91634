"""labelme JSON -> dataset folder: rasterisation against labelme itself, the dataset written, bad input, CLI."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps

from catseg.data import read_dataset
from catseg.errors import CatsegError
from catseg.images import read_image, read_mask, voc_colormap
from catseg.labelme import ConvertReport, convert_labelme, read_labels_file
from catseg.shapes import shape_to_mask, shapes_to_mask

H, W = 40, 56  # every synthetic photo; non-square so a rotation shows
IDS = {"_background_": 0, "cat": 1, "dog": 2, "__ignore__": 255}


# ----------------------------------------------------------------------------- helpers
def photo(height: int = H, width: int = W, mode: str = "RGB") -> Image.Image:
    """A deterministic photo whose pixels differ everywhere, so a rotation or re-encode shows."""
    yy, xx = np.mgrid[:height, :width]
    rgb = np.stack([xx * 4 % 256, yy * 6 % 256, (xx * 7 + yy * 3) % 256], axis=2).astype(np.uint8)
    image = Image.fromarray(rgb)
    if mode == "P":
        return image.quantize(16)
    if mode == "RGBA":
        image.putalpha(Image.fromarray(((xx + yy) * 3 % 256).astype(np.uint8)))
        return image
    return image.convert(mode)


def save_photo(path: Path, image: Image.Image, fmt: str | None = None, **params: Any) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt, **params)
    return path.read_bytes()


def exif_with(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def patch_b64(patch: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(patch.astype(np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def shape(label: str, points: list, shape_type: str = "polygon", **extra: Any) -> dict[str, Any]:
    return {"label": label, "points": points, "group_id": None, "shape_type": shape_type, "flags": {}, **extra}


def write_json(path: Path, shapes: list[dict], image_path: str | None = None, height: int | None = H,
               width: int | None = W, image_data: bytes | None = None) -> Path:
    doc = {"version": "5.5.0", "flags": {}, "shapes": shapes,
           "imagePath": image_path if image_path is not None else f"{path.stem}.jpg",
           "imageData": base64.b64encode(image_data).decode("ascii") if image_data is not None else None,
           "imageHeight": height, "imageWidth": width}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def labelme_pair(folder: Path, stem: str, shapes: list[dict], image: Image.Image | None = None,
                 ext: str = ".jpg", **save: Any) -> Path:
    """Write <stem><ext> and <stem>.json beside it; return the JSON path."""
    image = image if image is not None else photo()
    save_photo(folder / f"{stem}{ext}", image, **save)
    return write_json(folder / f"{stem}.json", shapes, f"{stem}{ext}", image.height, image.width)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def oracle_shapes(shapes: list[dict], height: int, width: int, ids: dict[str, int]) -> np.ndarray:
    """labelme's shapes_to_label, with labelme2voc's __ignore__ = -1 -> 255 cast."""
    shape_mod = pytest.importorskip("labelme.utils.shape", reason="labelme (the test oracle) is not installed")
    loaded = []
    for s in shapes:
        s = dict(s)
        if s["shape_type"] == "mask":  # labelme decodes the patch when it loads the JSON
            s["mask"] = np.array(Image.open(io.BytesIO(base64.b64decode(s["mask"])))).astype(bool)
        loaded.append(s)
    voc_ids = {k: (-1 if v == 255 else v) for k, v in ids.items()}
    cls, _ = shape_mod.shapes_to_label((height, width), loaded, voc_ids)
    return cls.astype(np.uint8)


def oracle_file(json_path: Path, ids: dict[str, int]) -> np.ndarray:
    """What labelme2voc writes for one JSON: LabelFile loads it (EXIF, imageData), shapes_to_label draws."""
    labelme = pytest.importorskip("labelme", reason="labelme (the test oracle) is not installed")
    from labelme.utils.shape import shapes_to_label

    label_file = labelme.LabelFile(str(json_path))
    img = labelme.utils.img_data_to_arr(label_file.image_data)
    voc_ids = {k: (-1 if v == 255 else v) for k, v in ids.items()}
    cls, _ = shapes_to_label(img.shape, label_file.shapes, voc_ids)
    return cls.astype(np.uint8)


# ----------------------------------------------------------------------------- hand-computed masks
def test_rectangle_3x3_with_corners_in_any_order() -> None:
    expected = np.zeros((5, 5), dtype=bool)
    expected[1:4, 1:4] = True
    for points in ([[1, 1], [3, 3]], [[3, 3], [1, 1]], [[3, 1], [1, 3]]):
        assert (shape_to_mask(shape("cat", points, "rectangle"), 5, 5) == expected).all()


def test_polygon_includes_its_boundary() -> None:
    yy, xx = np.mgrid[:5, :5]
    mask = shape_to_mask(shape("cat", [[0, 0], [4, 0], [0, 4]]), 5, 5)
    assert (mask == (xx + yy <= 4)).all()


def test_point_is_a_radius_5_disc() -> None:
    mask = shape_to_mask(shape("cat", [[5, 5]], "point"), 11, 11)
    assert mask[5].all() and mask[:, 5].all()
    assert not mask[0, 0] and not mask[10, 10] and mask[0, 3:8].all()
    assert (mask == mask.T).all() and (mask == mask[::-1]).all()


def test_last_shape_wins_background_cuts_holes_ignore_is_255() -> None:
    shapes = [shape("cat", [[0, 0], [5, 5]], "rectangle"), shape("dog", [[3, 3], [5, 5]], "rectangle"),
              shape("_background_", [[0, 0], [1, 1]], "rectangle"), shape("__ignore__", [[5, 0], [5, 1]], "rectangle")]
    expected = np.array([[0, 0, 1, 1, 1, 255],
                         [0, 0, 1, 1, 1, 255],
                         [1, 1, 1, 1, 1, 1],
                         [1, 1, 1, 2, 2, 2],
                         [1, 1, 1, 2, 2, 2],
                         [1, 1, 1, 2, 2, 2]], dtype=np.uint8)
    mask = shapes_to_mask(shapes, 6, 6, IDS)
    assert mask.dtype == np.uint8 and (mask == expected).all()


def test_shapes_to_mask_rejects_a_label_without_id_and_bad_geometry() -> None:
    with pytest.raises(ValueError, match="'bird'"):
        shapes_to_mask([shape("bird", [[0, 0], [1, 1]], "rectangle")], 4, 4, IDS)
    with pytest.raises(ValueError, match="polygon with 2 point"):
        shape_to_mask(shape("cat", [[0, 0], [1, 1]]), 4, 4)


# ----------------------------------------------------------------------------- against labelme
_PATCH = (np.add.outer(np.arange(9), np.arange(7)) % 3 == 0)  # (9, 7): irregular on purpose
ORACLE_CASES: dict[str, list[dict]] = {
    "polygon_float": [shape("cat", [[3.3, 2.7], [40.5, 5.25], [30.9, 33.1], [8.49, 25.51]])],
    "polygon_concave": [shape("cat", [[2, 2], [50, 2], [26, 18], [50, 36], [2, 36]])],
    "rectangle_reversed": [shape("cat", [[44.6, 30.2], [10.4, 5.7]], "rectangle")],
    "circle": [shape("cat", [[20.5, 18.2], [29.1, 22.7]], "circle")],
    "point": [shape("dog", [[12.6, 9.4]], "point")],
    "line": [shape("cat", [[3.2, 4.1], [50.7, 33.3]], "line")],
    "linestrip": [shape("cat", [[3, 30], [15.5, 5.5], [30, 32], [52, 8.25]], "linestrip")],
    "oriented_rectangle": [shape("cat", [[10, 20], [28, 4], [44, 22], [26, 38]], "oriented_rectangle")],
    "mask": [shape("dog", [[20.8, 10.3], [26.2, 18.9]], "mask", mask=patch_b64(_PATCH))],
    "mask_row_broadcast": [shape("dog", [[5, 5], [11, 12]], "mask", mask=patch_b64(_PATCH[:1]))],
    "overlap_last_wins": [shape("cat", [[0, 0], [30, 30]], "rectangle"),
                          shape("dog", [[20, 20.5], [9.5, 3], [33, 8.5]]),
                          shape("cat", [[25, 15], [31, 18]], "circle")],
    "background_hole": [shape("cat", [[2, 2], [50, 36]], "rectangle"),
                        shape("_background_", [[26, 19], [31, 22]], "circle"),
                        shape("_background_", [[5, 5], [15, 6], [9, 14]])],
    "ignore_region": [shape("dog", [[0, 0], [55, 39]], "rectangle"), shape("__ignore__", [[10, 10], [20, 30]], "line"),
                      shape("__ignore__", [[40.5, 30.5]], "point")],
    "out_of_bounds": [shape("cat", [[-10.5, -8], [70, 5], [30, 60]]), shape("dog", [[50, 35], [62, 41]], "circle"),
                      shape("dog", [[-20, 45], [-3.5, 70]], "rectangle"), shape("cat", [[-5, 20], [80, -7]], "line"),
                      shape("dog", [[57.5, 2]], "point"), shape("cat", [[-3, -3], [5, -20], [60, 38]], "linestrip")],
    "mask_at_edge_float_box": [shape("cat", [[-0.7, 30.2], [6.9, 38.8]], "mask", mask=patch_b64(_PATCH))],
    "empty": [],
}


@pytest.mark.parametrize("case", sorted(ORACLE_CASES))
def test_shapes_to_mask_equals_labelme(case: str) -> None:
    shapes = ORACLE_CASES[case]
    mask = shapes_to_mask(shapes, H, W, IDS)
    expected = oracle_shapes(shapes, H, W, IDS)
    assert mask.any() or case == "empty"
    np.testing.assert_array_equal(mask, expected)


@pytest.fixture(scope="module")
def converted_cases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, ConvertReport]:
    """Every oracle case as its own labelme file (some in subfolders), converted once."""
    src = tmp_path_factory.mktemp("cases")
    for i, (name, shapes) in enumerate(ORACLE_CASES.items()):
        labelme_pair(src / ("sub" if i % 3 else "") / ("deeper" if i % 5 == 4 else ""), name, shapes)
    out = tmp_path_factory.mktemp("out") / "dataset"
    return src, out, convert_labelme(src, out)


@pytest.mark.parametrize("case", sorted(ORACLE_CASES))
def test_converted_mask_equals_labelme2voc(case: str, converted_cases: tuple[Path, Path, ConvertReport]) -> None:
    src, out, report = converted_cases
    json_path = next(src.rglob(f"{case}.json"))
    mask = read_mask(out / "masks" / f"{case}.png")
    np.testing.assert_array_equal(mask, oracle_file(json_path, report.label_to_id))


def test_mask_png_palette_is_labelmes(converted_cases: tuple[Path, Path, ConvertReport]) -> None:
    imgviz = pytest.importorskip("imgviz", reason="imgviz (labelme's colour map) is not installed")
    png = Image.open(converted_cases[1] / "masks" / "overlap_last_wins.png")
    assert png.mode == "P"
    palette = np.array(png.getpalette(), dtype=np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(palette, imgviz.label_colormap()[: len(palette)])


def test_mask_shape_outside_the_image_is_invalid_as_in_labelme(tmp_path: Path) -> None:
    bad = [shape("cat", [[50, 30], [56, 38]], "mask", mask=patch_b64(_PATCH))]  # box runs past the right edge
    json_path = labelme_pair(tmp_path / "src", "edge", bad)
    with pytest.raises(ValueError):
        oracle_shapes(bad, H, W, IDS)
    with pytest.raises(CatsegError) as info:
        convert_labelme(tmp_path / "src", tmp_path / "out")
    assert str(json_path) in str(info.value) and "does not fit" in str(info.value)


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotated_jpeg_is_stored_upright_on_the_mask_grid(tmp_path: Path, orientation: int) -> None:
    src = tmp_path / "src"
    raw = photo(W, H)  # stored sideways: W rows, H columns; upright it is H x W
    save_photo(src / "rot.jpg", raw, "JPEG", quality=95, exif=exif_with(orientation))
    shapes = [shape("cat", [[5, 3], [30, 8], [20, 35]]), shape("dog", [[40, 5], [50, 20]], "rectangle")]
    json_path = write_json(src / "rot.json", shapes, "rot.jpg", H, W)
    convert_labelme(src, tmp_path / "out")
    mask = read_mask(tmp_path / "out" / "masks" / "rot.png")
    np.testing.assert_array_equal(mask, oracle_file(json_path, IDS))
    stored = next((tmp_path / "out" / "images").iterdir())
    upright = np.asarray(ImageOps.exif_transpose(Image.open(src / "rot.jpg")).convert("RGB"))
    assert Image.open(stored).size == (W, H) and mask.shape == (H, W)
    np.testing.assert_array_equal(read_image(stored), upright)  # the rotated pixels, losslessly


def test_embedded_image_data_without_image_file(tmp_path: Path) -> None:
    buf = io.BytesIO()
    photo().save(buf, format="PNG")
    shapes = [shape("cat", [[5, 5], [20, 30]], "rectangle"), shape("dog", [[30, 20], [40, 25]], "circle")]
    json_path = write_json(tmp_path / "src" / "emb.json", shapes, "gone/emb.png", image_data=buf.getvalue())
    convert_labelme(tmp_path / "src", tmp_path / "out")
    np.testing.assert_array_equal(read_mask(tmp_path / "out" / "masks" / "emb.png"), oracle_file(json_path, IDS))
    assert (tmp_path / "out" / "images" / "emb.png").read_bytes() == buf.getvalue()


def test_embedded_jpeg_with_exif_tag_stays_unrotated_as_in_labelme(tmp_path: Path) -> None:
    buf = io.BytesIO()
    photo().save(buf, format="JPEG", quality=95, exif=exif_with(6))
    shapes = [shape("cat", [[5, 5], [50, 12]], "rectangle")]
    json_path = write_json(tmp_path / "src" / "emb.json", shapes, "missing.jpg", H, W, image_data=buf.getvalue())
    convert_labelme(tmp_path / "src", tmp_path / "out")
    mask = read_mask(tmp_path / "out" / "masks" / "emb.png")
    np.testing.assert_array_equal(mask, oracle_file(json_path, IDS))
    stored = read_image(next((tmp_path / "out" / "images").iterdir()))  # the loader must not rotate it either
    assert stored.shape[:2] == mask.shape == (H, W)
    np.testing.assert_array_equal(stored, np.asarray(Image.open(buf).convert("RGB")))


@pytest.mark.parametrize("mode", ["RGBA", "L", "P"])
def test_rgba_grey_and_palette_photos(tmp_path: Path, mode: str) -> None:
    shapes = [shape("cat", [[3, 3], [40, 9], [20, 30]]), shape("__ignore__", [[45, 30]], "point")]
    json_path = labelme_pair(tmp_path / "src", "img", shapes, photo(mode=mode), ".png")
    convert_labelme(tmp_path / "src", tmp_path / "out")
    np.testing.assert_array_equal(read_mask(tmp_path / "out" / "masks" / "img.png"), oracle_file(json_path, IDS))
    stored = tmp_path / "out" / "images" / "img.png"
    assert stored.read_bytes() == (tmp_path / "src" / "img.png").read_bytes()
    assert read_image(stored).shape == (H, W, 3)


# ----------------------------------------------------------------------------- the dataset written
def test_dataset_folder_jpeg_copied_and_dataset_json(tmp_path: Path) -> None:
    src = tmp_path / "src"
    labelme_pair(src, "a", [shape("dog", [[1, 1], [9, 9]], "rectangle")], quality=80)
    labelme_pair(src / "more", "b", [shape("cat", [[1, 1], [9, 9]], "rectangle")])
    report = convert_labelme(src, tmp_path / "out", viz=True)
    out = tmp_path / "out"
    assert (out / "images" / "a.jpg").read_bytes() == (src / "a.jpg").read_bytes()
    assert (out / "images" / "b.jpg").read_bytes() == (src / "more" / "b.jpg").read_bytes()
    doc = json.loads((out / "dataset.json").read_text())
    assert doc["classes"] == ["background", "cat", "dog"]
    assert doc["colors"] == voc_colormap(3).tolist() and doc["ignore_index"] == 255
    assert doc["source"]["command"].startswith(f"catseg convert {src} {out}")
    assert doc["source"]["path"] == str(src.resolve()) and doc["source"]["labels_file"] is None
    assert read_dataset(out).stems() == ["a", "b"]
    assert Image.open(out / "viz" / "a.jpg").size == (W, H)
    assert report.converted == ["a", "b"] and report.skipped == []
    assert report.label_to_id == {"_background_": 0, "cat": 1, "dog": 2, "__ignore__": 255}
    text = report.summary()
    assert "converted 2" in text and "0 background, 1 cat, 2 dog" in text and str(out) in text


def test_ids_do_not_depend_on_file_order(tmp_path: Path) -> None:
    for first, second in (("cat", "dog"), ("dog", "cat")):
        src = tmp_path / f"src-{first}"
        labelme_pair(src, "a", [shape(first, [[1, 1], [9, 9]], "rectangle")])
        labelme_pair(src, "b", [shape(second, [[1, 1], [9, 9]], "rectangle"), shape("_background_", [[2, 2]], "point")])
        report = convert_labelme(src, tmp_path / f"out-{first}")
        assert report.classes == ["background", "cat", "dog"]
        assert read_mask(tmp_path / f"out-{first}" / "masks" / "a.png")[5, 5] == (1 if first == "cat" else 2)


def test_labels_file_order_is_respected(tmp_path: Path) -> None:
    src = tmp_path / "src"
    labelme_pair(src, "a", [shape("cat", [[1, 1], [9, 9]], "rectangle"),
                            shape("dog", [[20, 20], [30, 30]], "rectangle")])
    labels = tmp_path / "labels.txt"
    labels.write_text("__ignore__\n_background_\ndog\nbird\ncat\n")
    report = convert_labelme(src, tmp_path / "out", labels_file=labels)
    assert report.classes == ["background", "dog", "bird", "cat"]
    mask = read_mask(tmp_path / "out" / "masks" / "a.png")
    assert mask[5, 5] == 3 and mask[25, 25] == 1
    assert read_dataset(tmp_path / "out").classes == ["background", "dog", "bird", "cat"]
    assert read_dataset(tmp_path / "out").source["labels_file"] == str(labels.resolve())


def test_read_labels_file_without_ignore_line(tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("_background_\ncat\n\n")
    assert read_labels_file(labels) == {"_background_": 0, "cat": 1, "__ignore__": 255}


# ----------------------------------------------------------------------------- bad input
BAD_FILES = {  # file -> what the error must say about it
    "broken.json": "not valid JSON",
    "unknown.json": "unknown shape_type 'ellipse'",
    "poly2.json": "polygon with 2 point(s)",
    "rect3.json": "rectangle with 3 point(s)",
    "circle1.json": "circle with 1 point(s)",
    "line3.json": "line with 3 point(s)",
    "point2.json": "point with 2 point(s)",
    "noimage.json": "not found and no imageData",
    "garbage.json": "cannot read this image",
    "size.json": "is 30 x 20 but the image",
    "x/dup.json": "also used by",
    "y/dup.json": "also used by",
}


@pytest.fixture
def bad_folder(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    labelme_pair(src, "good", [shape("cat", [[1, 1], [9, 9]], "rectangle")])
    (src / "broken.json").write_text('{"shapes": [', encoding="utf-8")
    labelme_pair(src, "unknown", [shape("cat", [[1, 1], [9, 9]], "ellipse")])
    labelme_pair(src, "poly2", [shape("cat", [[1, 1], [9, 9]])])
    labelme_pair(src, "rect3", [shape("cat", [[1, 1], [9, 9], [3, 3]], "rectangle")])
    labelme_pair(src, "circle1", [shape("cat", [[1, 1]], "circle")])
    labelme_pair(src, "line3", [shape("cat", [[1, 1], [9, 9], [3, 3]], "line")])
    labelme_pair(src, "point2", [shape("cat", [[1, 1], [9, 9]], "point")])
    write_json(src / "noimage.json", [], "nowhere.jpg")
    (src / "garbage.jpg").write_bytes(b"not an image at all")
    write_json(src / "garbage.json", [], "garbage.jpg")
    save_photo(src / "size.jpg", photo())
    write_json(src / "size.json", [], "size.jpg", 30, 20)
    for sub in ("x", "y"):
        labelme_pair(src / sub, "dup", [shape("dog", [[1, 1], [9, 9]], "rectangle")])
    return src


def test_every_bad_file_is_reported_at_once_and_nothing_written(bad_folder: Path, tmp_path: Path) -> None:
    before = snapshot(bad_folder)
    out = tmp_path / "out"
    with pytest.raises(CatsegError) as info:
        convert_labelme(bad_folder, out)
    problems = info.value.problems
    assert len(problems) == len(BAD_FILES)
    for name, reason in BAD_FILES.items():
        line = next((p for p in problems if p.startswith(f"{bad_folder / name}:")), None)
        assert line is not None and reason in line, (name, problems)
    assert str(bad_folder / "x" / "dup.json") in next(p for p in problems if p.startswith(str(bad_folder / "y")))
    assert "--skip-invalid" in str(info.value)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    assert snapshot(bad_folder) == before


def test_skip_invalid_converts_the_rest(bad_folder: Path, tmp_path: Path) -> None:
    before = snapshot(bad_folder)
    report = convert_labelme(bad_folder, tmp_path / "out", skip_invalid=True)
    assert report.converted == ["good"]
    assert sorted(str(p.relative_to(bad_folder)) for p, _ in report.skipped) == sorted(BAD_FILES)
    assert sorted(p.name for p in (tmp_path / "out" / "masks").iterdir()) == ["good.png"]
    assert "skipped 12" in report.summary() and f"{bad_folder / 'broken.json'}: not valid JSON" in report.summary()
    assert report.classes == ["background", "cat", "dog"]  # labels of the skipped files still count: ids stay stable
    assert snapshot(bad_folder) == before


def test_labels_missing_from_labels_file(tmp_path: Path) -> None:
    src = tmp_path / "src"
    labelme_pair(src, "a", [shape("cat", [[1, 1], [9, 9]], "rectangle"), shape("bird", [[1, 1]], "point")])
    labelme_pair(src, "b", [shape("fish", [[1, 1], [9, 9]], "rectangle")])
    labels = tmp_path / "labels.txt"
    labels.write_text("__ignore__\n_background_\ncat\n")
    with pytest.raises(CatsegError) as info:
        convert_labelme(src, tmp_path / "out", labels_file=labels)
    assert len(info.value.problems) == 2
    assert f"{src / 'a.json'}: labels 'bird' are not in the labels file" in info.value.problems[0]
    assert "'fish'" in info.value.problems[1]
    assert not (tmp_path / "out").exists()


def test_label_named_background_is_reported(tmp_path: Path) -> None:
    labelme_pair(tmp_path / "src", "a", [shape("background", [[1, 1], [9, 9]], "rectangle")])
    with pytest.raises(CatsegError, match="'background' is reserved"):
        convert_labelme(tmp_path / "src", tmp_path / "out")


@pytest.mark.parametrize("content, reason", [(None, "cannot read the labels file"),
                                              ("__ignore__\ncat\n_background_\n", "_background_ must be the first class"),
                                              ("_background_\ncat\ncat\n", "more than once: cat")])
def test_bad_labels_file(tmp_path: Path, content: str | None, reason: str) -> None:
    labelme_pair(tmp_path / "src", "a", [])
    labels = tmp_path / "labels.txt"
    if content is not None:
        labels.write_text(content)
    with pytest.raises(CatsegError, match=reason) as info:
        convert_labelme(tmp_path / "src", tmp_path / "out", labels_file=labels)
    assert str(labels) in str(info.value) and not (tmp_path / "out").exists()


def test_no_json_files_and_missing_folder(tmp_path: Path) -> None:
    save_photo(tmp_path / "src" / "a.jpg", photo())
    with pytest.raises(CatsegError, match="no labelme .json files found"):
        convert_labelme(tmp_path / "src", tmp_path / "out")
    with pytest.raises(CatsegError, match="no such folder"):
        convert_labelme(tmp_path / "nope", tmp_path / "out")


def test_skip_invalid_with_nothing_valid_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.json").write_text("[]")
    with pytest.raises(CatsegError, match="none of the 1") as info:
        convert_labelme(tmp_path / "src", tmp_path / "out", skip_invalid=True)
    assert "not a labelme file" in info.value.problems[0]


def test_existing_out_dir_refused_without_force_replaced_with_force(tmp_path: Path) -> None:
    labelme_pair(tmp_path / "src", "a", [shape("cat", [[1, 1], [9, 9]], "rectangle")])
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(CatsegError, match="already exists"):
        convert_labelme(tmp_path / "src", out)
    assert snapshot(out) == {"keep.txt": b"mine"}
    # --force replaces only a folder catseg wrote: a folder of the user's own is refused and kept.
    with pytest.raises(CatsegError, match="not a catseg dataset folder"):
        convert_labelme(tmp_path / "src", out, force=True)
    assert snapshot(out) == {"keep.txt": b"mine"}
    (out / "dataset.json").write_text('{"format": "catseg-dataset"}')  # now it is (an old) catseg dataset
    convert_labelme(tmp_path / "src", out, force=True)
    assert not (out / "keep.txt").exists() and (out / "masks" / "a.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_out_dir_inside_the_source_folder_is_not_read_back(tmp_path: Path) -> None:
    src = tmp_path / "src"
    labelme_pair(src, "a", [shape("cat", [[1, 1], [9, 9]], "rectangle")])
    convert_labelme(src, src / "dataset")
    report = convert_labelme(src, src / "dataset", force=True)  # dataset.json inside is not a labelme file
    assert report.converted == ["a"] and report.skipped == []


# ----------------------------------------------------------------------------- CLI
def test_cli_convert_writes_the_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from catseg.cli import main

    labelme_pair(tmp_path / "src", "a", [shape("cat", [[1, 1], [9, 9]], "rectangle")])
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "out")]) == 0
    assert "0 background, 1 cat" in capsys.readouterr().out
    assert read_dataset(tmp_path / "out").stems() == ["a"]


def test_cli_convert_bad_input_exits_2_with_one_clear_error(bad_folder: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from catseg.cli import main

    assert main(["convert", str(bad_folder), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("catseg convert: error:") == 1 and "Traceback" not in err
    assert str(bad_folder / "poly2.json") in err and not (tmp_path / "out").exists()


def test_force_never_replaces_the_folder_that_holds_the_sources(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    labelme_pair(ds / "labelme", "a", [shape("cat", [[1, 1], [9, 9]], "rectangle")])
    (ds / "dataset.json").write_text('{"format": "catseg-dataset"}')  # an old dataset that holds the sources
    before = snapshot(ds / "labelme")
    with pytest.raises(CatsegError, match="which --force would replace"):
        convert_labelme(ds / "labelme", ds, force=True)
    assert snapshot(ds / "labelme") == before


def test_labels_file_without_background_gives_id_0_to_its_first_class(tmp_path: Path) -> None:
    """A dataset whose id 0 is a real class (CamVid's Sky): labels.txt names it on the id-0 line."""
    labels = tmp_path / "labels.txt"
    labels.write_text("__ignore__\nsky\nroad\n")
    assert read_labels_file(labels) == {"sky": 0, "road": 1, "__ignore__": 255}
    labelme_pair(tmp_path / "src", "a", [shape("road", [[1, 1], [9, 9]], "rectangle")])
    convert_labelme(tmp_path / "src", tmp_path / "out", labels_file=labels)
    assert read_dataset(tmp_path / "out").classes == ["sky", "road"]
    assert read_dataset(tmp_path / "out").background is None
    mask = read_mask(tmp_path / "out" / "masks" / "a.png")
    assert mask[5, 5] == 1 and mask[0, 0] == 0  # unpainted pixels are the first class
