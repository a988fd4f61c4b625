"""The transformers inference engine (`infer_backend: huggingface`), shared by chat, api, webchat, predict and eval.

It generates with transformers' `generate` (streaming token by token when asked), honours stop
strings, and keeps LoRA adapters unmerged (applied on the fly) unless `merge_adapters` is set.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from lmforge.chat.base import ChatEngine, Response, cut_at_stop
from lmforge.errors import UserError
from lmforge.utils.logging import quiet_known_warnings

if TYPE_CHECKING:
    from lmforge.config import RunConfig


class HFEngine(ChatEngine):
    """transformers `generate` behind a chat interface."""

    def __init__(self, cfg: RunConfig):
        if cfg.model.infer_backend != "huggingface":
            raise UserError(f"infer_backend: {cfg.model.infer_backend} is served by `lmforge chat`, `webchat` and "
                            "`api`; use infer_backend: huggingface here.")
        quiet_known_warnings()
        super().__init__(cfg)

    def _load_model(self) -> None:
        import torch

        from lmforge.model.adapters import load_adapters
        from lmforge.model.loader import load_model, resolve_dtype
        from lmforge.model.tokenizer import with_model_path

        model_args = self.cfg.model
        device_map = "auto" if torch.cuda.is_available() else None
        model = load_model(with_model_path(model_args, self.resolved.base), self.tokenizer,
                           resolve_dtype(model_args.infer_dtype), trainable=False, device_map=device_map)
        self.model = load_adapters(model, self.resolved.adapters, self.resolved.base,
                                   merge=model_args.merge_adapters)

    def _generate_kwargs(self, overrides: dict[str, Any]) -> dict[str, Any]:
        gen = self.generating.to_generate_kwargs()
        gen.update({k: v for k, v in overrides.items() if v is not None and k != "stop"})
        if not gen.get("do_sample", True):
            gen.update(temperature=None, top_p=None, top_k=None)
        elif gen.get("temperature") == 0:
            gen.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        stop = overrides.get("stop") or self.generating.stop
        if stop:
            gen.update(stop_strings=list(stop), tokenizer=self.tokenizer)
        gen.update(eos_token_id=self.stop_ids, pad_token_id=self.tokenizer.pad_token_id,
                   use_cache=self.cfg.model.use_kv_cache)
        return gen

    # -- generation -------------------------------------------------------------------------------
    def generate_batch(self, prompts: list[list[int]], **overrides) -> list[Response]:
        """Generate answers for several prompts together (left padding)."""
        import torch

        gen = self._generate_kwargs(overrides)
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.model.device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.model.device)
        with torch.inference_mode():
            output = self.model.generate(input_ids=input_ids, attention_mask=attention, **gen)
        stop = overrides.get("stop") or self.generating.stop or []
        return [self._response(row[width:].tolist(), len(p), gen["max_new_tokens"], stop) for row, p in zip(output, prompts)]

    def _response(self, generated: list[int], prompt_length: int, max_new_tokens: int, stop: list[str]) -> Response:
        ended = next((i for i, t in enumerate(generated) if t in self.stop_ids), None)
        tokens = generated if ended is None else generated[:ended]
        tokens = [t for t in tokens if t != self.tokenizer.pad_token_id or t in self.stop_ids]
        text = self.tokenizer.decode(tokens, skip_special_tokens=self.generating.skip_special_tokens)
        hit = cut_at_stop(text, stop)
        finish = "stop" if ended is not None or hit is not None or len(generated) < max_new_tokens else "length"
        return Response(text if hit is None else text[:hit], len(tokens), prompt_length, finish)

    def stream_chat(self, messages: Sequence[dict], system: str | None = None, tools: str | None = None,
                    **overrides) -> Iterator[str]:
        """Yield the answer piece by piece as it is generated (stop strings are never yielded)."""
        import torch
        from transformers import TextIteratorStreamer

        ids = self.prompt_ids(messages, system, tools)
        gen = self._generate_kwargs(overrides)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True,
                                        skip_special_tokens=self.generating.skip_special_tokens)
        inputs = torch.tensor([ids], device=self.model.device)
        errors: list[BaseException] = []

        def work():
            try:
                with torch.inference_mode():
                    self.model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), streamer=streamer,
                                        **gen)
            except BaseException as err:  # surfaced in the consumer's thread
                errors.append(err)
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        stop = overrides.get("stop") or self.generating.stop or []
        text, sent, stopped = "", 0, False
        hold = max((len(s) for s in stop), default=0)
        for piece in streamer:
            if stopped:
                continue  # drain: generation runs to its own end after a stop string
            text += piece
            hit = cut_at_stop(text, stop)
            if hit is not None:
                if hit > sent:
                    yield text[sent:hit]
                stopped = True
                continue
            # Hold back a tail that could be the start of a stop string.
            safe = len(text) - hold
            if safe > sent:
                yield text[sent:safe]
                sent = safe
        if not stopped and len(text) > sent:
            yield text[sent:]
        thread.join()
        if errors:
            raise errors[0]
