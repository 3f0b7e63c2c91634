"""File safety: atomic writes, and the check that a folder is catseg's own before anything replaces it.

Every stage writes through these, so a reader (or a crash) sees either the old file or the whole new one.
This module imports no torch.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from catseg.errors import CatsegError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file so that a reader (or a crash, or a full disk) leaves either the old file or the whole
    new one, never half: a temporary file beside it is flushed to disk, then renamed over it."""
    path = Path(path)
    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    _fsync_folder(path.parent)


_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")  # what atomic_write_bytes names its temporaries


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the half-written temporaries that atomic_write_bytes leaves when its process is killed (SIGKILL,
    power loss) between creating and renaming them; return what was removed. Only files named the way
    atomic_write_bytes names them are touched, and only in `folder` itself. Call it only where no other catseg
    process can be writing to `folder` (resuming a run)."""
    removed = []
    for path in sorted(folder.glob(".*.tmp")):
        if _TEMP_NAME.match(path.name) and path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def disk_errors(path: Path) -> Iterator[None]:
    """Turn a full disk or a read-only folder while writing `path` into a CatsegError that says what is
    intact and what to do; other OSErrors pass through."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CatsegError(f"{path}: the disk is full (while writing it). Nothing already written was "
                              "changed: the previous version of this file, if any, is intact. Free some space "
                              "and run the command again.") from exc
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise CatsegError(f"{path}: cannot write here ({exc.strerror}). Choose a folder you can write to.") from exc
        raise


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable (the folder entry), where the system allows opening folders."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_json(path: str | Path, doc: Any) -> None:
    """Write JSON atomically; NaN and infinities become null, since JSON has no such numbers."""
    text = json.dumps(_json_safe(doc), indent=2, ensure_ascii=False, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))



def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value



def check_replaceable(path: Path, marker: str, what: str, fmt: str | None = None,
                      inputs: Sequence[str | Path | None] = ()) -> None:
    """Raise a CatsegError unless `path` is an empty folder or one catseg wrote (it holds `marker`, a JSON
    file whose "format" is `fmt` when given), so that --force can never delete a folder of the user's
    own, nor a file the same command reads (`inputs`)."""
    if not path.is_dir():
        raise CatsegError(f"{path}: exists and is not a folder; refusing to replace it.")
    if any(path.iterdir()) and not _is_marker(path / marker, fmt):
        raise CatsegError(f"{path}: is not {what} (no {marker}" + (f" of format {fmt!r}" if fmt else "")
                          + "); refusing to replace it even with --force. Choose a new folder.")
    root = path.resolve()
    for item in inputs:
        if item is not None and Path(item).resolve().is_relative_to(root):
            raise CatsegError(f"{item}: is inside {path}, which --force would replace; move it out first.")



def _is_marker(path: Path, fmt: str | None) -> bool:
    if not path.is_file():
        return False
    if fmt is None:
        return True
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False
    return isinstance(doc, dict) and doc.get("format") == fmt


def swap_in_place(new_dir: Path, out_dir: Path) -> None:
    """Move the finished folder `new_dir` to `out_dir`; an existing `out_dir` is set aside first and deleted
    only once the new one is in place, so no moment leaves neither."""
    old: Path | None = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
        os.rmdir(old)
        os.replace(out_dir, old)
    os.replace(new_dir, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def replaced_on_success(path: Path, marker: str, what: str, fmt: str | None = None,
                        inputs: Sequence[str | Path | None] = ()) -> Iterator[None]:
    """Let the with-block write a new folder at `path` while an existing one (catseg's own: check_replaceable)
    waits beside it as `<path>.previous`; it is deleted only when the block succeeds, and put back when it fails.
    Used where the new folder must be built at its final path (it records that path in its own files)."""
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        yield
        return
    check_replaceable(path, marker, what, fmt, inputs)
    kept = path.with_name(path.name + ".previous")
    if kept.exists():
        raise CatsegError(f"{kept}: exists (kept from an earlier replacement of {path} that did not finish). Look "
                          f"at it, then delete it or move it back to {path}.")
    os.replace(path, kept)
    try:
        yield
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        os.replace(kept, path)
        raise
    shutil.rmtree(kept, ignore_errors=True)
