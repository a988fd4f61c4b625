"""Resolve what an inference command points at: a base model, adapters, or a training output_dir.

`model_name_or_path` may be a training run folder (it holds `lmforge_run.json`): then the base
model, the adapters and the template come from the run, so `chat`, `api` and `export` work on
the folder alone. An `lmforge export` folder names its template the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from lmforge.export import read_export_file
from lmforge.train.outputs import read_run_file

if TYPE_CHECKING:
    from lmforge.config import RunConfig


@dataclass(frozen=True)
class ResolvedModel:
    """What to load for inference."""

    base: str  # model folder or hub id whose weights are loaded
    adapters: tuple[str, ...]  # LoRA adapters applied on top, in order
    tokenizer: str  # where the tokenizer (with the trained chat template) is read from
    template: str | None  # template name, None: the tokenizer's own chat template


def resolve_model(cfg: RunConfig) -> ResolvedModel:
    """Turn model_name_or_path / adapter_name_or_path / template into concrete paths."""
    path = cfg.model.model_name_or_path
    adapters = tuple(cfg.model.adapter_name_or_path or ())
    template = cfg.data.template
    run = read_run_file(path)
    if run is None:
        # A tokenizer saved with a trained adapter carries the template's chat template and eos.
        tokenizer = adapters[-1] if adapters and _has_tokenizer(adapters[-1]) else path
        if template is None and adapters:
            template = _run_template(adapters[-1])
        if template is None:
            template = (read_export_file(path) or {}).get("template")
        return ResolvedModel(path, adapters, tokenizer, template)
    template = template or run.get("template")
    if run.get("finetuning_type") != "lora":
        return ResolvedModel(path, adapters, path, template)
    # The run's adapter was trained on top of its own adapters: all but the last of them were
    # merged, and the last continued training (unless a new adapter was created).
    previous = list(run.get("adapter_name_or_path") or [])
    if previous and not run.get("config", {}).get("create_new_adapter", False):
        previous = previous[:-1]
    return ResolvedModel(run["model_name_or_path"], (*previous, path, *adapters), path, template)


def _has_tokenizer(path: str) -> bool:
    from pathlib import Path

    return (Path(path) / "tokenizer_config.json").is_file()


def _run_template(path: str) -> str | None:
    run = read_run_file(path)
    return run.get("template") if run else None
