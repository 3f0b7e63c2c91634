"""catseg app: the HTTP API against a running server, bad uploads, and the page in a real browser."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette", reason="the app tests need the 'app' extra: pip install 'catseg[app]'")
pytest.importorskip("uvicorn", reason="the app tests need the 'app' extra: pip install 'catseg[app]'")

from catseg.app import Segmenter, Server
from catseg.errors import CatsegError
from catseg.predict import predict_files

FIXTURES = Path(__file__).parent / "fixtures"
CHROMIUM = Path("/usr/bin/chromium")


def _photo_png(path: Path, h: int = 57, w: int = 83, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    image = rng.integers(60, 120, (h, w, 3)).astype(np.uint8)
    image[h // 4: h // 2, w // 4: w // 2] = 230
    Image.fromarray(image).save(path)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pinned two-class scale-policy run: threshold, mirror TTA and clean-up all in play."""
    return Path(shutil.copytree(FIXTURES / "run-v1-scale-2class", tmp_path_factory.mktemp("app") / "run"))


@pytest.fixture(scope="module")
def server(run: Path) -> Iterator[Server]:
    srv = Server(Segmenter(run, device="cpu", threads=1), "127.0.0.1", 0).start()
    yield srv
    srv.stop()


def _request(url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, response.headers["content-type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["content-type"], exc.read()


def _multipart(field: str, name: str, data: bytes) -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def _predicted_mask(run: Path, photo: Path, out: Path, threshold: float | None = None) -> np.ndarray:
    predict_files(run, [str(photo)], out, ("mask",), threshold=threshold, device="cpu")
    return np.asarray(Image.open(out / f"{photo.stem}.png"))


# ----------------------------------------------------------------------------- the API
def test_api_mask_is_catseg_predicts_mask(server: Server, run: Path, tmp_path: Path) -> None:
    photo = _photo_png(tmp_path / "cat.png")
    want = _predicted_mask(run, photo, tmp_path / "pred")
    status, kind, body = _request(server.url + "api/mask", photo.read_bytes())  # curl --data-binary
    assert status == 200 and kind == "image/png"
    png = Image.open(io.BytesIO(body))
    assert png.mode == "P" and np.array_equal(np.asarray(png), want)
    status, _, body = _request(server.url + "api/mask", *_multipart("image", "cat.png", photo.read_bytes()))  # curl -F
    assert status == 200 and np.array_equal(np.asarray(Image.open(io.BytesIO(body))), want)


def test_api_predict_gives_overlay_shares_and_both_pngs(server: Server, tmp_path: Path) -> None:
    photo = _photo_png(tmp_path / "cat.png", 40, 70)
    status, kind, body = _request(server.url + "api/predict?name=cat.png", photo.read_bytes())
    doc = json.loads(body)
    assert status == 200 and kind == "application/json"
    assert (doc["height"], doc["width"]) == (40, 70) and doc["threshold"] == pytest.approx(0.48)
    assert set(doc["shares"]) == {"background", "square"} and sum(doc["shares"].values()) == pytest.approx(1.0)
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(doc["mask_png"]))))
    overlay = Image.open(io.BytesIO(base64.b64decode(doc["overlay_png"])))
    assert overlay.format == "PNG" and overlay.size == (70, 40) and overlay.mode == "RGB"  # lossless
    assert doc["shares"]["square"] == pytest.approx((mask == 1).mean())
    status, kind, body = _request(server.url + "api/overlay", photo.read_bytes())
    assert status == 200 and kind == "image/png" and Image.open(io.BytesIO(body)).size == (70, 40)


