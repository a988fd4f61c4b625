"""PPO prompts: the generation prompt alone; rows without an answer are kept."""

from __future__ import annotations

from lmforge.data.processors import get_processor


def test_prompt_rows_keep_rows_without_answers(llama3, aligned, rows_dataset, make_args, run_map):
    template, tokenizer = llama3
    hi = [{"role": "user", "content": "Hi"}]
    rows = [
        aligned([], prompt=hi, response=[]),  # no answer: still a prompt to sample from
        aligned(["Hi", "Hello"]),  # the answer is not used
        aligned(["", "Hello"]),  # a blank prompt: kept, flagged
        aligned([], prompt=[*hi, {"role": "assistant", "content": "Hello"}], response=[]),  # ends with the assistant
    ]
    out = run_map(get_processor("ppo", make_args(), template, tokenizer), rows_dataset(rows))
    assert out.column_names == ["input_ids", "attention_mask", "_dataset", "_row", "_drop", "_warn"]
    assert out["_drop"] == ["", "", "", "invalid_turns"]
    prompt = template.encode_prompt(tokenizer, hi)
    assert out["input_ids"][:2] == [prompt, prompt]
    assert out["attention_mask"][0] == [1] * len(prompt)
    assert [[flag["reason"] for flag in flags] for flags in out["_warn"]] == [[], [], ["empty_prompt"], []]


def test_a_long_prompt_is_cut_to_cutoff_len(llama3, aligned, rows_dataset, make_args, run_map):
    template, tokenizer = llama3
    long = " ".join(["word"] * 200)
    full = template.encode_prompt(tokenizer, [{"role": "user", "content": long}])
    out = run_map(get_processor("ppo", make_args(cutoff_len=32), template, tokenizer),
                  rows_dataset([aligned([], prompt=[{"role": "user", "content": long}], response=[])]))
    assert out[0]["input_ids"] == full[:32]  # LLaMA-Factory's rule: the head is kept
