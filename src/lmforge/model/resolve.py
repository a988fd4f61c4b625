"""What a `model_name_or_path` points at: a base model, a training run folder, an export folder or a GGUF.

A training run folder (it holds `lmforge_run.json`) names its base model, adapters and template,
so `chat`, `api`, `eval` and `export` work on the folder alone. An `lmforge export` folder names its
template in `lmforge_export.json`. Both files are written by their commands (`train`, `export`);
reading them is model resolution, so it lives here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.errors import UserError

if TYPE_CHECKING:
    from lmforge.config import RunConfig

RUN_FILE = "lmforge_run.json"
EXPORT_FILE = "lmforge_export.json"


@dataclass(frozen=True)
class ResolvedModel:
    """What to load for inference."""

    base: str  # model folder or hub id whose weights are loaded (a .gguf file for llama.cpp)
    adapters: tuple[str, ...]  # LoRA adapters applied on top, in order
    tokenizer: str  # where the tokenizer (with the trained chat template) is read from
    template: str | None  # template name, None: the tokenizer's own chat template


def read_run_file(path: str | os.PathLike) -> dict | None:
    """The run description of a training output_dir, or None when `path` is not one."""
    return _read_description(Path(path) / RUN_FILE, "run")


def read_export_file(path: str | os.PathLike) -> dict | None:
    """The description of an export folder (or of the folder of a file in it), or None."""
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    return _read_description(folder / EXPORT_FILE, "export")


def _read_description(file: Path, kind: str) -> dict | None:
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise UserError(f"{file} is not valid JSON; the {kind} folder is damaged.") from None


def absolute_if_local(path: str) -> str:
    """`path` made absolute when it names something on disk (a hub id stays as given)."""
    local = Path(path).expanduser()
    return str(local.resolve()) if local.exists() else path


def _recorded_path(path: str, key: str, run_folder: Path) -> str:
    """A path recorded in a run file, usable from the current directory.

    Runs record local paths absolute. Older runs recorded them as given, relative to where training
    was started: usually an ancestor of the run folder (`saves/...` under the project), so the
    ancestors are tried. A path that is still missing is reported with the run file it came from.
    """
    local = Path(path).expanduser()
    if local.exists():
        return path
    if not local.is_absolute():
        for folder in run_folder.resolve().parents:
            if (folder / local).exists():
                return str(folder / local)
    looks_local = local.is_absolute() or path.startswith((".", "~")) or path.count("/") > 1
    if looks_local:
        raise UserError(
            f"{run_folder / RUN_FILE} records {key} '{path}', which does not exist (looked from {Path.cwd()} and "
            f"the folders above {run_folder}). Set model_name_or_path to the base model and adapter_name_or_path "
            f"to {run_folder} instead."
        )
    return path  # a hub id


def resolve_model(cfg: RunConfig) -> ResolvedModel:
    """Turn model_name_or_path / adapter_name_or_path / template into concrete paths."""
    path = cfg.model.model_name_or_path
    adapters = tuple(cfg.model.adapter_name_or_path or ())
    template = cfg.data.template
    run = read_run_file(path)
    if run is None:
        # A tokenizer saved with a trained adapter carries the template's chat template and eos.
        tokenizer = adapters[-1] if adapters and (Path(adapters[-1]) / "tokenizer_config.json").is_file() else path
        if template is None and adapters:
            template = (read_run_file(adapters[-1]) or {}).get("template")
        if template is None:
            template = (read_export_file(path) or {}).get("template")
        return ResolvedModel(path, adapters, tokenizer, template)
    template = template or run.get("template")
    if run.get("finetuning_type") not in ("lora", "oft"):
        return ResolvedModel(path, adapters, path, template)
    # The run's adapter was trained on top of its own adapters: all but the last of them were
    # merged, and the last continued training (unless a new adapter was created).
    folder = Path(path)
    previous = [_recorded_path(p, "adapter_name_or_path", folder) for p in run.get("adapter_name_or_path") or []]
    if previous and not run.get("config", {}).get("create_new_adapter", False):
        previous = previous[:-1]
    base = _recorded_path(run["model_name_or_path"], "model_name_or_path", folder)
    return ResolvedModel(base, (*previous, path, *adapters), path, template)


def trained_from(path: str) -> str | None:
    """The base model the training run folder `path` was trained from; None when it is not a run folder.

    None as well when the run records a local base that no longer exists.
    """
    run = read_run_file(path)
    if run is None or not run.get("model_name_or_path"):
        return None
    try:
        return _recorded_path(run["model_name_or_path"], "model_name_or_path", Path(path))
    except UserError:
        return None


def find_gguf(path: str) -> Path:
    """The GGUF file `model_name_or_path` points at (a file, or a folder with exactly one)."""
    target = Path(path).expanduser()
    if target.is_file():
        if target.suffix != ".gguf":
            raise UserError(f"infer_backend: llamacpp serves a GGUF file; '{path}' is not a .gguf file. "
                            "Export one with `lmforge export ... export_format=gguf`.")
        return target
    if target.is_dir():
        found = sorted(target.glob("*.gguf"))
        if len(found) == 1:
            return found[0]
        if found:
            raise UserError(f"'{path}' holds several GGUF files ({', '.join(p.name for p in found)}); "
                            "set model_name_or_path to the one to serve.")
        raise UserError(f"infer_backend: llamacpp serves a GGUF file, and '{path}' holds none. Export one with "
                        f"`lmforge export ... export_format=gguf`, or use infer_backend: huggingface.")
    raise UserError(f"GGUF file or folder '{path}' does not exist. Check model_name_or_path.")


def resolve_gguf(cfg: RunConfig) -> ResolvedModel:
    """A GGUF to serve with llama.cpp: the file, the tokenizer beside it, the template it was exported with."""
    if cfg.model.adapter_name_or_path:
        raise UserError("infer_backend: llamacpp serves a GGUF with its adapters already merged; remove "
                        "adapter_name_or_path and export the merged model with `lmforge export ... "
                        "export_format=gguf`.")
    gguf = find_gguf(cfg.model.model_name_or_path)
    template = cfg.data.template or (read_export_file(gguf) or {}).get("template")
    return ResolvedModel(str(gguf), (), str(gguf.parent), template)
