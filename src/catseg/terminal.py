"""What the command line needs besides argparse itself: flags made from a dataclass, and a progress bar.

The library never prints; these live with the CLI layer (STYLE.md: progress bars and colour in the CLI).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from collections.abc import Callable, Iterator
from typing import Any


# ----------------------------------------------------------------------------- train
@contextlib.contextmanager
def progress_bar() -> Iterator[Callable[[Any], None] | None]:
    """Yield a per-step callback drawing one tqdm bar per epoch, or None when stderr is not a terminal
    (logs then get one line per epoch from the library)."""
    if not sys.stderr.isatty():
        yield None
        return
    from tqdm.auto import tqdm

    state: dict[str, Any] = {"bar": None, "epoch": None}

    def update(report: Any) -> None:
        if state["bar"] is None or state["epoch"] != report.epoch:
            if state["bar"] is not None:
                state["bar"].close()
            state["bar"] = tqdm(total=report.steps_per_epoch, desc=f"epoch {report.epoch}", leave=False, unit="step")
            state["epoch"] = report.epoch
        state["bar"].set_postfix(loss=f"{report.loss:.3f}", img_s=f"{report.images_per_s:.1f}", lr=f"{report.lr:.2e}")
        state["bar"].update(1)
        if report.step >= report.steps_per_epoch:  # close before the library logs the epoch's line
            state["bar"].close()
            state["bar"], state["epoch"] = None, None

    try:
        yield update
    finally:
        if state["bar"] is not None:
            state["bar"].close()



def add_dataclass_flags(p: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag per dataclass field, so the CLI and the config can never drift apart."""
    for f in dataclasses.fields(cls):
        help_text = f.metadata.get("help", "")
        if f.metadata.get("cli") is False:
            continue
        if f.metadata.get("positional"):
            p.add_argument(f.name, help=help_text)
            continue
        flag = "--" + f.name.replace("_", "-")
        # SUPPRESS leaves unset flags out of the namespace, so the config knows which ones the user gave.
        if isinstance(f.default, bool):
            p.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=help_text)
        else:
            p.add_argument(flag, type=type(f.default), default=argparse.SUPPRESS,
                           required=bool(f.metadata.get("required")),
                           help=f"{help_text} (default: {f.default!r})" if f.default != "" else help_text)
