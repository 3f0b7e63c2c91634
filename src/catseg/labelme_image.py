"""The photo behind a labelme JSON, found and oriented the way labelme itself does."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path, PureWindowsPath
from typing import Any

from catseg.errors import CatsegError
from catseg.images import IMAGE_EXTENSIONS, exif_orientation, open_image
from catseg.shapes import Invalid

# Formats whose Pillow reader has `_getexif`, the only ones labelme rotates by their EXIF orientation.
LABELME_EXIF_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP"})


def image_bytes(path: Path, doc: dict[str, Any]) -> tuple[bytes, str, bool]:
    """Return (bytes, name, embedded): the file at imagePath, else the JSON's embedded imageData."""
    image_path = doc.get("imagePath")
    candidate = None
    if isinstance(image_path, str) and image_path:
        candidate = path.parent / PureWindowsPath(image_path).as_posix()  # labelme on Windows writes "\\"
    if candidate is not None and candidate.is_file():
        if candidate.suffix.lower() not in IMAGE_EXTENSIONS:
            # imagePath is untrusted: convert reads image files only, never e.g. imagePath "../../.ssh/id_rsa"
            raise Invalid(f"its imagePath {image_path!r} is not an image file ({', '.join(IMAGE_EXTENSIONS)}); "
                          "point it at the photo that was annotated")
        try:
            return candidate.read_bytes(), str(candidate), False
        except OSError as exc:
            raise Invalid(f"cannot read its image {candidate} ({exc})") from exc
    if isinstance(doc.get("imageData"), str) and doc["imageData"]:
        try:
            return base64.b64decode(doc["imageData"]), f"{path} imageData", True
        except (binascii.Error, ValueError) as exc:
            raise Invalid("its imageData is not valid base64; re-save it in labelme") from exc
    where = f"image {candidate} not found" if candidate is not None else "no imagePath"
    raise Invalid(f"{where} and no imageData embedded; put the image there (imagePath is relative to the "
                   "JSON file) or save the JSON with image data in labelme")


def image_grid(data: bytes, name: str, embedded: bool) -> tuple[tuple[int, int], bool]:
    """Return ((height, width) of the pixels labelme annotated, keep_raw).

    labelme rotates an image file by its EXIF orientation only for JPEG/PNG/WebP, and never rotates
    embedded imageData. keep_raw is True when a reader that honours the tag (catseg's loader) would
    rotate pixels that labelme did not, so the raw pixels must be stored without the tag.
    """
    try:
        image = open_image(data, name)
    except CatsegError as exc:
        raise Invalid(str(exc)) from exc
    orientation = exif_orientation(image)
    if orientation == 1:
        return (image.height, image.width), False
    if embedded or image.format not in LABELME_EXIF_FORMATS:
        return (image.height, image.width), True
    return ((image.width, image.height) if orientation in (5, 6, 7, 8) else (image.height, image.width)), False
