"""Multiple-choice benchmark settings for `lmforge eval`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EvaluationArguments:
    """MMLU / CMMLU / C-Eval style evaluation (LLaMA-Factory's names)."""

    task: str | None = field(default=None, metadata={"help": "Task as <name>_<split>, e.g. mmlu_test, cmmlu_test."})
    task_dir: str = field(default="evaluation", metadata={"help": "Folder holding the task data."})
    batch_size: int = field(default=4, metadata={"help": "Evaluation batch size."})
    seed: int = field(default=42, metadata={"help": "Seed for few-shot sampling."})
    lang: str = field(default="en", metadata={"help": "Prompt language: en or zh."})
    n_shot: int = field(default=5, metadata={"help": "Number of few-shot examples."})
    save_dir: str | None = field(default=None, metadata={"help": "Where results.json and results.log are written."})
    overwrite_save_dir: bool = field(default=False, metadata={"help": "Replace the results in an existing save_dir."})
    download_mode: str = field(default="reuse_dataset_if_exists", metadata={"help": "Hub download mode."})
