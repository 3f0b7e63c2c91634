"""Which photos a command reads and which files it writes for them: inputs given as files, folders or glob
patterns, their headers checked before any work, and output names checked for clashes before any is written.
Shared by predict and suggest."""

from __future__ import annotations

import glob
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from catseg.annotate import annotation_path
from catseg.bands import band_header
from catseg.errors import CatsegError
from catseg.images import IMAGE_EXTENSIONS, open_image


def expand_inputs(inputs: Iterable[str], extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Return the image files named by files, folders (their images, not recursive) or glob patterns."""
    files: list[Path] = []
    problems = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in extensions
                           and not p.name.startswith("."))  # hidden files (macOS ._x.jpg) are not photos
            if not found:
                problems.append(f"{path}: folder holds no images ({', '.join(extensions)})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif any(ch in item for ch in "*?["):
            found = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not found:
                problems.append(f"{item}: the pattern matches no file")
            files.extend(found)
        else:
            problems.append(f"{item}: no such file or folder")
    if problems:
        raise CatsegError("cannot read the inputs; nothing was written", problems)
    return files


def check_readable(files: Sequence[Path], channels: int | None = None) -> None:
    """Raise one CatsegError naming every input that is not an image (headers only: cheap); with `channels`,
    every input must be a band image with that many bands."""
    problems = []
    for f in files:
        if channels is not None:
            try:
                band_header(f, channels=channels)
            except CatsegError as exc:
                problems.append(str(exc))
            continue
        try:
            open_image(f, decode=False).close()  # header only; the pixel limit applies
        except CatsegError as exc:
            problems.append(str(exc))
    if problems:
        raise CatsegError(f"{len(problems)} of {len(files)} inputs are not readable images; nothing was written",
                          problems)


def output_paths(files: Sequence[Path], out_dir: Path, formats: Sequence[str], classes: Sequence[str]) -> dict[Path, dict[str, list[Path]]]:
    stems: dict[str, Path] = {}
    problems = []
    for f in files:
        if f.stem in stems and stems[f.stem] != f:
            problems.append(f"{f} and {stems[f.stem]} would write the same output name {f.stem}; predict them "
                            "into different --out folders")
        stems[f.stem] = f
    if problems:
        raise CatsegError("clashing input names", problems)
    plan = {f: _outputs_of(f, out_dir, formats, classes) for f in files}
    check_collisions(plan)
    return plan


def check_collisions(plan: dict[Path, dict[str, list[Path]]]) -> None:
    """Raise one CatsegError naming every output file that two outputs of this call would both write (a photo
    `a_prob_cat.jpg` beside `a.jpg`, or class names that sanitise to the same file name), before any is written."""
    owners: dict[Path, str] = {}
    problems = []
    for photo, outputs in plan.items():
        for fmt, paths in outputs.items():
            for path in paths:
                what = f"the {fmt} output of {photo}"
                if path in owners and owners[path] != what:
                    problems.append(f"{path.name}: would be written as {owners[path]} and as {what}")
                owners.setdefault(path, what)
    if problems:
        raise CatsegError("two outputs of this call would have the same file name; nothing was written. Rename a "
                          "photo (or a class), or predict the photos into separate --out folders", problems)


def _outputs_of(f: Path, out_dir: Path, formats: Sequence[str], classes: Sequence[str]) -> dict[str, list[Path]]:
    """Return {format: output paths} of one photo."""
    outputs: dict[str, list[Path]] = {}
    for fmt in formats:
        if fmt == "mask":
            outputs[fmt] = [out_dir / f"{f.stem}.png"]
        elif fmt == "overlay":
            outputs[fmt] = [out_dir / f"{f.stem}_overlay.jpg"]
        elif fmt == "prob":
            outputs[fmt] = [out_dir / f"{f.stem}_prob_{_safe(c)}.png" for c in classes]
        elif fmt == "npy":
            outputs[fmt] = [out_dir / f"{f.stem}_prob.npy"]
        elif fmt == "labelme":
            outputs[fmt] = [annotation_path(out_dir, f)]
    return outputs


def _safe(name: str) -> str:
    """Return a class name fit for a file name: a name such as 'cat/dog' or '../x' must not leave --out."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "class"
