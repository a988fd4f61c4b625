"""alpaca / sharegpt / openai rows -> exact aligned rows, and the drop report."""

from __future__ import annotations

import json

import pytest

from lmforge.data.converters import (
    ALIGNED_COLUMNS,
    InvalidRow,
    Role,
    convert_row,
    get_converter,
    register_converter,
    resolve_media,
)
from lmforge.data.registry import get_dataset_specs
from lmforge.data.report import DropReport
from lmforge.errors import UserError


def make_spec(name="demo", **entry):
    entry.setdefault("file_name", f"{name}.json")
    return get_dataset_specs([name], {name: entry})[0]


def convert(example, row=0, media_dir=None, **entry):
    return convert_row(example, make_spec(**entry), row=row, media_dir=media_dir)


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def aligned(prompt, response, system="", tools="", drop="", row=0, dataset="demo", images=None):
    return {
        "_prompt": prompt,
        "_response": response,
        "_system": system,
        "_tools": tools,
        "_images": images,
        "_videos": None,
        "_audios": None,
        "_dataset": dataset,
        "_row": row,
        "_drop": drop,
    }


def dropped(reason, row=0):
    return aligned([], [], drop=reason, row=row)


# ---- LLaMA-Factory's own converter tests (tests/data/test_converter.py) ------------------------


def test_llamafactory_alpaca_converter():
    example = {"instruction": "Solve the math problem.", "input": "3 + 4", "output": "The answer is 7."}
    out = convert(example)
    assert {k: v for k, v in out.items() if not k.startswith(("_dataset", "_row", "_drop"))} == {
        "_prompt": [{"role": Role.USER.value, "content": "Solve the math problem.\n3 + 4"}],
        "_response": [{"role": Role.ASSISTANT.value, "content": "The answer is 7."}],
        "_system": "",
        "_tools": "",
        "_images": None,
        "_videos": None,
        "_audios": None,
    }
    assert (out["_dataset"], out["_row"], out["_drop"]) == ("demo", 0, "")
    assert tuple(out) == ALIGNED_COLUMNS


def test_llamafactory_sharegpt_converter():
    example = {
        "conversations": [
            {"from": "system", "value": "You are a helpful assistant."},
            {"from": "human", "value": "Solve the math problem.\n3 + 4"},
            {"from": "gpt", "value": "The answer is 7."},
        ]
    }
    assert convert(example, formatting="sharegpt") == aligned(
        [user("Solve the math problem.\n3 + 4")], [assistant("The answer is 7.")], system="You are a helpful assistant."
    )


# ---- alpaca -------------------------------------------------------------------------------------


def test_alpaca_empty_input_is_left_out_and_history_becomes_turns():
    example = {
        "instruction": "And 5 + 5?",
        "input": "",
        "output": "10",
        "history": [["1 + 1?", "2"], ["2 + 2?", "4"]],
        "sys": "Be brief.",
    }
    out = convert(
        example,
        row=7,
        columns={
            "prompt": "instruction",
            "query": "input",
            "response": "output",
            "history": "history",
            "system": "sys",
        },
    )
    assert out == aligned(
        [user("1 + 1?"), assistant("2"), user("2 + 2?"), assistant("4"), user("And 5 + 5?")],
        [assistant("10")],
        system="Be brief.",
        row=7,
    )


def test_alpaca_defaults_without_input_column_and_numbers_as_text():
    assert convert({"instruction": "6 * 7?", "output": 42}) == aligned([user("6 * 7?")], [assistant("42")])


def test_alpaca_unsupervised_and_pretraining_text():
    assert convert({"text": "Once upon a time."}, columns={"prompt": "text"}) == aligned(
        [user("Once upon a time.")], []
    )
    assert convert({"instruction": "hi", "input": None, "output": None}) == aligned([user("hi")], [])
    assert convert({"instruction": "hi", "input": "", "output": float("nan")}) == aligned([user("hi")], [])  # csv


