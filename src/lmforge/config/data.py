"""Which data to load, how to render it with a template, and how to tokenize it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DataArguments:
    """Dataset selection, mixing, template and tokenization settings (LLaMA-Factory's names)."""

    template: str | None = field(
        default=None,
        metadata={"help": "Chat template name (`lmforge templates` lists them). Omit to use the tokenizer's own."},
    )
    dataset: list[str] | None = field(
        default=None, metadata={"help": "Training dataset names from dataset_info.json, comma-separated."}
    )
    eval_dataset: list[str] | None = field(
        default=None, metadata={"help": "Evaluation dataset names from dataset_info.json, comma-separated."}
    )
    dataset_dir: str = field(default="data", metadata={"help": "Folder holding dataset_info.json and the data files."})
    media_dir: str | None = field(default=None, metadata={"help": "Folder that media paths are relative to (default: dataset_dir)."})
    cutoff_len: int = field(default=2048, metadata={"help": "Maximum number of tokens of a tokenized sample."})
    train_on_prompt: bool = field(default=False, metadata={"help": "Also compute the loss on prompt tokens."})
    mask_history: bool = field(default=False, metadata={"help": "Train on the last turn only; earlier answers are masked."})
    streaming: bool = field(default=False, metadata={"help": "Stream datasets instead of loading them into memory."})
    buffer_size: int = field(default=16384, metadata={"help": "Shuffle buffer size when streaming."})
    mix_strategy: str = field(
        default="concat",
        metadata={"help": "How to mix several datasets: concat, interleave_under, interleave_over or interleave_once."},
    )
    interleave_probs: list[float] | None = field(
        default=None, metadata={"help": "Sampling probabilities of each dataset when interleaving, comma-separated."}
    )
    overwrite_cache: bool = field(default=False, metadata={"help": "Recompute the preprocessed datasets."})
    preprocessing_batch_size: int = field(default=1000, metadata={"help": "Rows per batch in preprocessing."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes used in preprocessing."})
    max_samples: int | None = field(default=None, metadata={"help": "Keep only the first N rows of each dataset."})
    eval_num_beams: int | None = field(default=None, metadata={"help": "Beams used in evaluation generation."})
    ignore_pad_token_for_loss: bool = field(default=True, metadata={"help": "Exclude pad tokens from the loss."})
    val_size: float = field(
        default=0.0, metadata={"help": "Held-out evaluation split: a fraction (< 1) or a row count (>= 1)."}
    )
    eval_on_each_dataset: bool = field(default=False, metadata={"help": "Evaluate each eval dataset separately."})
    packing: bool | None = field(
        default=None, metadata={"help": "Pack samples into cutoff_len blocks (default: on for pt, off otherwise)."}
    )
    neat_packing: bool = field(default=False, metadata={"help": "Pack without attention across packed samples."})
    tool_format: str | None = field(default=None, metadata={"help": "Override the template's tool format."})
    default_system: str | None = field(default=None, metadata={"help": "Override the template's default system prompt."})
    enable_thinking: bool | None = field(default=True, metadata={"help": "Reasoning templates: train the thinking part."})
    tokenized_path: str | None = field(
        default=None, metadata={"help": "Save the tokenized dataset here, or load it if it already exists."}
    )
    data_shared_file_system: bool = field(default=False, metadata={"help": "Data is on a file system shared by all nodes."})
    placeholders: dict | None = field(
        default=None,
        metadata={"help": "Fill {{key}} placeholders in the data, e.g. {name: Forge, author: lmforge}."},
    )
    drop_overlong: bool = field(
        default=False,
        metadata={"help": "Drop samples longer than cutoff_len (counted and reported) instead of truncating them."},
    )
