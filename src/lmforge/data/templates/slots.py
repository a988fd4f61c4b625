"""Slots: the pieces a template is written in, and how rendered slots become text and token ids.

A slot is a plain string with `{{name}}` placeholders, a named token (`Token("<x>")`, converted
with `convert_tokens_to_ids`), or the tokenizer's own BOS/EOS (`BOS`, `EOS`), resolved against the
tokenizer at encode time because `fix_tokenizer` may replace the EOS.

Rendering a formatter gives a list of elements. A string element is a `Chunk`: a tuple of
`Piece(text, is_content)` so that the encoder knows which characters came from the conversation
(user, assistant, system, observation text) and which from the template. LLaMA-Factory encodes each
string element with `tokenizer.encode(elem, add_special_tokens=False)`; so do we, except that
special-token text inside conversation content is encoded as plain text (see `encode_elements`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

_PLACEHOLDER = re.compile(r"\{\{([a-zA-Z_][a-zA-Z0-9_]*)\}\}")


@dataclass(frozen=True)
class Token:
    """A named token, converted with `tokenizer.convert_tokens_to_ids` (LLaMA-Factory's `{"token": x}`)."""

    text: str


@dataclass(frozen=True)
class Special:
    """The tokenizer's BOS or EOS token (LLaMA-Factory's `{"bos_token"}` / `{"eos_token"}`)."""

    name: str  # "bos_token" or "eos_token"


BOS = Special("bos_token")
EOS = Special("eos_token")

Slot = str | Token | Special


class Piece(NamedTuple):
    """A run of rendered text; `is_content` marks text that came from the conversation."""

    text: str
    is_content: bool


class Chunk(NamedTuple):
    """A rendered string element: the pieces it was made from."""

    pieces: tuple[Piece, ...]

    @property
    def text(self) -> str:
        return "".join(piece.text for piece in self.pieces)


Element = Chunk | Token | Special
# A placeholder value: plain conversation text, or pieces already split into template/content text.
Value = str | Sequence[Piece] | None


def literal(text: str) -> Chunk:
    """A chunk of template text (never protected as content)."""
    return Chunk((Piece(text, False),))


def _as_pieces(value: Value) -> tuple[Piece, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (Piece(value, True),) if value else ()
    return tuple(value)


@dataclass(frozen=True)
class Formatter:
    """A list of slots; `apply` substitutes `{{name}}` placeholders and returns elements."""

    slots: tuple[Slot, ...] = ()

    def __post_init__(self) -> None:
        for slot in self.slots:
            if not isinstance(slot, (str, Token, Special)):
                raise TypeError(f"A slot must be a string, Token or Special, got {slot!r}.")

    @property
    def placeholders(self) -> frozenset[str]:
        """The placeholder names used by the string slots."""
        names: set[str] = set()
        for slot in self.slots:
            if isinstance(slot, str):
                names.update(_PLACEHOLDER.findall(slot))
        return frozenset(names)

    def apply(self, **values: Value) -> list[Element]:
        """Render the slots; like LLaMA-Factory, each name replaces its first placeholder per slot."""
        elements: list[Element] = []
        for slot in self.slots:
            if isinstance(slot, str):
                elements.append(Chunk(_substitute(slot, values)))
            else:
                elements.append(slot)
        return elements


def _substitute(slot: str, values: dict[str, Value]) -> tuple[Piece, ...]:
    pieces: list[Piece] = []
    used: set[str] = set()
    cursor = 0
    for match in _PLACEHOLDER.finditer(slot):
        name = match.group(1)
        if name not in values or name in used:
            continue
        used.add(name)
        if match.start() > cursor:
            pieces.append(Piece(slot[cursor : match.start()], False))
        pieces.extend(_as_pieces(values[name]))
        cursor = match.end()
    if cursor < len(slot):
        pieces.append(Piece(slot[cursor:], False))
    return tuple(pieces)


def split_slot(slot: str, placeholder: str = "content") -> tuple[str, str | None]:
    """Split a slot string at its first `{{placeholder}}`: (before, after) or (slot, None) if absent."""
    marker = "{{" + placeholder + "}}"
    if marker not in slot:
        return slot, None
    before, after = slot.split(marker, 1)
    return before, after


def special_token_text(tokenizer, slot: Special) -> str:
    """The text of a BOS/EOS slot, or '' when the tokenizer has no such token (as LLaMA-Factory skips it)."""
    if slot.name == "bos_token":
        return tokenizer.bos_token if tokenizer.bos_token_id is not None else ""
    return tokenizer.eos_token if tokenizer.eos_token_id is not None else ""


def render_elements(tokenizer, elements: Iterable[Element]) -> str:
    """The text of rendered elements, with BOS/EOS/named tokens written as their token strings."""
    parts: list[str] = []
    for element in elements:
        if isinstance(element, Chunk):
            parts.append(element.text)
        elif isinstance(element, Token):
            parts.append(element.text)
        else:
            parts.append(special_token_text(tokenizer, element))
    return "".join(parts)


def control_tokens(tokenizer) -> tuple[str, ...]:
    """The tokenizer's special (control) added tokens, longest first for leftmost-longest matching."""
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    names = {token.content for token in decoder.values() if getattr(token, "special", False)}
    names.update(t for t in getattr(tokenizer, "all_special_tokens", []) if t)
    return tuple(sorted(names, key=lambda t: (-len(t), t)))


def encode_elements(tokenizer, elements: Iterable[Element], controls: tuple[str, ...] | None = None) -> list[int]:
    """Token ids of rendered elements, element by element as LLaMA-Factory does.

    A chunk whose content contains no control-token text is encoded exactly like LLaMA-Factory
    (`tokenizer.encode(text, add_special_tokens=False)`). When conversation content contains the text
    of a control token (a user typing "<|im_end|>"), only the template's own control tokens are
    kept as control ids; the content is encoded as plain text.
    """
    if controls is None:
        controls = control_tokens(tokenizer)
    ids: list[int] = []
    for element in elements:
        if isinstance(element, Chunk):
            ids.extend(_encode_chunk(tokenizer, element, controls))
        elif isinstance(element, Token):
            ids.append(tokenizer.convert_tokens_to_ids(element.text))
        elif element.name == "bos_token":
            if tokenizer.bos_token_id is not None:
                ids.append(tokenizer.bos_token_id)
        elif tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
    return ids


@lru_cache(maxsize=64)
def _by_prefix(controls: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    groups: dict[str, list[str]] = {}
    for token in controls:
        groups.setdefault(token[:2], []).append(token)
    return {prefix: tuple(tokens) for prefix, tokens in groups.items()}


def _has_control(text: str, controls: tuple[str, ...]) -> bool:
    # Grouping by a two-character prefix keeps this cheap for Llama-3's 256 reserved tokens.
    return any(
        prefix in text and any(token in text for token in tokens) for prefix, tokens in _by_prefix(controls).items()
    )


def _encode_chunk(tokenizer, chunk: Chunk, controls: tuple[str, ...]) -> list[int]:
    text = chunk.text
    if not text:
        return []
    if not any(piece.is_content and _has_control(piece.text, controls) for piece in chunk.pieces):
        return tokenizer.encode(text, add_special_tokens=False)

    # Tokenizers split on control tokens before anything else, so encoding the runs between the
    # template's own control tokens separately gives the same ids as one encode would.
    pattern = re.compile("|".join(re.escape(token) for token in controls))
    runs: list[tuple[str, bool]] = []  # (text, is_control_token)
    for piece in chunk.pieces:
        if piece.is_content:
            runs.append((piece.text, False))
            continue
        cursor = 0
        for match in pattern.finditer(piece.text):
            if match.start() > cursor:
                runs.append((piece.text[cursor : match.start()], False))
            runs.append((match.group(0), True))
            cursor = match.end()
        if cursor < len(piece.text):
            runs.append((piece.text[cursor:], False))

    ids: list[int] = []
    buffer = ""
    for run, is_control in runs:
        if not is_control:
            buffer += run
            continue
        if buffer:
            ids.extend(tokenizer.encode(buffer, add_special_tokens=False, split_special_tokens=True))
            buffer = ""
        ids.append(tokenizer.convert_tokens_to_ids(run))
    if buffer:
        ids.extend(tokenizer.encode(buffer, add_special_tokens=False, split_special_tokens=True))
    return ids
