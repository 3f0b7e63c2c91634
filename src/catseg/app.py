"""catseg app RUN: a local page where a person drops photos and sees their masks, and an HTTP API.

A small Starlette app served by uvicorn: it starts in about the time the model takes to load, needs no
internet, loads nothing from elsewhere (the page's CSS and JavaScript are inline) and sends nothing
anywhere. It listens on 127.0.0.1 unless told otherwise.

    GET  /                   the page
    GET  /api/info           classes, colours, stored threshold, limits, backend (JSON)
    POST /api/mask           a photo (the request body, or multipart field "image") -> mask PNG
                             (palette PNG of class ids, as `catseg predict --format mask`); ?threshold=T
    POST /api/overlay        the same -> overlay PNG (lossless)
    POST /api/predict        the same -> JSON: id, size, threshold, share of each class, both PNGs (base64)
    GET  /api/predict/{id}   ?threshold=T: the JSON again for a photo predicted recently (two classes)

A bad upload (not an image, truncated, over --max-pixels or MAX_BYTES) gets a 4xx JSON {"error": ...}.
"""

from __future__ import annotations

import base64
import hashlib
import io
import ipaddress
import logging
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from catseg.errors import CatsegError
from catseg.extras import require_extra
from catseg.images import mask_png_bytes, open_image, to_rgb_array

log = logging.getLogger(__name__)

MAX_BYTES = 200 * 1024 * 1024  # largest upload read, whatever its pixel count
CACHE_BYTES = 256 * 1024 * 1024  # foreground probabilities kept for the threshold slider


class UploadError(Exception):
    """A bad upload: told to the client with an HTTP status, never a crash."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _require_app() -> None:
    for module in ("starlette", "uvicorn"):
        require_extra(module, "app", "catseg app")


@dataclass
class Result:
    """One photo's prediction, kept so the threshold slider only redraws."""

    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) uint8, clean-up applied
    foreground: np.ndarray | None  # (H, W) float32 p(class 1) for two-class models, else None


