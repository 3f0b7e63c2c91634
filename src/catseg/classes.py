"""Which class, if any, is background: the one rule every stage follows.

Many datasets give id 0 to background (labelme's `_background_`, VOC, the pets), but not all: CamVid's
id 0 is Sky, a class like any other. Background matters where a stage treats one class apart: mask
clean-up (specks become background, background holes get filled), overlays (background is left
unpainted), labelme output (background is what nobody paints), object statistics (objects are the
non-background classes), the two-class threshold (it maximises the IoU of the class that is not
background) and the error pictures of a report (missed versus invented foreground).

The rule: dataset.json may name it (`"background": ID`, or `null` for none); otherwise class 0 is
background when it is called background (`background`, `_background_` or `bg`, any case), and no class
is background when it is called anything else. A run stores the result in config.json.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

BACKGROUND_NAMES = frozenset({"background", "_background_", "bg"})
AUTO = "auto"  # dataset.json says nothing: decide from the name of class 0


def background_id(classes: Sequence[str], declared: Any = AUTO) -> int | None:
    """Return the id of the background class, or None when every class is a real one."""
    if declared != AUTO:
        return None if declared is None else int(declared)
    return 0 if classes and classes[0].strip().lower() in BACKGROUND_NAMES else None


def declared_problem(declared: Any, num_classes: int) -> str | None:
    """Return what is wrong with dataset.json's `background` value, or None."""
    if declared == AUTO or declared is None:
        return None
    if isinstance(declared, bool) or not isinstance(declared, int) or not 0 <= declared < num_classes:
        return (f"background is {declared!r}; give a class id 0-{num_classes - 1}, or null when no class is "
                "background (leave it out to decide from the name of class 0)")
    return None


RARE_SHARE = 0.02  # a class (not background) under this share of the labelled pixels is rare


def rare(counts: Sequence[int], background: int | None) -> list[int]:
    """Return the ids of the rare classes given each class's labelled pixel count."""
    total = sum(int(c) for c in counts) or 1
    return [c for c in objects(len(counts), background) if int(counts[c]) / total < RARE_SHARE]


def objects(classes: Sequence[str] | int, background: int | None) -> list[int]:
    """Return the ids of the classes that make objects: every class but background."""
    ids = range(classes) if isinstance(classes, int) else range(len(classes))
    return [c for c in ids if c != background]