@pytest.mark.parametrize("answer", [["a", "b"], {"text": "a"}, True])
def test_alpaca_answer_that_is_not_text_is_invalid_response(answer):
    assert convert({"instruction": "hi", "output": answer}, row=3) == dropped("invalid_response", row=3)
    kto = {"columns": {"prompt": "instruction", "response": "output", "kto_tag": "label"}}
    assert convert({"instruction": "hi", "output": answer, "label": True}, **kto) == dropped("invalid_response")


def test_alpaca_falsy_prompt_values_are_text_or_errors_not_skipped():
    # 0 is an instruction like any number; a list is an error, not a missing instruction.
    assert convert({"instruction": 0, "input": "", "output": "zero"}) == aligned([user("0")], [assistant("zero")])
    assert convert({"instruction": [], "output": "x"}) == dropped("invalid_content")
    assert convert({"instruction": "", "input": "", "output": "x"}) == aligned([user("")], [assistant("x")])


@pytest.mark.parametrize(
    ("label", "response"), [(True, [assistant("Sure."), assistant("")]), (False, [assistant(""), assistant("Sure.")])]
)
def test_alpaca_kto_tag(label, response):
    example = {"instruction": "Help?", "output": "Sure.", "label": label}
    out = convert(example, columns={"prompt": "instruction", "response": "output", "kto_tag": "label"})
    assert out == aligned([user("Help?")], response)


def test_alpaca_ranking():
    example = {"instruction": "Pick", "chosen": "good", "rejected": "bad"}
    columns = {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"}
    assert convert(example, ranking=True, columns=columns) == aligned(
        [user("Pick")], [assistant("good"), assistant("bad")]
    )
    assert convert({**example, "rejected": None}, ranking=True, columns=columns) == dropped("missing_chosen_rejected")


def test_alpaca_bad_rows_are_marked():
    columns = {"prompt": "instruction", "response": "output", "history": "history"}
    assert convert({"instruction": "q", "output": "a", "history": [["only one"]]}, columns=columns) == dropped(
        "invalid_history"
    )
    assert convert({"instruction": {"x": 1}, "output": "a", "history": None}, columns=columns) == dropped(
        "invalid_content"
    )


def test_alpaca_tools_object_is_dumped_and_bad_tools_json_dropped():
    columns = {"prompt": "instruction", "response": "output", "tools": "tools"}
    tools = [{"name": "add", "parameters": {}}]
    out = convert({"instruction": "q", "output": "a", "tools": tools}, columns=columns)
    assert out["_tools"] == json.dumps(tools)
    assert convert({"instruction": "q", "output": "a", "tools": "[{"}, columns=columns) == dropped("invalid_tools_json")


# ---- sharegpt -----------------------------------------------------------------------------------


def conv(*turns):
    return [{"from": role, "value": text} for role, text in turns]


SHAREGPT = {"formatting": "sharegpt"}


def test_sharegpt_multi_turn_with_system_column():
    example = {"conversations": conv(("human", "a"), ("gpt", "b"), ("human", "c"), ("gpt", "d")), "sys": "S"}
    out = convert(example, formatting="sharegpt", columns={"messages": "conversations", "system": "sys"})
    assert out == aligned([user("a"), assistant("b"), user("c")], [assistant("d")], system="S")


def test_sharegpt_leading_system_message_wins_over_system_column():
    example = {"conversations": conv(("system", "from message"), ("human", "a"), ("gpt", "b")), "sys": "from column"}
    out = convert(example, formatting="sharegpt", columns={"messages": "conversations", "system": "sys"})
    assert out["_system"] == "from message"


@pytest.mark.parametrize(
    ("turns", "reason"),
    [
        ((("gpt", "b"), ("human", "a")), "invalid_role_order"),
        ((("human", "a"), ("human", "b")), "invalid_role_order"),
        ((("human", "a"), ("gpt", "b"), ("system", "late"), ("gpt", "c")), "invalid_role_order"),
        ((("human", "a"), ("bot", "b")), "unknown_role"),
        ((("human", "a"), ("gpt", "b"), ("human", "c")), "odd_message_count"),
        ((("system", "only a system prompt"),), "empty_conversation"),
        ((), "empty_conversation"),
    ],
)
def test_sharegpt_invalid_rows(turns, reason):
    assert convert({"conversations": conv(*turns)}, row=3, **SHAREGPT) == dropped(reason, row=3)


def test_sharegpt_null_or_malformed_messages():
    assert convert({"conversations": None}, **SHAREGPT) == dropped("missing_column")
    assert convert({"conversations": "human: hi"}, **SHAREGPT) == dropped("invalid_messages")
    assert convert(
        {"conversations": [{"from": "human", "value": ["x"]}, {"from": "gpt", "value": "y"}]}, **SHAREGPT
    ) == dropped("invalid_content")


def test_sharegpt_tool_calls_and_observations():
    call = json.dumps({"name": "add", "arguments": {"a": 1, "b": 2}})
    example = {
        "conversations": conv(("human", "1+2?"), ("function_call", call), ("observation", "3"), ("gpt", "It is 3.")),
        "tools": json.dumps([{"name": "add"}]),
    }
    out = convert(example, formatting="sharegpt", columns={"messages": "conversations", "tools": "tools"})
    assert out == aligned(
        [user("1+2?"), {"role": "function", "content": call}, {"role": "observation", "content": "3"}],
        [assistant("It is 3.")],
        tools='[{"name": "add"}]',
    )
    bad = {"conversations": conv(("human", "1+2?"), ("function_call", "add(1, 2)"), ("observation", "3"), ("gpt", "3"))}
    assert convert(bad, **SHAREGPT) == dropped("invalid_tool_call_json")
    no_args = {
        "conversations": conv(("human", "q"), ("function_call", '{"name": "add"}'), ("observation", "3"), ("gpt", "3"))
    }
    assert convert(no_args, **SHAREGPT) == dropped("invalid_tool_call_json")
    wrapped = f"<think>Use the tool.</think>\n<tool_call>{call}</tool_call>"
    ok = {"conversations": conv(("human", "q"), ("function_call", wrapped), ("observation", "3"), ("gpt", "3"))}
    assert convert(ok, **SHAREGPT)["_prompt"][1] == {"role": "function", "content": wrapped}


RANKING = {
    "formatting": "sharegpt",
    "ranking": True,
    "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"},
}


