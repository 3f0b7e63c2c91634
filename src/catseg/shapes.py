"""labelme shapes -> pixels: each shape drawn exactly as labelme.utils.shape_to_mask draws it, and the
checks that say what is wrong with a shape before it is drawn.

Shapes are drawn with Pillow on a zero image in JSON order, the last shape winning, with the same
Pillow calls as labelme, so float coordinates, boundaries and out-of-bounds points come out exactly
as in labelme. This module imports neither labelme nor torch.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from catseg.errors import CatsegError
from catseg.images import open_image

# Number of points each shape type needs: exact, or (at least, None).
_POINT_COUNTS: dict[str, tuple[int, int | None]] = {
    "polygon": (3, None), "rectangle": (2, 2), "circle": (2, 2), "line": (2, 2), "linestrip": (2, None),
    "point": (1, 1), "oriented_rectangle": (4, 4), "mask": (2, 2),
}


LINE_WIDTH = 10  # labelme's shape_to_mask defaults


POINT_RADIUS = 5



class Invalid(ValueError):
    """One file's problem, worded as `reason; fix` (a ValueError where public functions raise it)."""


# ----------------------------------------------------------------------------- rasterisation
def shape_to_mask(shape: dict[str, Any], height: int, width: int) -> np.ndarray:
    """Return the (H, W) bool mask of one labelme shape, drawn as labelme.utils.shape_to_mask does.

    `shape` is a shape object of a labelme JSON; a `mask` shape holds a base64 PNG (or a 2-D array)
    placed at its box as labelme's shapes_to_label places it.
    """
    problem = _geometry_problem(shape)
    if problem is not None:
        raise ValueError(f"shape {problem}")
    shape_type = shape.get("shape_type") or "polygon"
    if shape_type == "mask":
        return _patch_to_mask(shape, height, width)
    canvas = Image.fromarray(np.zeros((height, width), dtype=np.uint8))
    draw = ImageDraw.Draw(canvas)
    xy = [tuple(point) for point in shape["points"]]
    if shape_type == "circle":
        (cx, cy), (px, py) = xy
        d = math.sqrt((cx - px) ** 2 + (cy - py) ** 2)
        draw.ellipse(((cx - d, cy - d), (cx + d, cy + d)), outline=1, fill=1)
    elif shape_type == "rectangle":
        (x0, y0), (x1, y1) = xy
        draw.rectangle(((min(x0, x1), min(y0, y1)), (max(x0, x1), max(y0, y1))), outline=1, fill=1)
    elif shape_type in ("line", "linestrip"):
        # labelme draws both with a plain wide line (no rounded joints).
        draw.line(xy=xy, fill=1, width=LINE_WIDTH)
    elif shape_type == "point":
        (cx, cy), r = xy[0], POINT_RADIUS
        draw.ellipse(((cx - r, cy - r), (cx + r, cy + r)), outline=1, fill=1)
    else:  # polygon, oriented_rectangle
        draw.polygon(xy=xy, outline=1, fill=1)
    return np.array(canvas, dtype=bool)



def shapes_to_mask(shapes: list[dict[str, Any]], height: int, width: int, label_to_id: dict[str, int]) -> np.ndarray:
    """Return the (H, W) uint8 class-id mask of labelme shapes, drawn in order (the last one wins)."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for shape in shapes:
        label = shape.get("label")
        if not isinstance(label, str) or label not in label_to_id:
            raise ValueError(f"label {label!r} has no id in label_to_id")
        value = label_to_id[label]
        if not 0 <= value <= 255:
            raise ValueError(f"label {label!r} has id {value}; ids must be 0-255")
        mask[shape_to_mask(shape, height, width)] = value
    return mask



def _decode_patch(patch: Any) -> np.ndarray:
    """Return a mask shape's patch as a bool array, decoded as labelme decodes it."""
    if isinstance(patch, np.ndarray):
        return patch.astype(bool)
    try:
        image = open_image(base64.b64decode(patch), "mask patch")
    except (binascii.Error, ValueError, CatsegError) as exc:
        raise Invalid("its 'mask' is not a base64-encoded PNG; redraw the mask in labelme") from exc
    return np.array(image).astype(bool)



def _patch_to_mask(shape: dict[str, Any], height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    (x1, y1), (x2, y2) = np.asarray(shape["points"]).astype(int)
    mask[y1 : y2 + 1, x1 : x2 + 1] = _decode_patch(shape["mask"])
    return mask



def patch_problem(shape: dict[str, Any], height: int, width: int) -> str | None:
    """Return why a mask shape's patch does not fit its box in the image, or None if it does."""
    (x1, y1), (x2, y2) = np.asarray(shape["points"]).astype(int)
    box = (len(range(*slice(y1, y2 + 1).indices(height))), len(range(*slice(x1, x2 + 1).indices(width))))
    try:
        patch = _decode_patch(shape["mask"])
    except Invalid as exc:
        return str(exc)
    try:
        fits = patch.ndim <= 2 and np.broadcast_shapes(patch.shape, box) == box
    except ValueError:
        fits = False
    return None if fits else (f"its {patch.shape} mask patch does not fit its box {box} (height, width) "
                              f"inside the {height}x{width} image; redraw the mask in labelme")



def shape_problem(shape: Any) -> str | None:
    """Return what is wrong with one shape object (not its label's id), or None."""
    if not isinstance(shape, dict):
        return "is not an object"
    label = shape.get("label")
    if not isinstance(label, str) or not label:
        return f"has label {label!r}; give it a non-empty name"
    problem = _geometry_problem(shape)
    return None if problem is None else f"({label!r}) {problem}"



def _geometry_problem(shape: dict[str, Any]) -> str | None:
    points, shape_type = shape.get("points"), shape.get("shape_type") or "polygon"
    if not isinstance(shape_type, str) or shape_type not in _POINT_COUNTS:
        return f"has unknown shape_type {shape_type!r}; catseg reads {', '.join(_POINT_COUNTS)}"
    if not isinstance(points, list) or not all(
        isinstance(p, (list, tuple)) and len(p) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in p)
        for p in points
    ):
        return f"is a {shape_type} whose points are not a list of [x, y] numbers; redraw it"
    low, high = _POINT_COUNTS[shape_type]
    if len(points) < low or (high is not None and len(points) > high):
        need = f"exactly {low}" if low == high else f"at least {low}"
        return f"is a {shape_type} with {len(points)} point(s); it needs {need}. Redraw or delete it"
    if shape_type == "mask" and not isinstance(shape.get("mask"), (str, np.ndarray)):
        return "is a mask shape without a base64 'mask' PNG; redraw it in labelme"
    return None
