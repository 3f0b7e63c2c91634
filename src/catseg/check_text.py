"""The text of `catseg check`'s report: the dataset's figures and its class table."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from catseg.check import CheckReport


def figure_lines(report: CheckReport) -> list[str]:
    lines = [f"images    {report.num_images} in images/, {report.num_masks} masks, {report.num_pairs} pairs, "
             f"{report.num_usable} usable"]
    if report.width and report.height:
        lines.append(f"width     {report.width.min}-{report.width.max} px (median {report.width.median:g})")
        lines.append(f"height    {report.height.min}-{report.height.max} px (median {report.height.median:g})")
    if report.modes:
        modes = ", ".join(f"{m} {n}" for m, n in sorted(report.modes.items(), key=lambda kv: (-kv[1], kv[0])))
        lines.append(f"modes     {modes}" + ("" if report.channels else " (all read as RGB)"))
    if report.channels:
        block = report.channels
        lines.append(f"bands     {block['count']} of {block['dtype']}; mean {_span(block['mean'])}, std "
                     f"{_span(block['std'])} (of {block.get('statistics_of', 'the images')}; training re-measures "
                     "them on its training split)")
    total = report.labelled_pixels + report.ignore_pixels
    if total:
        lines.append(f"pixels    {total} in usable masks, {report.ignore_pixels / total:.2%} ignore "
                     f"({report.ignore_index})")
    if report.median_object_fraction is not None:
        lines.append(f"objects   median {report.median_object_fraction:.2%} of the image "
                     "(one object = one class in one image)")
    if report.classes:
        lines.append(f"background class {report.background} {report.classes[report.background]!r}"
                     if report.background is not None else
                     f"background none: class 0 {report.classes[0]!r} is a class like the others (if it is "
                     "background, add \"background\": 0 to dataset.json)")
    return lines


def _span(values: list[float]) -> str:
    return f"{min(values):.4g}" if min(values) == max(values) else f"{min(values):.4g}-{max(values):.4g}"


def class_table(report: CheckReport) -> list[str]:
    width = max(5, *(len(c) for c in report.classes))
    lines = [f"  {'id':>3}  {'class':<{width}}  {'pixels':>7}  {'images':>6}"]
    for cid, (name, share, n) in enumerate(zip(report.classes, report.class_fractions, report.class_images)):
        lines.append(f"  {cid:>3}  {name:<{width}}  {share:>7.2%}  {n:>6}")
    return lines
