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
