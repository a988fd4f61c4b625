"""Multiple-choice benchmark settings for `lmforge eval`."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmforge.config.readers import EVAL


@dataclass
class EvaluationArguments:
    """MMLU / CMMLU / C-Eval style evaluation (LLaMA-Factory's names)."""

    task: str | None = field(
        default=None, metadata={"help": "Task as <name>_<split>, e.g. mmlu_test, cmmlu_test.", "read_by": (EVAL,)}
    )
    task_dir: str = field(default="evaluation", metadata={"help": "Folder holding the task data.", "read_by": (EVAL,)})
    batch_size: int = field(default=4, metadata={"help": "Evaluation batch size.", "read_by": (EVAL,)})
    seed: int = field(default=42, metadata={"help": "Seed for few-shot sampling.", "read_by": (EVAL,)})
    lang: str = field(default="en", metadata={"help": "Prompt language: en or zh.", "read_by": (EVAL,)})
    n_shot: int = field(default=5, metadata={"help": "Number of few-shot examples.", "read_by": (EVAL,)})
    save_dir: str | None = field(
        default=None, metadata={"help": "Where results.json and results.log are written.", "read_by": (EVAL,)}
    )
    overwrite_save_dir: bool = field(
        default=False, metadata={"help": "Replace the results in an existing save_dir.", "read_by": (EVAL,)}
    )
    download_mode: str = field(
        default="reuse_dataset_if_exists", metadata={"help": "Hub download mode.", "read_by": (EVAL,)}
    )
