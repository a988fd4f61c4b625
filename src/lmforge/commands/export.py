"""`lmforge export CONFIG`: merge adapters; write safetensors, GGUF and an Ollama Modelfile (see `lmforge.export`)."""

from __future__ import annotations

from lmforge.commands.common import load_config


def main(argv: list[str]) -> int:
    cfg = load_config("export", argv)
    from lmforge.export.run import run_export

    out = run_export(cfg)
    names = sorted(p.name for p in out.iterdir())
    print(f"lmforge export: wrote {out}: {', '.join(names)}", flush=True)
    return 0
