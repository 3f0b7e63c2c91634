from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from catseg.data import DatasetWriter, dataset_json, read_dataset
from catseg.errors import CatsegError


def _write(out: Path, force: bool = False, classes: tuple[str, ...] = ("background", "cat")) -> None:
    with DatasetWriter(out, force=force) as writer:
        writer.write_mask("a", np.zeros((4, 5), np.uint8))
        writer.write_dataset_json(dataset_json(list(classes)))


def test_force_never_deletes_a_folder_catseg_did_not_write(tmp_path: Path) -> None:
    mine = tmp_path / "mydocs"
    mine.mkdir()
    (mine / "thesis.txt").write_text("precious")
    with pytest.raises(CatsegError, match="not a catseg dataset folder"):
        _write(mine, force=True)
    assert (mine / "thesis.txt").read_text() == "precious" and len(list(mine.iterdir())) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial folder left


def test_force_replaces_a_dataset_or_an_empty_folder(tmp_path: Path) -> None:
    _write(tmp_path / "ds")
    with pytest.raises(CatsegError, match="already exists"):
        _write(tmp_path / "ds", classes=("background", "dog"))
    _write(tmp_path / "ds", force=True, classes=("background", "dog"))
    assert read_dataset(tmp_path / "ds").classes == ["background", "dog"]
    (tmp_path / "empty").mkdir()
    _write(tmp_path / "empty", force=True)
    assert read_dataset(tmp_path / "empty").classes == ["background", "cat"]


def test_an_error_while_writing_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with DatasetWriter(tmp_path / "ds") as writer:
            writer.write_mask("a", np.zeros((4, 5), np.uint8))
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_force_needs_a_catseg_dataset_json_not_any_dataset_json(tmp_path: Path) -> None:
    other = tmp_path / "nnunet"
    other.mkdir()
    (other / "dataset.json").write_text('{"name": "another tool\'s dataset"}')
    (other / "imagesTr.txt").write_text("theirs")
    with pytest.raises(CatsegError, match="not a catseg dataset folder"):
        _write(other, force=True)
    assert (other / "imagesTr.txt").read_text() == "theirs"


def test_force_refuses_when_an_input_lives_inside_the_output(tmp_path: Path) -> None:
    _write(tmp_path / "ds")
    labels = tmp_path / "ds" / "labels.txt"
    labels.write_text("_background_\ncat\n")
    with pytest.raises(CatsegError, match="labels.txt: is inside"):
        DatasetWriter(tmp_path / "ds", force=True, inputs=[labels, None])
    assert labels.is_file()


def test_force_refuses_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "ds")
    monkeypatch.chdir(tmp_path / "ds")
    with pytest.raises(CatsegError, match="current folder"):
        _write(Path("."), force=True)
    assert (tmp_path / "ds" / "dataset.json").is_file()


def test_a_rotated_cmyk_jpeg_is_stored_as_rgb_png() -> None:
    import io

    from PIL import Image

    from catseg.images import image_bytes_for_dataset

    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("CMYK", (10, 8), (0, 128, 0, 0)).save(buf, format="JPEG", exif=exif)
    data, ext = image_bytes_for_dataset(buf.getvalue(), "b.jpg")
    stored = Image.open(io.BytesIO(data))
    assert ext == ".png" and stored.mode == "RGB" and stored.size == (8, 10)


def test_source_must_be_an_object(tmp_path: Path) -> None:
    import json

    _write(tmp_path / "ds")
    doc = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    doc["source"] = "x"
    (tmp_path / "ds" / "dataset.json").write_text(json.dumps(doc))
    with pytest.raises(CatsegError, match="source must be an object"):
        read_dataset(tmp_path / "ds")
