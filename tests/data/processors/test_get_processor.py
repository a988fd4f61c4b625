"""Stage dispatch and the configuration errors users see."""

from __future__ import annotations

import pytest

from lmforge.data.processors import get_processor
from lmforge.data.processors.packed import PackedSupervisedProcessor
from lmforge.data.processors.pretrain import PretrainProcessor
from lmforge.data.processors.supervised import SupervisedProcessor
from lmforge.errors import UserError


def test_dispatch(llama3, make_args):
    template, tokenizer = llama3
    assert type(get_processor("sft", make_args(), template, tokenizer)) is SupervisedProcessor
    assert type(get_processor("sft", make_args(packing=True), template, tokenizer)) is PackedSupervisedProcessor
    assert (
        type(get_processor("sft", make_args(neat_packing=True), template, tokenizer)).__name__
        == "PackedSupervisedProcessor"
    )
    assert get_processor("pt", make_args(), template, tokenizer).packing is True
    pt = get_processor("pt", make_args(packing=False), template, tokenizer)
    assert isinstance(pt, PretrainProcessor) and pt.packing is False


def test_reward_and_ppo_stages(llama3, make_args):
    from lmforge.data.processors.pairwise import PairwiseProcessor
    from lmforge.data.processors.prompt import PromptProcessor

    template, tokenizer = llama3
    assert type(get_processor("rm", make_args(), template, tokenizer)) is PairwiseProcessor
    assert type(get_processor("ppo", make_args(), template, tokenizer)) is PromptProcessor


def test_unknown_stage(llama3, make_args):
    template, tokenizer = llama3
    with pytest.raises(UserError) as info:
        get_processor("stf", make_args(), template, tokenizer)
    assert str(info.value) == ("Unknown stage 'stf'. Did you mean 'sft'? Supported stages: pt, sft, rm, ppo, dpo, "
                               "kto, grpo.")


def test_masking_flag_conflicts(llama3, glm4, make_args):
    template, tokenizer = llama3
    with pytest.raises(UserError, match="train_on_prompt and mask_history cannot both be true"):
        get_processor("sft", make_args(train_on_prompt=True, mask_history=True), template, tokenizer)
    template, tokenizer = glm4
    with pytest.raises(UserError, match="Template 'glm4' does not support train_on_prompt"):
        get_processor("sft", make_args(train_on_prompt=True), template, tokenizer)


def test_media_rows_are_refused_by_the_processors_without_media(llama3, aligned, rows_dataset, make_args):
    """sft drops them per row (tests/data/processors/test_media.py); packing and the other stages refuse them."""
    template, tokenizer = llama3
    row = {**aligned(["<image>What is this?", "A cat."], dataset="mllm_demo"), "_images": ["cat.png"]}
    with pytest.raises(
        UserError, match=r"Dataset 'mllm_demo' row 0 has images, but only unpacked sft \(training and prediction\) takes "
    ):
        get_processor("dpo", make_args(), template, tokenizer).process(rows_dataset([
            {**row, "_response": [{"role": "assistant", "content": "A cat."}, {"role": "assistant", "content": "A dog."}]}
        ])[:1])
