"""Vision-language exports (Qwen2-VL, Qwen2.5-VL): the processor files that go with the weights, and what is refused.

A vision-language export is the merged safetensors folder plus the processor settings of the base
model: `preprocessor_config.json`, and `video_preprocessor_config.json` and `processor_config.json`
where the base has them. transformers (`AutoModelForImageTextToText`) and lmforge's processor loader
(`model.vl_processor.load_processor`) then load the folder as a base model. The chat template is the
template's, saved with the tokenizer (`chat_template.jinja`); it reads image and video content
parts, and the processor uses it too. A legacy `chat_template.json` of the base is not copied: the
processor would prefer it over the template's.

Refused before any weights load: GGUF (llama.cpp keeps the vision tower in a separate mmproj file,
which lmforge's writer does not produce) and GPTQ (lmforge quantizes causal LMs only). No Ollama
Modelfile is written: its TEMPLATE has no place for images.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.errors import UserError
from lmforge.model.multimodal import is_multimodal

if TYPE_CHECKING:
    from lmforge.config import ModelArguments
    from lmforge.config.export import ExportArguments

PROCESSOR_CONFIG = "processor_config.json"
PROCESSOR_FILES = ("preprocessor_config.json", "video_preprocessor_config.json", PROCESSOR_CONFIG)
# Either one holds the image processor settings (see `model.vl_processor.IMAGE_PROCESSOR_FILES`).
IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", PROCESSOR_CONFIG)
# How many training runs back the processor files are looked for (a run trained from another run).
MAX_RUN_HOPS = 8


def check_vision_export(export: ExportArguments, config) -> None:
    """Refuse the export settings a vision-language model cannot take (nothing for a text model)."""
    if not is_multimodal(config):
        return
    name = config.model_type
    if "gguf" in export.export_format:
        raise UserError(
            f"'{name}' is a vision-language model, and lmforge cannot export vision models to GGUF yet (llama.cpp "
            "needs the vision tower in a separate mmproj file). Export with export_format: safetensors instead; "
            "llama.cpp's convert_hf_to_gguf.py (with --mmproj) can convert that folder."
        )
    if export.export_quantization_bit is not None:
        raise UserError(
            f"'{name}' is a vision-language model, and export_quantization_bit (GPTQ) quantizes text-only models. "
            "Remove export_quantization_bit to export the merged weights as safetensors."
        )


def find_processor_files(base: str, model_args: ModelArguments) -> dict[str, Path]:
    """The processor files to export with `base`, by name: its own, or those of the model a run folder was trained from.

    A training run folder of a full fine-tuning holds the weights and the tokenizer only, so
    its processor files are read from the base model it records (`lmforge_run.json`).
    """
    from lmforge.model.resolve import trained_from

    source: str | None = base
    for _ in range(MAX_RUN_HOPS):
        found = {name: path for name in PROCESSOR_FILES if (path := _find(source, name, model_args)) is not None}
        if any(name in found for name in IMAGE_PROCESSOR_FILES):
            return found
        source = trained_from(source)
        if source is None:
            break
    raise UserError(
        f"'{base}' is a vision-language model without an image processor config (preprocessor_config.json or "
        f"processor_config.json), so its export could not read images. Copy preprocessor_config.json from the "
        f"original model into '{base}'."
    )


def copy_processor_files(files: dict[str, Path], folder: Path) -> None:
    """Copy the processor files into the export folder; `processor_config.json` without a chat template."""
    for name, path in files.items():
        if name != PROCESSOR_CONFIG:
            shutil.copyfile(path, folder / name)
            continue
        settings = json.loads(Path(path).read_text(encoding="utf-8"))
        # The template's chat template, saved with the tokenizer, is the one the export renders with.
        settings.pop("chat_template", None)
        (folder / name).write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _find(source: str, name: str, model_args: ModelArguments) -> Path | None:
    """`name` in the model folder or hub repo `source` (downloaded to the cache), or None."""
    local = Path(source).expanduser()
    if local.is_dir():
        path = local / name
        return path if path.is_file() else None
    from transformers.utils import cached_file

    try:
        path = cached_file(source, name, cache_dir=model_args.cache_dir, revision=model_args.model_revision,
                           token=model_args.hf_hub_token, _raise_exceptions_for_missing_entries=False)
    except OSError:
        return None
    return Path(path) if path else None
