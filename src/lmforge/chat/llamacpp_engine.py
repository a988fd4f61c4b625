"""The llama.cpp inference engine (`infer_backend: llamacpp`): serves a GGUF file through llama-cpp-python.

`model_name_or_path` is a `.gguf` file, or a folder holding exactly one (an `lmforge export` folder).
Prompts are rendered and tokenized exactly as the transformers engine does it (the run's template,
the tokenizer next to the GGUF or the one inside it), so both engines see the same token ids;
llama.cpp evaluates them and samples. It has the same interface as `HFEngine`: `prompt_ids`,
`chat`, `generate_batch`, `stream_chat`, `template`, `tokenizer`, `generating`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.chat.base import ChatEngine, Response, cut_at_stop
from lmforge.chat.media import refuse_media
from lmforge.errors import UserError
from lmforge.utils.logging import get_logger

if TYPE_CHECKING:
    from lmforge.config import RunConfig
    from lmforge.model.resolve import ResolvedModel

logger = get_logger(__name__)

INSTALL_HINT = ("pip install 'lmforge[llamacpp]' (it compiles llama.cpp: about 15 minutes on 2 CPU cores, "
                "seconds from pip's cache afterwards)")
_HANDLED = {"do_sample", "temperature", "top_p", "top_k", "max_new_tokens", "repetition_penalty", "stop",
            "stopping_criteria", "num_beams", "length_penalty"}


class LlamaCppEngine(ChatEngine):
    """llama.cpp generation behind the chat interface of `HFEngine`."""

    def _resolve(self, cfg: RunConfig) -> ResolvedModel:
        from lmforge.model.resolve import resolve_gguf

        resolved = resolve_gguf(cfg)
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            raise UserError(f"infer_backend: llamacpp needs llama-cpp-python: {INSTALL_HINT}.") from None
        return resolved

    def _load_model(self) -> None:
        import llama_cpp

        model_args = self.cfg.model
        self.gguf_path = Path(self.resolved.base)
        self.model = llama_cpp.Llama(
            model_path=str(self.gguf_path), n_ctx=model_args.llamacpp_n_ctx,
            n_gpu_layers=model_args.llamacpp_n_gpu_layers, n_threads=os.cpu_count() or 1, verbose=False,
        )
        if len(self.tokenizer) > self.model.n_vocab():
            raise UserError(f"The template '{self.template.name}' adds tokens that '{self.gguf_path}' does not have "
                            f"({len(self.tokenizer)} > {self.model.n_vocab()}); use the template it was exported with.")
        self.context_length = self.model.n_ctx()
        logger.info(f"llama.cpp serves {self.gguf_path} (context {self.context_length} tokens)")

    def _settings(self, overrides: dict[str, Any]) -> dict[str, Any]:
        gen = self.generating
        unknown = set(overrides) - _HANDLED
        if unknown:
            raise UserError(f"infer_backend: llamacpp does not support {', '.join(sorted(unknown))}.")
        settings = {key: getattr(gen, key) for key in ("do_sample", "temperature", "top_p", "top_k",
                                                       "max_new_tokens", "repetition_penalty", "num_beams")}
        settings.update({k: v for k, v in overrides.items() if v is not None and k in settings})
        if settings["num_beams"] > 1:
            raise UserError("infer_backend: llamacpp does not do beam search; set num_beams: 1.")
        settings["stop"] = list(overrides.get("stop") or gen.stop or [])
        settings["stopping_criteria"] = overrides.get("stopping_criteria")
        return settings

    def _tokens(self, prompt: list[int], settings: dict[str, Any]) -> Iterator[int]:
        """Generated token ids until a stop token, max_new_tokens, the context end, or a stopping criterion."""
        import torch

        room = self.context_length - len(prompt)
        if room <= 0:
            raise UserError(f"The prompt has {len(prompt)} tokens, but llama.cpp's context holds "
                            f"{self.context_length}; raise llamacpp_n_ctx or shorten the conversation.")
        sampling = settings["do_sample"] and settings["temperature"] != 0
        kwargs = dict(temp=0.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0,
                      repeat_penalty=settings["repetition_penalty"])
        if sampling:
            kwargs.update(temp=settings["temperature"], top_k=settings["top_k"], top_p=settings["top_p"])
            # Drawn from torch's generator, so that `torch.manual_seed` (the API's `seed`) fixes the answer.
            self.model.set_seed(int(torch.randint(0, 2**31 - 1, (1,)).item()))
        criteria = settings["stopping_criteria"]
        generated: list[int] = []
        for token in self.model.generate(prompt, reset=True, **kwargs):
            generated.append(token)
            yield token
            if token in self.stop_ids or len(generated) >= min(settings["max_new_tokens"], room):
                return
            if criteria is not None and bool(criteria(torch.tensor([prompt + generated]), None).any()):
                return

    # -- generation -------------------------------------------------------------------------------
    def generate_batch(self, prompts: list[list[int]], *, media=None, **overrides) -> list[Response]:
        """Generate answers for several prompts (one after the other: llama.cpp runs one sequence here)."""
        refuse_media(self, media)
        settings = self._settings(overrides)
        return [self._response(list(self._tokens(list(p), settings)), len(p), settings) for p in prompts]

    def _response(self, generated: list[int], prompt_length: int, settings: dict[str, Any]) -> Response:
        ended = next((i for i, t in enumerate(generated) if t in self.stop_ids), None)
        tokens = generated if ended is None else generated[:ended]
        text = self.tokenizer.decode(tokens, skip_special_tokens=self.generating.skip_special_tokens)
        hit = cut_at_stop(text, settings["stop"])
        finish = "stop" if ended is not None or hit is not None or len(generated) < settings["max_new_tokens"] \
            else "length"
        return Response(text if hit is None else text[:hit], len(tokens), prompt_length, finish)

    def stream_chat(self, messages: Sequence[dict], system: str | None = None, tools: str | None = None,
                    media=None, **overrides) -> Iterator[str]:
        """Yield the answer piece by piece as it is generated (stop strings are never yielded)."""
        ids = self.prompt_ids(messages, system, tools, media)
        settings = self._settings(overrides)
        stop = settings["stop"]
        hold = max((len(s) for s in stop), default=0)
        tokens: list[int] = []
        text, sent = "", 0
        for token in self._tokens(ids, settings):
            if token in self.stop_ids:
                break
            tokens.append(token)
            text = self.tokenizer.decode(tokens, skip_special_tokens=self.generating.skip_special_tokens)
            if text.endswith("\ufffd"):
                continue  # a character split across tokens: wait for its last byte
            hit = cut_at_stop(text, stop)
            if hit is not None:
                if hit > sent:
                    yield text[sent:hit]
                return
            # Hold back a tail that could be the start of a stop string.
            safe = len(text) - hold
            if safe > sent:
                yield text[sent:safe]
                sent = safe
        if len(text) > sent:
            yield text[sent:]
