from __future__ import annotations

import pytest

from catseg.config import TrainConfig, parse_duration
from catseg.errors import CatsegError


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("10m", 600), ("1.5h", 5400), ("1h30m", 5400)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "10x", "0s", "5m3"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_validate_reports_every_problem_at_once() -> None:
    config = TrainConfig(dataset="d", out="r", augment="wild", loss="focal", size=8, lr=-1, time_budget="soon",
                         val_fraction=1.5)
    with pytest.raises(CatsegError) as info:
        config.validate()
    text = str(info.value)
    for needle in ("--augment 'wild'", "--loss 'focal'", "--size 8", "--lr -1", "--time-budget", "--val-fraction"):
        assert needle in text
    assert len(info.value.problems) == 6


def test_round_trip_through_dict() -> None:
    config = TrainConfig(dataset="d", out="r", width=8, time_budget="5m")
    again = TrainConfig.from_dict({**config.to_dict(), "unknown_future_field": 1})
    assert again == config
    assert again.time_budget_s == 300


def test_patch_and_window_go_with_the_scale_policy() -> None:
    TrainConfig(dataset="d", out="r", resize="scale", size=360, patch=256, window=512).validate()
    with pytest.raises(CatsegError) as info:
        TrainConfig(dataset="d", out="r", resize="stretch", patch=256, window=8).validate()
    text = str(info.value)
    assert "--patch goes with --resize scale" in text and "--window 8: at least 16" in text
    assert "--window goes with --resize scale" in text


@pytest.mark.parametrize("text, values", [("", []), ("1.5", [1.5]), ("0.75, 1.5", [0.75, 1.5])])
def test_try_scales_are_multiples_of_the_working_size(text: str, values: list[float]) -> None:
    assert TrainConfig(dataset="d", out="r", try_scales=text).validate().try_scale_list == values


@pytest.mark.parametrize("text, needle", [("big", "give multiples"), ("1", "not 1"), ("8", "between 0.25 and 4"),
                                          ("1.5,nan", "between 0.25 and 4")])
def test_bad_try_scales_say_what_to_give(text: str, needle: str) -> None:
    with pytest.raises(CatsegError) as info:
        TrainConfig(dataset="d", out="r", try_scales=text).validate()
    assert needle in str(info.value) and "--try-scales" in str(info.value)
