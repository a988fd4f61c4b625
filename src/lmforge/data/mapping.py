"""Which columns of a data file an entry's `columns` mapping reads, and a report line for every other one.

LLaMA-Factory's rule is kept: a `columns` object replaces all the defaults, so an alpaca entry with
`{"prompt": "instruction", "response": "output"}` does not read `input`. Keeping the rule keeps
existing dataset_info.json files training exactly as they did; what changes is that no column is
left out in silence: each unread one becomes an `UnreadColumn` with the exact `columns` entry that
would read it. Only top-level columns are judged: the keys inside messages are the `tags`' business.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from lmforge.data.registry import FORMATS, Columns
from lmforge.data.report import UnreadColumn

if TYPE_CHECKING:
    from lmforge.data.registry import DatasetSpec

SHARED_KEYS = ("system", "tools", "images", "videos", "audios", "chosen", "rejected", "kto_tag")
CHAT_KEYS = ("messages", *SHARED_KEYS)
ALPACA_KEYS = ("prompt", "query", "response", "history", *SHARED_KEYS)
_DEFAULTS = Columns()
_ALPACA_DEFAULTS = {key: getattr(_DEFAULTS, key) for key in ("prompt", "query", "response")}
# The column names of LLaMA-Factory's examples, to suggest the `columns` key that reads a column.
_USUAL_KEY = {
    "instruction": "prompt", "input": "query", "output": "response", "history": "history",
    "conversations": "messages", "messages": "messages", "system": "system", "tools": "tools",
    "images": "images", "videos": "videos", "audios": "audios", "chosen": "chosen", "rejected": "rejected",
    "kto_tag": "kto_tag",
}  # fmt: skip
_RANKING_KEYS = ("chosen", "rejected")
_PT_KEYS = ("prompt", "query")  # pt trains on the first user turn: the instruction and the input
_TEXT_KEYS = ("prompt", "query", "history", "system", "tools")  # the keys an unknown text column may belong to


def format_keys(spec: DatasetSpec) -> tuple[str, ...]:
    """The `columns` keys the converter of the entry's format reads (when mapped)."""
    return ALPACA_KEYS if spec.formatting == "alpaca" else CHAT_KEYS


def mapped_columns(spec: DatasetSpec) -> dict[str, str]:
    """{`columns` key: source column} of the keys the converter of `spec` reads, as mapped."""
    return {key: getattr(spec.columns, key) for key in format_keys(spec) if getattr(spec.columns, key)}


def unread_columns(spec: DatasetSpec, names: list[str], stage: str | None = None) -> list[UnreadColumn]:
    """The columns among `names` (the file's) that neither the mapping of `spec` nor `stage` reads.

    Converters registered under another formatting read what they like, so they are not judged.
    """
    if spec.formatting not in FORMATS:
        return []
    mapped = mapped_columns(spec)
    used = dict(mapped)
    if not spec.ranking:
        for key in _RANKING_KEYS:
            used.pop(key, None)
    if stage == "pt" and spec.formatting == "alpaca":
        used = {key: column for key, column in used.items() if key in _PT_KEYS}
    read = set(used.values())
    found = []
    for column in names:
        if column not in read:
            found.append(UnreadColumn(spec.name, column, spec.location, _why(spec, column, mapped, names, stage)))
    return found


def _why(spec: DatasetSpec, column: str, mapped: dict[str, str], names: list[str], stage: str | None) -> str:
    key = next((k for k, c in mapped.items() if c == column), None)
    if key in _RANKING_KEYS:
        return f'it is mapped as `{key}`, which is only read with "ranking": true'
    if key is not None:  # pt with an alpaca mapping
        return f"stage pt trains on the `prompt` and `query` text only, not on `{key}`"
    if spec.columns_given:
        how = f"its `columns` mapping names {', '.join(mapped)}"
    else:
        defaults = list(mapped.values())
        how = f"without a `columns` mapping the entry reads only its default {_plural(len(defaults), 'column')} "
        how += ", ".join(defaults)
    suggested = _USUAL_KEY.get(column)
    if suggested not in format_keys(spec) or suggested in mapped or (stage == "pt" and suggested not in _PT_KEYS):
        free = [k for k in format_keys(spec) if k not in mapped and k in (_PT_KEYS if stage == "pt" else _TEXT_KEYS)]
        if not free:
            return f"{how}, and none is free to read it"
        return f"{how}; if it is part of the conversation, map it with one of {', '.join(free)}"
    if spec.columns_given:
        return f'{how}; add "{suggested}": "{column}" to read it'
    # Without a mapping, naming one replaces the defaults: the fix must repeat the defaults in use.
    full = {key: value for key, value in mapped.items() if value in names or key not in _ALPACA_DEFAULTS}
    full[suggested] = column
    return f'{how}; add "columns": {json.dumps(full, ensure_ascii=False)} to the entry to read it'


def _plural(count: int, noun: str) -> str:
    return noun if count == 1 else f"{noun}s"
