"""catseg evaluate --report: a self-contained report.html with figures and the worst images."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from catseg.calibration import CalibrationAccumulator
from catseg.evaluate import evaluate
from catseg.metrics import MetricAccumulator
from catseg.report import ReportCollector, write_report

CHROMIUM = Path("/usr/bin/chromium")


def _fake_evaluation(tmp_path: Path, classes: list[str], count: int = 5, worst: int = 3) -> tuple[Path, list[float]]:
    """Feed the collector images whose predictions get worse image by image; return the report and per-image mIoU."""
    k = len(classes)
    colors = [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]][:k]
    collector = ReportCollector(classes, colors, worst=worst)
    metrics, calibration = MetricAccumulator(k, classes), CalibrationAccumulator()
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(count):
        truth = np.zeros((30, 40), np.uint8)
        truth[5:25, 5:20] = 1
        truth[:, 30:] = k - 1
        truth[0, :] = 255
        pred = np.where(truth == 255, 0, truth).astype(np.uint8)
        pred[rng.random(pred.shape) < 0.1 * i] = 1  # more wrong pixels in every image
        probs = torch.nn.functional.one_hot(torch.from_numpy(pred.astype(np.int64)), k).permute(2, 0, 1).float().contiguous()
        probs = 0.8 * probs + 0.2 / k
        image = rng.integers(0, 255, (30, 40, 3)).astype(np.uint8)
        image_path, mask_path = tmp_path / "images" / f"im{i}.png", tmp_path / "masks" / f"im{i}.png"
        Image.fromarray(image).save(image_path)
        Image.fromarray(truth).save(mask_path)
        collector.update(f"im{i}", image, truth, probs, pred, image_path, mask_path)
        metrics.update(pred, truth, name=f"im{i}")
        calibration.update(probs, torch.from_numpy(truth.astype(np.int64)))
    summary = metrics.summary()
    summary.update({"run": str(tmp_path / "run"), "dataset_dir": str(tmp_path), "split": "val",
                    "threshold": 0.5 if k == 2 else None, "ece": calibration.ece(), "tta": {"flip": False}})
    out = tmp_path / "eval" / "report.html"
    write_report(out, summary, collector, calibration.bins())
    return out, [r["miou"] for r in metrics.per_image_rows()]


def _images(page: str) -> list[str]:
    return re.findall(r'<img class="figure"[^>]*src="data:image/png;base64,([^"]+)"', page)


def test_two_class_report_has_every_figure_and_the_worst_images_first(tmp_path: Path) -> None:
    path, mious = _fake_evaluation(tmp_path, ["background", "cat"], count=5, worst=3)
    page = path.read_text()
    figures = _images(page)
    assert len(figures) == 4  # confusion matrix, IoU versus threshold, reliability, IoU by object size
    for data in figures:
        assert Image.open(io.BytesIO(base64.b64decode(data))).size[0] > 200
    stems = re.findall(r'<div class="row example"><div class="info"><a href="([^"]+)"><b>(\w+)</b>', page)
    worst = [f"im{i}" for i in np.argsort(mious, kind="stable")[:3]]
    assert [s for _, s in stems] == worst
    assert all((path.parent / href).resolve() == (tmp_path / "images" / f"{s}.png").resolve() for href, s in stems)
    assert "false positive: predicted cat, truly background" in page and "IoU versus threshold" in page
    assert "src=\"http" not in page and "src=\"file" not in page  # self-contained


def test_more_classes_name_class_zero_like_any_other(tmp_path: Path) -> None:
    path, _ = _fake_evaluation(tmp_path, ["sky", "road", "car"], count=4, worst=10)
    page = path.read_text()
    assert len(_images(page)) == 3  # no threshold curve without exactly two classes
    assert page.count('class="row example"') == 4
    text = re.sub(r"<[^>]+>", " ", re.sub(r"<style>.*?</style>", "", page, flags=re.DOTALL))
    assert re.search(r"</span>sky</td>", page) and "wrong class" in text and "background" not in text


def test_evaluate_writes_the_report(tiny_run: Path, tmp_path: Path) -> None:
    config = json.loads((tiny_run / "config.json").read_text())
    summary = evaluate(tiny_run, config["dataset"], out_dir=tmp_path / "ev", device="cpu", report=True, report_worst=1)
    assert summary["report"] == str(tmp_path / "ev" / "report.html")
    page = (tmp_path / "ev" / "report.html").read_text()
    assert page.count('class="row example"') == 1 and len(_images(page)) == 4
    assert not (tmp_path / "ev2").exists()
    plain = evaluate(tiny_run, config["dataset"], out_dir=tmp_path / "ev2", device="cpu")
    assert "report" not in plain and not (tmp_path / "ev2" / "report.html").exists()


def _browser_or_skip() -> object:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    if not CHROMIUM.is_file():
        pytest.skip(f"no browser at {CHROMIUM} (apt-get install chromium)")
    return sync_api


@pytest.mark.slow
def test_report_renders_in_a_real_browser(tmp_path: Path) -> None:
    sync_api = _browser_or_skip()
    path, _ = _fake_evaluation(tmp_path, ["background", "cat"], count=4, worst=2)
    with sync_api.sync_playwright() as pw:  # type: ignore[attr-defined]
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(path.resolve().as_uri())
        page.wait_for_load_state("load")
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.className, e.complete, e.naturalWidth])")
        rows = page.eval_on_selector_all(".gallery .example", "els => els.length")
        page.screenshot(path=str(tmp_path / "shot.png"), full_page=True)
        browser.close()
    assert sum(1 for cls, _, _ in images if cls == "figure") == 4
    assert len(images) == 4 + 2 * 4 and all(done and width > 0 for _, done, width in images)
    assert rows == 2 and Image.open(tmp_path / "shot.png").size[0] >= 1000
    shutil.rmtree(tmp_path / "eval")
