"""How to decode: sampling, lengths and penalties for chat, api, predict and webchat."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmforge.config.readers import GENERATION, SERVING


@dataclass
class GeneratingArguments:
    """Generation settings (LLaMA-Factory's names and defaults)."""

    do_sample: bool = field(
        default=True, metadata={"help": "Sample; otherwise greedy decoding.", "read_by": (GENERATION,)}
    )
    temperature: float = field(default=0.95, metadata={"help": "Sampling temperature.", "read_by": (GENERATION,)})
    top_p: float = field(
        default=0.7,
        metadata={"help": "Nucleus sampling: keep the smallest set with this mass.", "read_by": (GENERATION,)},
    )
    top_k: int = field(
        default=50, metadata={"help": "Keep the k most likely tokens when sampling.", "read_by": (GENERATION,)}
    )
    num_beams: int = field(
        default=1, metadata={"help": "Beam search width (1: no beam search).", "read_by": (GENERATION,)}
    )
    max_length: int = field(
        default=1024, metadata={"help": "Maximum total length; ignored when max_new_tokens is set.", "read_by": ()}
    )
    max_new_tokens: int = field(
        default=1024, metadata={"help": "Maximum number of generated tokens.", "read_by": (GENERATION,)}
    )
    repetition_penalty: float = field(
        default=1.0, metadata={"help": "Penalty on repeated tokens (1.0: none).", "read_by": (GENERATION,)}
    )
    length_penalty: float = field(
        default=1.0, metadata={"help": "Beam search length penalty.", "read_by": (GENERATION,)}
    )
    skip_special_tokens: bool = field(
        default=True, metadata={"help": "Drop special tokens when decoding.", "read_by": (GENERATION,)}
    )
    stop: list[str] | None = field(
        default=None, metadata={"help": "Stop strings, comma-separated.", "read_by": (GENERATION,)}
    )
    system: str | None = field(
        default=None, metadata={"help": "System prompt for chat (default: the template's).", "read_by": (SERVING,)}
    )

    def to_generate_kwargs(self) -> dict:
        """Keyword arguments for transformers' `generate`."""
        kwargs = dict(
            do_sample=self.do_sample,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            num_beams=self.num_beams,
            max_new_tokens=self.max_new_tokens,
            repetition_penalty=self.repetition_penalty,
            length_penalty=self.length_penalty,
        )
        if not self.do_sample:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs
