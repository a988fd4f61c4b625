"""alpaca / sharegpt / openai rows -> one aligned row format, as LLaMA-Factory's `converter.py` does.

The aligned row (the contract the tokenization processors rely on):

    _prompt:   [{"role", "content"}, ...]   the turns before the answer (user turn last)
    _response: [{"role", "content"}, ...]   one answer; [chosen, rejected] for ranking rows;
                                            [answer, ""] / ["", answer] for KTO rows (true / false);
                                            [] for unsupervised rows
    _system:   str      _tools: str (JSON)
    _images / _videos / _audios: list of paths (or the hub's media objects), or None
    _dataset:  str      the dataset name         _row: int   0-based row index in the source
    _drop:     str      "" for a valid row, else one of the reason keys below

Roles are user, assistant, system, function (a tool call, JSON) and observation (a tool result).
Invalid rows are kept, with empty `_prompt`/`_response` and a `_drop` reason, so that
`report.collect_drops` can count them. Differences from LLaMA-Factory, all deliberate:
- rows it would silently drop or crash on later (bad tool-call JSON, unknown roles, a trailing
  tool result) are marked with a reason here;
- openai tool-call `arguments` given as a JSON string are decoded, so a function message always
  holds `[{"name": ..., "arguments": {...}}]` as sharegpt data does (LLaMA-Factory re-encodes the
  string, and the model then learns a doubly quoted JSON);
- tools given as a JSON object/list are dumped to a string in every format, not only openai;
- numbers (an answer of 42, a csv cell) are text, where LLaMA-Factory treats a numeric output as
  "no answer" and fails on a numeric instruction.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, Any

from lmforge.data.columns import META_COLUMNS
from lmforge.data.openai_messages import BadToolCall, merge_tool_results, tool_calls_content

if TYPE_CHECKING:
    from lmforge.data.registry import DatasetSpec

logger = logging.getLogger(__name__)


class Role(str, Enum):
    """The roles of aligned messages."""

    USER = "user"
    ASSISTANT = "assistant"
    SYSTEM = "system"
    FUNCTION = "function"
    OBSERVATION = "observation"


# Reason keys written to `_drop`.
MISSING_COLUMN = "missing_column"  # the row's message list (or other required value) is null
INVALID_MESSAGES = "invalid_messages"  # the message list is not a list of objects
EMPTY_CONVERSATION = "empty_conversation"  # no message besides the system prompt
UNKNOWN_ROLE = "unknown_role"  # a role that none of the dataset's tags names
INVALID_ROLE_ORDER = "invalid_role_order"  # not user/observation at even turns, assistant/function at odd
ODD_MESSAGE_COUNT = "odd_message_count"  # a normal row must end with an answer (even count)
EVEN_MESSAGE_COUNT = "even_message_count"  # a ranking row must end with a question (odd count)
INVALID_CONTENT = "invalid_content"  # a message/instruction that is not text
INVALID_RESPONSE = "invalid_response"  # an alpaca answer that is not text (a list, an object, true/false)
INVALID_HISTORY = "invalid_history"  # alpaca history that is not a list of [prompt, response] pairs
MISSING_CHOSEN_REJECTED = "missing_chosen_rejected"  # ranking row without both answers
INVALID_RANKING_ROLE = "invalid_ranking_role"  # chosen/rejected not from the assistant/function
INVALID_TOOL_CALL_JSON = "invalid_tool_call_json"  # a function message that is not a JSON tool call
INVALID_TOOLS_JSON = "invalid_tools_json"  # a tools value that is not JSON
REASONS = (
    MISSING_COLUMN, INVALID_MESSAGES, EMPTY_CONVERSATION, UNKNOWN_ROLE, INVALID_ROLE_ORDER, ODD_MESSAGE_COUNT,
    EVEN_MESSAGE_COUNT, INVALID_CONTENT, INVALID_RESPONSE, INVALID_HISTORY, MISSING_CHOSEN_REJECTED,
    INVALID_RANKING_ROLE,
    INVALID_TOOL_CALL_JSON, INVALID_TOOLS_JSON,
)  # fmt: skip

ALIGNED_COLUMNS = ("_prompt", "_response", "_system", "_tools", "_images", "_videos", "_audios", *META_COLUMNS)
MEDIA_KINDS = ("images", "videos", "audios")
_MAX_JSON_STARTS = 64

Converter = Callable[[dict[str, Any], "DatasetSpec"], dict[str, Any]]


class InvalidRow(Exception):
    """Raised by a converter for a row to drop; `reason` becomes its `_drop` value."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def aligned_features(media: Any = None):
    """The `datasets.Features` of aligned rows (`media`: the feature of each media column)."""
    from datasets import Features, List, Value

    message = List({"role": Value("string"), "content": Value("string")})
    media = media if media is not None else List(Value("string"))
    return Features(
        {
            "_prompt": message,
            "_response": message,
            "_system": Value("string"),
            "_tools": Value("string"),
            "_images": media,
            "_videos": media,
            "_audios": media,
            "_dataset": Value("string"),
            "_row": Value("int64"),
            "_drop": Value("string"),
        }
    )


