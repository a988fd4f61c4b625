"""What the board offers to pick: well-known models, templates, stages, datasets, adapters under saves/."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from lmforge.config.finetune import IMPLEMENTED_STAGES
from lmforge.errors import UserError

_MODELS = Path(__file__).parent / "models.json"
ADAPTER_FILES = ("adapter_config.json",)
BOOSTERS = {"auto": "auto", "flashattn2": "fa2", "sdpa": "sdpa", "eager": "disabled"}  # shown -> flash_attn
COMPUTE_TYPES = ("fp32", "bf16", "fp16", "pure_bf16")
ROPE_SCALING = ("none", "linear", "dynamic", "yarn", "llama3")
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")
PREF_LOSSES = ("sigmoid", "hinge", "ipo", "kto_pair", "orpo", "simpo")
BACKENDS = ("huggingface", "vllm", "llamacpp")


@cache
def model_families() -> dict[str, dict[str, dict[str, str]]]:
    return json.loads(_MODELS.read_text(encoding="utf-8"))


def model_choices() -> list[tuple[str, str]]:
    """(shown "Family / name", value name) for the model dropdown, family by family."""
    return [(f"{family} / {name}", name) for family, models in model_families().items() for name in models]


def model_entry(name: str) -> dict[str, str] | None:
    for models in model_families().values():
        if name in models:
            return models[name]
    return None


def stages() -> list[str]:
    return list(IMPLEMENTED_STAGES)


def templates() -> list[str]:
    from lmforge.data.templates import list_templates

    return list_templates()


def datasets_for_stage(dataset_dir: str, stage: str) -> tuple[list[str], list[str]]:
    """(names of the datasets `stage` can train on, problems found in dataset_info.json)."""
    from lmforge.data.loader import fits_stage
    from lmforge.data.registry import list_datasets

    try:
        specs, problems = list_datasets(dataset_dir)
    except UserError as err:
        return [], [str(err)]
    return [spec.name for spec in specs if fits_stage(spec, stage)], problems


def benchmarks(task_dir: str) -> list[str]:
    """"none", then `<task>_test` for every task folder (one with a mapping.json) in `task_dir`."""
    folder = Path(task_dir or "evaluation")
    found = sorted(p.parent.name for p in folder.glob("*/mapping.json")) if folder.is_dir() else []
    return ["none", *(f"{name}_test" for name in found)]


def adapters(saves_dir: Path) -> list[str]:
    """Run folders under `saves_dir` that hold an adapter, newest first."""
    found = [path.parent for path in Path(saves_dir).glob("**/adapter_config.json")
             if not path.parent.name.startswith(("checkpoint-", "."))]
    return [str(path) for path in sorted(found, key=lambda path: path.stat().st_mtime, reverse=True)]


def output_dir_for(saves_dir: Path, model_name: str, finetuning_type: str, stage: str, stamp: str) -> str:
    """LLaMA-Factory's layout: saves/<model>/<finetuning type>/<name>."""
    model = Path(model_name).name or "model"
    return str(Path(saves_dir) / model / finetuning_type / f"{stage}-{stamp}")


def device_count() -> str:
    """The accelerators a job can use, in words."""
    try:
        import torch

        count = torch.cuda.device_count()
    except ImportError:
        count = 0
    return f"{count} CUDA GPU{'s' if count != 1 else ''}" if count else "CPU"
