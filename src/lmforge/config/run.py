"""The settings of one run: the groups, which groups and keys each command uses, and RunConfig.

A command accepts every key of its groups (`COMMAND_GROUPS`), so LLaMA-Factory configs keep
working unchanged. It reads only some of them: the keys whose readers it runs (`COMMAND_READERS`,
with each field's `read_by` metadata, see `lmforge.config.readers`). `lmforge help CMD` lists the
keys CMD reads; a key CMD accepts but does not read gets a warning when it is set.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, fields
from typing import Any

from lmforge.config.data import DataArguments
from lmforge.config.eval import EvaluationArguments
from lmforge.config.export import ExportArguments
from lmforge.config.finetune import FinetuningArguments
from lmforge.config.generate import GeneratingArguments
from lmforge.config.model import ModelArguments
from lmforge.config.readers import DATASET, ENGINE, EVAL, EXPORT, GENERATION, MODEL, SERVING, TEMPLATE, TOKENIZER, TRAINING
from lmforge.config.train import TrainArguments

GROUPS: dict[str, type] = {
    "model": ModelArguments,
    "data": DataArguments,
    "finetune": FinetuningArguments,
    "train": TrainArguments,
    "generate": GeneratingArguments,
    "eval": EvaluationArguments,
    "export": ExportArguments,
}
GROUP_TITLES = {
    "model": "model",
    "data": "data",
    "finetune": "fine-tuning",
    "train": "training",
    "generate": "generation",
    "eval": "evaluation",
    "export": "export",
}
_INFER = ("model", "data", "finetune", "generate")
# The groups whose keys each command accepts.
COMMAND_GROUPS: dict[str, tuple[str, ...]] = {
    "train": ("model", "data", "finetune", "train", "generate"),
    "data": ("model", "data", "finetune", "train", "generate"),
    "chat": _INFER,
    "webchat": _INFER,
    "api": _INFER,
    "export": (*_INFER, "export"),
    "eval": ("model", "data", "finetune", "eval"),
}
_SERVE = (TOKENIZER, TEMPLATE, MODEL, ENGINE, GENERATION, SERVING)
# The code each command runs, and so the keys it reads: those whose `read_by` names one of these readers.
COMMAND_READERS: dict[str, tuple[str, ...]] = {
    "train": (TOKENIZER, TEMPLATE, DATASET, MODEL, TRAINING, ENGINE, GENERATION),  # ENGINE, GENERATION: do_predict
    "data": (TOKENIZER, TEMPLATE, DATASET),
    "chat": _SERVE,
    "webchat": _SERVE,
    "api": _SERVE,
    "export": (TOKENIZER, TEMPLATE, MODEL, EXPORT),
    "eval": (TOKENIZER, TEMPLATE, MODEL, ENGINE, EVAL),
}
# `lmforge data` inspects the datasets of a training config: the rest of that config is accepted without
# a warning, and validated as `lmforge train` validates it.
CONFIG_OF: dict[str, str] = {"data": "train"}


def read_by(f) -> tuple[str, ...]:
    """The readers of a config field (its `read_by` metadata)."""
    return tuple(f.metadata.get("read_by", ()))


@functools.cache
def command_keys(command: str) -> dict[str, tuple[str, ...]]:
    """The keys `command` reads, by group, in field order: what `lmforge help CMD` lists."""
    readers = set(COMMAND_READERS[command])
    return {
        group: tuple(f.name for f in fields(GROUPS[group]) if readers.intersection(read_by(f)))
        for group in COMMAND_GROUPS[command]
    }


def reads(command: str, group: str, key: str) -> bool:
    """Whether `command` reads `key` of `group`."""
    return key in command_keys(command).get(group, ())


def checked_readers(command: str) -> frozenset[str]:
    """The readers whose keys validation checks for `command` (with those of the command whose config it takes)."""
    readers = set(COMMAND_READERS[command])
    if command in CONFIG_OF:
        readers.update(COMMAND_READERS[CONFIG_OF[command]])
    return frozenset(readers)


@dataclass
class RunConfig:
    """All settings of one run, one dataclass per concern."""

    command: str
    model: ModelArguments = field(default_factory=ModelArguments)
    data: DataArguments = field(default_factory=DataArguments)
    finetune: FinetuningArguments = field(default_factory=FinetuningArguments)
    train: TrainArguments = field(default_factory=TrainArguments)
    generate: GeneratingArguments = field(default_factory=GeneratingArguments)
    eval: EvaluationArguments = field(default_factory=EvaluationArguments)
    export: ExportArguments = field(default_factory=ExportArguments)
    source: str | None = None

    def to_flat_dict(self, only_set: bool = False) -> dict[str, Any]:
        """The command's settings as one flat mapping, the same shape a config file has."""
        flat: dict[str, Any] = {}
        for group in COMMAND_GROUPS[self.command]:
            obj = getattr(self, group)
            defaults = GROUPS[group]()
            for f in fields(obj):
                value = getattr(obj, f.name)
                if f.name == "hf_passthrough":
                    flat.update(value)
                    continue
                if only_set and value == getattr(defaults, f.name):
                    continue
                flat[f.name] = value
        return flat
