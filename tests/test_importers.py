"""catseg.importers: Oxford-IIIT Pet, VOC / labelme2voc and image + mask folders -> dataset folder."""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catseg.cli import main
from catseg.data import read_dataset
from catseg.errors import CatsegError
from catseg.images import read_mask, voc_colormap
from catseg.importers import import_dataset, read_colors_file, trimap_to_mask

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "oxford-pets-sample"
needs_sample = pytest.mark.skipif(not SAMPLE.is_dir(), reason=f"real Oxford-IIIT Pet sample not found at {SAMPLE}")
LABEL_MODES = ["binary", "binary-ignore-border", "species", "trimap"]


# ----------------------------------------------------------------------------- helpers
def expected_mask(trimap: np.ndarray, labels: str, species: int) -> np.ndarray:
    """The class ids each mode must give, written out independently of the code under test."""
    pet = species if labels == "species" else 1
    border = {"binary": 1, "binary-ignore-border": 255, "species": species, "trimap": 2}[labels]
    out = np.full(trimap.shape, 99, dtype=np.uint8)
    out[trimap == 1] = pet
    out[trimap == 2] = 0
    out[trimap == 3] = border
    return out


def photo_bytes(w: int, h: int, fmt: str = "JPEG", mode: str = "RGB", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (h, w, len(mode)), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format=fmt)
    return buf.getvalue()


