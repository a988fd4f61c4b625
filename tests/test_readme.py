"""The README's "What works today" table stays true: working commands exist, missing features say so."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from lmforge.cli import BY_NAME
from tests.conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def _rows() -> list[tuple[str, str, str]]:
    section = README.split("## What works today", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] not in ("feature", "---") and not set(cells[0]) <= {"-"}:
            rows.append((cells[0], cells[1].strip("`"), cells[2]))
    return rows


ROWS = _rows()


def test_the_table_lists_features_with_one_of_its_statuses():
    statuses = {status.split(" (")[0] for _, _, status in ROWS}
    assert "works" in statuses
    assert statuses <= {"works", "needs a CUDA GPU", "not available yet"}, statuses
    assert len(ROWS) >= 10


@pytest.mark.parametrize("feature,command,status", [r for r in ROWS if r[1]], ids=lambda v: str(v)[:40])
def test_each_command_is_as_the_table_says(feature, command, status, tmp_path, tiny_llama_dir):
    words = shlex.split(command)
    assert words[0] == "lmforge" and words[1] in BY_NAME, f"{feature}: '{words[1]}' is not an lmforge command"
    for word in words[2:]:
        if re.fullmatch(r"[\w./-]+\.(yaml|yml|json)", word):
            assert (REPO_ROOT / word).is_file(), f"{feature}: {word} does not exist"
    if status.startswith("works"):
        result = subprocess.run([sys.executable, "-m", "lmforge", words[1], "--help"], capture_output=True,
                                text=True, timeout=120, cwd=REPO_ROOT)
        assert result.returncode == 0 and result.stdout.startswith(f"Usage: lmforge {words[1]}")
        return
    # Not available (or not on this machine): running it says so in one line, before any model loads.
    if words[1] == "train":  # the example's model and output folder, replaced by the tiny model and tmp_path
        words += [f"model_name_or_path={tiny_llama_dir}", f"output_dir={tmp_path / 'out'}", "max_steps=1"]
    result = subprocess.run([sys.executable, "-m", "lmforge", *words[1:]], capture_output=True, text=True,
                            timeout=300, cwd=REPO_ROOT)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    expected = {"not available yet": "not available", "needs a CUDA GPU": "CUDA"}[status]
    assert expected in result.stderr, result.stderr[-2000:]
