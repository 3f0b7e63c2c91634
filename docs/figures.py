"""Redraw the README's pictures.

    python docs/figures.py catseg-demo                         # demo predictions and curves
    python docs/figures.py accuracy LABEL=rows.json ...        # time-to-accuracy, from the JSON line
                                                               # that benchmarks/accuracy.py prints last
"""

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


def accuracy(series: list[str], out: Path) -> None:
    import json

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for item in series:
        label, path = item.split("=", 1)
        rows = sorted(json.loads(Path(path).read_text())["rows"], key=lambda r: r["train_seconds"])
        minutes = [r["train_seconds"] / 60 for r in rows]
        ax.plot(minutes, [r["pet_iou"] for r in rows], "o-", label=label)
        for m, r in zip(minutes, rows):
            ax.annotate(f"{r['pet_iou']:.3f}", (m, r["pet_iou"]), textcoords="offset points", xytext=(4, -12),
                        fontsize=8)
    ax.axhline(0.85, color="grey", ls=":", lw=1, label="accuracy target (0.85)")
    ax.set_ylim(top=max(ax.get_ylim()[1], 0.87))
    ax.set_xlabel("training time on a 2-core CPU (minutes)")
    ax.set_ylabel("pet IoU, held-out photos")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=90)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "accuracy":
        accuracy(sys.argv[2:], Path(__file__).parent)
    else:
        main(Path(sys.argv[1] if len(sys.argv) > 1 else "catseg-demo"), Path(__file__).parent)