def save_png(path: Path, arr: np.ndarray, mode: str = "L", palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(arr, mode)
    if palette:
        image = Image.fromarray(arr, "P")
        image.putpalette(voc_colormap(256).flatten().tolist())
    image.save(path)


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    assert leftovers == []


# ----------------------------------------------------------------------------- synthetic oxford release
# stem -> (species in list.txt or None, photo kind). "lynx_8" is lower-case but list.txt says cat, so
# only reading list.txt gets it right; "boxer_4" is missing from list.txt, so the capital rule decides.
OXFORD = {
    "Abyssinian_1": (1, "jpeg"),
    "Bengal_2": (1, "png-as-jpg"),
    "beagle_3": (2, "jpeg"),
    "boxer_4": (None, "jpeg"),
    "lynx_8": (1, "jpeg"),
    "Sphynx_5": (1, "no-trimap"),
    "pug_6": (2, "wrong-size-trimap"),
    "Birman_7": (1, "broken"),
}
IMPORTED = ["Abyssinian_1", "Bengal_2", "beagle_3", "boxer_4", "lynx_8"]
SPECIES = {"Abyssinian_1": 1, "Bengal_2": 1, "beagle_3": 2, "boxer_4": 2, "lynx_8": 1}


def make_oxford(root: Path) -> dict[str, np.ndarray]:
    """Build a tiny release in the official layout; return the trimap of each stem."""
    images, trimaps = root / "images", root / "annotations" / "trimaps"
    images.mkdir(parents=True)
    trimaps.mkdir(parents=True)
    rng = np.random.default_rng(7)
    out = {}
    for i, (stem, (_species, kind)) in enumerate(OXFORD.items()):
        w, h = 16 + i, 12
        data = {"png-as-jpg": photo_bytes(w, h, "PNG", "RGBA", i), "broken": b"\xff\xd8not really a jpeg"}
        (images / f"{stem}.jpg").write_bytes(data.get(kind) or photo_bytes(w, h, seed=i))
        if kind == "no-trimap":
            continue
        trimap = rng.integers(1, 4, (h + (3 if kind == "wrong-size-trimap" else 0), w), dtype=np.uint8)
        save_png(trimaps / f"{stem}.png", trimap)
        out[stem] = trimap
    (images / "Abyssinian_1.mat").write_bytes(b"MATLAB 5.0 MAT-file")  # the release ships a few .mat files
    (trimaps / "._Abyssinian_1.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")  # and macOS metadata
    save_png(trimaps / "orphan_9.png", np.ones((4, 4), np.uint8))
    listed = [f"{s} 1 {sp} 1" for s, (sp, _) in OXFORD.items() if sp is not None]
    ann = root / "annotations"
    (ann / "list.txt").write_text("#Image CLASS-ID SPECIES BREED ID\n#ID: 1:37 Class ids\n" + "\n".join(listed) + "\n")
    (ann / "trainval.txt").write_text("Abyssinian_1 1 1 1\nBengal_2 2 1 2\nSphynx_5 3 1 3\nlynx_8 4 1 4\n")
    (ann / "test.txt").write_text("beagle_3 5 2 1\nboxer_4 6 2 2\npug_6 7 2 3\n")
    return out


@pytest.fixture
def oxford(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    src = tmp_path / "pets"
    return src, make_oxford(src)


# ----------------------------------------------------------------------------- trimap mapping
@pytest.mark.parametrize("labels", LABEL_MODES)
@pytest.mark.parametrize("species", [1, 2])
def test_trimap_to_mask_follows_the_trimap(labels: str, species: int) -> None:
    trimap = np.array([[1, 2, 3], [3, 2, 1]], dtype=np.uint8)
    got = trimap_to_mask(trimap, labels, species)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected_mask(trimap, labels, species))


def test_trimap_to_mask_rejects_values_outside_1_to_3() -> None:
    with pytest.raises(ValueError, match=r"trimap values \[0, 4\]"):
        trimap_to_mask(np.array([[0, 1, 4]], dtype=np.uint8))


# ----------------------------------------------------------------------------- oxford-pets
@pytest.mark.parametrize("labels", LABEL_MODES)
def test_oxford_masks_follow_trimaps_in_every_label_mode(oxford, tmp_path: Path, labels: str) -> None:
    src, trimaps = oxford
    out = tmp_path / "ds"
    report = import_dataset("oxford-pets", src, out, labels=labels)
    info = read_dataset(out)
    assert info.stems() == sorted(IMPORTED)
    assert report.images == len(IMPORTED)
    for stem in IMPORTED:
        np.testing.assert_array_equal(read_mask(info.mask_path(stem)), expected_mask(trimaps[stem], labels, SPECIES[stem]))
    assert info.classes == {"binary": ["background", "pet"], "binary-ignore-border": ["background", "pet"],
                            "species": ["background", "cat", "dog"], "trimap": ["background", "pet", "border"]}[labels]
    assert info.source["labels"] == labels and info.source["path"] == str(src.resolve())
    assert info.source["command"].startswith("catseg import oxford-pets")


def test_oxford_records_official_splits_restricted_to_imported(oxford, tmp_path: Path) -> None:
    src, _ = oxford
    report = import_dataset("oxford-pets", src, tmp_path / "ds")
    info = read_dataset(tmp_path / "ds")
    assert info.splits == {"trainval": ["Abyssinian_1", "Bengal_2", "lynx_8"], "test": ["beagle_3", "boxer_4"]}
    assert report.splits == {"trainval": 3, "test": 2}
    assert "trainval (3 images)" in report.summary()


def test_oxford_quirks_are_skipped_with_warnings(oxford, tmp_path: Path) -> None:
    src, _ = oxford
    report = import_dataset("oxford-pets", src, tmp_path / "ds")
    warnings = "\n".join(report.warnings)
    assert "Sphynx_5.jpg: no trimap" in warnings
    assert "pug_6.jpg" in warnings and "mask is 22x15 but its photo pug_6.jpg is 22x12" in warnings
    assert "Birman_7.jpg: " in warnings and "cannot read this image" in warnings
    assert len(report.warnings) == 3
    notes = "\n".join(report.notes)
    assert "Abyssinian_1.mat" in notes  # non-image files are ignored, and said so
    assert "orphan_9" in notes
    summary = report.summary()
    assert "warnings (3)" in summary and str(tmp_path / "ds") in summary


def test_png_named_jpg_is_stored_as_png_with_bytes_unchanged(oxford, tmp_path: Path) -> None:
    src, _ = oxford
    report = import_dataset("oxford-pets", src, tmp_path / "ds")
    images = tmp_path / "ds" / "images"
    assert (images / "Bengal_2.png").read_bytes() == (src / "images" / "Bengal_2.jpg").read_bytes()
    assert not (images / "Bengal_2.jpg").exists()
    assert (images / "Abyssinian_1.jpg").read_bytes() == (src / "images" / "Abyssinian_1.jpg").read_bytes()
    assert any("Bengal_2.jpg -> images/Bengal_2.png" in n for n in report.notes)


def test_species_uses_list_txt_then_the_capital_letter_rule(oxford, tmp_path: Path) -> None:
    src, trimaps = oxford
    report = import_dataset("oxford-pets", src, tmp_path / "ds", labels="species")
    masks = tmp_path / "ds" / "masks"
    lynx, boxer = read_mask(masks / "lynx_8.png"), read_mask(masks / "boxer_4.png")
    assert set(np.unique(lynx[trimaps["lynx_8"] == 1])) == {1}  # list.txt: cat, despite the lower-case name
    assert set(np.unique(boxer[trimaps["boxer_4"] == 1])) == {2}  # not listed: lower-case = dog
    assert any("species of 1 image not in annotations/list.txt" in n for n in report.notes)


def test_import_never_changes_the_source(oxford, tmp_path: Path) -> None:
    src, _ = oxford
    before = tree_digest(src)
    import_dataset("oxford-pets", src, tmp_path / "ds", labels="trimap")
    assert tree_digest(src) == before


def test_oxford_missing_layout_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "src" / "images").mkdir(parents=True)
    out = tmp_path / "ds"
    with pytest.raises(CatsegError, match="not the Oxford-IIIT Pet layout") as err:
        import_dataset("oxford-pets", tmp_path / "src", out)
    assert "annotations/trimaps: missing" in str(err.value) and "--download" in str(err.value)
    assert_nothing_written(out)


