"""Prediction prompts: ids are the generation prompt, labels the answer."""

from __future__ import annotations

import pytest

from lmforge.data.processors import get_processor, infer_seqlen
from lmforge.data.processors.unsupervised import UnsupervisedProcessor

CONVERSATION = ["What is 3 + 4?", "The answer is 7.", "And 5 + 6?", "That is 11."]


def _encode(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


def _messages(conversation, system=None):
    roles = ("user", "assistant")
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": roles[i % 2], "content": text} for i, text in enumerate(conversation)]


@pytest.mark.parametrize(("name", "end"), [("llama3", "<|eot_id|>"), ("qwen", "<|im_end|>\n")])
@pytest.mark.parametrize("turns", [2, 4])
def test_prompt_is_the_generation_prompt(request, name, end, turns, aligned, rows_dataset, make_args, run_map):
    template, tokenizer = request.getfixturevalue(name)
    conversation = CONVERSATION[:turns]
    processor = get_processor("sft", make_args(), template, tokenizer, do_generate=True)
    assert isinstance(processor, UnsupervisedProcessor)
    row = run_map(processor, rows_dataset([aligned(conversation, system="Be brief.")]))[0]
    prompt_text = tokenizer.apply_chat_template(
        _messages(conversation[:-1], "Be brief."), tokenize=False, add_generation_prompt=True
    )
    assert row["input_ids"] == _encode(tokenizer, prompt_text)
    assert row["attention_mask"] == [1] * len(row["input_ids"])
    assert row["labels"] == _encode(tokenizer, conversation[-1] + end)
    assert row["_drop"] == "" and row["_row"] == 0


def test_rows_that_cannot_be_scored_are_dropped_with_their_reason(llama3, aligned, rows_dataset, make_args, run_map):
    template, tokenizer = llama3
    rows = [
        aligned([], prompt=[{"role": "user", "content": "Hi"}], response=[]),  # no reference answer
        aligned(["", "Hello"]),  # nothing to answer
        aligned(["Hi", " "]),  # a blank reference answer
        aligned(["Hi", "Hello"]),
    ]
    out = run_map(get_processor("sft", make_args(), template, tokenizer, do_generate=True), rows_dataset(rows))
    assert out["_drop"] == ["missing_response", "empty_prompt", "empty_response", ""]
    assert out["input_ids"][:3] == [[], [], []]
    assert out[3]["input_ids"] == template.encode_prompt(tokenizer, [{"role": "user", "content": "Hi"}])
    assert out[3]["labels"] == _encode(tokenizer, "Hello<|eot_id|>")
    assert out["_warn"] == [[]] * 4  # prediction drops what training only warns about


def test_efficient_eos_appends_eos_to_labels(glm4, aligned, rows_dataset, make_args, run_map):
    template, tokenizer = glm4
    out = run_map(
        get_processor("sft", make_args(), template, tokenizer, do_generate=True),
        rows_dataset([aligned(["Hi", "Hello"])]),
    )
    assert out[0]["labels"] == _encode(tokenizer, "\nHello") + [tokenizer.eos_token_id]


def test_truncation_follows_infer_seqlen(llama3, aligned, rows_dataset, make_args, run_map):
    template, tokenizer = llama3
    messages = _messages(CONVERSATION)
    prompt, answer = template.encode_oneturn(tokenizer, messages)
    source_len, target_len = infer_seqlen(len(prompt), len(answer), 16)
    out = run_map(
        get_processor("sft", make_args(cutoff_len=16), template, tokenizer, do_generate=True),
        rows_dataset([aligned(CONVERSATION)]),
    )
    assert out[0]["input_ids"] == prompt[:source_len] and out[0]["labels"] == answer[:target_len]


def test_even_prompt_is_dropped(llama3, aligned, rows_dataset, make_args, run_map):
    template, tokenizer = llama3
    user, answer = {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}
    rows = [aligned([], prompt=[user, answer], response=[answer]), aligned(["Hi", "Hello"])]
    out = run_map(get_processor("sft", make_args(), template, tokenizer, do_generate=True), rows_dataset(rows))
    assert out["_drop"] == ["invalid_turns", ""] and out[0]["labels"] == []