def test_threshold_slider_rethresholds_without_a_new_upload(server: Server, run: Path, tmp_path: Path) -> None:
    photo = _photo_png(tmp_path / "cat.png", 50, 50, seed=3)
    doc = json.loads(_request(server.url + "api/predict", photo.read_bytes())[2])
    shares = []
    for t in (0.05, 0.5, 0.95):
        status, _, body = _request(server.url + f"api/predict/{doc['id']}?threshold={t}")
        assert status == 200 and json.loads(body)["threshold"] == t
        shares.append(json.loads(body)["shares"]["square"])
    assert shares[0] >= shares[1] >= shares[2] and shares[0] > shares[2]
    low = json.loads(_request(server.url + f"api/predict/{doc['id']}?threshold=0.05")[2])
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(low["mask_png"]))))
    assert np.array_equal(mask, _predicted_mask(run, photo, tmp_path / "low", threshold=0.05))


def test_bad_uploads_get_a_clear_message_and_the_server_keeps_serving(server: Server, tmp_path: Path) -> None:
    photo = _photo_png(tmp_path / "cat.png").read_bytes()
    cases = [
        (b"this is not a photo", 415, "not an image file"),
        (photo[: len(photo) // 2], 400, "truncated"),
        (b"", 400, "empty"),
    ]
    for data, status, text in cases:
        got, kind, body = _request(server.url + "api/mask?name=bad.jpg", data)
        assert got == status and kind == "application/json" and text in json.loads(body)["error"], body
    assert _request(server.url + "api/mask?threshold=2", photo)[0] == 400
    assert _request(server.url + "api/mask?threshold=abc", photo)[0] == 400
    assert _request(server.url + "api/predict/unknown?threshold=0.5")[0] == 404
    assert _request(server.url + "api/mask", photo)[0] == 200  # still serving


def test_pixel_limit(run: Path, tmp_path: Path) -> None:
    srv = Server(Segmenter(run, device="cpu", max_pixels=1000, threads=1), "127.0.0.1", 0).start()
    try:
        status, _, body = _request(srv.url + "api/mask?name=big.png", _photo_png(tmp_path / "big.png", 40, 40).read_bytes())
        assert status == 413 and "40 x 40" in json.loads(body)["error"] and "--max-pixels" in json.loads(body)["error"]
        assert _request(srv.url + "api/mask", _photo_png(tmp_path / "small.png", 20, 30).read_bytes())[0] == 200
    finally:
        srv.stop()


def test_page_is_self_contained_and_listens_on_loopback(server: Server) -> None:
    status, kind, body = _request(server.url)
    page = body.decode()
    assert status == 200 and kind.startswith("text/html")
    assert "http://" not in page and "https://" not in page  # no CDN, no fonts, no analytics
    assert server.url.startswith("http://127.0.0.1:")
    info = json.loads(_request(server.url + "api/info")[2])
    assert info["classes"] == ["background", "square"] and info["slider"] is True and info["backend"] == "torch"
    from catseg.cli import build_parser

    args = build_parser().parse_args(["app", "RUN"])
    assert (args.host, args.port) == ("127.0.0.1", 7860)


def test_onnx_backend_serves_the_same_masks(run: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    photo = _photo_png(tmp_path / "cat.png")
    torch_srv = Server(Segmenter(run, device="cpu", threads=1), "127.0.0.1", 0).start()
    onnx_srv = Server(Segmenter(run, backend="onnx", threads=1), "127.0.0.1", 0).start()
    try:
        a = np.asarray(Image.open(io.BytesIO(_request(torch_srv.url + "api/mask", photo.read_bytes())[2])))
        b = np.asarray(Image.open(io.BytesIO(_request(onnx_srv.url + "api/mask", photo.read_bytes())[2])))
        assert a.shape == b.shape and (a == b).mean() > 0.98  # PyTorch may run bf16 on this CPU; onnx is fp32
        assert json.loads(_request(onnx_srv.url + "api/info")[2])["backend"] == "onnx"
    finally:
        torch_srv.stop()
        onnx_srv.stop()


def test_errors_at_start_are_clear(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    taken = Server(Segmenter(run, device="cpu", threads=1), "127.0.0.1", 0)
    port = int(taken.url.rsplit(":", 1)[1].strip("/"))
    try:
        with pytest.raises(CatsegError, match=f"cannot listen on 127.0.0.1:{port}"):
            Server(Segmenter(run, device="cpu", threads=1), "127.0.0.1", port)
    finally:
        taken.socket.close()
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if the extra were not installed
    from catseg.app import serve

    with pytest.raises(CatsegError, match=r"pip install 'catseg\[app\]'"):
        serve(run)


@pytest.mark.slow
def test_cli_app_starts_in_seconds_and_serves(run: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "catseg.cli", "app", str(run), "--port", "0", "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        import select

        ready, _, _ = select.select([proc.stdout], [], [], 120)  # fail, not hang, if it never starts
        assert ready, "catseg app printed no URL within 120 s"
        line = proc.stdout.readline()  # printed once the socket listens
        assert line.startswith("catseg app: open http://127.0.0.1:"), line + proc.stderr.read()
        url = line.split("open ", 1)[1].split()[0]
        status, kind, _ = _request(url + "api/mask", _photo_png(tmp_path / "p.png").read_bytes())
        assert status == 200 and kind == "image/png"
    finally:
        proc.terminate()
        proc.wait(10)


# ----------------------------------------------------------------------------- in a real browser
def _browser():
    """Return a started headless Chromium (Playwright), or skip saying what is missing."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install "
                                                                  "'catseg[dev]'")
    if not CHROMIUM.is_file():
        pytest.skip(f"no browser at {CHROMIUM}: apt-get install -y chromium (.ci/run does it)")
    manager = sync_api.sync_playwright().start()
    browser = manager.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
    return manager, browser


@pytest.fixture(scope="module")
def page(server: Server) -> Iterator:
    manager, browser = _browser()
    try:
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.goto(server.url)
        yield page
    finally:
        browser.close()
        manager.stop()


@pytest.mark.slow
def test_browser_upload_shows_the_overlay_and_the_mask_of_catseg_predict(page, run: Path, tmp_path: Path) -> None:
    photo = _photo_png(tmp_path / "browser.png", 120, 170, seed=5)
    want = _predicted_mask(run, photo, tmp_path / "pred")
    page.set_input_files("#files", str(photo))
    card = page.locator(".card[data-status=done]", has_text="browser.png")
    card.locator("img.overlay").wait_for(timeout=30_000)
    assert card.locator("table").inner_text().count("%") == 2  # the share of each class
    href = card.locator("a.download-mask").get_attribute("href")
    assert card.locator("a.download-mask").get_attribute("download") == "browser_mask.png"
    assert card.locator("a.download-overlay").get_attribute("download") == "browser_overlay.png"
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(href.split(",", 1)[1]))))
    assert np.array_equal(mask, want)
    page.locator("#threshold").fill("0.05")  # the slider redraws from the cached probabilities
    from playwright.sync_api import expect

    expect(page.locator(".card", has_text="browser.png").locator(".sub")).to_contain_text("threshold 0.05",
                                                                                          timeout=30_000)
    href = page.locator(".card[data-status=done]", has_text="browser.png").locator("a.download-mask").get_attribute("href")
    low = np.asarray(Image.open(io.BytesIO(base64.b64decode(href.split(",", 1)[1]))))
    assert np.array_equal(low, _predicted_mask(run, photo, tmp_path / "low", threshold=0.05))


@pytest.mark.slow
def test_browser_bad_upload_shows_a_message(page, tmp_path: Path) -> None:
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo at all")
    page.set_input_files("#files", str(bad))
    card = page.locator(".card[data-status=error]", has_text="notes.jpg")
    card.wait_for(timeout=30_000)
    assert "not an image file" in card.locator(".error").inner_text()
    page.set_input_files("#files", str(_photo_png(tmp_path / "after.png")))
    page.locator(".card[data-status=done]", has_text="after.png").locator("img.overlay").wait_for(timeout=30_000)
