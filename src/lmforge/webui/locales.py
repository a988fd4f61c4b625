"""The board's words: every label, hint and message comes from `locales/<lang>.json` (en, zh)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

LANGUAGES = {"en": "English", "zh": "中文"}
_FOLDER = Path(__file__).parent / "locales"


@cache
def strings(lang: str) -> dict:
    return json.loads((_FOLDER / f"{lang}.json").read_text(encoding="utf-8"))


def label(lang: str, key: str) -> str:
    return strings(lang)[key]["label"]


def info(lang: str, key: str) -> str | None:
    return strings(lang)[key]["info"] or None


def message(lang: str, key: str, **values) -> str:
    return strings(lang)["messages"][key].format(**values)
