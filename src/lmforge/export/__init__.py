"""`lmforge export`: merge adapters, write safetensors shards, a GGUF file and an Ollama Modelfile.

Every export folder describes itself in `lmforge_export.json` (base model, adapters, template,
formats), so `chat`, `api` and `webchat` serve it without the user repeating `template:`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lmforge.errors import UserError

EXPORT_FILE = "lmforge_export.json"


def read_export_file(path: str | os.PathLike) -> dict | None:
    """The description of an export folder (or of the folder of a file in it), or None."""
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    file = folder / EXPORT_FILE
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise UserError(f"{file} is not valid JSON; the export folder is damaged.") from None
