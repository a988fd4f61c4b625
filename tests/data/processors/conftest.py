"""Helpers for processor tests: aligned rows, data arguments, fixed templates, and running a processor."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from datasets import Dataset

from lmforge.config.data import DataArguments


def _aligned(conversation, system="", tools="", dataset="demo", row=None, prompt=None, response=None, drop=""):
    """One aligned row: all messages but the last are the prompt, the last one is the response."""
    roles = ("user", "assistant")
    messages = [{"role": roles[i % 2], "content": text} for i, text in enumerate(conversation)]
    return {
        "_prompt": messages[:-1] if prompt is None else prompt,
        "_response": messages[-1:] if response is None else response,
        "_system": system,
        "_tools": tools,
        "_images": None,
        "_videos": None,
        "_audios": None,
        "_dataset": dataset,
        "_row": row,
        "_drop": drop,
    }


@pytest.fixture()
def aligned():
    """`aligned(["q", "a", ...], system=..., row=...)` -> one aligned row dict."""
    return _aligned


@pytest.fixture()
def rows_dataset():
    """`rows_dataset(rows)` -> a `datasets.Dataset` of aligned rows (row numbers filled in)."""

    def build(rows):
        return Dataset.from_list(
            [{**row, "_row": i if row["_row"] is None else row["_row"]} for i, row in enumerate(rows)]
        )

    return build


@pytest.fixture()
def make_args():
    """`make_args(cutoff_len=..., ...)` -> DataArguments."""

    def build(**kwargs):
        return DataArguments(**kwargs)

    return build


@pytest.fixture()
def run_map():
    """`run_map(processor, dataset, batch_size=1000)` -> the processed dataset, as the pipeline maps it."""

    def run(processor, dataset, batch_size=1000):
        return dataset.map(processor, batched=True, batch_size=batch_size, remove_columns=dataset.column_names)

    return run


@pytest.fixture()
def llama3(llama_tokenizer):
    """(template, tokenizer) for llama3, with the tokenizer fixed as training does it."""
    from lmforge.data.templates import get_template

    template = get_template("llama3", llama_tokenizer)
    template.fix_tokenizer(llama_tokenizer)
    return template, llama_tokenizer


@pytest.fixture()
def qwen(qwen_tokenizer):
    from lmforge.data.templates import get_template

    template = get_template("qwen", qwen_tokenizer)
    template.fix_tokenizer(qwen_tokenizer)
    return template, qwen_tokenizer


@pytest.fixture()
def glm4(llama_tokenizer):
    """An efficient_eos template (answers end where the next user header starts)."""
    from lmforge.data.templates import get_template

    template = get_template("glm4", llama_tokenizer)
    template.fix_tokenizer(llama_tokenizer)
    assert template.efficient_eos
    return template, llama_tokenizer


@dataclass
class FakeTemplate:
    """Maps each message to fixed ids: user text "u<n>" -> [n] * n source ids, answers likewise.

    Lets tests state exact lengths: a source of `n` tokens is written "n", a target "n" too.
    """

    name: str = "fake"
    efficient_eos: bool = False

    def encode_multiturn(self, tokenizer, messages, system=None, tools=None, **_):
        pairs = []
        for i in range(0, len(messages), 2):
            source = [10 + i] * int(messages[i]["content"])
            target = [50 + i] * int(messages[i + 1]["content"])
            pairs.append((source, target))
        return pairs

    def encode_oneturn(self, tokenizer, messages, system=None, tools=None):
        pairs = self.encode_multiturn(tokenizer, messages, system, tools)
        prompt = [token for source, target in pairs[:-1] for token in source + target] + pairs[-1][0]
        return prompt, pairs[-1][1]


@dataclass
class FakeTokenizer:
    eos_token_id: int = 2
    pad_token_id: int = 0
    eos_token: str = "</s>"


@pytest.fixture()
def fake():
    """`fake(efficient_eos=False)` -> (FakeTemplate, FakeTokenizer)."""

    def build(efficient_eos=False):
        return FakeTemplate(efficient_eos=efficient_eos), FakeTokenizer()

    return build
