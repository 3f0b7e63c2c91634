"""The pure helpers the benchmarks share: a wrong column or a leaked breed would make their figures lie."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from machine import parse_series  # noqa: E402
from unseen_breeds import leave_one_out, run_name  # noqa: E402


def test_series_keep_their_order_flags_and_an_empty_flag_list():
    assert parse_series(["pretrained (default)=", "strong=--augment strong --ema 0.99"]) == {
        "pretrained (default)": "", "strong": "--augment strong --ema 0.99"}
    assert list(parse_series(["b=", "a="])) == ["b", "a"]


@pytest.mark.parametrize("specs, words", [(["strong --augment strong"], "NAME=FLAGS"),
                                          (["=--model unet"], "NAME=FLAGS"),
                                          (["a=--ema 0.99", "a=--model unet"], "given twice")])
def test_a_series_that_would_lose_a_column_is_refused(specs, words):
    with pytest.raises(SystemExit, match=words):
        parse_series(specs)


def test_run_names_are_folder_safe():
    assert run_name("pretrained (default)") == "pretrained-default"
    assert run_name("+ --augment strong") == "augment-strong"
    assert run_name("()") == "series"


def test_leave_one_out_never_trains_or_validates_on_the_breed_it_scores():
    stems = [f"{b}_{i}" for b in ("Abyssinian", "Bengal", "american_bulldog") for i in range(1, 31)]
    folds = leave_one_out(stems)
    assert sorted(folds) == ["Abyssinian", "Bengal", "american_bulldog"]
    for breed, parts in folds.items():
        unseen, train, val = parts[f"breed-{breed}"], parts[f"train-no-{breed}"], parts[f"val-no-{breed}"]
        assert len(unseen) == 30 and all(s.rsplit("_", 1)[0] == breed for s in unseen)
        assert not {s.rsplit("_", 1)[0] for s in train + val} & {breed}
        assert not set(train) & set(val) and len(train) + len(val) == 60 and len(val) == 12
    assert leave_one_out(stems) == folds  # seeded: the same folds every run


def test_one_breed_cannot_be_left_out():
    with pytest.raises(SystemExit, match="at least two"):
        leave_one_out(["Bengal_1", "Bengal_2"])