def test_oxford_with_nothing_importable_is_an_error(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "annotations" / "trimaps").mkdir(parents=True)
    (src / "images").mkdir()
    (src / "images" / "Abyssinian_1.jpg").write_bytes(b"garbage")
    save_png(src / "annotations" / "trimaps" / "Abyssinian_1.png", np.ones((4, 4), np.uint8))
    out = tmp_path / "ds"
    with pytest.raises(CatsegError, match="no image could be imported") as err:
        import_dataset("oxford-pets", src, out)
    assert "Abyssinian_1.jpg" in str(err.value)
    assert_nothing_written(out)


def test_existing_out_dir_is_refused_and_force_replaces_it(oxford, tmp_path: Path) -> None:
    src, _ = oxford
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(CatsegError, match="already exists.*--force"):
        import_dataset("oxford-pets", src, out)
    assert (out / "keep.txt").read_text() == "mine"
    # --force replaces only a folder catseg wrote: a folder of the user's own is refused and kept.
    with pytest.raises(CatsegError, match="not a catseg dataset folder"):
        import_dataset("oxford-pets", src, out, force=True)
    assert (out / "keep.txt").read_text() == "mine"
    (out / "dataset.json").write_text('{"format": "catseg-dataset"}')  # now it is (an old) catseg dataset
    import_dataset("oxford-pets", src, out, force=True)
    assert not (out / "keep.txt").exists() and read_dataset(out).stems() == sorted(IMPORTED)


@pytest.mark.parametrize("where", ["inside", "same", "parent"])
def test_out_dir_overlapping_the_source_is_refused(oxford, where: str) -> None:
    src, _ = oxford
    before = tree_digest(src)
    out = {"inside": src / "dataset", "same": src, "parent": src.parent}[where]
    with pytest.raises(CatsegError, match="source folder"):
        import_dataset("oxford-pets", src, out, force=True)
    assert tree_digest(src) == before and not (src / "dataset").exists()


@pytest.mark.parametrize("fmt, options, message", [
    ("oxford-pets", {"labels": "cats"}, "--labels 'cats': oxford-pets takes one of binary"),
    ("oxford-pets", {"colors": Path("c.txt")}, "--colors is for the masks format"),
    ("oxford-pets", {"classes": "a,b"}, "--classes is for voc and masks"),
    ("voc", {"labels": "trimap"}, "--labels is for oxford-pets"),
    ("voc", {"download": True}, "--download fetches the Oxford-IIIT Pet release"),
    ("masks", {"classes": "background"}, "at least two comma-separated"),
    ("masks", {"classes": "a,b", "colors": Path("c.txt")}, "drop --classes"),
    ("coco", {}, "format 'coco'"),
])
def test_bad_options_are_refused_before_anything_happens(tmp_path: Path, fmt, options, message) -> None:
    out = tmp_path / "ds"
    with pytest.raises(CatsegError, match="invalid options") as err:
        import_dataset(fmt, tmp_path, out, **options)
    assert message in str(err.value)
    assert_nothing_written(out)


# ----------------------------------------------------------------------------- real sample
def sample_subset(tmp_path: Path, stems: list[str]) -> Path:
    """A folder in the release layout holding symlinks to a few real files, so tests stay fast."""
    src = tmp_path / "sample"
    (src / "images").mkdir(parents=True)
    (src / "annotations" / "trimaps").mkdir(parents=True)
    for stem in stems:
        (src / "images" / f"{stem}.jpg").symlink_to(SAMPLE / "images" / f"{stem}.jpg")
        (src / "annotations" / "trimaps" / f"{stem}.png").symlink_to(SAMPLE / "annotations" / "trimaps" / f"{stem}.png")
    for name in ("list.txt", "trainval.txt"):
        (src / "annotations" / name).symlink_to(SAMPLE / "annotations" / name)
    return src


