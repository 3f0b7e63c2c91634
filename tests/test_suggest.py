"""catseg suggest: photos ranked by the model's uncertainty, pre-annotations for the top N, nothing overwritten."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from catseg.cli import main
from catseg.errors import CatsegError
from catseg.suggest import RANKING_FILE, pixel_uncertainty, suggest, uncertainty


def test_scores_are_zero_when_sure_and_one_when_undecided() -> None:
    sure = torch.zeros(3, 4, 5)
    sure[1] = 1.0
    even = torch.full((3, 4, 5), 1 / 3)
    for score in ("entropy", "margin"):
        assert uncertainty(sure, score) == pytest.approx(0.0, abs=1e-6)
        assert uncertainty(even, score) == pytest.approx(1.0, abs=1e-6)
    other = torch.zeros(3, 4, 5)
    other[2] = 1.0
    assert uncertainty(sure, "mirror", sure) == 0.0 and uncertainty(sure, "mirror", other) == pytest.approx(1.0)
    half = torch.tensor([0.7, 0.3, 0.0]).view(3, 1, 1).expand(3, 2, 2)
    assert pixel_uncertainty(half, "margin")[0, 0] == pytest.approx(0.6)
    assert pixel_uncertainty(half, "entropy")[0, 0] == pytest.approx(-(0.7 * math.log(0.7) + 0.3 * math.log(0.3))
                                                                     / math.log(3))
    with pytest.raises(ValueError, match="mirrored"):
        uncertainty(sure, "mirror")


def _photos(folder: Path) -> dict[str, Path]:
    """Photos for the tiny run (trained two short epochs on bright squares on grey noise): it is sure that a
    bright photo is all square and unsure about plain grey noise, the background it has barely learnt."""
    folder.mkdir()
    rng = np.random.default_rng(3)
    typical = rng.integers(60, 120, (40, 48, 3)).astype(np.uint8)
    typical[10:22, 12:24] = 230
    images = {"sure": np.full((40, 48, 3), 230, np.uint8), "typical": typical,
              "confusing": rng.integers(60, 120, (44, 50, 3)).astype(np.uint8)}
    paths = {}
    for name, image in images.items():
        paths[name] = folder / f"{name}.png"
        Image.fromarray(image).save(paths[name])
    return paths


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _left_to_right_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace the tiny model by one that reads each row from the left (the running mean of the red channel),
    so it is not mirror-symmetric: it agrees with its own mirror image exactly on a uniform photo and
    disagrees on noise. (The 2-epoch tiny UNet is too asymmetric even on a uniform photo to test `mirror`.)"""
    from catseg.predict import Predictor

    def fake(self, images):
        out = []
        for im in images:
            red = torch.from_numpy(im[..., 0].astype(np.float32) / 255.0)
            p = red.cumsum(1) / torch.arange(1, red.shape[1] + 1)
            out.append(torch.stack([1 - p, p]))
        return out

    monkeypatch.setattr(Predictor, "predict_proba_batch", fake)


@pytest.mark.parametrize("score", ["mirror", "entropy", "margin"])
def test_ranking_puts_the_confusing_photo_first_and_is_deterministic(tiny_run: Path, tmp_path: Path,
                                                                     score: str, monkeypatch) -> None:
    if score == "mirror":
        _left_to_right_model(monkeypatch)
    paths = _photos(tmp_path / "photos")
    report = suggest(tiny_run, [str(tmp_path / "photos")], tmp_path / "a", top=1, score=score, device="cpu")
    order = [s.path.stem for s in report.ranking]
    assert order.index("confusing") < order.index("sure")
    rows = _rows(tmp_path / "a" / RANKING_FILE)
    assert list(rows[0]) == ["path", "rank", "score", "share_background", "share_square", "annotation",
                             "annotation_status"]
    assert [r["rank"] for r in rows] == ["1", "2", "3"] and [Path(r["path"]).stem for r in rows] == order
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    for r in rows:
        assert float(r["share_background"]) + float(r["share_square"]) == pytest.approx(1.0, abs=1e-3)
    again = suggest(tiny_run, [str(p) for p in reversed(list(paths.values()))], tmp_path / "b", top=1, score=score,
                    device="cpu")
    assert [s.path.stem for s in again.ranking] == order
    assert [s.score for s in again.ranking] == [s.score for s in report.ranking]


def test_top_n_are_pre_annotated_and_nothing_is_overwritten(tiny_run: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    _photos(tmp_path / "photos")
    photos = str(tmp_path / "photos")
    assert main(["suggest", str(tiny_run), photos, "--top", "2", "--device", "cpu"]) == 0  # beside the photos
    out = capsys.readouterr().out
    assert "ranked 3 photos by mirror" in out and "wrote 2 labelme pre-annotations" in out
    first = _rows(tmp_path / "photos" / RANKING_FILE)
    written = [r for r in first if r["annotation_status"] == "written"]
    assert [r["rank"] for r in written] == ["1", "2"]
    docs = [json.loads(Path(r["annotation"]).read_text()) for r in written]
    assert [d["imagePath"] for d in docs] == [Path(r["path"]).name for r in written]
    assert any(d["shapes"] for d in docs)  # the plain noise photo may well be all background
    assert all(s["flags"] == {"catseg": True} and "rank" in s["description"] for d in docs for s in d["shapes"])
    assert (tmp_path / "photos" / "labels.txt").read_text().splitlines()[-1] == "square"
    # a person corrected the top photo: the next suggest leaves it alone and pre-annotates the next one instead
    mine = Path(written[0]["annotation"])
    mine.write_text('{"corrected": true}')
    Path(written[1]["annotation"]).unlink()
    report = suggest(tiny_run, [photos], top=2, device="cpu")
    assert mine.read_text() == '{"corrected": true}'
    assert [s.status for s in report.ranking] == ["exists", "written", "written"]
    assert report.skipped == [report.ranking[0].path] and len(report.written) == 2


def test_refusals(tiny_run: Path, tmp_path: Path) -> None:
    _photos(tmp_path / "photos")
    theirs = tmp_path / "photos" / RANKING_FILE
    theirs.write_text("my,own,table\n")
    with pytest.raises(CatsegError, match="not a ranking catseg wrote"):
        suggest(tiny_run, [str(tmp_path / "photos")], device="cpu")
    assert theirs.read_text() == "my,own,table\n"
    with pytest.raises(CatsegError, match="give --out"):
        suggest(tiny_run, [str(tmp_path / "photos" / "sure.png")], device="cpu")
    with pytest.raises(CatsegError, match="--score"):
        suggest(tiny_run, [str(tmp_path / "photos")], tmp_path / "o", score="vibes", device="cpu")


def test_pre_annotations_are_what_predict_writes(tiny_run: Path, tmp_path: Path) -> None:
    _photos(tmp_path / "photos")
    for score in ("mirror", "entropy"):
        suggest(tiny_run, [str(tmp_path / "photos")], tmp_path / score, top=3, score=score, device="cpu")
    assert main(["predict", str(tiny_run), str(tmp_path / "photos"), "--out", str(tmp_path / "p"),
                 "--format", "labelme", "--device", "cpu"]) == 0
    for name in ("sure", "typical", "confusing"):
        predicted = json.loads((tmp_path / "p" / f"{name}.json").read_text())["shapes"]
        for score in ("mirror", "entropy"):
            shapes = json.loads((tmp_path / score / f"{name}.json").read_text())["shapes"]
            assert [s["points"] for s in shapes] == [s["points"] for s in predicted]
