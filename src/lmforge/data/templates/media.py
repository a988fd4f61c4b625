"""Media placeholders inside message text, replaced by the vision tokens one conversation expands them to.

The expansion (`<|vision_start|><|image_pad|>...<|vision_end|>`) is made of control tokens, and the
template encodes conversation text with control tokens disarmed (a user typing "<|im_end|>" gets
plain text). So the expansion cannot simply be written into the message: it is spliced in here as
template text, and only at the placeholders, while the words around them stay content.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .slots import Piece


@dataclass(frozen=True)
class MediaTokens:
    """What each placeholder of one conversation becomes: the i-th `image_placeholder` -> `images[i]`."""

    image_placeholder: str
    video_placeholder: str
    images: tuple[str, ...] = ()
    videos: tuple[str, ...] = ()

    def cursor(self) -> MediaCursor:
        """A fresh walk over the expansions, for one rendering of the conversation."""
        return MediaCursor(self)


class MediaCursor:
    """Hands out the expansions in message order, across all messages of a conversation."""

    def __init__(self, media: MediaTokens) -> None:
        self.media = media
        self.next_image = 0
        self.next_video = 0
        self.pattern = re.compile(f"({re.escape(media.image_placeholder)}|{re.escape(media.video_placeholder)})")

    def pieces(self, text: str) -> tuple[Piece, ...]:
        """`text` as content pieces, each placeholder replaced by its expansion as template text.

        A placeholder beyond the expansions stays plain text; the processor counts placeholders before
        encoding, so that only happens for callers that skipped the check.
        """
        pieces: list[Piece] = []
        for i, part in enumerate(self.pattern.split(text)):
            if i % 2 == 0:
                if part:
                    pieces.append(Piece(part, True))
                continue
            expansion = self._take(part)
            pieces.append(Piece(part, True) if expansion is None else Piece(expansion, False))
        return tuple(pieces)

    def _take(self, placeholder: str) -> str | None:
        if placeholder == self.media.image_placeholder and self.next_image < len(self.media.images):
            self.next_image += 1
            return self.media.images[self.next_image - 1]
        if placeholder == self.media.video_placeholder and self.next_video < len(self.media.videos):
            self.next_video += 1
            return self.media.videos[self.next_video - 1]
        return None
