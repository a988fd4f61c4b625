"""Run settings: one dataclass per concern, read from YAML/JSON plus key=value overrides."""

from lmforge.config.data import DataArguments
from lmforge.config.eval import EvaluationArguments
from lmforge.config.export import ExportArguments
from lmforge.config.finetune import IMPLEMENTED_STAGES, STAGES, FinetuningArguments
from lmforge.config.generate import GeneratingArguments
from lmforge.config.model import ModelArguments
from lmforge.config.parser import ConfigError, parse_config
from lmforge.config.run import COMMAND_GROUPS, COMMAND_READERS, RunConfig, command_keys
from lmforge.config.train import TrainArguments

__all__ = [
    "COMMAND_GROUPS",
    "COMMAND_READERS",
    "IMPLEMENTED_STAGES",
    "STAGES",
    "ConfigError",
    "DataArguments",
    "EvaluationArguments",
    "ExportArguments",
    "FinetuningArguments",
    "GeneratingArguments",
    "ModelArguments",
    "RunConfig",
    "TrainArguments",
    "command_keys",
    "parse_config",
]
