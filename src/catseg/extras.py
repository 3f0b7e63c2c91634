"""Optional dependencies: one way to import a module of an extra, or say which extra to install.

Imports no torch, so the data stages can use it.
"""

from __future__ import annotations

import importlib
from typing import Any

from catseg.errors import CatsegError


def require_extra(module: str, extra: str, purpose: str, alternative: str = "") -> Any:
    """Return the imported `module`, or raise a CatsegError saying that `purpose` needs catseg's `extra`."""
    try:
        __import__(module)  # the import statement's own hook, so a test can stand in for a missing package
        return importlib.import_module(module)
    except ImportError as exc:
        raise CatsegError(f"{module} is not installed; {purpose} needs the '{extra}' extra: "
                          f"pip install 'catseg[{extra}]'{alternative}") from exc
