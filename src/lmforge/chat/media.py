"""Images and videos in a served conversation: checked, expanded into vision tokens, turned into pixels.

The same plugin and processor that tokenized the training rows (`data.mm_plugin`) do it here, so a
served image becomes exactly the tokens and pixels it became in training. Every problem is one
`UserError` naming it: a template or a model that takes no media, placeholders that do not match
the files, a file that cannot be read. The API maps these to a 400, the chats print them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lmforge.data.templates.mm_plugin import IMAGES, VIDEOS, MediaReadError, get_mm_plugin, placeholders
from lmforge.errors import UserError

if TYPE_CHECKING:
    from lmforge.chat.base import ChatEngine, Media
    from lmforge.data.templates.media import MediaTokens


def _kinds(media: Media) -> dict[str, tuple]:
    return {IMAGES: tuple(media.images), VIDEOS: tuple(media.videos)}


def with_placeholders(messages: Sequence[dict], media: Media) -> list[dict]:
    """The messages, with one placeholder per file put in front of the first user message when none has any.

    A conversation that already places its placeholders is left as it is (their count is checked later).
    """
    messages = [dict(message) for message in messages]
    marks = placeholders()
    texts = [message.get("content") or "" for message in messages]
    if any(mark in text for text in texts for mark in marks.values()):
        return messages
    first = next((i for i, message in enumerate(messages) if message["role"] == "user"), 0)
    lead = "".join(marks[kind] * len(items) for kind, items in _kinds(media).items())
    messages[first]["content"] = lead + (messages[first].get("content") or "")
    return messages


def check_supported(engine: ChatEngine, media: Media) -> None:
    """Refuse media the engine's backend, template or model cannot take, in one line."""
    plugin = get_mm_plugin(getattr(engine.template, "mm_plugin", None))
    for kind, items in _kinds(media).items():
        if not items:
            continue
        if not engine.takes_media:
            raise UserError(f"infer_backend: {engine.cfg.model.infer_backend} takes no {kind} in lmforge; "
                            "use infer_backend: huggingface to chat about images and videos.")
        if not plugin.supports(kind):
            raise UserError(f"Template '{getattr(engine.template, 'name', '?')}' does not support {kind}. Use a "
                            "vision-language model with its template (template: qwen2_vl for Qwen2-VL and Qwen2.5-VL).")
        if engine.mm_processor is None:
            raise UserError(f"The model '{engine.resolved.base}' is a text-only model and cannot read {kind}; serve "
                            "a vision-language model (Qwen2-VL, Qwen2.5-VL) to chat about them.")


def refuse_media(engine: ChatEngine, media: Sequence[Media | None] | None) -> None:
    """For backends without media support: refuse a batch that has any."""
    for row in media or ():
        if row:
            check_supported(engine, row)


def media_tokens(engine: ChatEngine, messages: Sequence[dict], media: Media) -> MediaTokens:
    """The vision tokens each placeholder of `messages` expands to, after checking the media against them."""
    check_supported(engine, media)
    plugin = get_mm_plugin(engine.template.mm_plugin)
    counts = plugin.count_placeholders(messages)
    for kind, items in _kinds(media).items():
        if counts[kind] != len(items):
            raise UserError(f"The conversation has {counts[kind]} {placeholders()[kind]} placeholder(s) but "
                            f"{len(items)} {kind}; give one placeholder per file, or none at all to put them "
                            "in front of the first message.")
    try:
        return plugin.media_tokens(media.images, media.videos, engine.mm_processor, engine.cfg.data)
    except MediaReadError as err:
        raise UserError(f"{str(err)[:1].upper()}{str(err)[1:]}.") from None


def model_inputs(engine: ChatEngine, media: Sequence[Media | None], input_ids) -> dict[str, Any]:
    """The pixel inputs of a generation batch (all rows' images in row order) and `mm_token_type_ids`."""
    images = [item for row in media if row for item in row.images]
    videos = [item for row in media if row for item in row.videos]
    if not images and not videos:
        return {}
    plugin = get_mm_plugin(engine.template.mm_plugin)
    try:
        inputs = plugin.mm_inputs(images, videos, engine.mm_processor, engine.cfg.data)
    except MediaReadError as err:  # the file changed since the prompt was made
        raise UserError(f"{str(err)[:1].upper()}{str(err)[1:]}.") from None
    inputs["mm_token_type_ids"] = plugin.token_type_ids(input_ids, engine.tokenizer)
    return inputs
