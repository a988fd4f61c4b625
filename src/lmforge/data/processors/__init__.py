"""Turn aligned rows into model inputs, one processor per training stage.

`get_processor` picks the processor for a stage; call `dataset.map(processor, batched=True,
remove_columns=dataset.column_names)`. Every rejected row comes back with `_drop` set to one of
`REASONS`, and every kept row that looks wrong with its flags in `_warn`, so the pipeline can count
both before filtering the drops out (`lmforge.data.reasons` says what each reason means).
"""

from __future__ import annotations

from lmforge.config.finetune import IMPLEMENTED_STAGES, STAGES
from lmforge.data.processors.base import (
    EMPTY_PROMPT,
    EMPTY_RESPONSE,
    EMPTY_TEXT,
    IGNORE_INDEX,
    INVALID_TURNS,
    MISSING_RESPONSE,
    NO_SUPERVISED_TOKENS,
    PACKING_REMAINDER,
    REASONS,
    TOO_LONG,
    Processor,
)
from lmforge.data.processors.truncation import infer_seqlen
from lmforge.errors import UserError, did_you_mean

__all__ = [
    "EMPTY_PROMPT",
    "EMPTY_RESPONSE",
    "EMPTY_TEXT",
    "IGNORE_INDEX",
    "INVALID_TURNS",
    "MISSING_RESPONSE",
    "NO_SUPERVISED_TOKENS",
    "PACKING_REMAINDER",
    "REASONS",
    "TOO_LONG",
    "Processor",
    "get_processor",
    "infer_seqlen",
]



def get_processor(stage: str, data_args, template, tokenizer, do_generate: bool = False,
                  mm_processor=None) -> Processor:
    """Return the processor of `stage`: pt, sft (with `do_generate`: generation prompts), rm and dpo (pairs), kto,
    ppo (prompts only), grpo (prompts with their reference answers).

    `mm_processor` (a multimodal model's processor) lets sft training and prediction keep image and video
    rows; the other processors refuse media rows.

    `packing` (default: on for pt, off for sft) and `neat_packing` choose the packed variants.
    """
    if stage == "pt":
        from lmforge.data.processors.pretrain import PretrainProcessor

        if data_args.neat_packing:
            raise UserError("neat_packing only applies to stage sft. Remove it or set neat_packing: false for pt.")
        packing = True if data_args.packing is None else bool(data_args.packing)
        return PretrainProcessor(data_args, template, tokenizer, packing=packing)

    if stage == "sft":
        if do_generate:
            from lmforge.data.processors.unsupervised import UnsupervisedProcessor

            return UnsupervisedProcessor(data_args, template, tokenizer, mm_processor=mm_processor)
        if data_args.packing or data_args.neat_packing:
            from lmforge.data.processors.packed import PackedSupervisedProcessor

            return PackedSupervisedProcessor(data_args, template, tokenizer)
        from lmforge.data.processors.supervised import SupervisedProcessor

        return SupervisedProcessor(data_args, template, tokenizer, mm_processor=mm_processor)

    if stage in ("rm", "dpo"):
        from lmforge.data.processors.pairwise import PairwiseProcessor

        return PairwiseProcessor(data_args, template, tokenizer)
    if stage == "kto":
        from lmforge.data.processors.feedback import FeedbackProcessor

        return FeedbackProcessor(data_args, template, tokenizer)
    if stage == "ppo":
        from lmforge.data.processors.prompt import PromptProcessor

        return PromptProcessor(data_args, template, tokenizer)
    if stage == "grpo":
        from lmforge.data.processors.grpo import GRPOPromptProcessor

        return GRPOPromptProcessor(data_args, template, tokenizer)

    # Validation refuses these first; this guards direct callers.
    if stage in STAGES:
        raise UserError(f"stage '{stage}' is not supported yet. Supported stages: {', '.join(IMPLEMENTED_STAGES)}.")
    raise UserError(
        f"Unknown stage '{stage}'.{did_you_mean(stage, STAGES)} Supported stages: {', '.join(IMPLEMENTED_STAGES)}."
    )
