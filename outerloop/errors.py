"""Exceptions with a clear split: the user gave bad input, the developer misused the SDK, or a
run failed. The CLI prints :class:`UserInputError` messages without a traceback."""

from __future__ import annotations

from pathlib import Path


class OuterloopError(Exception):
    """Base of every error outerloop raises on purpose."""


class UserInputError(OuterloopError):
    """Bad input from a person: a flag, a file, a request. The message says what and where."""


class DataFormatError(UserInputError):
    """A data file is malformed; the message names the file and the 1-based line."""

    def __init__(self, path: str | Path, line: int | None, problem: str) -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


class UsageError(OuterloopError):
    """The SDK was used wrongly (developer misuse), e.g. two agents with one name."""


class RunFailed(OuterloopError):
    """An agent or tool run failed at run time (not a budget kill: see outerloop.budgets)."""
