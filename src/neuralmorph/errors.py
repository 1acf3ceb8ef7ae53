"""The one exception a user can act on.

Library code raises `InputError` for anything wrong with what the user handed in (a file, a manifest,
an argument). The CLI prints its message as a single line and exits non-zero; everything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

from os import PathLike


class NeuralmorphError(Exception):
    """An error the user can fix; printed by the CLI as one line, without a traceback."""


class InputError(NeuralmorphError):
    """Bad input: names the file (or argument) and says what is wrong with it."""

    def __init__(self, where: str | PathLike, problem: str):
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")
