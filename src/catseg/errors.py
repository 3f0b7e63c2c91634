"""The one exception type the CLI turns into a clear message instead of a traceback."""

from __future__ import annotations

from collections.abc import Iterable


class CatsegError(Exception):
    """A problem with the user's input or environment, worded so the user can fix it.

    `problems` holds one line per bad file or value, so that every problem is reported at once
    instead of one per run.
    """

    def __init__(self, message: str, problems: Iterable[str] = ()) -> None:
        self.message = message
        self.problems = list(problems)
        super().__init__(self.__str__())

    def __str__(self) -> str:
        if not self.problems:
            return self.message
        lines = [self.message] + [f"  - {p}" for p in self.problems]
        return "\n".join(lines)
