"""The one error type users see.

A `UserError` is raised for anything the user can fix (a config key, a dataset file, a request).
The CLI prints its message on one line without a traceback and exits non-zero.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A problem in the user's input: printed as-is, without a traceback."""

    exit_code = 1


def did_you_mean(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str:
    """Return ' Did you mean 'x'?' for the closest choice, or '' when nothing is close."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return f" Did you mean '{matches[0]}'?" if matches else ""
