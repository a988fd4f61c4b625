"""The chat tab: a Gradio chat with an inference engine, shared by `lmforge webchat` and LLaMA Board.

`render_chat` lays the components out inside whatever Blocks/Tab is open, so a bigger page can embed
it; `build_chat_page` wraps it in a page of its own. The conversation lives in a `gr.State` of plain
{"role", "content"} dicts (what the engine takes), and the chatbot only displays it: the chatbot's own
value comes back from the browser in Gradio's richer message format, which the engine does not read.

With a vision-language model an Image and a Video upload sit under the message box. What is uploaded
goes with the next message: its placeholder is put in front of the text and the file is kept in
that message's "images"/"videos" list, so the whole conversation's files reach the engine in order.
"""

from __future__ import annotations

import html
import secrets
from collections.abc import Iterator
from typing import Any

import gradio as gr

from lmforge.errors import UserError
from lmforge.utils.logging import get_logger

logger = get_logger(__name__)

GENERIC_ERROR = ("The answer could not be generated (an error on the server, reference {reference}). "
                 "The server log has the details.")

# Slider ranges (LLaMA-Factory's); a configured default outside a range widens it rather than being clipped.
MAX_NEW_TOKENS_RANGE = (8, 4096)
TOP_P_RANGE = (0.01, 1.0)
TEMPERATURE_RANGE = (0.01, 1.5)


def build_chat_page(engine, heading: str | None = None) -> gr.Blocks:
    """A page with one chat on `engine` (an `HFEngine` or anything with `stream_chat` and `generating`)."""
    with gr.Blocks(title="lmforge webchat") as page:
        gr.Markdown(heading or "## lmforge webchat")
        render_chat(engine)
    return page


def render_chat(engine, with_tools: bool = False, with_media: bool | None = None) -> dict[str, Any]:
    """Add the chat components to the open Blocks context; return them by name (for tests and embedding).

    `with_tools`: a Tools (JSON) box whose function definitions go with every message (checked first).
    `with_media`: the Image and Video uploads (default: when the engine's model takes images)."""
    if with_media is None:
        with_media = getattr(engine, "mm_processor", None) is not None
    defaults = engine.generating
    history = gr.State([])
    chatbot = gr.Chatbot(label="Chat", elem_id="chatbot", height=480, buttons=["copy"], feedback_options=None)
    with gr.Row(equal_height=True):
        query = gr.Textbox(show_label=False, placeholder="Type a message and press Enter", lines=1, max_lines=8,
                           scale=8, elem_id="query", autofocus=True)
        with gr.Column(scale=1, min_width=180):
            send = gr.Button("Send", variant="primary", elem_id="send")
            clear = gr.Button("Clear history", variant="secondary", elem_id="clear")
    with gr.Row(visible=with_media) as media_row:
        image = gr.Image(label="Image (goes with the next message)", type="filepath", sources=["upload"],
                         elem_id="image", height=160)
        video = gr.Video(label="Video (goes with the next message)", sources=["upload"], elem_id="video", height=160)
    with gr.Accordion("Generation settings", open=True):
        with gr.Row():
            with gr.Column(scale=3):
                system = gr.Textbox(label="System prompt", value=defaults.system or "", lines=6,
                                    placeholder="Empty: the template's default system prompt", elem_id="system")
                tools = gr.Textbox(label="Tools (JSON)", lines=4, elem_id="tools", visible=with_tools,
                                   placeholder='[{"name": "...", "description": "...", "parameters": {...}}]')
            with gr.Column(scale=2):
                do_sample = gr.Checkbox(label="Sample (off: greedy decoding)", value=defaults.do_sample,
                                        elem_id="do_sample")
                max_new_tokens = gr.Slider(*_widen(MAX_NEW_TOKENS_RANGE, defaults.max_new_tokens), step=1,
                                           value=defaults.max_new_tokens, label="Maximum new tokens",
                                           elem_id="max_new_tokens")
                # Top-p and temperature only matter when sampling; greyed out otherwise.
                top_p = gr.Slider(*_widen(TOP_P_RANGE, defaults.top_p), step=0.01, value=defaults.top_p,
                                  label="Top-p", interactive=defaults.do_sample, elem_id="top_p")
                temperature = gr.Slider(*_widen(TEMPERATURE_RANGE, defaults.temperature), step=0.01,
                                        value=defaults.temperature, label="Temperature",
                                        interactive=defaults.do_sample, elem_id="temperature")

    def answer(*settings) -> Iterator[tuple[list[dict], list[dict]]]:
        for conversation in stream_answer(engine, *settings):
            yield display(conversation), conversation  # to the chatbot and to the history

    def unlock():
        return gr.update(interactive=True), gr.update(interactive=True)

    def reset():
        return [], [], gr.update(value="", interactive=True), gr.update(interactive=True), None, None

    inputs = [history, system, max_new_tokens, top_p, temperature, do_sample, tools]
    turn = gr.on([query.submit, send.click], add_user_turn, [query, history, image, video],
                 [query, send, chatbot, history, image, video], queue=False, api_visibility="private")
    reply = turn.then(answer, inputs, [chatbot, history], concurrency_limit=1, api_name="chat",
                      show_progress="minimal")
    reply.then(unlock, None, [query, send], queue=False, api_visibility="private")
    # Gradio runs .then() only when the answer succeeded (gradio-app/gradio#4113): without this, an
    # error would leave the input locked for good.
    reply.failure(unlock, None, [query, send], queue=False, api_visibility="private")
    # Clearing (our button or the chatbot's own trash icon) also stops an answer that is still streaming:
    # its tokens would otherwise refill the chat.
    gr.on([clear.click, chatbot.clear], reset, None, [chatbot, history, query, send, image, video], cancels=[reply],
          queue=False, api_visibility="private")
    do_sample.change(lambda on: (gr.update(interactive=on), gr.update(interactive=on)), do_sample,
                     [top_p, temperature], queue=False, api_visibility="private")
    return dict(chatbot=chatbot, history=history, query=query, send=send, system=system, tools=tools,
                max_new_tokens=max_new_tokens, top_p=top_p, temperature=temperature, do_sample=do_sample,
                clear=clear, image=image, video=video, media_row=media_row)