def test_sharegpt_ranking_rows():
    example = {
        "conversations": conv(("human", "a"), ("gpt", "b"), ("human", "c")),
        "chosen": {"from": "gpt", "value": "good"},
        "rejected": {"from": "gpt", "value": "bad"},
    }
    assert convert(example, **RANKING) == aligned(
        [user("a"), assistant("b"), user("c")], [assistant("good"), assistant("bad")]
    )
    even = {**example, "conversations": conv(("human", "a"), ("gpt", "b"))}
    assert convert(even, **RANKING) == dropped("even_message_count")
    wrong_role = {**example, "rejected": {"from": "human", "value": "bad"}}
    assert convert(wrong_role, **RANKING) == dropped("invalid_ranking_role")
    assert convert({**example, "chosen": None}, **RANKING) == dropped("missing_chosen_rejected")


def test_sharegpt_kto_tags():
    entry = {
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "kto_tag": "label"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    }
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert convert({"messages": messages, "label": True}, **entry) == aligned(
        [user("q")], [assistant("a"), assistant("")]
    )
    assert convert({"messages": messages, "label": False}, **entry) == aligned(
        [user("q")], [assistant(""), assistant("a")]
    )


def test_sharegpt_custom_tags_and_columns():
    entry = {
        "formatting": "sharegpt",
        "columns": {"messages": "dialog", "system": "persona"},
        "tags": {
            "role_tag": "speaker",
            "content_tag": "text",
            "user_tag": "Q",
            "assistant_tag": "A",
            "system_tag": "SYS",
        },
    }
    example = {
        "dialog": [{"speaker": "SYS", "text": "s"}, {"speaker": "Q", "text": "q"}, {"speaker": "A", "text": "a"}],
        "persona": "p",
    }
    assert convert(example, **entry) == aligned([user("q")], [assistant("a")], system="s")


