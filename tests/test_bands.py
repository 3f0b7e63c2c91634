"""Band images (catseg.bands): grey 16-bit, multispectral and hyperspectral inputs through the pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catseg.augment import AugmentedDataset
from catseg.bands import (
    band_axis,
    band_statistics,
    false_colour,
    read_bands,
    resize_bands,
)
from catseg.cache import CachedSample, band_preprocess, cache_fits_in_memory, cache_samples
from catseg.check import check_dataset
from catseg.cli import main
from catseg.data import read_dataset
from catseg.errors import CatsegError
from catseg.importers import import_dataset
from catseg.labelme import convert_labelme
from catseg.preprocess import Preprocess

H, W = 24, 32


def _scene(index: int, channels: int, dtype: type = np.uint16) -> tuple[np.ndarray, np.ndarray]:
    """Return ((H, W, C) cube, (H, W) mask): a rectangle whose spectrum differs from the background's."""
    rng = np.random.default_rng(index)
    mask = np.zeros((H, W), np.uint8)
    mask[4 + index % 4:16 + index % 4, 5 + index:19 + index] = 1
    spectrum = np.linspace(0, 1, channels)
    cube = 1000 + 200 * spectrum[None, None, :] + rng.normal(0, 20, (H, W, channels))
    cube[mask == 1] += 400 * (1 - spectrum)
    return cube.astype(dtype), mask