class Segmenter:
    """The model behind the page: either backend, one prediction at a time, recent results cached."""

    def __init__(self, source: str | Path, backend: str | None = None, device: str = "auto",
                 max_pixels: int = 50_000_000, threads: int = 0) -> None:
        from catseg.predict import Predictor, open_predictor

        self.predictor = open_predictor(source, backend, device=device, threads=threads)
        self.torch = isinstance(self.predictor, Predictor)
        self.backend = "torch" if self.torch else {"openvino": "openvino"}.get(self.predictor.runtime, "onnx")
        self.name = Path(source).name
        self.max_pixels = max_pixels
        self.classes: list[str] = self.predictor.classes
        self.colors = self.predictor.config.colors if self.torch else self.predictor.colors
        stored = self.predictor.config.threshold if self.torch else self.predictor.info.threshold
        self.two_class = len(self.classes) == 2
        self.threshold: float | None = (0.5 if stored is None else float(stored)) if self.two_class else None
        if self.two_class and not self.torch and not self.predictor.has_probs:
            self.two_class = False  # a mask-only export: no slider
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, Result] = OrderedDict()

    def info(self) -> dict[str, Any]:
        return {"run": self.name, "classes": self.classes, "colors": self.colors, "threshold": self.threshold,
                "slider": self.two_class, "max_pixels": self.max_pixels, "max_bytes": MAX_BYTES,
                "backend": self.backend}

    def decode(self, data: bytes, name: str) -> np.ndarray:
        """Return the upload as (H, W, 3) uint8; UploadError when it is not a readable photo within limits."""
        if not data:
            raise UploadError(400, f"{name}: the upload is empty")
        try:
            with Image.open(io.BytesIO(data)) as header:
                width, height = header.size
        except UnidentifiedImageError:
            raise UploadError(415, f"{name}: not an image file that can be read (send a JPEG, PNG, WebP, BMP or "
                                   "TIFF photo)") from None
        except Image.DecompressionBombError:
            raise UploadError(413, f"{name}: far too many pixels to decode safely") from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise UploadError(400, f"{name}: cannot read this image ({exc})") from None
        if width * height > self.max_pixels:
            raise UploadError(413, f"{name}: {width} x {height} = {width * height / 1e6:.1f} million pixels, over "
                                   f"this app's limit of {self.max_pixels / 1e6:g} million (catseg app --max-pixels); "
                                   "shrink the photo first")
        try:
            return to_rgb_array(open_image(data, name))
        except CatsegError as exc:
            reason = "the file is truncated or damaged" if "truncated" in str(exc) else str(exc)
            raise UploadError(400, f"{name}: cannot decode this image: {reason}; upload the complete file") from None
        except (OSError, ValueError, SyntaxError) as exc:  # e.g. damage found while converting the pixels
            raise UploadError(400, f"{name}: cannot decode this image ({exc}); upload the complete file") from None

    def predict(self, image: np.ndarray, threshold: float | None) -> tuple[str, Result]:
        """Return (id, Result) for a photo: predicted once, then re-thresholded from the cache."""
        key = hashlib.sha256(image.tobytes()).hexdigest()[:16] + f"-{image.shape[0]}x{image.shape[1]}"
        with self._lock:
            cached = self._cache.get(key)
        if cached is None:
            with self._lock:  # one prediction at a time: bounded memory and no fight over the cores
                cached = self._predict(image)
                self._remember(key, cached)
        return key, self._with_threshold(cached, threshold)

    def again(self, key: str, threshold: float | None) -> Result | None:
        """Return the cached photo `key` at another threshold, or None when it has left the cache."""
        with self._lock:
            cached = self._cache.get(key)
        return None if cached is None else self._with_threshold(cached, threshold)

    def _predict(self, image: np.ndarray) -> Result:
        if self.torch:
            probs = self.predictor.predict_proba(image)
            mask = self.predictor.labels_from_proba(probs)
        else:
            probs, mask = self.predictor.predict_batch([image])[0]
        fg = probs[1].numpy().astype(np.float32) if self.two_class and probs is not None else None
        return Result(image, mask, fg)

    def _with_threshold(self, result: Result, threshold: float | None) -> Result:
        if threshold is None or result.foreground is None or threshold == self.threshold:
            return result
        if not 0.0 < threshold < 1.0:
            raise UploadError(400, f"threshold {threshold}: must be between 0 and 1")
        mask = (result.foreground >= threshold).astype(np.uint8)
        post = self.predictor.postprocess
        return Result(result.image, post(mask) if post.active else mask, result.foreground)

    def _remember(self, key: str, result: Result) -> None:
        self._cache[key] = result
        size = lambda r: r.image.nbytes + r.mask.nbytes + (r.foreground.nbytes if r.foreground is not None else 0)
        while len(self._cache) > 1 and sum(size(r) for r in self._cache.values()) > CACHE_BYTES:
            self._cache.popitem(last=False)

    def overlay_png(self, result: Result) -> bytes:
        from catseg.predict import overlay

        buf = io.BytesIO()
        Image.fromarray(overlay(result.image, result.mask, self.colors, background=self.predictor.background)
                        ).save(buf, format="PNG")
        return buf.getvalue()

    def mask_png(self, result: Result) -> bytes:
        return mask_png_bytes(result.mask, self.colors)

    def summary(self, key: str, result: Result, threshold: float | None) -> dict[str, Any]:
        counts = np.bincount(result.mask.ravel(), minlength=len(self.classes))[: len(self.classes)]
        return {"id": key, "height": int(result.mask.shape[0]), "width": int(result.mask.shape[1]),
                "threshold": self.threshold if threshold is None else threshold,
                "shares": {c: float(n) / result.mask.size for c, n in zip(self.classes, counts)},
                "mask_png": base64.b64encode(self.mask_png(result)).decode("ascii"),
                "overlay_png": base64.b64encode(self.overlay_png(result)).decode("ascii")}


