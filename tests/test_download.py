"""catseg.download against a local HTTP server on 127.0.0.1: resumable, verified, safe downloads."""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catseg import download
from catseg.cli import main
from catseg.data import read_dataset
from catseg.download import download_oxford_pets, extract_tar, fetch
from catseg.errors import CatsegError
from catseg.images import read_mask
from catseg.importers import import_dataset


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test server is on 127.0.0.1; a proxy from the environment must not get in between."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")


# ----------------------------------------------------------------------------- a tiny release
def tar_gz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


TRIMAPS = {stem: np.random.default_rng(i).integers(1, 4, (10, 14), dtype=np.uint8)
           for i, stem in enumerate(["Abyssinian_1", "beagle_2"])}


def release() -> dict[str, bytes]:
    """images.tar.gz and annotations.tar.gz in the official layout, a few pixels each."""
    images = {f"images/{s}.jpg": png(np.zeros((10, 14, 3), np.uint8)) for s in TRIMAPS}  # PNG named .jpg, as in the release
    images["images/Abyssinian_1.mat"] = b"MATLAB"
    annotations = {f"annotations/trimaps/{s}.png": png(t) for s, t in TRIMAPS.items()}
    annotations["annotations/trainval.txt"] = b"Abyssinian_1 1 1 1\n"
    annotations["annotations/test.txt"] = b"beagle_2 2 2 1\n"
    annotations["annotations/list.txt"] = b"#Image CLASS-ID SPECIES BREED ID\nAbyssinian_1 1 1 1\nbeagle_2 2 2 1\n"
    return {"images.tar.gz": tar_gz(images), "annotations.tar.gz": tar_gz(annotations)}


def sha256(data: bytes) -> dict[str, str]:
    return {"sha256": hashlib.sha256(data).hexdigest(), "md5": hashlib.md5(data).hexdigest()}


# ----------------------------------------------------------------------------- a local server
@dataclass
class Server:
    base_url: str
    files: dict[str, bytes]
    honour_range: bool = True
    requests: list[str | None] = field(default_factory=list)  # the Range header of each request
    bytes_sent: int = 0


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server("", release())

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            data = state.files.get(self.path.lstrip("/"))
            if data is None:
                self.send_error(404)
                return
            wanted = self.headers.get("Range")
            state.requests.append(wanted)
            start = int(wanted.removeprefix("bytes=").split("-")[0]) if wanted and state.honour_range else 0
            if start >= len(data) and start:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            # Counted before writing: the client may read the last byte and assert before write() returns here.
            state.bytes_sent += len(data) - start
            self.wfile.write(data[start:])

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/pets/"
    state.files = {f"pets/{k}": v for k, v in state.files.items()}
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def checksums(server: Server) -> dict[str, dict[str, str]]:
    return {name: sha256(server.files[f"pets/{name}"]) for name in download.OXFORD_PETS_ARCHIVES}


def point_at(monkeypatch: pytest.MonkeyPatch, server: Server) -> None:
    monkeypatch.setattr(download, "OXFORD_PETS_BASE_URL", server.base_url)
    monkeypatch.setattr(download, "OXFORD_PETS_CHECKSUMS", checksums(server))


# ----------------------------------------------------------------------------- tests
def test_official_checksum_table_covers_both_archives() -> None:
    for name in download.OXFORD_PETS_ARCHIVES:
        sums = download.OXFORD_PETS_CHECKSUMS[name]
        assert len(sums["sha256"]) == 64 and len(sums["md5"]) == 32
    assert download.OXFORD_PETS_BASE_URL.startswith("https://www.robots.ox.ac.uk/")