# ---- openai -------------------------------------------------------------------------------------


OPENAI = {"formatting": "openai", "columns": {"messages": "messages", "tools": "tools"}}


def test_openai_tool_calls_and_merged_tool_messages():
    example = {
        "messages": [
            {"role": "system", "content": "You can call tools."},
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}},
                    {"type": "function", "function": {"name": "weather", "arguments": {"city": "Rome"}}},
                ],
            },
            {"role": "tool", "content": "Sunny"},
            {"role": "tool", "content": "Rainy"},
            {"role": "assistant", "content": "Paris is sunny, Rome rainy."},
        ],
        "tools": [{"type": "function", "function": {"name": "weather"}}],
    }
    out = convert(example, **OPENAI)
    calls = [{"name": "weather", "arguments": {"city": "Paris"}}, {"name": "weather", "arguments": {"city": "Rome"}}]
    assert out == aligned(
        [
            user("Weather in Paris and Rome?"),
            {"role": "function", "content": json.dumps(calls)},
            {"role": "observation", "content": "Sunny\n</tool_response>\n<tool_response>\nRainy"},
        ],
        [assistant("Paris is sunny, Rome rainy.")],
        system="You can call tools.",  # no "detailed thinking off" appended
        tools=json.dumps(example["tools"]),
    )


def test_openai_plain_chat_keeps_system_prompt_as_given():
    example = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    assert convert(example, **OPENAI) == aligned([user("hi")], [assistant("hello")], system="")


def test_openai_trailing_tool_result_is_reported_not_truncated():
    example = {
        "messages": [
            {"role": "user", "content": "What's the weather?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "get_weather", "arguments": "{}"}}],
            },
            {"role": "tool", "content": "Sunny, 25C"},
        ]
    }
    assert convert(example, **OPENAI) == dropped("odd_message_count")


@pytest.mark.parametrize(
    "tool_calls",
    [
        [{"function": {"name": "f", "arguments": "{not json"}}],
        [{"name": "f", "arguments": "{}"}],
        "f()",
    ],
)
def test_openai_invalid_tool_calls(tool_calls):
    example = {
        "messages": [
            user("q"),
            {"role": "assistant", "content": "", "tool_calls": tool_calls},
            {"role": "tool", "content": "r"},
            assistant("a"),
        ]
    }
    assert convert(example, **OPENAI) == dropped("invalid_tool_call_json")


def test_openai_unknown_role_and_order():
    assert convert({"messages": [user("q"), {"role": "bot", "content": "a"}]}, **OPENAI) == dropped("unknown_role")
    assert convert({"messages": [assistant("a"), user("q")]}, **OPENAI) == dropped("invalid_role_order")


def test_openai_ranking():
    entry = {
        "formatting": "openai",
        "ranking": True,
        "columns": {"messages": "messages", "chosen": "chosen", "rejected": "rejected"},
    }
    example = {"messages": [user("q")], "chosen": assistant("good"), "rejected": assistant("bad")}
    assert convert(example, **entry) == aligned([user("q")], [assistant("good"), assistant("bad")])


# ---- media --------------------------------------------------------------------------------------


