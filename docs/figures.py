"""Redraw the README's pictures from a demo folder: `python docs/figures.py catseg-demo`."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402


def main(demo: Path, out: Path) -> None:
    photos = sorted((demo / "new-photos").glob("*.jpg"))
    fig, axes = plt.subplots(2, len(photos), figsize=(3 * len(photos), 4.6))
    for i, photo in enumerate(photos):
        axes[0, i].imshow(Image.open(photo))
        axes[0, i].set_title(f"{photo.name} ({Image.open(photo).width}x{Image.open(photo).height})", fontsize=8)
        axes[1, i].imshow(Image.open(demo / "predictions" / f"{photo.stem}_overlay.jpg"))
        axes[1, i].set_title("catseg predict --format overlay", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "demo-predictions.png", dpi=80)
    shutil.copy(demo / "run" / "curves.png", out / "demo-curves.png")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "catseg-demo"), Path(__file__).parent)
