"""What every inference engine shares: the loading of tokenizer and template, and prompt rendering.

A backend (transformers in `hf_engine`, vLLM in `vllm_engine`, llama.cpp in `llamacpp_engine`)
says where its model is (`_resolve`), loads it (`_load_model`) and generates (`generate_batch`,
`stream_chat`); `factory.create_engine` picks the backend from `infer_backend`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from lmforge.errors import UserError

if TYPE_CHECKING:
    from lmforge.config import RunConfig
    from lmforge.data.templates import BaseTemplate
    from lmforge.model.resolve import ResolvedModel


@dataclass(frozen=True)
class Media:
    """The images and videos of one conversation, in placeholder order.

    Each item is a file path, a PIL image, or `{"bytes": ...}` (an uploaded file). Conversations
    without a single `<image>`/`<video>` placeholder get them in front of their first user message,
    as LLaMA-Factory's chat does, so a client can send an image without knowing the placeholder.
    """

    images: tuple = ()
    videos: tuple = ()

    def __bool__(self) -> bool:
        return bool(self.images or self.videos)


@dataclass
class Response:
    """One generated answer."""

    text: str
    response_length: int  # generated tokens, stop tokens excluded
    prompt_length: int
    finish_reason: str  # "stop" or "length"


class GenerationWatch:
    """Per-row hooks into one `generate_batch(prompts, watch=...)` call, for engines with `watches_generation`.

    Rows are indices into `prompts`. The engine calls these from the thread that generates, after
    every decoding step: `cancelled` lets a row stop at once (its client went away), `piece` hands
    over the text of a row that `streams` as it grows (never a stop string, nor a part of one), and
    `end` gives a row's final `Response` as soon as that row is finished, before the batch is.
    The API's batcher implements it; the defaults watch nothing.
    """

    def streams(self, row: int) -> bool:
        return False

    def cancelled(self, row: int) -> bool:
        return False

    def piece(self, row: int, text: str) -> None:
        pass

    def end(self, row: int, response: Response) -> None:
        pass


class ChatEngine(ABC):
    """Conversations rendered to prompt ids by the run's template, answered by a backend.

    The constructor resolves the model, loads the tokenizer and template together (exactly as
    training does, so served prompts match trained ones), then lets the backend load its model.
    """

    template: BaseTemplate
    # True when `generate_batch` accepts `watch=GenerationWatch` (token-level streaming and cancellation
    # of each row of a batch); otherwise callers stream with `stream_chat`, one conversation at a time.
    watches_generation: ClassVar[bool] = False
    # True when the backend passes images and videos to a vision-language model (`Media`).
    takes_media: ClassVar[bool] = False

    def __init__(self, cfg: RunConfig):
        from lmforge.model.tokenizer import load_tokenizer_and_template

        self.cfg = cfg
        self.generating = cfg.generate
        self.resolved = self._resolve(cfg)
        self.tokenizer, self.template = load_tokenizer_and_template(cfg.model, cfg.data, self.resolved,
                                                                    padding_side="left")
        self.stop_ids = self.template.stop_token_ids(self.tokenizer)
        self.mm_processor = self._load_mm_processor()  # None: the model takes text only
        self._load_model()

    def _load_mm_processor(self):
        """The model's image/video processor; backends that take images load it."""
        return None

    def _resolve(self, cfg: RunConfig) -> ResolvedModel:
        """Where the model, its adapters, tokenizer and template are; backends check their needs here first."""
        from lmforge.model.resolve import resolve_model

        return resolve_model(cfg)

    @abstractmethod
    def _load_model(self) -> None:
        """Load the backend's model for `self.resolved` (the tokenizer and template are ready)."""

    def prompt_ids(self, messages: Sequence[dict], system: str | None = None, tools: str | None = None,
                   media: Media | None = None) -> list[int]:
        """Token ids of the generation prompt for a conversation ending with a user/observation turn.

        With `media`, each placeholder becomes the vision tokens of its image or video; a media file
        that cannot be read, or a model or template that takes no media, is a `UserError`.
        """
        if not messages or messages[-1]["role"] not in ("user", "observation"):
            raise UserError("The conversation must end with a user (or tool result) message.")
        if system is None:
            system = self.generating.system
        if not media:
            return self.template.encode_prompt(self.tokenizer, list(messages), system, tools)
        from lmforge.chat.media import media_tokens, with_placeholders

        messages = with_placeholders(messages, media)
        tokens = media_tokens(self, messages, media)
        return self.template.encode_prompt(self.tokenizer, messages, system, tools, media=tokens)

    def chat(self, messages: Sequence[dict], system: str | None = None, tools: str | None = None,
             media: Media | None = None, **overrides) -> Response:
        """Generate one complete answer."""
        ids = self.prompt_ids(messages, system, tools, media)
        return self.generate_batch([ids], media=[media] if media else None, **overrides)[0]

    @abstractmethod
    def generate_batch(self, prompts: list[list[int]], *, media: Sequence[Media | None] | None = None,
                       **overrides) -> list[Response]:
        """Answers for several prompts (token ids), generated together where the backend can.

        `media[i]` is the `Media` that `prompt_ids` expanded into `prompts[i]` (None for a text prompt).
        """

    @abstractmethod
    def stream_chat(self, messages: Sequence[dict], system: str | None = None, tools: str | None = None,
                    media: Media | None = None, **overrides) -> Iterator[str]:
        """Yield the answer piece by piece (stop strings are never yielded)."""


def cut_at_stop(text: str, stop: Sequence[str]) -> int | None:
    """Where the first stop string starts in `text`, or None."""
    positions = [text.find(s) for s in stop if s and s in text]
    return min(positions) if positions else None
