"""`catseg preview`: false-colour PNGs of band images, for a person to look at and annotate in labelme.

Each band image CUBES/<stem>.npy (or .tif, 16-bit .png) becomes OUT/<stem>.png of the same width and
height: three chosen bands shown as red, green and blue, each stretched between its 2nd and 98th
percentile. Annotate the PNGs in labelme (the JSONs land beside them), then
`catseg convert OUT DATASET --images CUBES` pairs each JSON with its cube by stem. Imports no torch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from catseg.bands import BAND_EXTENSIONS, false_colour, png_bytes, read_bands
from catseg.errors import CatsegError
from catseg.files import atomic_write_bytes
from catseg.photo_files import expand_inputs

log = logging.getLogger(__name__)

_INPUTS = BAND_EXTENSIONS + (".tif", ".tiff", ".png")


def parse_bands(text: str | None) -> list[int] | None:
    """Return the band indices of a --bands 'R,G,B' option (None: the default choice)."""
    if not text:
        return None
    try:
        bands = [int(v) for v in text.split(",")]
    except ValueError:
        bands = []
    if len(bands) not in (1, 3) or min(bands) < 0:
        raise CatsegError(f"--bands {text!r}: give one band (shown grey) or three, e.g. 60,35,10 (red, green, blue), "
                          "counted from 0")
    return bands * 3 if len(bands) == 1 else bands


def write_previews(inputs: Sequence[str | Path], out_dir: str | Path, bands: Sequence[int] | None = None,
                   channel_axis: str | None = None, force: bool = False) -> list[Path]:
    """Write OUT/<stem>.png, a false-colour picture of `bands` (default: long, middle and short wavelengths),
    for every band image in `inputs` (files or folders); return the written paths."""
    files = expand_inputs([str(i) for i in inputs], _INPUTS)
    out_dir = Path(out_dir)
    targets = [out_dir / f"{f.stem}.png" for f in files]
    clash = [t for t in targets if t.resolve() in {f.resolve() for f in files}]
    if clash:
        raise CatsegError(f"{clash[0]}: is an input and an output name; choose another OUT folder")
    existing = [t for t in targets if t.exists()]
    if existing and not force:
        raise CatsegError(f"{len(existing)} preview(s) already exist (first: {existing[0]}); pass --force to "
                          "overwrite them (labelme JSONs beside them are kept)")
    out_dir.mkdir(parents=True, exist_ok=True)
    for f, target in zip(files, targets):
        cube = read_bands(f, channel_axis)
        atomic_write_bytes(target, png_bytes(false_colour(cube, bands)))
        log.info("%s: %d band(s) of %s, %dx%d -> %s", f, cube.shape[2], cube.dtype, cube.shape[1], cube.shape[0],
                 target)
    return targets