def test_download_then_import(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    point_at(monkeypatch, server)
    src, out = tmp_path / "pets", tmp_path / "ds"
    report = import_dataset("oxford-pets", src, out, download=True, labels="trimap")
    assert sorted(p.name for p in (src / "images").iterdir()) == ["Abyssinian_1.jpg", "Abyssinian_1.mat", "beagle_2.jpg"]
    assert not list(src.glob("*.part")) and not list(src.glob(".extract-*"))
    info = read_dataset(out)
    assert info.splits == {"trainval": ["Abyssinian_1"], "test": ["beagle_2"]}
    for stem, trimap in TRIMAPS.items():
        expected = np.select([trimap == 1, trimap == 2, trimap == 3], [1, 0, 2]).astype(np.uint8)
        np.testing.assert_array_equal(read_mask(info.mask_path(stem)), expected)
        assert info.image_path(stem).suffix == ".png"  # identified by content
    assert any(n.startswith("downloaded http://127.0.0.1:") for n in report.notes)
    sent = server.bytes_sent
    notes = download_oxford_pets(src)  # a second run finds the extracted release and fetches nothing
    assert server.bytes_sent == sent and all("already present" in n for n in notes)


def test_cli_download(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    point_at(monkeypatch, server)
    assert main(["import", "oxford-pets", str(tmp_path / "pets"), str(tmp_path / "ds"), "--download"]) == 0
    assert "Imported 2 images" in capsys.readouterr().out


def test_partial_download_is_resumed_with_a_range_request(server: Server, tmp_path: Path) -> None:
    data = server.files["pets/images.tar.gz"]
    part = tmp_path / "images.tar.gz.part"
    part.write_bytes(data[:100])
    fetch(server.base_url + "images.tar.gz", tmp_path / "images.tar.gz", checksums=sha256(data))
    assert (tmp_path / "images.tar.gz").read_bytes() == data and not part.exists()
    assert server.requests == ["bytes=100-"] and server.bytes_sent == len(data) - 100


def test_server_ignoring_range_restarts_from_the_beginning(server: Server, tmp_path: Path) -> None:
    server.honour_range = False
    data = server.files["pets/images.tar.gz"]
    (tmp_path / "images.tar.gz.part").write_bytes(b"x" * 50)
    fetch(server.base_url + "images.tar.gz", tmp_path / "images.tar.gz", checksums=sha256(data))
    assert (tmp_path / "images.tar.gz").read_bytes() == data


def test_complete_part_file_is_verified_without_refetching(server: Server, tmp_path: Path) -> None:
    data = server.files["pets/images.tar.gz"]
    (tmp_path / "images.tar.gz.part").write_bytes(data)
    fetch(server.base_url + "images.tar.gz", tmp_path / "images.tar.gz", checksums=sha256(data))
    assert (tmp_path / "images.tar.gz").read_bytes() == data and server.bytes_sent == 0


def test_checksum_mismatch_is_an_error_and_extracts_nothing(server: Server, tmp_path: Path) -> None:
    sums = checksums(server)
    sums["annotations.tar.gz"] = {"sha256": "0" * 64}
    src = tmp_path / "pets"
    with pytest.raises(CatsegError, match="does not match its checksum") as err:
        download_oxford_pets(src, base_url=server.base_url, checksums=sums)
    assert "annotations.tar.gz" in str(err.value) and "SHA256 is" in str(err.value) and "0" * 64 in str(err.value)
    assert "by hand" in str(err.value)
    assert sorted(p.name for p in src.iterdir()) == ["images.tar.gz"]  # verified, not extracted; bad one deleted


def test_existing_archive_with_wrong_checksum_says_delete_it(server: Server, tmp_path: Path) -> None:
    src = tmp_path / "pets"
    src.mkdir()
    (src / "images.tar.gz").write_bytes(b"not the release")
    with pytest.raises(CatsegError, match=r"images.tar.gz: does not match its checksum.*Delete .*images.tar.gz"):
        download_oxford_pets(src, base_url=server.base_url, checksums=checksums(server))
    assert (src / "images.tar.gz").read_bytes() == b"not the release"  # the user's file is left alone
    assert not (src / "images").exists()


def test_archive_without_known_checksum_is_used_and_said_so(server: Server, tmp_path: Path) -> None:
    notes = download_oxford_pets(tmp_path / "pets", base_url=server.base_url, checksums={})
    assert (tmp_path / "pets" / "annotations" / "trimaps").is_dir()
    assert any("no checksum known" in n for n in notes)


def test_unreachable_server_says_how_to_download_by_hand(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port on 127.0.0.1 that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    src, out = tmp_path / "pets", tmp_path / "ds"
    with pytest.raises(CatsegError, match="cannot connect") as err:
        download_oxford_pets(src, base_url=f"http://127.0.0.1:{port}/", timeout=2)
    text = str(err.value)
    assert "by hand" in text and str(src) in text and "images.tar.gz" in text and "annotations.tar.gz" in text
    assert not out.exists() and not (src / "images").exists()


def test_missing_file_on_server_names_the_http_status(server: Server, tmp_path: Path) -> None:
    with pytest.raises(CatsegError, match="HTTP 404"):
        fetch(server.base_url + "nothing.tar.gz", tmp_path / "nothing.tar.gz")
    assert not (tmp_path / "nothing.tar.gz").exists()


@pytest.mark.parametrize("name", ["../evil.txt", "/tmp/evil.txt", "images/../../evil.txt"])
def test_path_traversal_refuses_the_whole_archive(tmp_path: Path, name: str) -> None:
    archive = tmp_path / "bad.tar.gz"
    archive.write_bytes(tar_gz({"images/ok.jpg": b"ok", name: b"evil"}))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(CatsegError, match="unsafe archive") as err:
        extract_tar(archive, dest)
    assert name in str(err.value)
    assert list(dest.iterdir()) == [] and not (tmp_path / "evil.txt").exists()


def test_links_in_an_archive_are_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        link = tarfile.TarInfo("images/passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    (tmp_path / "bad.tar.gz").write_bytes(buf.getvalue())
    (tmp_path / "dest").mkdir()
    with pytest.raises(CatsegError, match="images/passwd: a link"):
        extract_tar(tmp_path / "bad.tar.gz", tmp_path / "dest")
    assert list((tmp_path / "dest").iterdir()) == []


def test_damaged_archive_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bad.tar.gz").write_bytes(tar_gz({"images/a.jpg": b"x" * 5000})[:60])
    (tmp_path / "dest").mkdir()
    with pytest.raises(CatsegError, match="cannot extract .*Delete it and run again"):
        extract_tar(tmp_path / "bad.tar.gz", tmp_path / "dest")
    assert list((tmp_path / "dest").iterdir()) == []
