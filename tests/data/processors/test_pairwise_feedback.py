"""Preference pairs (rm, dpo) and KTO feedback rows: what is trained, how the budget is shared, the KL pairs."""

from __future__ import annotations

from lmforge.data.processors import IGNORE_INDEX, INVALID_TURNS, get_processor
from lmforge.data.processors.feedback import FeedbackProcessor
from lmforge.data.processors.pairwise import PairwiseProcessor

ASSISTANT = "<|start_header_id|>assistant<|end_header_id|>\n\n"


def _pair(aligned, question, chosen, rejected, **kwargs):
    return aligned([question, ""], response=[{"role": "assistant", "content": chosen},
                                             {"role": "assistant", "content": rejected}], **kwargs)


def _trained(tokenizer, ids, labels):
    return tokenizer.decode([t for t, label in zip(ids, labels) if label != IGNORE_INDEX], skip_special_tokens=False)


def test_pairs_train_only_the_answers(llama3, aligned, rows_dataset, make_args, run_map):
    template, tokenizer = llama3
    processor = get_processor("dpo", make_args(cutoff_len=256), template, tokenizer)
    assert isinstance(processor, PairwiseProcessor) and isinstance(get_processor("rm", make_args(), *llama3),
                                                                   PairwiseProcessor)
    row = run_map(processor, rows_dataset([_pair(aligned, "Hi?", "Hello there!", "Go away.")]))[0]
    prompt = tokenizer.decode(row["chosen_input_ids"][:row["chosen_labels"].count(IGNORE_INDEX)],
                              skip_special_tokens=False)
    assert prompt.endswith("Hi?<|eot_id|>" + ASSISTANT)
    assert _trained(tokenizer, row["chosen_input_ids"], row["chosen_labels"]) == "Hello there!<|eot_id|>"
    assert _trained(tokenizer, row["rejected_input_ids"], row["rejected_labels"]) == "Go away.<|eot_id|>"
    # Both sequences start with the same prompt tokens.
    shared = row["chosen_labels"].count(IGNORE_INDEX)
    assert row["chosen_input_ids"][:shared] == row["rejected_input_ids"][:shared]
    assert row["chosen_attention_mask"] == [1] * len(row["chosen_input_ids"])


def test_the_longer_answer_sets_the_budget_of_both(llama3, aligned, rows_dataset, make_args, run_map):
    template, tokenizer = llama3
    long_answer = " ".join(["word"] * 200)
    processor = get_processor("dpo", make_args(cutoff_len=64), template, tokenizer)
    row = run_map(processor, rows_dataset([_pair(aligned, "Question " * 40, long_answer, "Short.")]))[0]
    assert len(row["chosen_input_ids"]) == 64  # the prompt and the longer answer share the budget
    prompt_len = row["chosen_labels"].count(IGNORE_INDEX)
    assert row["rejected_labels"].count(IGNORE_INDEX) == prompt_len  # the same prompt cut for both
    assert _trained(tokenizer, row["rejected_input_ids"], row["rejected_labels"]) == "Short.<|eot_id|>"


def test_a_row_that_is_not_a_pair_is_dropped(llama3, aligned, rows_dataset, make_args, run_map):
    processor = get_processor("dpo", make_args(), *llama3)
    row = run_map(processor, rows_dataset([aligned(["Hi?", "Hello!"])]))[0]
    assert (row["_drop"], row["chosen_input_ids"]) == (INVALID_TURNS, [])


def test_feedback_rows_carry_their_tag_and_a_mismatched_kl_pair(llama3, aligned, rows_dataset, make_args, run_map):
    template, tokenizer = llama3
    empty = {"role": "assistant", "content": ""}
    rows = [
        aligned(["Q1?", ""], response=[{"role": "assistant", "content": "Good one."}, empty]),
        aligned(["Q2?", ""], response=[empty, {"role": "assistant", "content": "Bad two."}]),
        aligned(["Q3?", ""], response=[{"role": "assistant", "content": "Good three."}, empty]),
    ]
    processor = get_processor("kto", make_args(cutoff_len=256), template, tokenizer)
    assert isinstance(processor, FeedbackProcessor)
    out = run_map(processor, rows_dataset(rows))
    assert out["kto_tags"] == [True, False, True]
    answers = [_trained(tokenizer, r["input_ids"], r["labels"]) for r in out]
    assert answers == ["Good one.<|eot_id|>", "Bad two.<|eot_id|>", "Good three.<|eot_id|>"]
    # Each KL pair is the row's own prompt with the previous row's answer (the first takes the last one's).
    kl = [_trained(tokenizer, r["kl_input_ids"], r["kl_labels"]) for r in out]
    assert kl == ["Good three.<|eot_id|>", "Good one.<|eot_id|>", "Bad two.<|eot_id|>"]
    first_kl_prompt = tokenizer.decode(out[0]["kl_input_ids"], skip_special_tokens=False)
    assert "Q1?" in first_kl_prompt and "Q3?" not in first_kl_prompt
