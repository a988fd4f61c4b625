"""What a `reward_funcs` entry of stage grpo names: a built-in reward, or a function in a Python file.

Only the spelling is read here (config validation checks it, and that the file exists, before anything
heavy starts); `lmforge.train.rewards` imports the files and builds the functions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

BUILTIN_REWARDS = ("exact_match", "format", "length_penalty")
FORMAT_PREFIX = "format:"


@dataclass(frozen=True)
class RewardSpec:
    """One `reward_funcs` entry: `builtin` (with `regex` for format), or `file` with its `function`."""

    entry: str
    builtin: str | None = None
    regex: str | None = None
    file: Path | None = None
    function: str | None = None


def parse_reward_spec(entry: str) -> RewardSpec | None:
    """The entry's meaning, or None when it is neither a built-in name nor `path/to/file.py:function`."""
    entry = entry.strip()
    if entry in BUILTIN_REWARDS:
        return RewardSpec(entry, builtin=entry)
    if entry.startswith(FORMAT_PREFIX):
        return RewardSpec(entry, builtin="format", regex=entry[len(FORMAT_PREFIX):])
    path, sep, function = entry.rpartition(":")
    if sep and path.endswith(".py") and function.isidentifier():
        return RewardSpec(entry, file=Path(path), function=function)
    return None


def reward_spec_problems(entries: list[str], format_regex: str | None) -> list[str]:
    """Every problem of the `reward_funcs` entries that can be seen without running their code."""
    problems = []
    for entry in entries:
        spec = parse_reward_spec(entry)
        if spec is None:
            from lmforge.errors import did_you_mean

            problems.append(f"reward_funcs entry '{entry}' is neither a built-in reward ({', '.join(BUILTIN_REWARDS)}, "
                            f"format:<regex>) nor path/to/file.py:function.{did_you_mean(entry, BUILTIN_REWARDS)}")
        elif spec.file is not None and not spec.file.is_file():
            problems.append(f"reward function file '{spec.file}' does not exist (reward_funcs entry '{entry}'; "
                            f"a relative path is read from {Path.cwd()}).")
        elif spec.builtin == "format":
            regex = spec.regex if spec.regex is not None else format_regex
            if not regex:
                problems.append("the format reward needs a regular expression: write format:<regex> in reward_funcs, "
                                "or set 'reward_format_regex'.")
                continue
            try:
                re.compile(regex)
            except re.error as err:
                problems.append(f"the format reward's regular expression {regex!r} is invalid: {err}.")
    return problems