def add_user_turn(text: str, messages: list[dict], image: str | None = None, video: str | None = None):
    """Append the typed message (with the uploaded image/video) to the history; lock the input until the
    answer is complete."""
    from lmforge.data.templates.mm_plugin import placeholders

    text = text.strip()
    if not text:
        return gr.update(), gr.update(), display(messages), messages, gr.update(), gr.update()
    message: dict[str, Any] = {"role": "user", "content": text}
    marks = placeholders()
    for kind, path in (("images", image), ("videos", video)):
        if path:
            message[kind] = [path]
            if marks[kind] not in text:
                message["content"] = marks[kind] + message["content"]
    messages = [*messages, message]
    # Locked, so that a second message cannot interleave with the answer being streamed.
    return (gr.update(value="", interactive=False), gr.update(interactive=False), display(messages), messages,
            None, None)


def display(messages: list[dict]) -> list[dict]:
    """The chatbot's view of the history: each uploaded file shown as itself, then the text without placeholders."""
    from lmforge.data.templates.mm_plugin import placeholders

    shown: list[dict] = []
    for message in messages:
        files = [*message.get("images", ()), *message.get("videos", ())]
        text = message["content"]
        if files:
            for mark in placeholders().values():
                text = text.replace(mark, "")
        shown += [{"role": message["role"], "content": {"path": path}} for path in files]
        shown.append({"role": message["role"], "content": text})
    return shown


def engine_input(messages: list[dict]):
    """The messages as the engine takes them ({role, content}) and the conversation's `Media` (None without)."""
    from lmforge.chat.base import Media

    images = tuple(path for message in messages for path in message.get("images", ()))
    videos = tuple(path for message in messages for path in message.get("videos", ()))
    plain = [{"role": message["role"], "content": message["content"]} for message in messages]
    return plain, Media(images, videos) or None


def stream_answer(engine, messages: list[dict], system_prompt: str, max_new_tokens: float, top_p: float,
                  temperature: float, do_sample: bool, tools: str = "") -> Iterator[list[dict]]:
    """Yield the conversation after each generated piece, ending with the answer so far.

    An empty assistant message comes first, so that the history alternates even if nothing is generated.
    An error becomes a message on the page (gr.Error): a UserError's own text, for any other
    exception a generic text with a reference also written, with the traceback, to the server log.
    """
    if not messages or messages[-1]["role"] != "user":
        yield messages
        return
    text = ""
    yield [*messages, {"role": "assistant", "content": text}]
    try:
        tools_json = check_tools(tools)
        plain, media = engine_input(messages)
        extra = {"media": media} if media else {}
        pieces = engine.stream_chat(plain, system=system_prompt.strip() or None, tools=tools_json, **extra,
                                    max_new_tokens=int(max_new_tokens), top_p=top_p, temperature=temperature,
                                    do_sample=bool(do_sample))
        for piece in pieces:
            text += piece
            # A fresh list each time: Gradio diffs consecutive outputs and must not see one object mutate.
            yield [*messages, {"role": "assistant", "content": text}]
    except UserError as err:
        # Something the user can change (the prompt, a setting): lmforge's own message, as the CLI prints it.
        logger.warning(f"webchat: {err}")
        raise gr.Error(html.escape(str(err)), print_exception=False) from None
    except Exception:
        # A bug or a failing backend: its text may hold paths or internals, so the page gets a short
        # message and a reference that finds the traceback in the server log.
        reference = secrets.token_hex(4)
        logger.exception(f"webchat: generating an answer failed (reference {reference})")
        raise gr.Error(GENERIC_ERROR.format(reference=reference), print_exception=False) from None


def check_tools(text: str | None) -> str | None:
    """The Tools box as the JSON text the templates take, None when empty; UserError when it is not a list of
    function definitions."""
    import json

    if not (text or "").strip():
        return None
    try:
        tools = json.loads(text)
    except ValueError as err:
        raise UserError(f"Tools (JSON) is not valid JSON: {err}.") from None
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list) or not all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in tools):
        raise UserError('Tools (JSON) must be a list of function definitions, each with a "name" (and '
                        '"description", "parameters").')
    return json.dumps(tools, ensure_ascii=False)


def _widen(bounds: tuple[float, float], value: float | None) -> tuple[float, float]:
    low, high = bounds
    if value is None:
        return low, high
    return min(low, value), max(high, value)