def create_app(segmenter: Segmenter) -> Any:
    """Return the Starlette application serving the page and the API for one Segmenter."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    from catseg.app_page import page_html

    html = page_html(segmenter.info())

    async def upload(request: Request) -> tuple[bytes, str]:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form(max_part_size=MAX_BYTES)
            item = form.get("image") or next((v for v in form.values() if hasattr(v, "read")), None)
            if item is None or not hasattr(item, "read"):
                raise UploadError(400, "multipart upload without a file: send the photo as field 'image'")
            return await item.read(), getattr(item, "filename", None) or "upload"
        declared = int(request.headers.get("content-length") or 0)
        if declared > MAX_BYTES:
            raise UploadError(413, f"upload of {declared / 1e6:.0f} MB is over the limit of {MAX_BYTES / 1e6:.0f} MB")
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > MAX_BYTES:
                raise UploadError(413, f"upload is over the limit of {MAX_BYTES / 1e6:.0f} MB")
            chunks.append(chunk)
        return b"".join(chunks), request.query_params.get("name", "upload")

    def threshold_of(request: Request) -> float | None:
        text = request.query_params.get("threshold")
        if text in (None, ""):
            return None
        try:
            return float(text)
        except ValueError:
            raise UploadError(400, f"threshold {text!r}: give a number between 0 and 1") from None

    def handler(kind: str) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            try:
                threshold = threshold_of(request)
                data, name = await upload(request)
                image = await run_in_threadpool(segmenter.decode, data, name)
                key, result = await run_in_threadpool(segmenter.predict, image, threshold)
                if kind == "mask":
                    return Response(await run_in_threadpool(segmenter.mask_png, result), media_type="image/png")
                if kind == "overlay":
                    return Response(await run_in_threadpool(segmenter.overlay_png, result), media_type="image/png")
                return JSONResponse(await run_in_threadpool(segmenter.summary, key, result, threshold))
            except UploadError as exc:
                log.info("refused an upload: %s", exc.message)
                return JSONResponse({"error": exc.message}, status_code=exc.status)

        return endpoint

    async def again(request: Request) -> Response:
        try:
            threshold = threshold_of(request)
            key = request.path_params["key"]
            result = await run_in_threadpool(segmenter.again, key, threshold)
            if result is None:
                return JSONResponse({"error": "that photo is no longer cached; upload it again"}, status_code=404)
            return JSONResponse(await run_in_threadpool(segmenter.summary, key, result, threshold))
        except UploadError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)

    routes = [Route("/", lambda request: HTMLResponse(html)),
              Route("/api/info", lambda request: JSONResponse(segmenter.info())),
              Route("/api/mask", handler("mask"), methods=["POST"]),
              Route("/api/overlay", handler("overlay"), methods=["POST"]),
              Route("/api/predict", handler("predict"), methods=["POST"]),
              Route("/api/predict/{key}", again, methods=["GET"])]
    return Starlette(routes=routes)


def _bind(host: str, port: int) -> socket.socket:
    """Return a listening socket on host:port (port 0: any free one); CatsegError when it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise CatsegError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port") from exc
    sock.listen(64)
    return sock


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class Server:
    """A running app: `url`, and `stop()`; `serve` runs one in the foreground, tests in a thread."""

    def __init__(self, segmenter: Segmenter, host: str = "127.0.0.1", port: int = 7860) -> None:
        import uvicorn

        _require_app()
        self.socket = _bind(host, port)
        bound = self.socket.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{bound}/"
        config = uvicorn.Config(create_app(segmenter), log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        if not _is_loopback(host):
            log.warning("listening on %s: anyone who can reach this address can use the model (no password)", host)

    def run(self) -> None:
        """Serve until interrupted (Ctrl+C)."""
        self.server.run(sockets=[self.socket])

    def start(self) -> Server:
        """Serve in a background thread; return once the server accepts connections."""
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        while not self.server.started and self._thread.is_alive():
            self._thread.join(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self.socket.close()


def serve(source: str | Path, host: str = "127.0.0.1", port: int = 7860, max_pixels: int = 50_000_000,
          backend: str | None = None, device: str = "auto", ready: Callable[[str], None] | None = None) -> None:
    """Serve the page and the API for a run folder (or exported .onnx file) until interrupted."""
    _require_app()
    if max_pixels < 1:
        raise CatsegError(f"--max-pixels {max_pixels}: must be at least 1")
    server = Server(Segmenter(source, backend, device=device, max_pixels=max_pixels), host, port)
    if ready is not None:
        ready(server.url)
    server.run()