@needs_sample
def test_real_sample_subset_masks_follow_trimaps_in_every_mode(tmp_path: Path) -> None:
    stems = ["Abyssinian_1", "Abyssinian_17", "Bengal_10", "american_bulldog_10", "american_bulldog_100"]
    src = sample_subset(tmp_path, stems)
    for labels in LABEL_MODES:
        out = tmp_path / labels
        import_dataset("oxford-pets", src, out, labels=labels)
        info = read_dataset(out)
        assert info.stems() == sorted(stems)
        assert info.splits == {"trainval": [s for s in _read_first_words(SAMPLE / "annotations" / "trainval.txt")
                                            if s in stems]}
        for stem in stems:
            trimap = np.asarray(Image.open(SAMPLE / "annotations" / "trimaps" / f"{stem}.png"))
            species = 1 if stem[0].isupper() else 2  # true for this sample (list.txt agrees; checked in the slow test)
            np.testing.assert_array_equal(read_mask(info.mask_path(stem)), expected_mask(trimap, labels, species))


def _read_first_words(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


@needs_sample
@pytest.mark.slow
def test_real_sample_full_import_through_the_cli(tmp_path: Path, capsys) -> None:
    out = tmp_path / "pets"
    assert main(["import", "oxford-pets", str(SAMPLE), str(out)]) == 0
    assert "Imported 300 images" in capsys.readouterr().out
    info = read_dataset(out)
    listed = _read_first_words(SAMPLE / "annotations" / "trainval.txt")
    assert info.classes == ["background", "pet"]
    assert sorted(info.splits["trainval"]) == sorted(listed) == info.stems()
    species = {line.split()[0]: int(line.split()[2]) for line in (SAMPLE / "annotations" / "list.txt").read_text().splitlines()}
    assert all(species[s] == (1 if s[0].isupper() else 2) for s in info.stems())
    formats = {"JPEG": ".jpg", "PNG": ".png"}
    for stem in info.stems():
        trimap = np.asarray(Image.open(SAMPLE / "annotations" / "trimaps" / f"{stem}.png"))
        np.testing.assert_array_equal(read_mask(info.mask_path(stem)), expected_mask(trimap, "binary", 1))
        stored = info.image_path(stem)
        with Image.open(stored) as image:
            assert stored.suffix == formats[image.format]  # the extension follows the content
            assert image.size == trimap.shape[::-1]
        original = SAMPLE / "images" / f"{stem}.jpg"
        if stored.read_bytes() != original.read_bytes():  # only ever re-encoded losslessly
            np.testing.assert_array_equal(np.asarray(Image.open(stored).convert("RGB")),
                                          np.asarray(Image.open(original).convert("RGB")))


# ----------------------------------------------------------------------------- voc
def make_voc(root: Path, layout: str = "new", rgb: bool = False, class_names: bool = True) -> dict[str, np.ndarray]:
    """A labelme2voc-style folder: JPEGImages, masks of ids {0, 1, 2, 255}, ImageSets, class_names.txt."""
    masks_dir = root / ("SegmentationClass" if layout == "new" else "SegmentationClassPNG")
    (root / "JPEGImages").mkdir(parents=True)
    masks = {}
    for i, stem in enumerate(["2011_000003", "2011_000006", "2011_000010"]):
        (root / "JPEGImages" / f"{stem}.jpg").write_bytes(photo_bytes(20, 14, seed=i))
        if stem == "2011_000010":
            continue  # a photo with no mask: normal in VOC
        mask = np.zeros((14, 20), np.uint8)
        mask[2:8, 3:9], mask[9:12, 10:18], mask[0, :] = 1, 2, 255
        mask = np.roll(mask, i, axis=1)
        if rgb:
            save_png(masks_dir / f"{stem}.png", voc_colormap(256)[mask], mode="RGB")
        else:
            save_png(masks_dir / f"{stem}.png", mask, palette=True)
        if layout == "old":
            (root / "SegmentationClass").mkdir(exist_ok=True)
            np.save(root / "SegmentationClass" / f"{stem}.npy", mask.astype(np.int32))
        masks[stem] = mask
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("2011_000003\n")
    (sets / "val.txt").write_text("2011_000006\n2011_000010\n")
    if class_names:
        (root / "class_names.txt").write_text("_background_\ncat\ndog")
    return masks


@pytest.mark.parametrize("layout", ["new", "old"])
def test_voc_both_labelme2voc_layouts(tmp_path: Path, layout: str) -> None:
    masks = make_voc(tmp_path / "voc", layout)
    report = import_dataset("voc", tmp_path / "voc", tmp_path / "ds")
    info = read_dataset(tmp_path / "ds")
    assert info.classes == ["background", "cat", "dog"]
    assert info.stems() == sorted(masks)
    for stem, mask in masks.items():
        np.testing.assert_array_equal(read_mask(info.mask_path(stem)), mask)  # 255 stays ignore
    assert info.splits == {"train": ["2011_000003"], "val": ["2011_000006"]}
    notes = "\n".join(report.notes)
    assert ("SegmentationClassPNG/" if layout == "old" else "SegmentationClass/") in notes
    assert "1 photo in JPEGImages/ without a mask" in notes and "split val: 1 of its 2 listed images not imported" in notes


def test_voc_rgb_colour_masks_are_mapped_back_to_ids(tmp_path: Path) -> None:
    masks = make_voc(tmp_path / "voc", rgb=True)
    report = import_dataset("voc", tmp_path / "voc", tmp_path / "ds")
    for stem, mask in masks.items():
        np.testing.assert_array_equal(read_mask(tmp_path / "ds" / "masks" / f"{stem}.png"), mask)
    assert any("2 masks stored as RGB colour PNG" in n for n in report.notes)


def test_voc_without_class_names_names_classes_by_id(tmp_path: Path) -> None:
    make_voc(tmp_path / "voc", class_names=False)
    report = import_dataset("voc", tmp_path / "voc", tmp_path / "ds")
    assert read_dataset(tmp_path / "ds").classes == ["background", "class1", "class2"]
    assert any("no class_names.txt" in n and "--classes" in n for n in report.notes)
    import_dataset("voc", tmp_path / "voc", tmp_path / "named", classes="background,cat,dog")
    assert read_dataset(tmp_path / "named").classes == ["background", "cat", "dog"]


def test_voc_class_id_beyond_class_names_is_an_error(tmp_path: Path) -> None:
    make_voc(tmp_path / "voc")
    (tmp_path / "voc" / "class_names.txt").write_text("_background_\ncat\n")
    out = tmp_path / "ds"
    with pytest.raises(CatsegError, match="nothing was written") as err:
        import_dataset("voc", tmp_path / "voc", out)
    text = str(err.value)
    assert "2011_000003.png: class ids [2] but only 2 classes (0-1: background, cat)" in text
    assert "2011_000006.png" in text and "class_names.txt" in text
    assert_nothing_written(out)


def test_voc_mask_without_photo_and_unknown_colour_are_reported_together(tmp_path: Path) -> None:
    make_voc(tmp_path / "voc", rgb=True)
    masks_dir = tmp_path / "voc" / "SegmentationClass"
    save_png(masks_dir / "lonely.png", np.zeros((14, 20), np.uint8), palette=True)
    odd = np.zeros((14, 20, 3), np.uint8)
    odd[0, 0] = (1, 2, 3)
    save_png(masks_dir / "2011_000003.png", odd, mode="RGB")
    out = tmp_path / "ds"
    with pytest.raises(CatsegError, match=r"\(2 problems\)") as err:
        import_dataset("voc", tmp_path / "voc", out)
    assert "lonely.png: no photo named lonely.*" in str(err.value)
    assert "2011_000003.png: colour (1, 2, 3) in 1 pixels not in the colour table" in str(err.value)
    assert_nothing_written(out)


def test_voc_missing_folders_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "voc").mkdir()
    with pytest.raises(CatsegError, match="not a PASCAL VOC / labelme2voc folder") as err:
        import_dataset("voc", tmp_path / "voc", tmp_path / "ds")
    assert "JPEGImages: missing" in str(err.value) and "SegmentationClassPNG" in str(err.value)
    assert_nothing_written(tmp_path / "ds")


