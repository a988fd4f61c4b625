"""The Train tab's row preview: `lmforge data preview` on the tab's settings, two rendered samples per page."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from lmforge.errors import UserError
from lmforge.webui.settings import to_yaml

ROWS_PER_PAGE = 2
TIMEOUT_S = 300


def render_rows(settings: dict, page: int) -> str:
    """Samples of page `page` (1-based) as the template renders them, trained text inside [[ ]]."""
    page = max(1, page)
    wanted = page * ROWS_PER_PAGE
    # The same command a user runs in a terminal; a child process keeps the board's memory free of tokenizers.
    with tempfile.TemporaryDirectory(prefix="lmforge-preview-") as folder:
        config = Path(folder) / "preview.yaml"
        config.write_text(to_yaml(settings), encoding="utf-8")
        done = subprocess.run([sys.executable, "-m", "lmforge", "data", "preview", str(config), "--num", str(wanted),
                               "--json"], capture_output=True, text=True, timeout=TIMEOUT_S)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise UserError((lines[-1] if lines else f"lmforge data preview failed ({done.returncode})")
                        .removeprefix("lmforge data: error: "))
    samples = json.loads(done.stdout)["samples"]
    shown = samples[(page - 1) * ROWS_PER_PAGE:wanted]
    if not shown:
        return f"No rows on page {page} ({len(samples)} rows in all)."
    parts = []
    for sample in shown:
        state = f"dropped: {sample['dropped']}" if sample.get("dropped") else f"{sample.get('tokens', '?')} tokens"
        parts.append(f"--- {sample['dataset']} row {sample['row']} ({state}) ---\n{sample['text']}")
    return "\n\n".join(parts)
