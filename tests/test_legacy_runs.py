"""Run folders written by an earlier catseg (commit 5f52cd0, before the preprocessing refactor) must still
load and predict the same masks: tests/fixtures/make_v1_runs.py wrote them with that version."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catseg.predict import Predictor

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("name", ["run-v1-stretch-3class", "run-v1-scale-2class"])
def test_old_run_folder_predicts_the_same_masks(name: str) -> None:
    run = FIXTURES / name
    predictor = Predictor.from_run(run, device="cpu", precision="fp32")
    assert predictor.tta and predictor.postprocess.active  # the pinned path includes mirror TTA and clean-up
    for i in range(3):
        image = np.asarray(Image.open(run / f"input{i}.png").convert("RGB"))
        probs = predictor.predict_proba(image)
        np.testing.assert_allclose(probs.numpy(), np.load(run / f"expected{i}_prob.npy"), atol=1e-5)
        assert np.array_equal(predictor.predict(image), np.load(run / f"expected{i}_mask.npy"))