def _source(root: Path, channels: int, count: int = 6, layout: str = "npy-last") -> Path:
    """Write a masks-layout source folder of band images: .npy (bands last or first), or 16-bit PNG."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(count):
        cube, mask = _scene(i, channels)
        if layout == "png16":
            Image.fromarray(cube[:, :, 0]).save(root / "images" / f"s{i}.png")
        else:
            np.save(root / "images" / f"s{i}.npy", np.moveaxis(cube, -1, 0) if layout == "npy-first" else cube)
        Image.fromarray(mask).save(root / "masks" / f"s{i}.png")
    return root


# ----------------------------------------------------------------------------- reading
def test_band_axis_uses_the_annotation_size_then_the_band_count_then_the_shape() -> None:
    assert band_axis((120, H, W), "c.npy", hw=(H, W)) == "first"
    assert band_axis((H, W, 120), "c.npy", hw=(H, W)) == "last"
    assert band_axis((120, 400, 300), "c.npy", channels=120) == "first"
    assert band_axis((H, W, 4), "c.npy") == "last"
    assert band_axis((4, H, W), "c.npy") == "first"
    assert band_axis((400, 384, 288), "c.npy", axis="first") == "first"


def test_an_ambiguous_channel_axis_is_an_error_naming_the_file_and_the_fix() -> None:
    with pytest.raises(CatsegError, match=r"cube7\.npy: cannot tell which axis.*--channel-axis"):
        band_axis((400, 384, 288), "cube7.npy")
    with pytest.raises(CatsegError, match=r"cube7\.npy: cannot tell"):
        band_axis((24, 24, 24), "cube7.npy", hw=(24, 24))


def test_a_cube_whose_size_disagrees_with_its_annotation_names_both() -> None:
    with pytest.raises(CatsegError, match=r"cube\.npy: the cube has shape \(50, 24, 30\) but its annotation a\.json is 32x24"):
        band_axis((50, 24, 30), "cube.npy", hw=(24, 32), hw_from="a.json")


def test_read_bands_keeps_the_dtype_and_memory_maps_npy(tmp_path: Path) -> None:
    cube, _ = _scene(0, 120)
    np.save(tmp_path / "c.npy", np.moveaxis(cube, -1, 0))
    got = read_bands(tmp_path / "c.npy", hw=(H, W))
    assert got.shape == (H, W, 120) and got.dtype == np.uint16
    assert isinstance(got.base, np.memmap) or isinstance(got, np.memmap)
    np.testing.assert_array_equal(got, cube)
    Image.fromarray(cube[:, :, 3]).save(tmp_path / "g.png")
    grey = read_bands(tmp_path / "g.png")
    assert grey.shape == (H, W, 1) and grey.dtype == np.uint16 and int(grey.max()) > 255


def test_read_bands_reads_a_band_first_tiff(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile", reason="the [bands] extra reads TIFF")
    cube, _ = _scene(1, 4)
    tifffile.imwrite(tmp_path / "c.tif", np.moveaxis(cube, -1, 0), photometric="minisblack")
    got = read_bands(tmp_path / "c.tif")
    assert got.shape == (H, W, 4)
    np.testing.assert_array_equal(got, cube)


def test_resize_and_statistics_work_band_by_band_in_the_input_dtype() -> None:
    cube, _ = _scene(2, 130)
    small = resize_bands(cube, 12, 16)
    assert small.shape == (12, 16, 130) and small.dtype == np.uint16
    mean, std = band_statistics([cube], rows=5)
    np.testing.assert_allclose(mean, cube.reshape(-1, 130).mean(0), rtol=1e-9)
    np.testing.assert_allclose(std, cube.reshape(-1, 130).std(0), rtol=1e-6)


def test_false_colour_stretches_three_bands_to_8_bits() -> None:
    cube, mask = _scene(3, 40)
    rgb = false_colour(cube, [30, 20, 2])
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
    assert rgb[mask == 1, 2].mean() > rgb[mask == 0, 2].mean() + 50  # band 2 is brighter on the object
    with pytest.raises(CatsegError, match="--bands"):
        false_colour(cube, [0, 1, 40])


# ----------------------------------------------------------------------------- preprocessing
def test_photo_preprocess_json_is_unchanged_and_band_preprocess_round_trips() -> None:
    photo = Preprocess(64)
    assert set(photo.to_json()) == {"mean", "std", "size", "resize", "patch"}
    bands = Preprocess(64, mean=(1000.0, 2.0), std=(50.0, 1.0), pixel_scale=1.0, dtype="uint16", preview=(1, 0, 0))
    again = Preprocess.from_json(json.loads(json.dumps(bands.to_json())))
    assert again == bands and again.bands and again.channels == 2


def test_wide_band_images_are_augmented_with_one_draw_for_every_band() -> None:
    plane = np.random.default_rng(0).integers(0, 4000, (40, 40)).astype(np.uint16)
    cube = np.repeat(plane[:, :, None], 150, axis=2)  # every band the same: they must stay the same
    pre = Preprocess(32, mean=(0.0,) * 150, std=(1.0,) * 150, pixel_scale=1.0, dtype="uint16", preview=(0, 0, 0))
    data = AugmentedDataset([CachedSample("a", cube, np.zeros((40, 40), np.uint8))], pre, "strong", 255, seed=1)
    image, mask = data[0]
    assert image.shape == (32, 32, 150) and mask.shape == (32, 32)
    assert bool((image == image[:, :, :1]).all())


# ----------------------------------------------------------------------------- import, convert, check
def test_import_records_the_bands_and_their_statistics(tmp_path: Path) -> None:
    src = _source(tmp_path / "src", 120, layout="npy-first")
    import_dataset("masks", src, tmp_path / "ds", classes="background,thing")
    info = read_dataset(tmp_path / "ds")
    assert info.channels is not None
    assert info.channels["count"] == 120 and info.channels["dtype"] == "uint16"
    assert len(info.channels["mean"]) == 120 and 1000 < info.channels["mean"][0] < 1400
    assert np.load(tmp_path / "ds" / "images" / "s0.npy").shape == (H, W, 120)
    report = check_dataset(tmp_path / "ds")
    assert report.ok and report.modes == {"120-band uint16": 6}


def test_import_reads_band_first_tiffs_and_trains_with_sliding_windows(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile", reason="the [bands] extra reads TIFF")
    src = _source(tmp_path / "src", 6)
    for npy in sorted((src / "images").glob("*.npy")):
        tifffile.imwrite(npy.with_suffix(".tif"), np.moveaxis(np.load(npy), -1, 0), photometric="minisblack")
        npy.unlink()
    import_dataset("masks", src, tmp_path / "ds", classes="background,thing")
    assert np.load(tmp_path / "ds" / "images" / "s0.npy").shape == (H, W, 6)
    assert main(["train", str(tmp_path / "ds"), "--out", str(tmp_path / "run"), "--model", "unet", "--epochs", "1",
                 "--size", "20", "--resize", "scale", "--patch", "16", "--width", "4", "--depth", "2",
                 "--batch-size", "2", "--workers", "0"]) == 0
    assert main(["predict", str(tmp_path / "run"), str(src / "images"), "--out", str(tmp_path / "p")]) == 0
    assert np.asarray(Image.open(tmp_path / "p" / "s0.png")).shape == (H, W)


def test_band_names_are_recorded_and_their_count_checked(tmp_path: Path) -> None:
    src = _source(tmp_path / "src", 4)
    (tmp_path / "names.txt").write_text("blue\ngreen\nred\nnir\n")
    assert main(["import", "masks", str(src), str(tmp_path / "ds"), "--classes", "background,thing",
                 "--band-names", str(tmp_path / "names.txt")]) == 0
    assert read_dataset(tmp_path / "ds").channels["names"] == ["blue", "green", "red", "nir"]
    with pytest.raises(CatsegError, match="--band-names names 3 bands but the images have 4"):
        import_dataset("masks", src, tmp_path / "ds2", classes="background,thing", band_names=["b", "g", "r"])


def test_photo_datasets_get_no_channels_block(tiny_dataset: Path) -> None:
    assert "channels" not in json.loads((tiny_dataset / "dataset.json").read_text())


def test_import_refuses_images_whose_bands_differ(tmp_path: Path) -> None:
    src = _source(tmp_path / "src", 5)
    np.save(src / "images" / "s3.npy", _scene(3, 6)[0])
    with pytest.raises(CatsegError) as err:
        import_dataset("masks", src, tmp_path / "ds", classes="background,thing")
    assert "s3.npy: has 6 band(s) of uint16 but the images before it have 5" in str(err.value)
    assert not (tmp_path / "ds").exists()


def test_import_refuses_a_cube_of_another_size_than_its_mask(tmp_path: Path) -> None:
    src = _source(tmp_path / "src", 5)
    np.save(src / "images" / "s2.npy", np.zeros((H, W + 2, 5), np.uint16))
    with pytest.raises(CatsegError) as err:
        import_dataset("masks", src, tmp_path / "ds", classes="background,thing")
    assert "s2.npy: the cube has shape (24, 34, 5) but its annotation" in str(err.value)
    assert "s2.png is 32x24" in str(err.value)


def test_import_refuses_an_ambiguous_cube_unless_told_the_axis(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    for i in range(2):
        np.save(src / "images" / f"c{i}.npy", np.zeros((16, 16, 16), np.float32) + i)
        Image.fromarray(np.eye(16, dtype=np.uint8)).save(src / "masks" / f"c{i}.png")
    with pytest.raises(CatsegError, match=r"c0\.npy: cannot tell which axis"):
        import_dataset("masks", src, tmp_path / "ds", classes="background,thing")
    import_dataset("masks", src, tmp_path / "ds", classes="background,thing", channel_axis="first")
    assert read_dataset(tmp_path / "ds").channels["dtype"] == "float32"
    assert check_dataset(tmp_path / "ds").ok  # images/*.npy are (H, W, C) by definition: never ambiguous


def test_check_names_an_image_whose_bands_differ_from_dataset_json(tmp_path: Path) -> None:
    import_dataset("masks", _source(tmp_path / "src", 4), tmp_path / "ds", classes="background,thing")
    np.save(tmp_path / "ds" / "images" / "s1.npy", _scene(1, 4, np.float32)[0])
    report = check_dataset(tmp_path / "ds")
    assert not report.ok
    assert any("s1.npy: has 4 band(s) of float32 but dataset.json says 4 of uint16" in e for e in report.errors)


def _labelme_on_previews(folder: Path, cubes: Path, size: tuple[int, int] = (H, W)) -> None:
    """Write previews with `catseg preview` and a labelme JSON beside each, as a person would."""
    assert main(["preview", str(cubes), "--out", str(folder)]) == 0
    for i, png in enumerate(sorted(folder.glob("*.png"))):
        shape = {"label": "thing", "points": [[5 + i, 4], [19 + i, 15]], "shape_type": "rectangle",
                 "group_id": None, "flags": {}, "description": ""}
        doc = {"version": "5.5.0", "flags": {}, "shapes": [shape], "imagePath": png.name, "imageData": None,
               "imageHeight": size[0], "imageWidth": size[1]}
        png.with_suffix(".json").write_text(json.dumps(doc))


def test_preview_takes_folders_and_globs_and_names_a_missing_input(tmp_path: Path) -> None:
    from catseg.preview import write_previews

    src = _source(tmp_path / "src", 4, count=4)
    (src / "images" / "._s0.npy").write_bytes(b"macOS resource fork")  # hidden: not a cube, skipped
    assert sorted(p.name for p in write_previews([src / "images"], tmp_path / "a")) == [f"s{i}.png" for i in range(4)]
    assert [p.name for p in write_previews([str(src / "images" / "s1.*")], tmp_path / "b")] == ["s1.png"]
    with pytest.raises(CatsegError) as err:
        write_previews([src / "images" / "s0.npy", tmp_path / "nope"], tmp_path / "c")
    assert "nope: no such file or folder" in str(err.value) and "nothing was written" in str(err.value)
    assert not (tmp_path / "c").exists()


def test_convert_pairs_labelme_json_on_previews_with_the_cubes(tmp_path: Path) -> None:
    src = _source(tmp_path / "src", 4)
    _labelme_on_previews(tmp_path / "ann", src / "images")
    assert Image.open(tmp_path / "ann" / "s0.png").size == (W, H)
    convert_labelme(tmp_path / "ann", tmp_path / "ds", images=src / "images")
    info = read_dataset(tmp_path / "ds")
    assert info.channels is not None and info.channels["count"] == 4
    np.testing.assert_array_equal(np.load(tmp_path / "ds" / "images" / "s2.npy"), np.load(src / "images" / "s2.npy"))
    assert check_dataset(tmp_path / "ds").ok


def test_convert_refuses_a_cube_whose_size_disagrees_with_its_json(tmp_path: Path) -> None:
    src = _source(tmp_path / "src", 4)
    _labelme_on_previews(tmp_path / "ann", src / "images")
    np.save(src / "images" / "s4.npy", np.zeros((H + 8, W, 4), np.uint16))
    with pytest.raises(CatsegError) as err:
        convert_labelme(tmp_path / "ann", tmp_path / "ds", images=src / "images")
    assert "s4.json" in str(err.value) and "s4.npy: the cube has shape (32, 32, 4)" in str(err.value)


# ----------------------------------------------------------------------------- end to end
def _train_evaluate_predict(tmp_path: Path, ds: Path, inputs: Path, channels: int,
                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(ds)]) == 0
    run = tmp_path / "run"
    assert main(["train", str(ds), "--out", str(run), "--model", "unet", "--epochs", "2", "--size", "32",
                 "--width", "4", "--depth", "2", "--batch-size", "2", "--workers", "0"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["in_channels"] == channels
    pre = config["preprocess"]
    assert len(pre["mean"]) == channels and pre["input"]["pixel_scale"] == 1.0 and pre["input"]["dtype"] == "uint16"
    assert 900 < pre["mean"][0] < 1500  # statistics of the training images, in their own units
    assert main(["evaluate", str(run), str(ds), "--out", str(tmp_path / "eval")]) == 0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert 0.0 <= summary["dataset"]["miou"] <= 1.0
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(inputs), "--out", str(out), "--format", "mask,overlay,npy"]) == 0
    mask = np.asarray(Image.open(out / "s0.png"))
    assert mask.shape == (H, W) and set(np.unique(mask)) <= {0, 1}
    assert Image.open(out / "s0_overlay.jpg").size == (W, H)
    probs = np.load(out / "s0_prob.npy")
    assert probs.shape == (2, H, W)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
    np.save(tmp_path / "other.npy", np.zeros((H, W, channels + 1), np.uint16))
    assert main(["predict", str(run), str(tmp_path / "other.npy"), "--out", str(tmp_path / "p2")]) == 2
    assert f"other.npy: an array of shape (24, 32, {channels + 1}) has no axis of {channels} bands" in capsys.readouterr().err


def test_four_band_tiles_through_convert_train_evaluate_predict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _source(tmp_path / "src", 4)
    _labelme_on_previews(tmp_path / "ann", src / "images")
    assert main(["convert", str(tmp_path / "ann"), str(tmp_path / "ds"), "--images", str(src / "images")]) == 0
    _train_evaluate_predict(tmp_path, tmp_path / "ds", src / "images", 4, capsys)


def test_one_band_16_bit_png_through_import_train_evaluate_predict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _source(tmp_path / "src", 1, layout="png16")
    assert main(["import", "masks", str(src), str(tmp_path / "ds"), "--classes", "background,thing"]) == 0
    assert read_dataset(tmp_path / "ds").channels["dtype"] == "uint16"
    _train_evaluate_predict(tmp_path, tmp_path / "ds", src / "images", 1, capsys)


def test_hyperspectral_cubes_through_import_train_evaluate_predict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _source(tmp_path / "src", 128, layout="npy-first")
    assert main(["import", "masks", str(src), str(tmp_path / "ds"), "--classes", "background,thing"]) == 0
    _train_evaluate_predict(tmp_path, tmp_path / "ds", src / "images", 128, capsys)




def test_the_training_cache_keeps_the_input_dtype_and_counts_the_bands(tmp_path: Path) -> None:
    import_dataset("masks", _source(tmp_path / "src", 130), tmp_path / "ds", classes="background,thing")
    info = read_dataset(tmp_path / "ds")
    pre = band_preprocess(Preprocess(16), info)
    samples = cache_samples(info, info.stems()[:2], pre)
    assert samples[0].image.shape == (16, 16, 130) and samples[0].image.dtype == np.uint16
    # 400 bands of uint16 at 320 px are 82 MB a sample (photos: 0.4 MB): ten thousand go to the disk cache
    wide = Preprocess(256, mean=(0.0,) * 400, std=(1.0,) * 400, pixel_scale=1.0, dtype="uint16", preview=(0, 0, 0))
    assert not cache_fits_in_memory(10_000, 320, wide)