# ----------------------------------------------------------------------------- masks
def make_masks(root: Path, masks: dict[str, np.ndarray], mode: str = "L") -> None:
    (root / "images").mkdir(parents=True)
    for i, (stem, mask) in enumerate(masks.items()):
        (root / "images" / f"{stem}.jpg").write_bytes(photo_bytes(mask.shape[1], mask.shape[0], seed=i))
        save_png(root / "masks" / f"{stem}.png", mask, mode=mode)


def test_masks_with_class_ids_and_class_names(tmp_path: Path) -> None:
    a, b = np.zeros((10, 12), np.uint8), np.full((10, 12), 2, np.uint8)
    a[3:6, 3:6], b[0, 0] = 1, 255
    make_masks(tmp_path / "src", {"a": a, "b": b})
    report = import_dataset("masks", tmp_path / "src", tmp_path / "ds", classes="background,cat,dog")
    info = read_dataset(tmp_path / "ds")
    assert info.classes == ["background", "cat", "dog"] and report.images == 2
    np.testing.assert_array_equal(read_mask(info.mask_path("a")), a)
    np.testing.assert_array_equal(read_mask(info.mask_path("b")), b)
    import_dataset("masks", tmp_path / "src", tmp_path / "unnamed")
    assert read_dataset(tmp_path / "unnamed").classes == ["background", "class1", "class2"]


