"""Rows with images or videos: judge them one by one, and give the kept ones their vision tokens.

LLaMA-Factory raises on the first bad media row and stops the run. Here each row is judged on its
own and a bad one is dropped under a reason code with its row number, like every other bad row:
`unsupported_media` (the template, or the model, takes no media of that kind), `media_count_mismatch`
(the placeholders do not match the list), `missing_media` (a file is missing or unreadable).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lmforge.data.templates.mm_plugin import (
    IMAGES,
    VIDEOS,
    MediaReadError,
    get_mm_plugin,
    placeholders,
)
from lmforge.data.processors.base import (
    MEDIA_COUNT_MISMATCH,
    MISSING_MEDIA,
    UNSUPPORTED_MEDIA,
)
from lmforge.data.templates.media import MediaTokens
from lmforge.utils.logging import get_logger

logger = get_logger(__name__)

KINDS = {IMAGES: "_images", VIDEOS: "_videos"}


class MediaJudge:
    """Decides what a row's media means for one run: its `MediaTokens`, no media (None), or a drop reason.

    `template.mm_plugin` names the plugin; `mm_processor` is the model's processor (None for a text model).
    Why a reason applies (which template, which file) is logged once per kind of problem, since the
    report itself carries only the code and the row numbers.
    """

    def __init__(self, template, mm_processor, data_args) -> None:
        self.template_name = getattr(template, "name", "?")
        self.plugin = get_mm_plugin(getattr(template, "mm_plugin", None))
        self.processor = mm_processor
        self.data_args = data_args
        self._logged: set[str] = set()

    @property
    def active(self) -> bool:
        """Whether placeholders are checked in rows without media (a multimodal template on a multimodal model)."""
        return self.processor is not None and (self.plugin.supports(IMAGES) or self.plugin.supports(VIDEOS))

    def media(self, batch: Mapping[str, Sequence[Any]], index: int) -> dict[str, list[Any]]:
        """The row's media lists, by kind (`audios` are not read: no plugin takes them)."""
        found = {}
        for kind, column in KINDS.items():
            value = batch[column][index] if column in batch else None
            found[kind] = list(value or [])
        return found

    def judge(self, messages: Sequence[Mapping[str, Any]], media: Mapping[str, list[Any]]) -> MediaTokens | None | str:
        """`MediaTokens` for a valid multimodal row, None for a row with neither media nor placeholders, or a reason."""
        if not any(media.values()) and not self.active:
            return None  # text rows of text runs: exactly as before multimodal support
        for kind, items in media.items():
            if items and not self.plugin.supports(kind):
                self._log_once(kind, f"Template '{self.template_name}' does not support {kind}: rows with {kind} are "
                                     f"dropped ({UNSUPPORTED_MEDIA}). Use a multimodal template such as qwen2_vl.")
                return UNSUPPORTED_MEDIA
            if items and self.processor is None:
                self._log_once(kind, f"The model has no image processor, so rows with {kind} are dropped "
                                     f"({UNSUPPORTED_MEDIA}). Train a multimodal model (Qwen2-VL) on them.")
                return UNSUPPORTED_MEDIA
        counts = self.plugin.count_placeholders(messages)
        for kind, items in media.items():
            if counts[kind] != len(items):
                self._log_once(f"count-{kind}", f"The number of {kind} must equal the number of "
                                                f"{placeholders()[kind]} placeholders in the messages; rows where they "
                                                f"differ are dropped ({MEDIA_COUNT_MISMATCH}).")
                return MEDIA_COUNT_MISMATCH
        if not any(media.values()):
            return None
        try:
            return self.plugin.media_tokens(media[IMAGES], media[VIDEOS], self.processor, self.data_args)
        except MediaReadError as err:
            self._log_once(f"read-{err}", f"Dropped a row ({MISSING_MEDIA}): {err}.")
            return MISSING_MEDIA

    def _log_once(self, key: str, message: str) -> None:
        if key not in self._logged and len(self._logged) < 20:
            self._logged.add(key)
            logger.warning(message)
