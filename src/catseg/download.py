"""Fetch the Oxford-IIIT Pet release into a folder: resumable, checksum-verified, safely extracted.

Standard library only (urllib, hashlib, tarfile). Every archive is downloaded and verified before
any is extracted, so a bad download never leaves extracted files behind.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from catseg.errors import CatsegError

logger = logging.getLogger(__name__)

OXFORD_PETS_PAGE = "https://www.robots.ox.ac.uk/~vgg/data/pets/"
OXFORD_PETS_BASE_URL = "https://www.robots.ox.ac.uk/~vgg/data/pets/data/"
# Each archive extracts to the folder named by its first word: images/, annotations/.
OXFORD_PETS_ARCHIVES = ("images.tar.gz", "annotations.tar.gz")
# Digests of the official archives (images.tar.gz is 791,918,971 bytes). The MD5s are the ones
# torchvision.datasets.OxfordIIITPet pins, the SHA-256s the ones torchvision's prototype datasets pin.
# A digest listed here is always checked; an archive with no entry is used unverified, and the
# import report says so.
OXFORD_PETS_CHECKSUMS: dict[str, dict[str, str]] = {
    "images.tar.gz": {
        "sha256": "67195c5e1c01f1ab5f9b6a5d22b8c27a580d896ece458917e61d459337fa318d",
        "md5": "5c4f3ee8e5d25df40f4fd59a7f44e54c",
    },
    "annotations.tar.gz": {
        "sha256": "52425fb6de5c424942b7626b428656fcbd798db970a937df61750c0f1d358e91",
        "md5": "95a8c909bbe2e81eed6a22bccdf3f68f",
    },
}
_CHUNK = 1 << 20
_LOG_EVERY = 64 << 20  # bytes between progress lines


def download_oxford_pets(
    dest: Path,
    *,
    base_url: str | None = None,
    checksums: Mapping[str, Mapping[str, str]] | None = None,
    timeout: float = 60.0,
) -> list[str]:
    """Return notes on what was done to make DEST hold the extracted release (images/, annotations/).

    Archives already in DEST are verified and used; a `.part` file is resumed. `base_url` and
    `checksums` default to the official ones (read at call time, so tests can point them elsewhere).
    """
    dest = Path(dest)
    base_url = base_url or OXFORD_PETS_BASE_URL
    base_url = base_url if base_url.endswith("/") else base_url + "/"
    checksums = OXFORD_PETS_CHECKSUMS if checksums is None else checksums
    if dest.exists() and not dest.is_dir():
        raise CatsegError(f"{dest}: exists and is not a folder; give --download a folder to store the release in.")
    dest.mkdir(parents=True, exist_ok=True)
    notes, todo = [], []
    for name in OXFORD_PETS_ARCHIVES:
        folder = dest / name.split(".")[0]
        if folder.is_dir():
            notes.append(f"{folder} already present; {name} not downloaded")
            continue
        archive, url, expected = dest / name, base_url + name, dict(checksums.get(name) or {})
        fix = _by_hand(dest, base_url)
        if archive.is_file():
            _verify(archive, expected, f"Delete {archive} and run again to download it afresh. {fix}")
            notes.append(f"used {archive} found in {dest}")
        else:
            fetch(url, archive, checksums=expected, timeout=timeout, fix=fix)
            notes.append(f"downloaded {url}")
        if not expected:
            notes.append(f"{name}: no checksum known, so it was not verified")
        todo.append((archive, folder))
    for archive, folder in todo:
        logger.info("extracting %s", archive)
        extract_tar(archive, dest)
        if not folder.is_dir():
            raise CatsegError(f"{archive}: holds no {folder.name}/ folder; this is not the Oxford-IIIT Pet release.")
        notes.append(f"extracted {archive.name} into {folder}; the archive may be deleted now")
    return notes


def fetch(url: str, path: Path, *, checksums: Mapping[str, str] | None = None, timeout: float = 60.0,
          fix: str = "") -> Path:
    """Return `path` after downloading `url` to it through `path.part` (resumed with an HTTP Range
    request when it exists) and checking the given {algorithm: hex digest}."""
    path = Path(path)
    part = path.with_name(path.name + ".part")
    start = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={start}-"} if start else {}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if not (exc.code == 416 and start):  # 416 with a .part: it already holds the whole file
            raise CatsegError(f"{url}: the server answered HTTP {exc.code} {exc.reason}. {fix}".strip()) from None
        response = None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CatsegError(f"{url}: cannot connect ({reason}). Check the internet connection (and https_proxy if "
                          f"you need a proxy). {fix}".strip()) from None
    if response is not None:
        with response:
            _save(response, url, part, start, fix)
    bad = _mismatches(part, checksums or {})
    if bad:
        part.unlink()
        raise CatsegError(f"{url}: the download does not match its checksum ({'; '.join(bad)}); it was deleted. "
                          f"Run again to download it afresh. {fix}".strip())
    os.replace(part, path)
    return path


def _save(response: http.client.HTTPResponse, url: str, part: Path, start: int, fix: str) -> None:
    resumed = start > 0 and response.status == 206
    if resumed:
        match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != start:
            raise CatsegError(f"{url}: the server resumed at an unexpected place "
                              f"({response.headers.get('Content-Range')!r}); delete {part} and run again.")
    length = response.headers.get("Content-Length")
    expected_size = (start if resumed else 0) + int(length) if length and length.isdigit() else None
    logger.info("%s %s%s", "resuming" if resumed else "downloading", url,
                f" at {start} bytes" if resumed else "")
    done = start if resumed else 0
    try:
        with open(part, "ab" if resumed else "wb") as out:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
                done += len(chunk)
                if done // _LOG_EVERY != (done - len(chunk)) // _LOG_EVERY:
                    logger.info("%s: %d of %s MB", part.name, done >> 20,
                                expected_size >> 20 if expected_size else "?")
    except (OSError, http.client.HTTPException) as exc:
        raise CatsegError(f"{url}: the download was interrupted ({exc}) after {part.stat().st_size} bytes; "
                          f"run the same command again to resume it. {fix}".strip()) from None
    if expected_size is not None and part.stat().st_size != expected_size:
        raise CatsegError(f"{url}: the download stopped at {part.stat().st_size} of {expected_size} bytes; "
                          f"run the same command again to resume it. {fix}".strip())


def _mismatches(path: Path, expected: Mapping[str, str]) -> list[str]:
    """Return one line per {algorithm: hex digest} that the file at `path` does not match."""
    if not expected:
        return []
    hashes = {alg: hashlib.new(alg, usedforsecurity=False) for alg in expected}
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            for h in hashes.values():
                h.update(chunk)
    return [f"{alg.upper()} is {hashes[alg].hexdigest()}, expected {want.lower()}"
            for alg, want in expected.items() if hashes[alg].hexdigest() != want.lower()]


def _verify(path: Path, expected: Mapping[str, str], fix: str) -> None:
    bad = _mismatches(path, expected)
    if bad:
        raise CatsegError(f"{path}: does not match its checksum ({'; '.join(bad)}). {fix}")


def _by_hand(dest: Path, base_url: str) -> str:
    urls = " and ".join(base_url + name for name in OXFORD_PETS_ARCHIVES)
    return (f"Or download {urls} by hand (e.g. in a browser; see {OXFORD_PETS_PAGE}) into {dest} and run the same "
            "command again: archives found there are verified and extracted without downloading.")


def extract_tar(archive: Path, dest: Path) -> list[str]:
    """Return the top-level names extracted from a tar archive into DEST. Members that could write
    outside DEST (absolute paths, '..', links, devices) refuse the whole archive; the files are
    extracted into a hidden folder first, so a failed extraction leaves nothing in DEST."""
    archive, dest = Path(archive), Path(dest)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            unsafe = [problem for m in members if (problem := _unsafe_member(m))]
            if unsafe:
                raise CatsegError(f"{archive}: refusing to extract an unsafe archive; nothing was extracted",
                                  unsafe[:20])
            tops = sorted({PurePosixPath(m.name).parts[0] for m in members if PurePosixPath(m.name).parts})
            clash = [str(dest / top) for top in tops if (dest / top).exists()]
            if clash:
                raise CatsegError(f"{archive}: extracting would overwrite files; move them away and run again", clash)
            tmp = Path(tempfile.mkdtemp(dir=dest, prefix=".extract-"))
            try:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, members=members, filter="data")
                else:  # pragma: no cover - Python without extraction filters; members were checked above
                    tar.extractall(tmp, members=members)
                for top in tops:
                    os.replace(tmp / top, dest / top)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise CatsegError(f"{archive}: cannot extract ({exc}); the file may be damaged. "
                          "Delete it and run again.") from exc
    return tops


def _unsafe_member(member: tarfile.TarInfo) -> str | None:
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        return f"{member.name}: a path outside the destination folder"
    if member.issym() or member.islnk():
        return f"{member.name}: a link"
    if not (member.isfile() or member.isdir()):
        return f"{member.name}: not a regular file or folder"
    return None
