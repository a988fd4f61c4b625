"""What every reason code of the data report means and how to fix it: the one table.

The codes are defined where rows are judged (`converters.py` when a row is read, `processors/`
when it is tokenized; `report.py` holds `unread_column`, for the columns `mapping.py` finds unread).
Their meaning lives here, once:
`lmforge data check` prints it under the report, and the table in data/README.md is this table
(a test keeps the two identical and checks that every code in the code has a row here).
"""

from __future__ import annotations

from dataclasses import dataclass

# Report stages: where a row was judged.
CONVERT = "convert"  # reading the file: the row is turned into a conversation
TOKENIZE = "tokenize"  # rendering the conversation for training
PREDICT = "predict"  # rendering the prompt for batch prediction (do_predict)


@dataclass(frozen=True)
class Reason:
    """One code of the report: `effect` says what happens to the row, `meaning` why, `fix` what to do."""

    code: str
    effect: str
    meaning: str
    fix: str


_DROPPED = "dropped when read"
_TABLE = (
    Reason("missing_column", _DROPPED,
           "The row's message list (the `messages` column) is null or absent.",
           "Give the row its messages, or delete the row."),
    Reason("invalid_messages", _DROPPED,
           "The message list is not a list of objects (a string, or a list of strings).",
           'Write the messages as `[{"from": ..., "value": ...}, ...]`, with the keys the entry\'s `tags` name.'),
    Reason("empty_conversation", _DROPPED,
           "The conversation has no message besides the system prompt.",
           "Add the user turn and the answer, or delete the row."),
    Reason("unknown_role", _DROPPED,
           "A message has a role that none of the entry's `tags` names.",
           "Set `tags` (`user_tag`, `assistant_tag`, ...) to the role names of the file, or fix the message."),
    Reason("invalid_role_order", _DROPPED,
           "The turns do not alternate: messages 1, 3, 5, ... must come from the user (or be tool results), "
           "messages 2, 4, 6, ... from the assistant (or be tool calls).",
           "Reorder, merge or delete messages so that the conversation starts with the user and alternates."),
    Reason("odd_message_count", _DROPPED,
           "The conversation does not end with an answer (an assistant message or a tool call).",
           'Add the answer or delete the last user turn; for preference data set `"ranking": true`.'),
    Reason("even_message_count", _DROPPED,
           "A preference (`ranking`) conversation ends with an answer; it must end with the user turn.",
           "Move the last answer into the `chosen`/`rejected` columns."),
    Reason("invalid_content", _DROPPED,
           "A text value (instruction, input, system prompt, message or history turn) is not text: a list, an "
           "object or true/false.",
           "Make it a string (numbers are read as text)."),
    Reason("invalid_response", _DROPPED,
           "alpaca: the answer (the `response` column, `output` by default) is not text: a list, an object or "
           "true/false.",
           'Make it one string (one row per answer); for preference data use `chosen`/`rejected` with '
           '`"ranking": true`.'),
    Reason("invalid_history", _DROPPED,
           "alpaca: `history` is not a list of `[prompt, response]` pairs.",
           'Write it as `[["question", "answer"], ...]`, or leave it null.'),
    Reason("missing_chosen_rejected", _DROPPED,
           "A preference row lacks its chosen or its rejected answer.",
           "Give both answers, or delete the row."),
    Reason("invalid_ranking_role", _DROPPED,
           "sharegpt/openai preference rows: the chosen or rejected message is not from the assistant.",
           "Give both answers the assistant role (or the tool-call role)."),
    Reason("invalid_tool_call_json", _DROPPED,
           'A tool-call message is not a JSON object `{"name": ..., "arguments": {...}}` (or a list of them).',
           "Fix the JSON of the call."),
    Reason("invalid_tools_json", _DROPPED,
           "The `tools` value is not valid JSON.",
           "Fix the JSON: a list of function definitions."),
    Reason("missing_response", "dropped (training, prediction)",
           "The row has no answer: its response column (`output` by default) is missing or null, or the entry "
           "maps no `response` column. Training learns the answer, and prediction scores against it.",
           'Add the answer or delete the row; if the answers are in another column, map it: '
           '`"response": "<column>"`.'),
    Reason("empty_response", "kept with a warning (training); dropped (prediction)",
           "The answer is an empty string (or only spaces): training teaches the model to end its turn at once "
           "(only the end token is trained); prediction would score against nothing.",
           "Write the answer, or delete the row."),
    Reason("empty_prompt", "kept with a warning (training); dropped (prediction)",
           "The last user turn is empty (alpaca: no instruction and no input): training teaches the answer to "
           "an empty question; prediction would generate from an empty prompt.",
           "Fill in the instruction or the user message, or delete the row."),
    Reason("invalid_turns", "dropped (training, prediction)",
           "The row is not one conversation ending in one answer: a KTO row (`kto_tag`) or a preference row "
           "read by a stage that trains on one answer, or a custom converter's output.",
           "Remove `kto_tag` (or `chosen`/`rejected`) from the `columns` mapping, or use the stage the data is for."),
    Reason("too_long", "dropped (training)",
           "The sample is longer than `cutoff_len` with `drop_overlong: true` (or, packed, it cannot fit a block).",
           "Raise `cutoff_len`, shorten the row, or remove `drop_overlong` to truncate it instead."),
    Reason("no_supervised_tokens", "dropped (training)",
           "Truncation to `cutoff_len` left no token of the answer to train on: the prompt fills the budget.",
           "Raise `cutoff_len`, or shorten the prompt, system prompt or tools."),
    Reason("unsupported_media", "dropped (training)",
           "The row has images or videos, but the template has no multimodal plugin for them (e.g. llama3), or "
           "the model is a text model without an image processor; the log names which.",
           "Use a multimodal model with its template (`template: qwen2_vl`), or remove the `images`/`videos` "
           "column from the dataset_info.json entry to train on the text only."),
    Reason("media_count_mismatch", "dropped (training)",
           "The number of `<image>` (`<video>`) placeholders in the messages differs from the number of images "
           "(videos) the row lists; also a placeholder in a row without media. The placeholders can be renamed "
           "with the IMAGE_PLACEHOLDER / VIDEO_PLACEHOLDER environment variables.",
           "Put one placeholder in the text for each image (video), where the model should see it."),
    Reason("missing_media", "dropped (training)",
           "An image or video file of the row does not exist or cannot be decoded; the log names the file. "
           "Relative paths are read from `media_dir` (default: `dataset_dir`).",
           "Fix the path (or `media_dir`), or replace the broken file."),
    Reason("vision_tokens_cut", "dropped (training)",
           "Truncation to `cutoff_len` would cut into the vision tokens of an image or video (or drop a turn "
           "that holds them); the model needs all of them to match the pixels.",
           "Raise `cutoff_len`, lower `image_max_pixels` / `video_max_pixels`, or shorten the row."),
    Reason("empty_text", "dropped (pt)",
           "stage pt: the row has no text (empty or only spaces).",
           'Delete the row, or map the text column: `"prompt": "<column>"`.'),
    Reason("packing_remainder", "tokens left out (pt)",
           "stage pt with packing: the tokens after the last full `cutoff_len` block of each batch are not "
           "used; reported as a token count, not as rows.",
           "Nothing to fix; a larger `preprocessing_batch_size` leaves fewer of them."),
    Reason("unread_column", "warning (the column, not a row)",
           "A column of the data file is read by no `columns` key of the entry (a `columns` object replaces the "
           "defaults), or by nothing the stage trains on, so its content is ignored.",
           "Map it as the message says, or ignore the warning when the column holds no training data (ids, "
           "sources)."),
)  # fmt: skip
REASONS: dict[str, Reason] = {reason.code: reason for reason in _TABLE}


def explain(code: str) -> str:
    """One line: the meaning of `code` and its fix ("" for a code that is not in the table)."""
    reason = REASONS.get(code)
    return f"{code}: {reason.meaning} Fix: {reason.fix}" if reason else ""


def markdown_table() -> str:
    """The table of data/README.md, generated from `REASONS` (one row per code)."""
    lines = ["| reason | what happens | meaning | fix |", "|---|---|---|---|"]
    for reason in _TABLE:
        cells = (f"`{reason.code}`", reason.effect, reason.meaning, reason.fix)
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)