def test_masks_folder_names_are_options(tmp_path: Path) -> None:
    mask = np.eye(8, dtype=np.uint8)
    make_masks(tmp_path / "src", {"a": mask})
    (tmp_path / "src" / "images").rename(tmp_path / "src" / "photos")
    (tmp_path / "src" / "masks").rename(tmp_path / "src" / "labels")
    import_dataset("masks", tmp_path / "src", tmp_path / "ds", images="photos", masks="labels")
    np.testing.assert_array_equal(read_mask(tmp_path / "ds" / "masks" / "a.png"), mask)


def test_masks_0_255_binary_become_0_1_with_a_note(tmp_path: Path) -> None:
    a = np.zeros((8, 8), np.uint8)
    a[2:5, 2:5] = 255
    make_masks(tmp_path / "src", {"a": a, "b": np.zeros((8, 8), np.uint8)})
    report = import_dataset("masks", tmp_path / "src", tmp_path / "ds")
    np.testing.assert_array_equal(read_mask(tmp_path / "ds" / "masks" / "a.png"), (a == 255).astype(np.uint8))
    assert read_dataset(tmp_path / "ds").classes == ["background", "class1"]
    assert any("only 0 and 255" in n and "not ignore" in n for n in report.notes)


def test_masks_255_beside_other_ids_stays_ignore(tmp_path: Path) -> None:
    a = np.array([[0, 1], [255, 1]], np.uint8)
    make_masks(tmp_path / "src", {"a": np.kron(a, np.ones((4, 4), np.uint8))})
    import_dataset("masks", tmp_path / "src", tmp_path / "ds")
    assert set(np.unique(read_mask(tmp_path / "ds" / "masks" / "a.png"))) == {0, 1, 255}


COLORS = "# name r g b\nbackground 0 0 0\ncat 255 0 0\nbig dog 0 0 255\n__ignore__ 255 255 255\n"


def test_masks_rgb_colours_with_colors_file(tmp_path: Path) -> None:
    ids = np.array([[0, 1, 2, 255]] * 4, np.uint8)
    rgb = np.array([(0, 0, 0), (255, 0, 0), (0, 0, 255)] + [(0, 0, 0)] * 252 + [(255, 255, 255)], np.uint8)[ids]
    make_masks(tmp_path / "src", {"a": rgb}, mode="RGB")
    (tmp_path / "colors.txt").write_text(COLORS)
    report = import_dataset("masks", tmp_path / "src", tmp_path / "ds", colors=tmp_path / "colors.txt")
    info = read_dataset(tmp_path / "ds")
    assert info.classes == ["background", "cat", "big dog"]
    assert info.colors == [(0, 0, 0), (255, 0, 0), (0, 0, 255)]
    np.testing.assert_array_equal(read_mask(info.mask_path("a")), ids)
    assert any("colors.txt" in n for n in report.notes)


def test_masks_unmapped_colour_names_file_colour_and_pixel_count(tmp_path: Path) -> None:
    rgb = np.zeros((6, 6, 3), np.uint8)
    rgb[:2, :3] = (10, 20, 30)
    make_masks(tmp_path / "src", {"a": rgb}, mode="RGB")
    (tmp_path / "colors.txt").write_text(COLORS)
    out = tmp_path / "ds"
    with pytest.raises(CatsegError) as err:
        import_dataset("masks", tmp_path / "src", out, colors=tmp_path / "colors.txt")
    assert "a.png: colour (10, 20, 30) in 6 pixels not in the colour table" in str(err.value)
    assert "colors.txt" in str(err.value)
    assert_nothing_written(out)


def test_rgb_masks_without_colors_file_say_how_to_fix(tmp_path: Path) -> None:
    make_masks(tmp_path / "src", {"a": np.zeros((6, 6, 3), np.uint8)}, mode="RGB")
    with pytest.raises(CatsegError, match="pass --colors"):
        import_dataset("masks", tmp_path / "src", tmp_path / "ds")
    assert_nothing_written(tmp_path / "ds")


