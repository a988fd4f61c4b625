"""`lmforge export CONFIG`: merge adapters and write a folder ready to serve or ship.

The folder holds, depending on `export_format`:

- safetensors: the merged weights (sharded by `export_size`), config.json, generation_config.json
  stopping on the template's stop tokens, and the tokenizer whose chat_template is the template's;
- gguf: `model-<gguf_type>.gguf`, loadable by llama.cpp, Ollama and transformers;

and always `lmforge_export.json`, and a `Modelfile` for Ollama (FROM the GGUF when there is one). A
vision-language model exports as safetensors only, with its processor files and no Modelfile (see
`vision.py`).
Everything is written into a hidden staging folder next to `export_dir` and renamed into place at
the end, so an interrupted export never leaves a half-written folder behind.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.errors import UserError
from lmforge.export.vision import (
    check_vision_export,
    copy_processor_files,
    find_processor_files,
)
from lmforge.model.multimodal import is_multimodal
from lmforge.model.resolve import EXPORT_FILE
from lmforge.utils.logging import get_logger, quiet_known_warnings

if TYPE_CHECKING:
    from lmforge.config import RunConfig

logger = get_logger(__name__)

MODELFILE = "Modelfile"
DEFAULT_NUM_CTX = 4096


def run_export(cfg: RunConfig) -> Path:
    """Export the model of `cfg` into `export_dir`; return the folder."""
    from lmforge.model.resolve import resolve_model
    from lmforge.utils.atomic import publish_dir, staging_dir

    quiet_known_warnings()
    export = cfg.export
    export_dir = Path(export.export_dir)
    resolved = resolve_model(cfg)
    check_export_dir(export_dir, export.overwrite, [resolved.base, *resolved.adapters, resolved.tokenizer])
    config = _model_config(cfg, resolved.base)
    check_vision_export(export, config)
    # A vision-language model's processor files are found before the weights load, and copied with them.
    processor_files = find_processor_files(resolved.base, cfg.model) if is_multimodal(config) else {}
    if export.export_quantization_bit is not None:
        from lmforge.export.gptq import check_gptq_available

        check_gptq_available()
    if "gguf" in export.export_format:
        from lmforge.export.gguf import check_supported

        check_supported(config)

    if export.export_quantization_bit is not None:
        from lmforge.export.gptq import load_quantized
        from lmforge.export.merge import MergedModel, fit_generation_config, load_export_tokenizer

        tokenizer, template = load_export_tokenizer(cfg, resolved)
        model = load_quantized(cfg, resolved.base, tokenizer)
        fit_generation_config(model, tokenizer, template)
        merged = MergedModel(model, tokenizer, template, resolved)
    else:
        from lmforge.export.merge import load_merged

        merged = load_merged(cfg)
    merged.processor_files = processor_files

    staging = staging_dir(export_dir.parent, export_dir.name)
    try:
        files = write_export(cfg, merged, staging)
        _write_export_file(cfg, merged, staging, files)
        _readable_by_all(staging)
        publish_dir(staging, export_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info(f"Exported to {export_dir}")
    if export.export_hub_model_id:
        push_to_hub(export_dir, export.export_hub_model_id, cfg.model.hf_hub_token, private=export.export_hub_private)
    return export_dir


def check_export_dir(export_dir: Path, overwrite: bool, sources: list[str]) -> None:
    """Refuse a non-empty export_dir (unless `overwrite`) and one that holds the model being exported."""
    if export_dir.exists() and not export_dir.is_dir():
        raise UserError(f"export_dir '{export_dir}' is a file; choose a folder path.")
    target = export_dir.resolve()
    for source in sources:
        path = Path(source).expanduser()
        if path.exists() and (path.resolve() == target or target in path.resolve().parents):
            raise UserError(f"export_dir '{export_dir}' holds the model being exported ('{source}'); "
                            "choose another export_dir.")
    if export_dir.is_dir() and any(export_dir.iterdir()) and not overwrite:
        names = sorted(p.name for p in export_dir.iterdir())
        listed = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise UserError(f"export_dir '{export_dir}' is not empty ({listed}). Set overwrite: true to replace it, "
                        "or choose another export_dir.")


def _model_config(cfg: RunConfig, base: str):
    """The config of the model to export, read before its weights, so that what cannot be exported fails early."""
    from transformers import AutoConfig

    from lmforge.model.loader import check_model_path, hub_kwargs

    check_model_path(base)
    try:
        return AutoConfig.from_pretrained(base, **hub_kwargs(cfg.model))
    except (OSError, ValueError) as err:
        raise UserError(f"Cannot load the model config of '{base}': {str(err).splitlines()[0]}") from None


def write_export(cfg: RunConfig, merged, folder: Path) -> list[str]:
    """Write the weights, tokenizer, processor files, GGUF and Modelfile into `folder`; return the file names."""
    from lmforge.export.gguf import gguf_file_name, write_gguf

    export = cfg.export
    model, tokenizer, template = merged.model, merged.tokenizer, merged.template
    if "safetensors" in export.export_format:
        model.save_pretrained(folder, max_shard_size=int(export.export_size * 10**9))
        tokenizer.save_pretrained(folder)
        copy_processor_files(merged.processor_files, folder)
    if is_multimodal(model):
        logger.info("No Ollama Modelfile: lmforge's Modelfile has no place for images, so it is not written for "
                    "a vision-language model.")
        return sorted(p.name for p in folder.iterdir())
    model_path = "."
    if "gguf" in export.export_format:
        name = gguf_file_name(export.gguf_type)
        write_gguf(model, tokenizer, folder / name, export.gguf_type, name=Path(export.export_dir).name)
        model_path = f"./{name}"
    context = getattr(model.config, "max_position_embeddings", None) or DEFAULT_NUM_CTX
    modelfile = template.to_ollama_modelfile(tokenizer, model_path=model_path, num_ctx=min(DEFAULT_NUM_CTX, context),
                                             tools=template.tool_format == "qwen")
    (folder / MODELFILE).write_text(modelfile, encoding="utf-8")
    return sorted(p.name for p in folder.iterdir())


def _write_export_file(cfg: RunConfig, merged, folder: Path, files: list[str]) -> None:
    from lmforge import __version__
    from lmforge.export.gguf import gguf_file_name
    from lmforge.utils.atomic import write_json_atomic
    from lmforge.utils.secrets import without_secrets

    export = cfg.export
    gguf = "gguf" in export.export_format
    dtype = getattr(merged.model, "dtype", None)
    write_json_atomic(folder / EXPORT_FILE, {
        "lmforge_version": __version__,
        "model_name_or_path": merged.resolved.base,
        "adapter_name_or_path": list(merged.resolved.adapters),
        "template": merged.template.recorded_name,
        "export_format": list(export.export_format),
        "dtype": str(dtype).replace("torch.", "") if dtype is not None else None,
        "gguf_file": gguf_file_name(export.gguf_type) if gguf else None,
        "gguf_type": export.gguf_type if gguf else None,
        "quantization_bit": export.export_quantization_bit,
        "files": [*files, EXPORT_FILE],
        "config": without_secrets(cfg.to_flat_dict(only_set=True)),  # shipped with the model: never a token
    })


def _readable_by_all(folder: Path) -> None:
    """Give every file the usual permissions (temporary files are created private), so Ollama can read them."""
    mask = os.umask(0)
    os.umask(mask)
    for path in folder.iterdir():
        if path.is_file():
            os.chmod(path, 0o666 & ~mask)


def push_to_hub(folder: Path, repo_id: str, token: str | None, private: bool = True) -> None:
    """Upload the export folder to the hub repo `repo_id`, created private (unless `private` is False) if missing.

    An existing repo keeps its visibility (`create_repo` with exist_ok leaves it as it is).
    """
    from huggingface_hub import HfApi

    try:
        api = HfApi(token=token)
        url = api.create_repo(repo_id, exist_ok=True, private=private)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="Upload model exported by lmforge")
    except Exception as err:  # network, auth and offline errors all mean the same to the user
        raise UserError(f"The export in '{folder}' is complete, but pushing it to the hub repo '{repo_id}' failed: "
                        f"{str(err).splitlines()[0]}") from None
    logger.info(f"Pushed {folder} to {url}")
