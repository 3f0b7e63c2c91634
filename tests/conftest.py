"""Shared fixtures: tiny synthetic datasets and runs, made in seconds on a CPU."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catseg.data import DatasetWriter, dataset_json

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def make_tiny_dataset(root: Path, count: int = 10, classes: tuple[str, ...] = ("background", "square"),
                      seed: int = 0, splits: dict | None = None) -> Path:
    """Write a dataset folder of `count` small photos (odd sizes) with bright squares (class 1) and, for three
    classes, dark discs (class 2); a strip of ignore (255) pixels on some images."""
    rng = np.random.default_rng(seed)
    with DatasetWriter(root) as writer:
        for i in range(count):
            h, w = int(rng.integers(30, 45)), int(rng.integers(36, 52))
            image = rng.integers(60, 120, (h, w, 3)).astype(np.uint8)
            mask = np.zeros((h, w), np.uint8)
            y, x, s = int(rng.integers(2, h // 2)), int(rng.integers(2, w // 2)), int(rng.integers(8, 14))
            image[y:y + s, x:x + s] = 230
            mask[y:y + s, x:x + s] = 1
            if len(classes) > 2:
                yy, xx = np.ogrid[:h, :w]
                disc = (yy - h * 0.75) ** 2 + (xx - w * 0.75) ** 2 < 25
                image[disc] = 10
                mask[disc] = 2
            if i % 3 == 0:
                mask[-2:, :] = 255
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format="PNG")
            writer.write_image(f"img{i:02d}", buf.getvalue(), ".png")
            writer.write_mask(f"img{i:02d}", mask)
        writer.write_dataset_json(dataset_json(list(classes), splits=splits or {}))
    return root


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    return make_tiny_dataset(tmp_path / "tiny")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder trained for two short epochs on the tiny dataset (shared by the read-only tests)."""
    from catseg.config import TrainConfig
    from catseg.train import fit

    base = tmp_path_factory.mktemp("run")
    data = make_tiny_dataset(base / "data")
    fit(TrainConfig(dataset=str(data), out=str(base / "run"), model="unet", width=4, depth=2, size=32, epochs=2, batch_size=4,
                    lr=1e-2, augment="light", precision="fp32").validate())
    return base / "run"