def test_bad_colors_file_lists_every_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "colors.txt"
    path.write_text("background 0 0 0\ncat 300 0 0\ndog 0 0\nfox 0 0 0\nbackground 1 1 1\n")
    with pytest.raises(CatsegError, match="invalid --colors file") as err:
        read_colors_file(path)
    text = str(err.value)
    assert "colors.txt:2" in text and "colors.txt:3" in text
    assert "colors.txt:4: colour (0, 0, 0) is already used" in text and "colors.txt:5: class 'background'" in text


def test_masks_pairing_problems_are_reported(tmp_path: Path) -> None:
    make_masks(tmp_path / "src", {"a": np.zeros((6, 6), np.uint8), "b": np.ones((6, 6), np.uint8)})
    (tmp_path / "src" / "images" / "c.jpg").write_bytes(photo_bytes(6, 6))
    report = import_dataset("masks", tmp_path / "src", tmp_path / "ds")
    assert report.images == 2 and any("c.jpg: no mask" in w for w in report.warnings)
    save_png(tmp_path / "src" / "masks" / "d_mask.png", np.zeros((6, 6), np.uint8))
    with pytest.raises(CatsegError) as err:
        import_dataset("masks", tmp_path / "src", tmp_path / "ds2")
    assert "d_mask.png: no photo named d_mask.*" in str(err.value)
    assert_nothing_written(tmp_path / "ds2")


def test_masks_every_problem_in_one_error(tmp_path: Path) -> None:
    make_masks(tmp_path / "src", {"a": np.zeros((6, 6), np.uint8), "b": np.zeros((6, 6), np.uint8)})
    save_png(tmp_path / "src" / "masks" / "a.png", np.zeros((7, 6), np.uint8))  # wrong size
    (tmp_path / "src" / "masks" / "b.png").unlink()
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(tmp_path / "src" / "masks" / "b.jpg")  # lossy mask
    out = tmp_path / "ds"
    with pytest.raises(CatsegError, match=r"\(2 problems\)") as err:
        import_dataset("masks", tmp_path / "src", out, classes="background,thing")
    assert "a.png: mask is 6x7 but its photo a.jpg is 6x6" in str(err.value)
    assert "b.jpg: a JPEG mask" in str(err.value)
    assert_nothing_written(out)


def test_masks_class_id_beyond_classes_is_an_error(tmp_path: Path) -> None:
    make_masks(tmp_path / "src", {"a": np.full((6, 6), 3, np.uint8)})
    with pytest.raises(CatsegError, match=r"class ids \[3\] but only 2 classes"):
        import_dataset("masks", tmp_path / "src", tmp_path / "ds", classes="background,thing")
    assert_nothing_written(tmp_path / "ds")


def test_photo_truncated_after_its_header_fails_without_leaving_files(tmp_path: Path) -> None:
    make_masks(tmp_path / "src", {"a": np.zeros((40, 40), np.uint8), "b": np.ones((40, 40), np.uint8)})
    photo = tmp_path / "src" / "images" / "b.jpg"
    photo.write_bytes(photo.read_bytes()[:-200])  # the header is fine; decoding fails
    out = tmp_path / "ds"
    with pytest.raises(CatsegError, match="b.jpg: cannot read this image"):
        import_dataset("masks", tmp_path / "src", out)
    assert_nothing_written(out)


def test_exif_rotated_photo_needs_a_mask_of_its_rotated_size(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    image = Image.fromarray(np.zeros((6, 10, 3), np.uint8))  # 10 wide, 6 high; orientation 6 = turn 90
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(src / "images" / "a.jpg", exif=exif)
    save_png(src / "masks" / "a.png", np.zeros((6, 10), np.uint8))
    with pytest.raises(CatsegError, match="matches the unrotated pixels"):
        import_dataset("masks", src, tmp_path / "ds", classes="background,thing")
    save_png(src / "masks" / "a.png", np.zeros((10, 6), np.uint8))
    report = import_dataset("masks", src, tmp_path / "ds", classes="background,thing")
    assert (tmp_path / "ds" / "images" / "a.png").is_file()
    assert any("EXIF orientation" in n for n in report.notes)


# ----------------------------------------------------------------------------- cli
def test_cli_import_oxford_pets(oxford, tmp_path: Path, capsys) -> None:
    src, _ = oxford
    out = tmp_path / "ds"
    assert main(["import", "oxford-pets", str(src), str(out), "--labels", "species"]) == 0
    printed = capsys.readouterr().out
    assert "Imported 5 images (oxford-pets)" in printed and "1 cat, 2 dog" in printed
    doc = json.loads((out / "dataset.json").read_text())
    assert doc["source"]["command"].endswith("--labels species")


def test_cli_bad_input_exits_2_with_one_clear_message(tmp_path: Path, capsys) -> None:
    out = tmp_path / "ds"
    assert main(["import", "oxford-pets", str(tmp_path / "nowhere"), str(out)]) == 2
    err = capsys.readouterr().err
    assert "catseg import: error:" in err and "nowhere: no such folder" in err and "Traceback" not in err
    assert_nothing_written(out)


# ----------------------------------------------------------------------------- void ids and split folders (CamVid)
CAMVID = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
          "Bicyclist"]


