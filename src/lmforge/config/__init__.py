"""Run settings: one dataclass per concern, read from YAML/JSON plus key=value overrides."""

from lmforge.config.data import DataArguments
from lmforge.config.eval import EvaluationArguments
from lmforge.config.export import ExportArguments
from lmforge.config.finetune import FinetuningArguments
from lmforge.config.generate import GeneratingArguments
from lmforge.config.model import ModelArguments
from lmforge.config.parser import COMMAND_GROUPS, ConfigError, RunConfig, parse_config
from lmforge.config.train import TrainArguments

__all__ = [
    "COMMAND_GROUPS",
    "ConfigError",
    "DataArguments",
    "EvaluationArguments",
    "ExportArguments",
    "FinetuningArguments",
    "GeneratingArguments",
    "ModelArguments",
    "RunConfig",
    "TrainArguments",
    "parse_config",
]