def _message(role: Role | str, content: str) -> dict[str, str]:
    return {"role": Role(role).value, "content": content}


def _plain_text(value: Any) -> str | None:
    """Text as str; numbers (an answer of 42, a csv cell) as their str; None for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:  # NaN: empty csv cell
        return str(value)
    return None


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and value != value  # an empty csv cell


def _text(value: Any) -> str:
    if value is None or _is_nan(value):
        return ""
    text = _plain_text(value)
    if text is None:
        raise InvalidRow(INVALID_CONTENT)
    return text


def _tools_text(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    if not isinstance(value, str):
        raise InvalidRow(INVALID_TOOLS_JSON)
    try:
        json.loads(value)
    except json.JSONDecodeError:
        raise InvalidRow(INVALID_TOOLS_JSON) from None
    return value


def _is_call(item: Any) -> bool:
    return isinstance(item, dict) and isinstance(item.get("name"), str) and "arguments" in item


def _check_function_call(content: str) -> None:
    """A function message must hold a JSON tool call (or a list of them), each with a name and arguments.

    Text around the JSON (a thought, `<tool_call>` words) is allowed, as the templates strip it.
    """
    decoder = json.JSONDecoder()
    starts = [index for index, char in enumerate(content) if char in "{["][:_MAX_JSON_STARTS]
    for start in starts:
        try:
            calls, _ = decoder.raw_decode(content, start)
        except json.JSONDecodeError:
            continue
        items = calls if isinstance(calls, list) else [calls]
        if items and all(_is_call(item) for item in items):
            return
    raise InvalidRow(INVALID_TOOL_CALL_JSON)


def _feedback_response(answer: dict[str, str], desirable: bool) -> list[dict[str, str]]:
    # KTO rows carry the answer in the first slot when it is desirable, in the second when not.
    empty = _message(Role.ASSISTANT, "")
    return [answer, empty] if desirable else [empty, answer]


def convert_alpaca(example: dict[str, Any], spec: DatasetSpec) -> dict[str, Any]:
    """instruction/input/output (+ history, system, tools, chosen/rejected, kto_tag) -> aligned."""
    columns = spec.columns
    prompt: list[dict[str, str]] = []
    history = example.get(columns.history) if columns.history else None
    if isinstance(history, list):
        for pair in history:
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise InvalidRow(INVALID_HISTORY)
            prompt.append(_message(Role.USER, _text(pair[0])))
            prompt.append(_message(Role.ASSISTANT, _text(pair[1])))

    parts = []
    for column in (columns.prompt, columns.query):
        # Only a missing or empty value is left out: 0 is text, and a list is an error, not "no input".
        text = _text(example.get(column)) if column else ""
        if text:
            parts.append(text)
    prompt.append(_message(Role.USER, "\n".join(parts)))

    answer = example.get(columns.response) if columns.response else None
    if answer is not None and _plain_text(answer) is None and not _is_nan(answer):
        raise InvalidRow(INVALID_RESPONSE)
    feedback = example.get(columns.kto_tag) if columns.kto_tag else None
    if isinstance(feedback, bool):
        response = _feedback_response(_message(Role.ASSISTANT, _text(answer)), feedback)
    elif spec.ranking:
        chosen = example.get(columns.chosen) if columns.chosen else None
        rejected = example.get(columns.rejected) if columns.rejected else None
        if not isinstance(chosen, str) or not isinstance(rejected, str):
            raise InvalidRow(MISSING_CHOSEN_REJECTED)
        response = [_message(Role.ASSISTANT, chosen), _message(Role.ASSISTANT, rejected)]
    elif _plain_text(answer) is not None:
        response = [_message(Role.ASSISTANT, _plain_text(answer))]
    else:
        # No answer (null, an empty csv cell, or no response column): kept for pt, which reads the
        # prompt only; sft and prediction drop it as `missing_response` (see processors/base.py).
        response = []

    return {
        "_prompt": prompt,
        "_response": response,
        "_system": _text(example.get(columns.system)) if columns.system else "",
        "_tools": _tools_text(example.get(columns.tools)) if columns.tools else "",
    }


def _split_system(messages: Any, example: dict[str, Any], spec: DatasetSpec) -> tuple[list[dict[str, Any]], str]:
    if messages is None:
        raise InvalidRow(MISSING_COLUMN)
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise InvalidRow(INVALID_MESSAGES)
    tags = spec.tags
    if messages and messages[0].get(tags.role_tag) == tags.system_tag:
        return messages[1:], _text(messages[0].get(tags.content_tag))
    system = example.get(spec.columns.system) if spec.columns.system else None
    return messages, _text(system)


def _tag_roles(spec: DatasetSpec) -> dict[str, Role]:
    tags = spec.tags
    return {
        tags.user_tag: Role.USER,
        tags.assistant_tag: Role.ASSISTANT,
        tags.observation_tag: Role.OBSERVATION,
        tags.function_tag: Role.FUNCTION,
        tags.system_tag: Role.SYSTEM,
    }


def _check_turns(messages: list[dict[str, str]], ranking: bool) -> None:
    """Even turns are user/observation, odd turns assistant/function; the count must fit the row type."""
    if not messages:
        raise InvalidRow(EMPTY_CONVERSATION)
    for index, message in enumerate(messages):
        expected = (
            (Role.USER.value, Role.OBSERVATION.value) if index % 2 == 0 else (Role.ASSISTANT.value, Role.FUNCTION.value)
        )
        if message["role"] not in expected:
            raise InvalidRow(INVALID_ROLE_ORDER)
    if not ranking and len(messages) % 2 != 0:
        raise InvalidRow(ODD_MESSAGE_COUNT)
    if ranking and len(messages) % 2 == 0:
        raise InvalidRow(EVEN_MESSAGE_COUNT)


def _finish(
    messages: list[dict[str, str]], example: dict[str, Any], spec: DatasetSpec, roles: dict[str, Role]
) -> tuple[list, list]:
    """Split checked messages into prompt and response (normal, KTO or ranking rows)."""
    columns, tags = spec.columns, spec.tags
    feedback = example.get(columns.kto_tag) if columns.kto_tag else None
    if isinstance(feedback, bool):
        return messages[:-1], _feedback_response(messages[-1], feedback)
    if spec.ranking:
        answers = []
        for column in (columns.chosen, columns.rejected):
            answer = example.get(column) if column else None
            if not isinstance(answer, dict):
                raise InvalidRow(MISSING_CHOSEN_REJECTED)
            role = roles.get(answer.get(tags.role_tag))
            if role not in (Role.ASSISTANT, Role.FUNCTION):
                raise InvalidRow(INVALID_RANKING_ROLE)
            content = _text(answer.get(tags.content_tag))
            if role is Role.FUNCTION:
                _check_function_call(content)
            answers.append(_message(role, content))
        return messages, answers
    return messages[:-1], messages[-1:]


def convert_sharegpt(example: dict[str, Any], spec: DatasetSpec) -> dict[str, Any]:
    """[{from, value}, ...] conversations (system first or in a column) -> aligned."""
    tags = spec.tags
    messages, system = _split_system(example.get(spec.columns.messages), example, spec)
    roles = _tag_roles(spec)
    aligned = []
    for message in messages:
        role = roles.get(message.get(tags.role_tag))
        if role is None:
            raise InvalidRow(UNKNOWN_ROLE)
        aligned.append(_message(role, _text(message.get(tags.content_tag))))
    return _checked_row(aligned, system, example, spec, roles)


def _checked_row(aligned: list[dict[str, str]], system: str, example: dict[str, Any], spec: DatasetSpec,
                 roles) -> dict[str, Any]:
    """Check turn order and tool-call JSON of a message list, then split it into the aligned columns."""
    _check_turns(aligned, spec.ranking)
    for message in aligned:
        if message["role"] == Role.FUNCTION.value:
            _check_function_call(message["content"])
    prompt, response = _finish(aligned, example, spec, roles)
    return {
        "_prompt": prompt,
        "_response": response,
        "_system": system,
        "_tools": _tools_text(example.get(spec.columns.tools)) if spec.columns.tools else "",
    }


def _tool_calls_content(tool_calls: Any) -> str:
    if not isinstance(tool_calls, list):
        raise InvalidRow(INVALID_TOOL_CALL_JSON)
    calls = []
    for call in tool_calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRow(INVALID_TOOL_CALL_JSON)
        calls.append((function["name"], function.get("arguments")))
    try:
        return tool_calls_content(calls)
    except BadToolCall:
        raise InvalidRow(INVALID_TOOL_CALL_JSON) from None


def convert_openai(example: dict[str, Any], spec: DatasetSpec) -> dict[str, Any]:
    """[{role, content, tool_calls?}, ...] messages -> aligned; consecutive tool results are merged."""
    tags = spec.tags
    messages, system = _split_system(example.get(spec.columns.messages), example, spec)
    roles = _tag_roles(spec)
    turns: list[tuple[str, str, None]] = []
    for message in messages:
        tag = message.get(tags.role_tag)
        content = message.get(tags.content_tag)
        if tag in (tags.assistant_tag, tags.function_tag) and message.get("tool_calls"):
            content, tag = _tool_calls_content(message["tool_calls"]), tags.function_tag
        role = Role.OBSERVATION if tag == tags.observation_tag else roles.get(tag)
        if role is None:
            raise InvalidRow(UNKNOWN_ROLE)
        turns.append((role.value, _text(content), None))
    # LLaMA-Factory loses trailing tool results and trains on the call alone; keeping them makes
    # the row fail the count check below, so it is reported instead.
    aligned = [_message(role, content) for role, content, _ in merge_tool_results(turns)]
    # LLaMA-Factory rewrites the system prompt of every openai row here ("detailed thinking off"),
    # a model-specific hack; we deliberately keep the system prompt as the data gives it.
    return _checked_row(aligned, system, example, spec, roles)


_CONVERTERS: dict[str, Converter] = {
    "alpaca": convert_alpaca,
    "sharegpt": convert_sharegpt,
    "openai": convert_openai,
}


def register_converter(name: str, fn: Converter, overwrite: bool = False) -> None:
    """Add a `formatting` name: `fn(example, spec)` returns `_prompt`, `_response`, `_system`, `_tools`.

    It may also return media columns and `_drop`, or raise `InvalidRow(reason)` for a bad row.
    The function must be picklable (a module-level function) to run with several processes.
    """
    if name in _CONVERTERS and not overwrite:
        raise ValueError(f"A converter named '{name}' is already registered; pass overwrite=True to replace it.")
    _CONVERTERS[name] = fn


def converter_names() -> list[str]:
    """The registered `formatting` names."""
    return list(_CONVERTERS)


def get_converter(name: str) -> Converter:
    """The converter registered for `formatting: name`."""
    from lmforge.errors import UserError, did_you_mean

    if name not in _CONVERTERS:
        raise UserError(
            f"Unknown formatting '{name}'.{did_you_mean(name, _CONVERTERS)} Use one of: {', '.join(_CONVERTERS)}."
        )
    return _CONVERTERS[name]


_warned_media: set[str] = set()


def resolve_media(value: Any, media_dir: str | None) -> list[Any] | None:
    """A media value as a list; relative paths are joined with `media_dir` when that file exists.

    A single path becomes a one-item list (a string is never read character by character). A video
    may be a list of frame paths. With no `media_dir` (hub datasets) values are returned as they are.
    """
    if value is None:
        return None
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        return None
    if media_dir is None:
        return items
    return [
        [_join_media(frame, media_dir) for frame in item]
        if isinstance(item, (list, tuple))
        else _join_media(item, media_dir)
        for item in items
    ]


def _join_media(item: Any, media_dir: str) -> Any:
    if not isinstance(item, str):
        return item
    path = os.path.join(media_dir, item)
    if os.path.isfile(path):
        return path
    if media_dir not in _warned_media:
        _warned_media.add(media_dir)
        logger.warning("Media file %s is not in media_dir %s; using the path as given.", item, media_dir)
    return item


def convert_row(
    example: dict[str, Any], spec: DatasetSpec, row: int = 0, media_dir: str | None = None
) -> dict[str, Any]:
    """Convert one source row of `spec` to the aligned format, including `_dataset`, `_row` and `_drop`."""
    try:
        out = dict(get_converter(spec.formatting)(example, spec))
        drop = out.get("_drop") or ""
        system, tools = _text(out.get("_system")), _tools_text(out.get("_tools"))
    except InvalidRow as invalid:
        out, drop, system, tools = {}, invalid.reason, "", ""
    aligned = {
        "_prompt": [] if drop else out["_prompt"],
        "_response": [] if drop else out["_response"],
        "_system": "" if drop else system,
        "_tools": "" if drop else tools,
    }
    local = spec.load_from in ("file", "script")
    for kind in MEDIA_KINDS:
        key = f"_{kind}"
        if drop:
            aligned[key] = None
        elif key in out:
            aligned[key] = out[key]
        else:
            column = getattr(spec.columns, kind)
            value = example.get(column) if column else None
            aligned[key] = resolve_media(value, (media_dir or spec.dataset_dir) if local else None)
    aligned.update({"_dataset": spec.name, "_row": int(row), "_drop": drop})
    return aligned


class RowConverter:
    """The function `dataset.map(..., with_indices=True)` runs: aligns each row and records its source index.

    `source_rows[i]` is the source index of the i-th row when sampling reordered the rows.
    """

    def __init__(self, spec: DatasetSpec, media_dir: str | None = None, source_rows: Any = None) -> None:
        self.spec = spec
        self.media_dir = media_dir
        self.source_rows = source_rows

    def __call__(self, example: dict[str, Any], index: int) -> dict[str, Any]:
        row = int(self.source_rows[index]) if self.source_rows is not None else index
        return convert_row(example, self.spec, row=row, media_dir=self.media_dir)