def test_media_paths_are_joined_with_media_dir_when_the_file_exists(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    entry = {"formatting": "sharegpt", "columns": {"messages": "conversations", "images": "images"}}
    example = {"conversations": conv(("human", "<image>what?"), ("gpt", "a cat")), "images": ["a.jpg", "missing.jpg"]}
    out = convert(example, media_dir=str(tmp_path), **entry)
    assert out["_images"] == [str(tmp_path / "a.jpg"), "missing.jpg"]
    assert convert({**example, "images": "a.jpg"}, media_dir=str(tmp_path), **entry)["_images"] == [
        str(tmp_path / "a.jpg")
    ]
    assert convert({**example, "images": []}, media_dir=str(tmp_path), **entry)["_images"] is None


def test_media_of_hub_datasets_is_kept_as_given(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    spec = get_dataset_specs(["d"], {"d": {"hf_hub_url": "org/d", "columns": {"prompt": "q", "images": "img"}}})[0]
    out = convert_row({"q": "hi", "img": "a.jpg"}, spec, media_dir=str(tmp_path))
    assert out["_images"] == ["a.jpg"]


def test_video_frames_are_joined(tmp_path):
    (tmp_path / "f1.jpg").write_bytes(b"x")
    assert resolve_media([["f1.jpg", "f2.jpg"]], str(tmp_path)) == [[str(tmp_path / "f1.jpg"), "f2.jpg"]]


# ---- registry of converters ---------------------------------------------------------------------


def upper_converter(example, spec):
    if not example.get("q"):
        raise InvalidRow("no_question")
    return {
        "_prompt": [user(example["q"].upper())],
        "_response": [assistant(example["a"])],
        "_system": None,
        "_tools": {"x": 1},
    }


def test_register_converter(monkeypatch):
    from lmforge.data import converters

    # A copy of the registry: the name registered here must not leak into later tests' error messages.
    monkeypatch.setattr(converters, "_CONVERTERS", dict(converters._CONVERTERS))
    register_converter("test_upper", upper_converter, overwrite=True)
    out = convert({"q": "hi", "a": "yo"}, row=4, formatting="test_upper", columns={"messages": "m"})
    assert out == aligned([user("HI")], [assistant("yo")], tools='{"x": 1}', row=4)
    assert convert({"q": "", "a": "yo"}, formatting="test_upper", columns={"messages": "m"}) == dropped("no_question")
    with pytest.raises(ValueError, match="already registered"):
        register_converter("test_upper", upper_converter)
    with pytest.raises(UserError, match="Unknown formatting 'alpacca'. Did you mean 'alpaca'?"):
        get_converter("alpacca")


# ---- DropReport ---------------------------------------------------------------------------------


def test_drop_report_counts_rows_merges_and_serializes():
    report = DropReport()
    for row in range(7):
        report.record("a", "odd_message_count", row)
    report.record("a", "unknown_role", 9)
    report.record_seen("a", "convert", 20)
    other = DropReport()
    other.record("b", "too_long", [1, 2], stage="tokenize")
    other.record("a", "unknown_role", 11)
    report.merge(other)

    assert report.count() == 11 and len(report) == 11
    assert report.count("a") == 9 and report.count(reason="too_long") == 2
    assert report.rows("a", "odd_message_count") == [0, 1, 2, 3, 4]  # the first five
    assert report.rows("a", "unknown_role") == [9, 11]
    assert report.summary_lines() == [
        "a [convert]: dropped 9 of 20 rows: odd_message_count: 7 rows (rows 0, 1, 2, 3, 4, ...); unknown_role: 2 rows (rows 9, 11)",
        "b [tokenize]: dropped 2 rows: too_long: 2 rows (rows 1, 2)",
    ]
    assert report.to_dict() == {
        "total": 11,
        "drops": [
            {"dataset": "a", "stage": "convert", "reason": "odd_message_count", "count": 7, "rows": [0, 1, 2, 3, 4]},
            {"dataset": "a", "stage": "convert", "reason": "unknown_role", "count": 2, "rows": [9, 11]},
            {"dataset": "b", "stage": "tokenize", "reason": "too_long", "count": 2, "rows": [1, 2]},
        ],
        "seen": [{"dataset": "a", "stage": "convert", "count": 20}],
        "warnings": [],
        "unread_columns": [],
    }
    assert json.loads(json.dumps(report.to_dict())) == report.to_dict()
    assert not DropReport()


def test_collect_drops_on_a_map_style_dataset():
    from datasets import Dataset

    from lmforge.data.report import collect_drops

    ds = Dataset.from_dict(
        {
            "x": list(range(6)),
            "_dataset": ["d"] * 6,
            "_row": [10, 11, 12, 13, 14, 15],
            "_drop": ["", "too_long", "", "", "too_long", "empty_text"],
        }
    )
    report = DropReport()
    kept = collect_drops(ds, report, stage="tokenize")
    assert kept["x"] == [0, 2, 3]
    assert report.rows("d", "too_long") == [11, 14] and report.rows("d", "empty_text") == [15]
    assert report.seen("d", "tokenize") == 6
    assert collect_drops(Dataset.from_dict({"x": [1]}), report, "tokenize")["x"] == [1]


def test_collect_drops_on_a_stream_counts_each_row_once():
    from datasets import Dataset

    from lmforge.data.report import collect_drops

    ds = Dataset.from_dict(
        {"_dataset": ["d"] * 4, "_row": [0, 1, 2, 3], "_drop": ["", "bad", "", "bad"]}
    ).to_iterable_dataset()
    report = DropReport()
    kept = collect_drops(ds, report, stage="convert")
    assert report.count() == 0  # lazy: nothing counted before iteration
    assert [r["_row"] for r in kept] == [0, 2]
    assert [r["_row"] for r in kept] == [0, 2]  # a second epoch
    assert report.count("d", "bad") == 2 and report.rows("d", "bad") == [1, 3]


def _flags(dataset, row, *reasons):
    return [{"dataset": dataset, "row": row, "reason": reason} for reason in reasons]


def test_warnings_of_kept_rows_are_counted_and_those_of_dropped_rows_are_not():
    from datasets import Dataset

    from lmforge.data.report import collect_drops

    rows = {
        "_dataset": ["d", "d", "d", ""],
        "_row": [0, 1, 2, -1],
        "_drop": ["", "too_long", "", ""],
        # a dropped row's flags do not count; a packed block (row -1) carries the flags of its samples
        "_warn": [_flags("d", 0, "empty_prompt"), _flags("d", 1, "empty_response"), [],
                  _flags("d", 7, "empty_response") + _flags("e", 2, "empty_response")],
    }
    report = DropReport()
    kept = collect_drops(Dataset.from_dict(rows), report, stage="tokenize")
    assert kept["_row"] == [0, 2, -1]
    assert report.to_dict()["warnings"] == [
        {"dataset": "d", "stage": "tokenize", "reason": "empty_prompt", "count": 1, "rows": [0]},
        {"dataset": "d", "stage": "tokenize", "reason": "empty_response", "count": 1, "rows": [7]},
        {"dataset": "e", "stage": "tokenize", "reason": "empty_response", "count": 1, "rows": [2]},
    ]
    assert report.warned() == 3 and report.warned("d") == 2 and report.count() == 1
    assert report.warning_lines() == [
        "d [tokenize]: kept rows with warnings: empty_prompt: 1 row (row 0); empty_response: 1 row (row 7)",
        "e [tokenize]: kept rows with warnings: empty_response: 1 row (row 2)",
    ]

    streamed = DropReport()
    kept = collect_drops(Dataset.from_dict(rows).to_iterable_dataset(), streamed, stage="tokenize")
    assert [r["_row"] for r in kept] == [0, 2, -1]
    assert [r["_row"] for r in kept] == [0, 2, -1]  # a second epoch counts nothing twice
    assert streamed.to_dict()["warnings"] == report.to_dict()["warnings"]


def test_report_merges_warnings_and_unread_columns_once():
    from lmforge.data.report import UnreadColumn

    unread = UnreadColumn("d", "input", "/data/d.json", 'its `columns` mapping names prompt; add "query": "input"')
    first, second = DropReport(), DropReport()
    first.warn("d", "empty_prompt", 3)
    first.add_unread(unread)
    second.warn("d", "empty_prompt", [5, 6])
    second.add_unread(unread)  # the same dataset loaded again (train and eval)
    first.merge(second)
    assert first.to_dict()["warnings"] == [
        {"dataset": "d", "stage": "tokenize", "reason": "empty_prompt", "count": 3, "rows": [3, 5, 6]}
    ]
    assert first.to_dict()["unread_columns"] == [{
        "dataset": "d", "column": "input", "source": "/data/d.json",
        "message": "d: column 'input' of /data/d.json is not read (its `columns` mapping names prompt; add "
                   '"query": "input")',
    }]
    assert first.reasons() == ["empty_prompt", "unread_column"]
    assert not first  # warnings are not drops
