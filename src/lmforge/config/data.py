"""Which data to load, how to render it with a template, and how to tokenize it."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmforge.config.readers import DATASET, TEMPLATE, TRAINING


# mix_strategy names -> how `datasets.interleave_datasets` stops (None: concatenate instead).
MIX_STRATEGIES = {
    "concat": None,
    "interleave_under": "first_exhausted",
    "interleave_over": "all_exhausted",
    "interleave_once": "all_exhausted_without_replacement",
}


@dataclass
class DataArguments:
    """Dataset selection, mixing, template and tokenization settings (LLaMA-Factory's names)."""

    template: str | None = field(
        default=None,
        metadata={
            "help": "Chat template name (`lmforge templates` lists them). Omit to use the tokenizer's own.",
            "read_by": (TEMPLATE,),
        },
    )
    dataset: list[str] | None = field(
        default=None,
        metadata={"help": "Training dataset names from dataset_info.json, comma-separated.", "read_by": (DATASET,)},
    )
    eval_dataset: list[str] | None = field(
        default=None,
        metadata={"help": "Evaluation dataset names from dataset_info.json, comma-separated.", "read_by": (DATASET,)},
    )
    dataset_dir: str = field(
        default="data", metadata={"help": "Folder holding dataset_info.json and the data files.", "read_by": (DATASET,)}
    )
    media_dir: str | None = field(
        default=None,
        metadata={"help": "Folder that media paths are relative to (default: dataset_dir).", "read_by": (DATASET,)},
    )
    cutoff_len: int = field(
        default=2048,
        metadata={"help": "Maximum number of tokens of a tokenized sample.", "read_by": (DATASET, TRAINING)},
    )
    train_on_prompt: bool = field(
        default=False, metadata={"help": "Also compute the loss on prompt tokens.", "read_by": (DATASET,)}
    )
    mask_history: bool = field(
        default=False,
        metadata={"help": "Train on the last turn only; earlier answers are masked.", "read_by": (DATASET,)},
    )
    streaming: bool = field(
        default=False, metadata={"help": "Stream datasets instead of loading them into memory.", "read_by": (DATASET,)}
    )
    buffer_size: int = field(
        default=16384, metadata={"help": "Shuffle buffer size when streaming.", "read_by": (DATASET,)}
    )
    mix_strategy: str = field(
        default="concat",
        metadata={
            "help": "How to mix several datasets: concat, interleave_under, interleave_over or interleave_once.",
            "read_by": (DATASET,),
        },
    )
    interleave_probs: list[float] | None = field(
        default=None,
        metadata={
            "help": "Sampling probabilities of each dataset when interleaving, comma-separated.",
            "read_by": (DATASET,),
        },
    )
    overwrite_cache: bool = field(
        default=False, metadata={"help": "Recompute the preprocessed datasets.", "read_by": (DATASET,)}
    )
    preprocessing_batch_size: int = field(
        default=1000, metadata={"help": "Rows per batch in preprocessing.", "read_by": (DATASET,)}
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes used in preprocessing.", "read_by": (DATASET,)}
    )
    max_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N rows of each dataset.", "read_by": (DATASET,)}
    )
    eval_num_beams: int | None = field(
        default=None, metadata={"help": "Beams used in evaluation generation.", "read_by": ()}
    )
    ignore_pad_token_for_loss: bool = field(
        default=True, metadata={"help": "Exclude pad tokens from the loss.", "read_by": ()}
    )
    val_size: float = field(
        default=0.0,
        metadata={"help": "Held-out evaluation split: a fraction (< 1) or a row count (>= 1).", "read_by": (DATASET,)},
    )
    eval_on_each_dataset: bool = field(
        default=False, metadata={"help": "Evaluate each eval dataset separately.", "read_by": (DATASET,)}
    )
    packing: bool | None = field(
        default=None,
        metadata={
            "help": "Pack samples into cutoff_len blocks (default: on for pt, off otherwise).",
            "read_by": (DATASET,),
        },
    )
    neat_packing: bool = field(
        default=False, metadata={"help": "Pack without attention across packed samples.", "read_by": (DATASET,)}
    )
    tool_format: str | None = field(
        default=None, metadata={"help": "Override the template's tool format.", "read_by": (TEMPLATE,)}
    )
    default_system: str | None = field(
        default=None, metadata={"help": "Override the template's default system prompt.", "read_by": (TEMPLATE,)}
    )
    enable_thinking: bool | None = field(
        default=True, metadata={"help": "Reasoning templates: train the thinking part.", "read_by": (TEMPLATE,)}
    )
    tokenized_path: str | None = field(
        default=None,
        metadata={"help": "Save the tokenized dataset here, or load it if it already exists.", "read_by": (TRAINING,)},
    )
    data_shared_file_system: bool = field(
        default=False, metadata={"help": "Data is on a file system shared by all nodes.", "read_by": ()}
    )
    placeholders: dict | None = field(
        default=None,
        metadata={
            "help": "Fill {{key}} placeholders in the data, e.g. {name: Forge, author: lmforge}.",
            "read_by": (DATASET,),
        },
    )
    drop_overlong: bool = field(
        default=False,
        metadata={
            "help": "Drop samples longer than cutoff_len (counted and reported) instead of truncating them.",
            "read_by": (DATASET,),
        },
    )
    # Multimodal processing (LLaMA-Factory's ProcessorArguments): how images and videos are sized and sampled
    # before the model's own processor sees them. They shape the vision tokens of every sample, so tokenizing
    # and batching read them alike.
    image_max_pixels: int = field(
        default=768 * 768,
        metadata={"help": "Images larger than this many pixels are scaled down (aspect kept).", "read_by": (DATASET,)},
    )
    image_min_pixels: int = field(
        default=32 * 32,
        metadata={"help": "Images smaller than this many pixels are scaled up (aspect kept).", "read_by": (DATASET,)},
    )
    video_max_pixels: int = field(
        default=256 * 256, metadata={"help": "Most pixels of a video frame.", "read_by": (DATASET,)}
    )
    video_min_pixels: int = field(
        default=16 * 16, metadata={"help": "Fewest pixels of a video frame.", "read_by": (DATASET,)}
    )
    video_fps: float = field(
        default=2.0, metadata={"help": "Video frames sampled per second.", "read_by": (DATASET,)}
    )
    video_maxlen: int = field(
        default=128, metadata={"help": "Most frames sampled from one video.", "read_by": (DATASET,)}
    )
