"""The chat tab: a Gradio chat with an inference engine, shared by `lmforge webchat` and LLaMA Board.

`render_chat` lays the components out inside whatever Blocks/Tab is open, so a bigger page can embed
it; `build_chat_page` wraps it in a page of its own. The conversation lives in a `gr.State` of plain
{"role", "content"} dicts (what the engine takes), and the chatbot only displays it: the chatbot's own
value comes back from the browser in Gradio's richer message format, which the engine does not read.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

from lmforge.errors import UserError

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


def render_chat(engine) -> dict[str, Any]:
    """Add the chat components to the open Blocks context; return them by name (for tests and embedding)."""
    defaults = engine.generating
    history = gr.State([])
    chatbot = gr.Chatbot(label="Chat", elem_id="chatbot", height=480, buttons=["copy"], feedback_options=None)
    with gr.Row(equal_height=True):
        query = gr.Textbox(show_label=False, placeholder="Type a message and press Enter", lines=2, max_lines=8,
                           scale=8, elem_id="query", autofocus=True)
        send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
    with gr.Accordion("Settings", open=True):
        with gr.Row():
            with gr.Column(scale=3):
                system = gr.Textbox(label="System prompt", value=defaults.system or "", lines=3,
                                    placeholder="Empty: the template's default system prompt", elem_id="system")
            with gr.Column(scale=2):
                max_new_tokens = gr.Slider(*_widen(MAX_NEW_TOKENS_RANGE, defaults.max_new_tokens), step=1,
                                           value=defaults.max_new_tokens, label="Maximum new tokens",
                                           elem_id="max_new_tokens")
                top_p = gr.Slider(*_widen(TOP_P_RANGE, defaults.top_p), step=0.01, value=defaults.top_p,
                                  label="Top-p", interactive=defaults.do_sample, elem_id="top_p")
                temperature = gr.Slider(*_widen(TEMPERATURE_RANGE, defaults.temperature), step=0.01,
                                        value=defaults.temperature, label="Temperature",
                                        interactive=defaults.do_sample, elem_id="temperature")
                with gr.Row():
                    do_sample = gr.Checkbox(label="Sample (off: greedy)", value=defaults.do_sample,
                                            elem_id="do_sample")
                    clear = gr.Button("Clear history", variant="secondary", elem_id="clear")

    def add_user_turn(text: str, messages: list[dict]):
        text = text.strip()
        if not text:
            return gr.update(), gr.update(), messages, messages
        messages = [*messages, {"role": "user", "content": text}]
        # Locked until the answer is complete, so that a second message cannot interleave with the stream.
        return gr.update(value="", interactive=False), gr.update(interactive=False), messages, messages

    def answer(messages: list[dict], system_prompt: str, max_tokens: float, p: float, temp: float,
               sample: bool) -> Iterator[tuple[list[dict], list[dict]]]:
        if not messages or messages[-1]["role"] != "user":
            yield messages, messages
            return
        text = ""
        shown = [*messages, {"role": "assistant", "content": text}]
        yield shown, messages
        try:
            pieces = engine.stream_chat(messages, system=system_prompt.strip() or None,
                                        max_new_tokens=int(max_tokens), top_p=p, temperature=temp,
                                        do_sample=bool(sample))
            for piece in pieces:
                text += piece
                # A fresh list each time: Gradio diffs consecutive outputs and must not see one object mutate.
                shown = [*messages, {"role": "assistant", "content": text}]
                yield shown, shown
        except UserError as err:
            raise gr.Error(str(err)) from None

    def unlock():
        return gr.update(interactive=True), gr.update(interactive=True)

    def reset():
        return [], [], gr.update(value="", interactive=True), gr.update(interactive=True)

    inputs = [history, system, max_new_tokens, top_p, temperature, do_sample]
    turn = gr.on([query.submit, send.click], add_user_turn, [query, history], [query, send, chatbot, history],
                 queue=False, api_visibility="private")
    reply = turn.then(answer, inputs, [chatbot, history], concurrency_limit=1, api_name="chat",
                      show_progress="minimal")
    reply.then(unlock, None, [query, send], queue=False, api_visibility="private")
    # Clearing also stops an answer that is still streaming (its tokens would otherwise refill the chat).
    clear.click(reset, None, [chatbot, history, query, send], cancels=[reply], queue=False, api_visibility="private")
    do_sample.change(lambda on: (gr.update(interactive=on), gr.update(interactive=on)), do_sample,
                     [top_p, temperature], queue=False, api_visibility="private")
    return dict(chatbot=chatbot, history=history, query=query, send=send, system=system,
                max_new_tokens=max_new_tokens, top_p=top_p, temperature=temperature, do_sample=do_sample,
                clear=clear)


def _widen(bounds: tuple[float, float], value: float | None) -> tuple[float, float]:
    low, high = bounds
    if value is None:
        return low, high
    return min(low, value), max(high, value)
