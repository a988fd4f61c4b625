"""SFT processor: ids equal the template render, labels mask the prompts, drops are reported."""

from __future__ import annotations

import pytest

from lmforge.data.processors import IGNORE_INDEX, get_processor, infer_seqlen
from lmforge.data.processors.supervised import SupervisedProcessor
from lmforge.data.report import DropReport, collect_drops

Q = IGNORE_INDEX
CONVERSATION = ["What is 3 + 4?", "The answer is 7.", "And 5 + 6?", "That is 11."]


def _encode(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


def _chat_ids(tokenizer, messages):
    """The ids of the tokenizer's own chat template (the tiny tokenizers ship llama3 / ChatML ones)."""
    return _encode(tokenizer, tokenizer.apply_chat_template(messages, tokenize=False))


def _messages(conversation, system=None):
    roles = ("user", "assistant")
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": roles[i % 2], "content": text} for i, text in enumerate(conversation)]


# (template fixture, end of an answer as the template writes it)
TEMPLATES = [("llama3", "<|eot_id|>"), ("qwen", "<|im_end|>\n")]


@pytest.mark.parametrize(("name", "end"), TEMPLATES)
@pytest.mark.parametrize("turns", [2, 4])
def test_ids_match_chat_template_and_only_answers_are_labelled(
    request, name, end, turns, aligned, rows_dataset, make_args, run_map
):
    template, tokenizer = request.getfixturevalue(name)
    conversation = CONVERSATION[:turns]
    processor = get_processor("sft", make_args(cutoff_len=1024), template, tokenizer)
    out = run_map(processor, rows_dataset([aligned(conversation, system="You are a calculator.")]))

    row = out[0]
    assert row["_drop"] == "" and row["_dataset"] == "demo" and row["_row"] == 0
    assert row["input_ids"] == _chat_ids(tokenizer, _messages(conversation, "You are a calculator."))
    assert row["attention_mask"] == [1] * len(row["input_ids"])
    supervised = [label for label in row["labels"] if label != Q]
    assert supervised == [token for answer in conversation[1::2] for token in _encode(tokenizer, answer + end)]
    # Labels copy the ids where they are not masked, so masked spans are exactly the prompts.
    assert all(label in (Q, token) for label, token in zip(row["labels"], row["input_ids"]))
    assert row["labels"][-len(_encode(tokenizer, conversation[-1] + end)) :] == _encode(
        tokenizer, conversation[-1] + end
    )


def test_default_system_of_qwen_is_rendered(qwen, aligned, rows_dataset, make_args, run_map):
    template, tokenizer = qwen
    out = run_map(get_processor("sft", make_args(), template, tokenizer), rows_dataset([aligned(CONVERSATION[:2])]))
    system = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    assert out[0]["input_ids"] == _chat_ids(tokenizer, _messages(CONVERSATION[:2], system))


@pytest.mark.parametrize("name", ["llama3", "qwen"])
def test_train_on_prompt_labels_everything(request, name, aligned, rows_dataset, make_args, run_map):
    template, tokenizer = request.getfixturevalue(name)
    processor = get_processor("sft", make_args(train_on_prompt=True), template, tokenizer)
    row = run_map(processor, rows_dataset([aligned(CONVERSATION, system="sys")]))[0]
    assert row["labels"] == row["input_ids"]


def test_mask_history_labels_only_the_last_answer(llama3, aligned, rows_dataset, make_args, run_map):
    template, tokenizer = llama3
    processor = get_processor("sft", make_args(mask_history=True), template, tokenizer)
    row = run_map(processor, rows_dataset([aligned(CONVERSATION)]))[0]
    assert row["input_ids"] == _chat_ids(tokenizer, _messages(CONVERSATION))
    assert [label for label in row["labels"] if label != Q] == _encode(tokenizer, "That is 11.<|eot_id|>")


def test_mask_history_gives_the_last_turn_budget_priority(llama3, aligned, rows_dataset, make_args, run_map):
    template, tokenizer = llama3
    pairs = template.encode_multiturn(tokenizer, _messages(CONVERSATION))
    last = pairs[1][0] + pairs[1][1]
    cutoff = len(last) + 3  # room for the last turn and 3 tokens of the first
    plain = run_map(
        get_processor("sft", make_args(cutoff_len=cutoff), template, tokenizer), rows_dataset([aligned(CONVERSATION)])
    )
    masked = run_map(
        get_processor("sft", make_args(cutoff_len=cutoff, mask_history=True), template, tokenizer),
        rows_dataset([aligned(CONVERSATION)]),
    )
    assert masked[0]["input_ids"][-len(last) :] == last
    assert len(masked[0]["input_ids"]) == cutoff
    first_source_len, first_target_len = infer_seqlen(len(pairs[0][0]), len(pairs[0][1]), 3)
    assert masked[0]["input_ids"][: -len(last)] == pairs[0][0][:first_source_len] + pairs[0][1][:first_target_len]
    # Without mask_history the first turn takes the budget and the last answer is cut.
    assert plain[0]["input_ids"][: len(pairs[0][0]) + len(pairs[0][1])] == pairs[0][0] + pairs[0][1]
    assert len(plain[0]["input_ids"]) == cutoff and plain[0]["input_ids"][-len(last) :] != last


def test_mask_history_drops_earlier_turns_when_the_last_fills_the_budget(fake, make_args):
    template, tokenizer = fake()
    processor = SupervisedProcessor(make_args(cutoff_len=6, mask_history=True), template, tokenizer)
    prompt = [{"role": "user", "content": "2"}, {"role": "assistant", "content": "2"}, {"role": "user", "content": "3"}]
    out = processor.process({"_prompt": [prompt], "_response": [[{"role": "assistant", "content": "3"}]]})
    assert out["input_ids"] == [[12] * 3 + [52] * 3]
    assert out["labels"] == [[Q] * 3 + [52] * 3]


def test_efficient_eos_labels(glm4, aligned, rows_dataset, make_args, run_map):
    template, tokenizer = glm4
    eos = tokenizer.eos_token_id
    row = run_map(get_processor("sft", make_args(), template, tokenizer), rows_dataset([aligned(CONVERSATION)]))[0]
    pairs = template.encode_multiturn(tokenizer, _messages(CONVERSATION))
    (s0, t0), (s1, t1) = pairs
    assert row["input_ids"] == s0 + t0 + s1 + t1 + [eos]
    # The next turn's first source token is labelled eos: that is where the previous answer ends.
    assert row["labels"] == [Q] * len(s0) + t0 + [eos] + [Q] * (len(s1) - 1) + t1 + [eos]
    assert _encode(tokenizer, "\nThe answer is 7.") == t0


def test_efficient_eos_with_mask_history_trains_only_the_last_answer(fake, make_args):
    template, tokenizer = fake(efficient_eos=True)
    processor = SupervisedProcessor(make_args(mask_history=True), template, tokenizer)
    prompt = [{"role": "user", "content": "2"}, {"role": "assistant", "content": "2"}, {"role": "user", "content": "1"}]
    out = processor.process({"_prompt": [prompt], "_response": [[{"role": "assistant", "content": "1"}]]})
    assert out["input_ids"] == [[10, 10, 50, 50, 12, 52, 2]]
    assert out["labels"] == [[Q, Q, Q, Q, Q, 52, 2]]


def test_efficient_eos_budget_reserves_the_final_eos(fake, make_args):
    template, tokenizer = fake(efficient_eos=True)
    processor = SupervisedProcessor(make_args(cutoff_len=8), template, tokenizer)
    prompt = [{"role": "user", "content": "3"}, {"role": "assistant", "content": "3"}, {"role": "user", "content": "3"}]
    out = processor.process({"_prompt": [prompt], "_response": [[{"role": "assistant", "content": "3"}]]})
    # Budget 7 after the reserved eos: turn 0 takes 3 + 3, turn 1 gets one slot, given to the source.
    assert out["input_ids"] == [[10, 10, 10, 50, 50, 50, 12, 2]]
    assert out["labels"] == [[Q, Q, Q, 50, 50, 50, 2, 2]]


@pytest.mark.parametrize("cutoff", [5, 12, 20])
def test_truncation_follows_infer_seqlen(llama3, aligned, rows_dataset, make_args, run_map, cutoff):
    template, tokenizer = llama3
    conversation = ["Tell me a long story about the sea and the wind.", "Once upon a time the sea was calm."]
    ((source, target),) = template.encode_multiturn(tokenizer, _messages(conversation))
    source_len, target_len = infer_seqlen(len(source), len(target), cutoff)
    row = run_map(
        get_processor("sft", make_args(cutoff_len=cutoff), template, tokenizer), rows_dataset([aligned(conversation)])
    )[0]
    assert row["input_ids"] == source[:source_len] + target[:target_len]
    assert row["labels"] == [Q] * source_len + target[:target_len]
    assert len(row["input_ids"]) <= cutoff


def test_drop_overlong_drops_and_reports(llama3, aligned, rows_dataset, make_args, run_map):
    template, tokenizer = llama3
    short, long = ["Hi", "Hello"], ["Tell me a long story about the sea and the wind.", "Once upon a time."]
    short_len = len(_chat_ids(tokenizer, _messages(short)))
    assert len(_chat_ids(tokenizer, _messages(long))) > short_len
    processor = get_processor("sft", make_args(cutoff_len=short_len, drop_overlong=True), template, tokenizer)
    out = run_map(processor, rows_dataset([aligned(short), aligned(long), aligned(short)]))
    assert out["_drop"] == ["", "too_long", ""]
    assert out[1]["input_ids"] == [] and out[1]["labels"] == [] and out[1]["_row"] == 1
    assert out[0]["input_ids"] == _chat_ids(tokenizer, _messages(short))  # an exact fit is kept

    report = DropReport()
    kept = collect_drops(out, report, "tokenize")
    assert len(kept) == 2
    assert report.count(reason="too_long") == 1 and report.rows("demo", "too_long") == [1]


def test_invalid_rows_are_reported_not_lost(llama3, aligned, rows_dataset, make_args, run_map):
    template, tokenizer = llama3
    user = {"role": "user", "content": "Hi"}
    answer = {"role": "assistant", "content": "Hello"}
    rows = [
        aligned(["Hi", "Hello"]),
        aligned([], prompt=[user, answer], response=[answer]),  # even prompt
        aligned([], prompt=[user], response=[answer, answer]),  # two responses (a ranking row)
        aligned([], prompt=[user], response=[]),  # no response: the alpaca row had no output
        aligned([], prompt=[], response=[]),  # no conversation at all
        aligned(["Hi", "Hello"], drop="invalid_role_order"),  # dropped upstream, reason kept
    ]
    out = run_map(get_processor("sft", make_args(), template, tokenizer), rows_dataset(rows), batch_size=2)
    assert len(out) == len(rows)
    assert out["_drop"] == [
        "",
        "invalid_turns",
        "invalid_turns",
        "missing_response",
        "missing_response",
        "invalid_role_order",
    ]
    assert out["_row"] == [0, 1, 2, 3, 4, 5]
    assert all(ids == [] for ids in out["input_ids"][1:])


def test_no_supervised_tokens(llama3, aligned, rows_dataset, make_args, run_map):
    template, tokenizer = llama3
    conversation = ["Tell me a long story about the sea and the wind.", "Hi"]
    ((source, target),) = template.encode_multiturn(tokenizer, _messages(conversation))
    cutoff = 3
    assert infer_seqlen(len(source), len(target), cutoff)[1] == 0
    out = run_map(
        get_processor("sft", make_args(cutoff_len=cutoff), template, tokenizer), rows_dataset([aligned(conversation)])
    )
    assert out["_drop"] == ["no_supervised_tokens"]


def test_output_types_are_fixed_even_when_a_batch_is_all_drops(llama3, aligned, rows_dataset, make_args, run_map):
    template, tokenizer = llama3
    rows = [aligned([], prompt=[], response=[]), aligned(["Hi", "Hello"])]
    processor = get_processor("sft", make_args(), template, tokenizer)
    out = run_map(processor, rows_dataset(rows), batch_size=1)
    assert out.features == processor.features
    assert str(out.features["attention_mask"].feature.dtype) == "int8"
    assert out["_drop"] == ["missing_response", ""]
    assert "input_ids:" in processor.describe(out[1]) and "labels:\nHello<|eot_id|>" in processor.describe(out[1])