def _camvid_like(root: Path) -> None:
    """Two split folders whose masks use id 0 as a real class and 3 as void."""
    for images, masks, stems in (("train", "trainannot", ["t1", "t2"]), ("val", "valannot", ["v1"])):
        (root / images).mkdir(parents=True)
        for i, stem in enumerate(stems):
            mask = np.zeros((10, 12), np.uint8)
            mask[:, 6:] = 1
            mask[0, :] = 3  # void
            (root / images / f"{stem}.png").write_bytes(photo_bytes(12, 10, seed=i))
            save_png(root / masks / f"{stem}.png", mask)


def test_masks_with_a_void_id_and_named_split_folders(tmp_path: Path) -> None:
    _camvid_like(tmp_path / "src")
    with pytest.raises(CatsegError, match="--ignore-id"):  # id 3 with three classes: the fix names the flag
        import_dataset("masks", tmp_path / "src", tmp_path / "no", classes="sky,road,car",
                       splits=["train=train,trainannot", "val=val,valannot"])
    assert not (tmp_path / "no").exists()
    report = import_dataset("masks", tmp_path / "src", tmp_path / "ds", classes="sky,road,car", ignore_id=3,
                            splits=["train=train,trainannot", "val=val,valannot"])
    info = read_dataset(tmp_path / "ds")
    assert info.splits == {"train": ["t1", "t2"], "val": ["v1"]} and report.images == 3
    mask = read_mask(info.mask_path("t1"))
    assert (mask[0] == 255).all() and (mask[1:, :6] == 0).all() and (mask[1:, 6:] == 1).all()
    assert "--ignore-id 3" in info.source["command"] and "--split val=val,valannot" in info.source["command"]
    from catseg.config import TrainConfig
    from catseg.data import choose_split

    assert choose_split(info, TrainConfig(dataset="d", out="o")) == (["t1", "t2"], ["v1"])


@pytest.mark.parametrize("options, message", [
    ({"splits": ["train"]}, "NAME=IMAGES_DIR,MASKS_DIR"),
    ({"splits": ["a=x,y", "a=z,w"]}, "names a split twice"),
    ({"splits": ["a=x,y"], "images": "img"}, "drop --images/--masks"),
    ({"ignore_id": 255}, "--ignore-id 255"),
])
def test_bad_split_and_void_options_are_refused(tmp_path: Path, options: dict, message: str) -> None:
    _camvid_like(tmp_path / "src")
    with pytest.raises(CatsegError, match=re.escape(message)):
        import_dataset("masks", tmp_path / "src", tmp_path / "ds", **options)
    assert not (tmp_path / "ds").exists()


def test_a_stem_in_two_splits_is_refused(tmp_path: Path) -> None:
    _camvid_like(tmp_path / "src")
    (tmp_path / "src" / "val" / "t1.png").write_bytes(photo_bytes(12, 10, seed=5))
    save_png(tmp_path / "src" / "valannot" / "t1.png", np.zeros((10, 12), np.uint8))
    with pytest.raises(CatsegError, match="also in split 'train'"):
        import_dataset("masks", tmp_path / "src", tmp_path / "ds", ignore_id=3,
                       splits=["train=train,trainannot", "val=val,valannot"])


@pytest.mark.slow
def test_real_camvid_imports_as_the_issue_asks(tmp_path: Path) -> None:
    from conftest import SHARED_DATA

    src = SHARED_DATA / "camvid"
    if not (src / "trainannot").is_dir():
        pytest.skip(f"CamVid is not at {src} (the shared data)")
    assert main(["-q", "import", "masks", str(src), str(tmp_path / "ds"), "--split", "train=train,trainannot",
                 "--split", "val=val,valannot", "--classes", ",".join(CAMVID), "--ignore-id", "11"]) == 0
    info = read_dataset(tmp_path / "ds")
    assert info.classes == CAMVID and len(info.splits["train"]) == 367 and len(info.splits["val"]) == 101
    assert 255 in np.unique(read_mask(info.mask_path(info.splits["val"][0])))
