"""Write docs/config.md, the reference of every config key, from the config dataclasses.

Run: .venv/bin/python scripts/config_reference.py   (a test checks the file is up to date)
"""

from __future__ import annotations

import sys
from dataclasses import MISSING, fields
from pathlib import Path

from lmforge.config.parser import COMMAND_GROUPS, GROUP_TITLES, GROUPS

TARGET = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def _default(f) -> str:
    if f.default is not MISSING:
        value = f.default
    elif f.default_factory is not MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        return ""
    if isinstance(value, list):
        value = ",".join(map(str, value))
    return "" if value is None else f"`{value}`"


def render() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Every command reads a YAML (or JSON) file of flat `key: value` settings, then `key=value` or",
        "`--key value` overrides from the command line. Lists are comma-separated (`dataset: a,b`).",
        "An unknown key is an error that names the closest valid key. This page is generated from the",
        "config dataclasses by `scripts/config_reference.py`.",
        "",
        "| command | settings groups |",
        "|---|---|",
    ]
    for command, groups in COMMAND_GROUPS.items():
        lines.append(f"| `lmforge {command}` | {', '.join(GROUP_TITLES[g] for g in groups)} |")
    for group, cls in GROUPS.items():
        lines += ["", f"## {GROUP_TITLES[group].capitalize()} settings (`{cls.__name__}`)", "",
                  "| key | default | meaning |", "|---|---|---|"]
        for f in fields(cls):
            if f.name == "hf_passthrough":
                continue
            lines.append(f"| `{f.name}` | {_default(f)} | {f.metadata.get('help', '')} |")
        if group == "train":
            lines += ["", "Any other key of transformers' `TrainingArguments` (for example `dataloader_persistent_workers`,",
                      "`eval_accumulation_steps`, `torch_compile`) is accepted and handed to the Trainer unchanged."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    TARGET.parent.mkdir(exist_ok=True)
    TARGET.write_text(render(), encoding="utf-8")
    print(f"wrote {TARGET}", file=sys.stderr)
