"""Tests for `catseg check`: every problem found and named, exact figures, and nothing written."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catseg.check import CheckReport, check_dataset
from catseg.cli import main
from catseg.data import DatasetWriter, dataset_json
from catseg.images import mask_png_bytes

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "oxford-pets-sample"
CLASSES = ["background", "cat", "dog"]


def _image_bytes(width: int, height: int, mode: str = "RGB", fmt: str = "PNG", orientation: int = 1) -> bytes:
    image = Image.new(mode, (width, height), 128)
    buf = io.BytesIO()
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(buf, format=fmt, exif=exif.tobytes())
    else:
        image.save(buf, format=fmt)
    return buf.getvalue()


def _mask(height: int, width: int, **blocks: tuple[slice, slice, int]) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.uint8)
    for rows, cols, value in blocks.values():
        mask[rows, cols] = value
    return mask


def _write(root: Path, masks: dict[str, np.ndarray], classes: list[str] = CLASSES, **doc: object) -> Path:
    """Write a dataset folder with one plain RGB PNG per mask, sized like the mask."""
    with DatasetWriter(root) as writer:
        for stem, mask in masks.items():
            writer.write_image(stem, _image_bytes(mask.shape[1], mask.shape[0]), ".png")
            writer.write_mask(stem, mask)
        writer.write_dataset_json(dataset_json(classes, **doc))  # type: ignore[arg-type]
    return root


def _cat(stem_count: int = 10, size: int = 16) -> dict[str, np.ndarray]:
    """Masks where the cat fills a quarter of every image and the dog half of the odd ones."""
    masks = {}
    for i in range(stem_count):
        blocks = {"cat": (slice(0, size // 2), slice(0, size // 2), 1)}
        if i % 2:
            blocks["dog"] = (slice(size // 2, size), slice(0, size), 2)
        masks[f"s{i}"] = _mask(size, size, **blocks)
    return masks


@pytest.fixture
def clean(tmp_path: Path) -> Path:
    """Ten pairs: 9 of 16x16 and one 24 wide x 20 high; one grey image; 16 ignore pixels in s0."""
    masks = {}
    for i in range(9):
        blocks = {"cat" if i < 5 else "dog": (slice(0, 8), slice(0, 8), 1 if i < 5 else 2)}
        masks[f"s{i}"] = _mask(16, 16, **blocks)
    masks["s0"][12:16, 12:16] = 255
    masks["s9"] = _mask(20, 24, dog=(slice(0, 4), slice(0, 24), 2))
    root = _write(tmp_path / "ds", masks)
    (root / "images" / "s8.png").write_bytes(_image_bytes(16, 16, mode="L"))
    return root


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- clean data
def test_clean_dataset_is_ok_with_exact_figures(clean: Path) -> None:
    report = check_dataset(clean)
    assert report.errors == [] and report.warnings == []
    assert report.ok
    assert (report.num_images, report.num_masks, report.num_pairs, report.num_usable) == (10, 10, 10, 10)
    assert (report.width.min, report.width.median, report.width.max) == (16, 16.0, 24)
    assert (report.height.min, report.height.median, report.height.max) == (16, 16.0, 20)
    assert report.modes == {"RGB": 9, "L": 1}
    # background: 9*256 - 5*64 - 4*64 - 16 + (480 - 96); cat 5*64; dog 4*64 + 96
    assert report.class_pixels == [2096, 320, 352]
    assert report.class_images == [10, 5, 5]
    assert report.ignore_pixels == 16
    assert report.class_fractions == pytest.approx([2096 / 2768, 320 / 2768, 352 / 2768])
    assert report.median_object_fraction == pytest.approx(0.25)


def test_to_dict_is_json_safe_and_complete(clean: Path) -> None:
    doc = json.loads(json.dumps(check_dataset(clean).to_dict()))
    assert doc["ok"] is True
    assert doc["class_pixels"] == [2096, 320, 352]
    assert doc["width"] == {"min": 16, "median": 16.0, "max": 24}
    assert doc["class_fractions"][1] == pytest.approx(320 / 2768)


def test_format_shows_figures_and_class_table(clean: Path) -> None:
    text = check_dataset(clean).format()
    assert "16-24 px (median 16)" in text
    assert "RGB 9, L 1" in text
    lines = text.splitlines()
    assert any(line.split() == ["1", "cat", "11.56%", "5"] for line in lines), text
    assert text.rstrip().endswith("OK: ready to train")


# ----------------------------------------------------------------------------- errors
def test_mask_size_differs_from_image_is_an_error(tmp_path: Path) -> None:
    root = _write(tmp_path / "ds", _cat())
    (root / "images" / "s3.png").write_bytes(_image_bytes(17, 16))
    report = check_dataset(root)
    assert not report.ok
    assert report.size_mismatches == ["masks/s3.png"]
    assert len(report.errors) == 1 and "s3.png" in report.errors[0] and "16x16" in report.errors[0]
    assert "17x16" in report.errors[0]
    assert report.num_usable == 9  # the figures leave the bad pair out


def test_mask_values_outside_the_classes_are_an_error_naming_file_and_values(tmp_path: Path) -> None:
    masks = _cat()
    masks["s4"][0, 0], masks["s4"][0, 1], masks["s4"][1, 1] = 3, 7, 255  # 255 is the ignore value: allowed
    report = check_dataset(_write(tmp_path / "ds", masks))
    assert not report.ok
    assert report.bad_values == {"masks/s4.png": [3, 7]}
    assert len(report.errors) == 1
    assert "s4.png" in report.errors[0] and "value(s) 3, 7," in report.errors[0]


def test_custom_ignore_value_is_respected(tmp_path: Path) -> None:
    masks = _cat()
    masks["s0"][0, 0] = 200
    report = check_dataset(_write(tmp_path / "ds", masks, ignore_index=200))
    assert report.ok and report.ignore_pixels == 1 and report.bad_values == {}


def test_unreadable_image_and_mask_are_errors_naming_the_file(tmp_path: Path) -> None:
    root = _write(tmp_path / "ds", _cat())
    (root / "images" / "s1.png").unlink()
    (root / "images" / "s1.jpg").write_bytes(b"not a jpeg at all")
    (root / "masks" / "s2.png").write_bytes(b"")
    report = check_dataset(root)
    assert not report.ok
    assert report.unreadable == ["images/s1.jpg", "masks/s2.png"]
    assert any("s1.jpg" in e and "cannot read this image" in e for e in report.errors)
    assert any("s2.png" in e and "cannot read this mask" in e for e in report.errors)
    assert report.num_usable == 8


def test_colour_mask_is_an_error_pointing_to_import_colors(tmp_path: Path) -> None:
    root = _write(tmp_path / "ds", _cat())
    (root / "masks" / "s5.png").write_bytes(_image_bytes(16, 16, mode="RGB"))
    report = check_dataset(root)
    assert not report.ok
    assert len(report.errors) == 1
    assert "s5.png" in report.errors[0] and "RGB" in report.errors[0] and "--colors" in report.errors[0]


def test_split_naming_unknown_stems_is_an_error(tmp_path: Path) -> None:
    report = check_dataset(_write(tmp_path / "ds", _cat(), splits={"train": ["s0", "s1", "ghost"], "val": ["s2"]}))
    assert not report.ok
    assert report.split_missing == {"train": ["ghost"]}
    assert len(report.errors) == 1 and "'train'" in report.errors[0] and "ghost" in report.errors[0]


def test_overlapping_splits_are_a_warning(tmp_path: Path) -> None:
    report = check_dataset(_write(tmp_path / "ds", _cat(), splits={"train": ["s0", "s1"], "val": ["s1", "s2"]}))
    assert report.ok
    assert [w for w in report.warnings if "'train' and 'val'" in w and "s1" in w]


@pytest.mark.parametrize("break_it", ["no_json", "bad_json", "invalid_json", "no_folder"])
def test_unusable_dataset_json_or_folder_becomes_an_error(tmp_path: Path, break_it: str) -> None:
    root = _write(tmp_path / "ds", _cat(3))
    path = root / "dataset.json"
    if break_it == "no_json":
        path.unlink()
    elif break_it == "bad_json":
        path.write_text("{not json")
    elif break_it == "invalid_json":
        path.write_text(json.dumps({**dataset_json(CLASSES), "classes": ["only-one"]}))
    else:
        root = tmp_path / "nowhere"
    report = check_dataset(root)
    assert not report.ok and report.errors
    assert "dataset.json" in report.errors[0] or "no such dataset folder" in report.errors[0]
    expected = {"no_json": "dataset.json: missing", "bad_json": "dataset.json: not valid JSON",
                "invalid_json": "classes must be a list of at least two", "no_folder": "no such dataset folder"}
    assert expected[break_it] in report.errors[0]
    assert "NOT READY" in report.format()


def test_ignore_value_that_is_also_a_class_id_is_an_error(tmp_path: Path) -> None:
    report = check_dataset(_write(tmp_path / "ds", _cat(), ignore_index=2))
    assert not report.ok
    assert any("ignore_index 2" in e and "'dog'" in e for e in report.errors)


def test_no_usable_pair_is_an_error(tmp_path: Path) -> None:
    root = _write(tmp_path / "ds", _cat(2))
    for path in (root / "masks").iterdir():
        path.unlink()
    report = check_dataset(root)
    assert not report.ok and report.num_usable == 0
    assert any("no usable image/mask pair" in e for e in report.errors)


# ----------------------------------------------------------------------------- warnings
def test_missing_and_extra_masks_are_warnings_naming_the_files(tmp_path: Path) -> None:
    root = _write(tmp_path / "ds", _cat(12))
    (root / "masks" / "s3.png").unlink()
    (root / "images" / "s7.png").unlink()
    report = check_dataset(root)
    assert report.ok and report.errors == []
    assert report.missing_masks == ["images/s3.png"]
    assert report.extra_masks == ["masks/s7.png"]
    assert (report.num_images, report.num_masks, report.num_pairs) == (11, 11, 10)
    assert [w for w in report.warnings if "no mask" in w and "images/s3.png" in w]
    assert [w for w in report.warnings if "no image" in w and "masks/s7.png" in w]


def test_empty_and_all_ignore_masks_are_warnings(tmp_path: Path) -> None:
    masks = _cat()
    masks["s2"][:] = 0
    masks["s2"][0, 0] = 255  # background plus ignore still counts as only background
    masks["s5"][:] = 255
    report = check_dataset(_write(tmp_path / "ds", masks))
    assert report.ok
    assert report.empty_masks == ["masks/s2.png"]
    assert report.all_ignore_masks == ["masks/s5.png"]
    assert [w for w in report.warnings if "only background" in w and "s2.png" in w]
    assert [w for w in report.warnings if "all ignore" in w and "s5.png" in w]


def test_rare_class_warns_with_class_weights_remedy(tmp_path: Path) -> None:
    masks = _cat()
    for i in range(10):  # one dog, in one image, covering 1/16 of it: 16 of 2560 pixels
        masks[f"s{i}"][8:, :] = 0
    masks["s0"][12:, 12:] = 2
    report = check_dataset(_write(tmp_path / "ds", masks))
    assert report.ok
    assert report.class_pixels[2] == 16
    rare = [w for w in report.warnings if "'dog'" in w]
    assert len(rare) == 1 and "0.62%" in rare[0] and "--class-weights auto" in rare[0]
    assert not [w for w in report.warnings if "small objects" in w]  # 1/16 of its image is not tiny


def test_tiny_objects_warn_with_size_remedy(tmp_path: Path) -> None:
    masks = {f"s{i}": _mask(32, 32, cat=(slice(0, 3), slice(0, 3), 1)) for i in range(10)}  # 9/1024 px
    report = check_dataset(_write(tmp_path / "ds", masks, classes=["background", "cat"]))
    assert report.ok
    assert report.median_object_fraction == pytest.approx(9 / 1024)
    tiny = [w for w in report.warnings if "small objects" in w]
    assert len(tiny) == 1 and "--size" in tiny[0] and "0.88%" in tiny[0]


def test_few_images_warns_below_ten(tmp_path: Path) -> None:
    few = check_dataset(_write(tmp_path / "few", _cat(9)))
    enough = check_dataset(_write(tmp_path / "enough", _cat(10)))
    assert few.ok and [w for w in few.warnings if "only 9 usable" in w and "augment" in w]
    assert enough.warnings == []


def test_class_in_no_image_warns(tmp_path: Path) -> None:
    report = check_dataset(_write(tmp_path / "ds", _cat(), classes=CLASSES + ["bird"]))
    assert report.ok
    assert report.class_images[3] == 0
    assert [w for w in report.warnings if "'bird'" in w and "no usable mask" in w]


def test_exif_rotated_image_warns_and_is_compared_upright(tmp_path: Path) -> None:
    masks = _cat()
    masks["s1"] = _mask(16, 8, cat=(slice(0, 8), slice(0, 4), 1))  # 8 wide, 16 high: the upright photo
    masks["s2"] = _mask(8, 16, cat=(slice(0, 4), slice(0, 8), 1))  # the stored pixels' size: wrong
    root = _write(tmp_path / "ds", masks)
    for stem in ("s1", "s2"):
        (root / "images" / f"{stem}.png").unlink()
        (root / "images" / f"{stem}.jpg").write_bytes(_image_bytes(16, 8, fmt="JPEG", orientation=6))
    report = check_dataset(root)
    assert report.exif_rotated == ["images/s1.jpg", "images/s2.jpg"]
    assert [w for w in report.warnings if "EXIF orientation" in w and "images/s1.jpg" in w]
    assert report.size_mismatches == ["masks/s2.png"]
    assert "after its EXIF rotation" in report.errors[0] and "8x16" in report.errors[0]
    assert report.width.min == 8 and report.height.max == 16


def test_files_training_would_skip_are_warnings(tmp_path: Path) -> None:
    root = _write(tmp_path / "ds", _cat())
    (root / "masks" / "s1.jpg").write_bytes(b"x")
    (root / "images" / "notes.txt").write_text("x")
    (root / "images" / "s2.jpg").write_bytes(_image_bytes(16, 16, fmt="JPEG"))
    report = check_dataset(root)
    assert report.ok
    assert [w for w in report.warnings if "masks/s1.jpg" in w and "images/notes.txt" in w]
    assert [w for w in report.warnings if "s2.jpg, s2.png" in w and "share the stem" in w]


# ----------------------------------------------------------------------------- CLI and safety
def test_cli_exits_0_for_clean_and_1_for_broken(clean: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(clean)]) == 0
    out = capsys.readouterr().out
    assert "background" in out and "dog" in out and "OK: ready to train" in out
    (clean / "masks" / "s4.png").write_bytes(mask_png_bytes(np.full((16, 16), 9, dtype=np.uint8)))
    assert main(["check", str(clean)]) == 1
    out = capsys.readouterr().out
    assert "cat" in out and "value(s) 9," in out and "NOT READY" in out


def test_check_never_modifies_the_dataset(tmp_path: Path) -> None:
    masks = _cat()
    masks["s3"][0, 0] = 9
    root = _write(tmp_path / "ds", masks, splits={"val": ["ghost"]})
    (root / "images" / "s1.jpg").write_bytes(_image_bytes(8, 16, fmt="JPEG", orientation=6))
    (root / "images" / "s1.png").unlink()
    (root / "masks" / "s2.png").write_bytes(b"broken")
    before = _snapshot(root)
    report = check_dataset(root)
    assert not report.ok and len(report.errors) == 4  # size, value, unreadable, split
    assert _snapshot(root) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_report_defaults_are_not_ok() -> None:
    assert not CheckReport(root="x").ok  # no usable pair, even without an error line


def test_real_oxford_pets_sample(tmp_path: Path) -> None:
    trimaps = SAMPLE / "annotations" / "trimaps"
    if not trimaps.is_dir():
        pytest.skip(f"real sample not present at {SAMPLE}")
    stems = sorted(p.stem for p in trimaps.glob("*.png"))[:3]
    with DatasetWriter(tmp_path / "pets") as writer:
        for stem in stems:
            writer.write_image(stem, (SAMPLE / "images" / f"{stem}.jpg").read_bytes(), ".jpg")
            trimap = np.asarray(Image.open(trimaps / f"{stem}.png"))  # 1 pet, 2 background, 3 border
            writer.write_mask(stem, np.select([trimap == 1, trimap == 2], [1, 0], 255).astype(np.uint8))
        writer.write_dataset_json(dataset_json(["background", "pet"]))
    report = check_dataset(tmp_path / "pets")
    assert report.ok and report.errors == []
    assert report.num_usable == 3 and report.modes == {"RGB": 3}
    assert report.class_images == [3, 3] and report.ignore_pixels > 0
    assert 0.05 < report.class_fractions[1] < 0.95
