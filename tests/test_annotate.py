"""Masks -> labelme polygons -> `catseg convert` -> the same masks; predict --format labelme."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import SHARED_DATA
from PIL import Image

from catseg.annotate import (
    LabelmeOptions,
    is_machine_made,
    labelme_document,
    labels_text,
    mask_to_shapes,
    relative_image_path,
)
from catseg.cli import main
from catseg.errors import CatsegError
from catseg.images import read_image, read_mask
from catseg.labelme import convert_labelme, read_labels_file
from catseg.shapes import shapes_to_mask

NAMES = ["background", "cat", "dog", "toy"]
PETS = SHARED_DATA / "oxford-pets-sample"


def _label_to_id(tmp_path: Path, names: list[str]) -> dict[str, int]:
    (tmp_path / "labels.txt").write_text(labels_text(names))
    return read_labels_file(tmp_path / "labels.txt")


def _ious(truth: np.ndarray, back: np.ndarray) -> dict[int, float]:
    return {int(v): float(((truth == v) & (back == v)).sum() / ((truth == v) | (back == v)).sum())
            for v in np.union1d(np.unique(truth), np.unique(back))}


def _scene(scale: int = 2) -> np.ndarray:
    """A ring (cat) whose hole holds a dog disc, a dog box with a background hole, a toy box touching the dog
    box, an ignore strip, a one-pixel cat speck and a small toy blob."""
    m = np.zeros((120 * scale, 160 * scale), np.uint8)
    s = scale
    cv2.circle(m, (60 * s, 60 * s), 45 * s, 1, -1)
    cv2.circle(m, (60 * s, 60 * s), 25 * s, 0, -1)
    cv2.circle(m, (60 * s, 60 * s), 12 * s, 2, -1)
    cv2.rectangle(m, (100 * s, 20 * s), (150 * s, 100 * s), 2, -1)
    cv2.rectangle(m, (120 * s, 40 * s), (140 * s, 60 * s), 0, -1)
    cv2.rectangle(m, (105 * s, 70 * s), (118 * s, 95 * s), 3, -1)  # inside the dog box, touching it
    m[0:3, :] = 255
    m[110 * s, 10 * s] = 1
    cv2.circle(m, (130 * s, 110 * s), 6 * s, 3, -1)
    return m


def test_holes_classes_and_touching_regions_round_trip(tmp_path: Path) -> None:
    mask = _scene()
    label_to_id = _label_to_id(tmp_path, NAMES)
    shapes = mask_to_shapes(mask, NAMES, tolerance=1.0, min_area=5)
    back = shapes_to_mask(shapes, *mask.shape, label_to_id)
    ious = _ious(mask, back)
    assert min(ious.values()) >= 0.98, ious
    labels = [s["label"] for s in shapes]
    assert labels.count("_background_") == 2 and labels.count("__ignore__") == 1
    # every hole is drawn after the region around it, and the disc after the hole it sits in
    assert labels.index("cat") < labels.index("_background_") < labels.index("dog", labels.index("_background_"))
    exact = shapes_to_mask(mask_to_shapes(mask, NAMES, tolerance=0, min_area=1), *mask.shape, label_to_id)
    assert (exact != mask).sum() <= 2  # without simplification only rasterisation ties differ


def test_specks_are_dropped_and_points_are_few(tmp_path: Path) -> None:
    mask = _scene()
    shapes = mask_to_shapes(mask, NAMES, tolerance=1.0, min_area=20)
    back = shapes_to_mask(shapes, *mask.shape, _label_to_id(tmp_path, NAMES))
    assert back[220, 20] == 0  # the one-pixel cat speck is gone
    assert all(len(s["points"]) >= 3 for s in shapes)
    assert sum(len(s["points"]) for s in shapes) < 0.2 * sum(len(s["points"]) for s in mask_to_shapes(mask, NAMES, 0, 20))
    assert all(is_machine_made(s) and s["shape_type"] == "polygon" and s["description"] for s in shapes)
    thin = np.zeros((20, 30), np.uint8)
    thin[5, 2:28] = 1  # a one-pixel line simplifies to two points: written as its box
    line = mask_to_shapes(thin, NAMES, tolerance=3.0, min_area=5)
    assert len(line) == 1 and len(line[0]["points"]) >= 3
    assert (shapes_to_mask(line, 20, 30, _label_to_id(tmp_path, NAMES)) == thin).all()


def test_bad_masks_and_names_are_refused() -> None:
    with pytest.raises(ValueError, match="beyond"):
        mask_to_shapes(np.full((4, 4), 7, np.uint8), NAMES)
    with pytest.raises(CatsegError, match="reserved"):
        labels_text(["background", "_background_"])
    with pytest.raises(CatsegError, match="--tolerance"):
        LabelmeOptions(tolerance=-1).validate()


def test_document_opens_in_labelme_with_exif_rotation_and_embedded_image(tmp_path: Path) -> None:
    labelme_file = pytest.importorskip("labelme._label_file", reason="labelme (dev extra) not installed")
    photos, out = tmp_path / "photos", tmp_path / "ann"
    photos.mkdir()
    out.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned by 90 degrees: labelme shows (and annotates) 40 wide, 60 high
    Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(photos / "turned.jpg", exif=exif)
    mask = np.zeros((60, 40), np.uint8)
    mask[10:30, 5:25] = 1
    assert read_image(photos / "turned.jpg").shape[:2] == mask.shape
    doc = labelme_document(photos / "turned.jpg", out / "turned.json", mask, ["background", "cat"],
                           LabelmeOptions(embed_image=True))
    assert (doc["imageHeight"], doc["imageWidth"]) == (60, 40) and doc["imagePath"] == "../photos/turned.jpg"
    assert Image.open(io.BytesIO(base64.b64decode(doc["imageData"]))).size == (40, 60)
    (out / "turned.json").write_text(json.dumps(doc))
    loaded = labelme_file.LabelFile(str(out / "turned.json"))  # labelme checks the sizes against the photo
    assert [s["label"] for s in loaded.shapes] == ["cat"] and loaded.shapes[0]["flags"] == {"catseg": True}
    doc["imageData"] = None
    (out / "turned.json").write_text(json.dumps(doc))
    labelme_file.LabelFile(str(out / "turned.json"))
    assert relative_image_path(photos / "turned.jpg", photos / "turned.json") == "turned.jpg"


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(60, 120, (h, w, 3)).astype(np.uint8)
    image[h // 5: h // 5 + 40, w // 4: w // 4 + 50] = 230
    return image


def test_predict_labelme_round_trips_and_never_overwrites(tiny_run: Path, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    photos, out = tmp_path / "photos", tmp_path / "ann"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(_photo(90 + i, 120, i)).save(photos / f"p{i}.png")
    run = ["predict", str(tiny_run), str(photos), "--out", str(out)]
    assert main(run + ["--format", "labelme,mask"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["labels.txt", "p0.json", "p0.png", "p1.json", "p1.png"]
    doc = json.loads((out / "p0.json").read_text())
    assert doc["imagePath"] == "../photos/p0.png" and doc["imageData"] is None and doc["version"]
    assert (doc["imageHeight"], doc["imageWidth"]) == (90, 120) and doc["flags"] == {}
    convert_labelme(out, tmp_path / "ds", labels_file=out / "labels.txt")
    for i in range(2):
        predicted, back = read_mask(out / f"p{i}.png"), read_mask(tmp_path / "ds" / "masks" / f"p{i}.png")
        big = [v for v in np.unique(predicted) if (predicted == v).sum() >= 400]
        assert all(_ious(predicted, back)[v] >= 0.95 for v in big)
    # a person's corrections survive a second predict; the skipped photos are named in the log
    (out / "p1.json").write_text('{"mine": true}')
    (out / "p1.png").unlink()
    (out / "p0.json").unlink()
    with caplog.at_level("INFO", logger="catseg"):
        assert main(run + ["--format", "labelme"]) == 0
    assert (out / "p1.json").read_text() == '{"mine": true}' and (out / "p0.json").is_file()
    assert "skipped 1 photo(s)" in caplog.text and "p1.png" in caplog.text
    assert main(run + ["--format", "labelme", "--force"]) == 0
    assert json.loads((out / "p1.json").read_text())["shapes"] is not None


def test_predict_refuses_a_labels_file_with_other_ids_and_writing_over_a_photo(tiny_run: Path, tmp_path: Path,
                                                                               capsys: pytest.CaptureFixture[str]) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(_photo(40, 50, 0)).save(photos / "a.png")
    (photos / "labels.txt").write_text("__ignore__\n_background_\nzebra\nsquare\n")
    assert main(["predict", str(tiny_run), str(photos), "--out", str(photos), "--format", "labelme"]) == 2
    assert "other ids" in capsys.readouterr().err and not (photos / "a.json").exists()
    (photos / "labels.txt").write_text("__ignore__\n_background_\nsquare\nzebra\n")  # compatible: kept as it is
    assert main(["predict", str(tiny_run), str(photos), "--out", str(photos), "--format", "labelme"]) == 0
    assert (photos / "a.json").is_file() and "zebra" in (photos / "labels.txt").read_text()
    before = (photos / "a.png").read_bytes()
    assert main(["predict", str(tiny_run), str(photos), "--out", str(photos), "--format", "mask", "--force"]) == 2
    assert "holds 1 of the input photos" in capsys.readouterr().err and (photos / "a.png").read_bytes() == before


@pytest.mark.skipif(not PETS.is_dir(), reason=f"the Oxford-IIIT Pet sample is not at {PETS}")
def test_real_photos_round_trip_through_convert(tmp_path: Path) -> None:
    """Ground-truth pet masks written as labelme polygons at the default tolerance come back from convert."""
    from catseg.importers.oxford import trimap_to_mask

    stems = sorted(p.stem for p in (PETS / "annotations" / "trimaps").glob("*.png"))[::37][:8]
    out = tmp_path / "ann"
    out.mkdir()
    (out / "labels.txt").write_text(labels_text(["background", "pet"]))
    truths = {}
    for stem in stems:
        photo = next((PETS / "images").glob(f"{stem}.*"))
        truth = trimap_to_mask(np.asarray(Image.open(PETS / "annotations" / "trimaps" / f"{stem}.png")), "binary")
        truth = truth.astype(np.uint8)
        if truth.shape != read_image(photo).shape[:2]:
            continue  # a photo whose trimap has another size: the importer's business, not this test's
        truths[stem] = truth
        doc = labelme_document(photo, out / f"{stem}.json", truth, ["background", "pet"])
        (out / f"{stem}.json").write_text(json.dumps(doc))
    assert len(truths) >= 5
    convert_labelme(out, tmp_path / "ds", labels_file=out / "labels.txt")
    for stem, truth in truths.items():
        ious = _ious(truth, read_mask(tmp_path / "ds" / "masks" / f"{stem}.png"))
        assert min(ious.values()) >= 0.98, (stem, ious)
