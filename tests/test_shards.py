"""Sharded predict and evaluate: N jobs together write what one process writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catseg.cli import main
from catseg.errors import CatsegError
from catseg.evaluate import evaluate, merge_evaluations
from catseg.predict import predict_files
from catseg.shards import Shard, resolve_shard


def test_shards_are_contiguous_blocks_that_cover_the_list_once() -> None:
    items = list(range(11))
    for n in (1, 2, 3, 4, 11, 15):
        blocks = [Shard(i, n).select(items) for i in range(1, n + 1)]
        assert [x for b in blocks for x in b] == items
        assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
    assert Shard.parse(" 2/3 ") == Shard(2, 3)
    for bad in ("0/2", "3/2", "2", "a/b", "1/0", "-1/2"):
        with pytest.raises(CatsegError, match="--shard"):
            Shard.parse(bad)


def test_shard_comes_from_the_flag_else_from_torchrun() -> None:
    env = {"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0"}
    assert resolve_shard("1/2", env) == Shard(1, 2)
    assert resolve_shard(None, env) == Shard(3, 4, source="torchrun")
    assert resolve_shard(None, {"RANK": "0", "WORLD_SIZE": "1"}) is None
    assert resolve_shard(None, {}) is None
    assert resolve_shard("1/1", env) is None


def _photos(folder: Path, count: int) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(count):
        h, w = int(rng.integers(20, 40)), int(rng.integers(20, 40))
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"p{i:02d}.png")
    return folder


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_two_predict_shards_write_what_one_process_writes(tiny_run: Path, tmp_path: Path) -> None:
    photos = _photos(tmp_path / "in", 5)
    whole = predict_files(tiny_run, [str(photos)], tmp_path / "one", formats=["mask", "npy"], device="cpu")
    # Globs listed in another order: shards sort the inputs, so each job sees the same list.
    first = predict_files(tiny_run, [str(photos / "p0[3-4].png"), str(photos / "p0[0-2].png")], tmp_path / "two",
                          formats=["mask", "npy"], device="cpu", shard=Shard(1, 2))
    second = predict_files(tiny_run, [str(photos)], tmp_path / "two", formats=["mask", "npy"], device="cpu",
                           shard=Shard(2, 2))
    assert len(first) + len(second) == len(whole) == 10
    assert not {p.name for p in first} & {p.name for p in second}
    assert _tree(tmp_path / "one") == _tree(tmp_path / "two")


def test_predict_shard_flag_and_torchrun_rank(tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    photos = _photos(tmp_path / "in", 3)
    assert main(["predict", str(tiny_run), str(photos), "--out", str(tmp_path / "o"), "--device", "cpu",
                 "--shard", "2/2"]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["p01.png", "p02.png"]
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["predict", str(tiny_run), str(photos), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["p00.png", "p01.png", "p02.png"]
    assert main(["predict", str(tiny_run), str(photos), "--out", str(tmp_path / "o"), "--shard", "9/8"]) == 2
    assert "1 <= I <= N" in capsys.readouterr().err


@pytest.mark.parametrize("shards", [2, 3])
def test_sharded_evaluation_merges_into_the_single_summary(tiny_run: Path, tmp_path: Path, shards: int) -> None:
    data = json.loads((tiny_run / "config.json").read_text())["dataset"]
    single = evaluate(tiny_run, data, split="train", out_dir=tmp_path / "one", device="cpu")
    for i in range(shards, 0, -1):  # any order
        part = evaluate(tiny_run, data, split="train", out_dir=tmp_path / "sharded", device="cpu", shard=Shard(i, shards))
        assert part["file"].endswith(f"shard-{i}-of-{shards}.json")
    assert not (tmp_path / "sharded" / "summary.json").exists()
    merged = merge_evaluations([tmp_path / "sharded"])
    assert merged["num_images"] == single["num_images"] == 8
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    two = json.loads((tmp_path / "sharded" / "summary.json").read_text())
    assert one.pop("ece") == pytest.approx(two.pop("ece"), rel=1e-8)  # float sums added in another order
    assert one == two
    assert (tmp_path / "one" / "per_image.csv").read_bytes() == (tmp_path / "sharded" / "per_image.csv").read_bytes()


def test_merge_refuses_gaps_mixtures_and_overwrites(tiny_run: Path, tmp_path: Path) -> None:
    data = json.loads((tiny_run / "config.json").read_text())["dataset"]
    out = tmp_path / "ev"
    evaluate(tiny_run, data, split="train", out_dir=out, device="cpu", shard=Shard(1, 3))
    with pytest.raises(CatsegError) as info:
        merge_evaluations([out])
    assert "2/3, 3/3 are missing" in str(info.value)
    with pytest.raises(CatsegError, match="already exists"):
        evaluate(tiny_run, data, split="train", out_dir=out, device="cpu", shard=Shard(1, 3))
    evaluate(tiny_run, data, split="train", out_dir=out, device="cpu", shard=Shard(2, 3), threshold=0.3)
    evaluate(tiny_run, data, split="train", out_dir=out, device="cpu", shard=Shard(3, 3))
    with pytest.raises(CatsegError) as info:
        merge_evaluations([out])
    assert "threshold" in str(info.value)
    evaluate(tiny_run, data, split="train", out_dir=out, device="cpu", shard=Shard(2, 3), force=True)
    merge_evaluations([out])
    with pytest.raises(CatsegError, match="summary.json: already exists"):
        merge_evaluations([out])
    with pytest.raises(CatsegError, match="--report with --shard"):
        evaluate(tiny_run, data, split="train", out_dir=out, device="cpu", shard=Shard(1, 3), report=True)
    with pytest.raises(CatsegError, match="no shard-I-of-N.json"):
        merge_evaluations([tmp_path])


def test_evaluate_and_merge_eval_commands(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = json.loads((tiny_run / "config.json").read_text())["dataset"]
    for i in (1, 2):
        assert main(["evaluate", str(tiny_run), data, "--out", str(tmp_path / "a"), "--device", "cpu",
                     "--shard", f"{i}/2"]) == 0
    assert "catseg merge-eval" in capsys.readouterr().out
    assert main(["merge-eval", str(tmp_path / "a"), "--out", str(tmp_path / "b")]) == 0
    text = capsys.readouterr().out
    assert "merged 2 shards" in text and "2 images (val)" in text
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["split"] == "val"
