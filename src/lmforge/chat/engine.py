"""The Hugging Face inference engine shared by chat, api, webchat and predict (`create_engine` picks the backend).

It renders conversations with the run's template, generates with transformers' `generate`
(streaming token by token when asked), honours stop strings, and keeps LoRA adapters unmerged
(applied on the fly) unless `merge_adapters` is set.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lmforge.errors import UserError
from lmforge.utils.logging import get_logger, quiet_known_warnings

if TYPE_CHECKING:
    from lmforge.config import RunConfig

logger = get_logger(__name__)


@dataclass
class Response:
    """One generated answer."""

    text: str
    response_length: int  # generated tokens, stop tokens excluded
    prompt_length: int
    finish_reason: str  # "stop" or "length"


class ChatEngine:
    """What every engine shares: conversations rendered to prompt ids by the run's template.

    A subclass sets `template`, `tokenizer`, `generating` and `stop_ids`, and implements
    `generate_batch` and `stream_chat`.
    """

    template: Any
    tokenizer: Any
    generating: Any

    def prompt_ids(self, messages: Sequence[dict], system: str | None = None, tools: str | None = None) -> list[int]:
        """Token ids of the generation prompt for a conversation ending with a user/observation turn."""
        if not messages or messages[-1]["role"] not in ("user", "observation"):
            raise UserError("The conversation must end with a user (or tool result) message.")
        if system is None:
            system = self.generating.system
        return self.template.encode_prompt(self.tokenizer, list(messages), system, tools)

    def chat(self, messages: Sequence[dict], system: str | None = None, tools: str | None = None,
             **overrides) -> Response:
        """Generate one complete answer."""
        return self.generate_batch([self.prompt_ids(messages, system, tools)], **overrides)[0]

    def generate_batch(self, prompts: list[list[int]], **overrides) -> list[Response]:
        raise NotImplementedError


class HFEngine(ChatEngine):
    """transformers `generate` behind a chat interface."""

    def __init__(self, cfg: RunConfig):
        if cfg.model.infer_backend != "huggingface":
            raise UserError(f"infer_backend: {cfg.model.infer_backend} is served by `lmforge chat`, `webchat` and "
                            "`api`; use infer_backend: huggingface here.")
        quiet_known_warnings()
        import torch

        from lmforge.chat.loading import resolve_model
        from lmforge.config import ModelArguments
        from lmforge.data.pipeline import prepare_template
        from lmforge.model.loader import load_model, load_tokenizer, resolve_dtype

        self.cfg = cfg
        self.resolved = resolve_model(cfg)
        model_args: ModelArguments = cfg.model
        self.tokenizer = load_tokenizer(_with_path(model_args, self.resolved.tokenizer))
        data = cfg.data
        if data.template is None and self.resolved.template:
            import dataclasses

            data = dataclasses.replace(data, template=self.resolved.template)
        self.template = prepare_template(data, self.tokenizer)
        self.tokenizer.padding_side = "left"
        dtype = resolve_dtype(model_args.infer_dtype)
        device_map = "auto" if torch.cuda.is_available() else None
        model = load_model(_with_path(model_args, self.resolved.base), self.tokenizer, dtype, trainable=False,
                           device_map=device_map)
        self.model = apply_adapters(model, self.resolved.adapters, model_args.merge_adapters,
                                    base=self.resolved.base)
        self.stop_ids = self.template.stop_token_ids(self.tokenizer)
        self.generating = cfg.generate

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
        hit = _cut_at_stop(text, stop)
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
            hit = _cut_at_stop(text, stop)
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


def _check_same_architecture(adapter: str, trained_on: str, base: str, model) -> None:
    """Refuse an adapter whose recorded base model (when it is on disk) has another architecture.

    Shapes alone can match by chance (tiny models do), and PEFT then loads the adapter silently.
    """
    import json
    from pathlib import Path

    config_file = Path(trained_on) / "config.json"
    if not config_file.is_file():
        return
    recorded = json.loads(config_file.read_text()).get("model_type")
    current = getattr(getattr(model, "config", None), "model_type", None)
    if recorded and current and recorded != current:
        raise UserError(
            f"Adapter '{adapter}' does not fit the model '{base}' (it was trained on {trained_on}): "
            f"that base is a {recorded} model, this one is a {current} model."
        )


def create_engine(cfg: RunConfig):
    """The inference engine of `infer_backend` (validated with the config): transformers, vLLM or llama.cpp."""
    if cfg.model.infer_backend == "llamacpp":
        from lmforge.chat.llamacpp_engine import LlamaCppEngine

        return LlamaCppEngine(cfg)
    if cfg.model.infer_backend == "vllm":
        from lmforge.chat.vllm_engine import VllmEngine

        return VllmEngine(cfg)
    return HFEngine(cfg)


def _cut_at_stop(text: str, stop: list[str]) -> int | None:
    positions = [text.find(s) for s in stop if s and s in text]
    return min(positions) if positions else None


def _with_path(model_args, path: str):
    import dataclasses

    return dataclasses.replace(model_args, model_name_or_path=path, adapter_name_or_path=None)


def apply_adapters(model, adapters: Sequence[str], merge: bool, base: str):
    """Apply LoRA adapters in order: stacked unmerged (default) or merged into the weights."""
    if not adapters:
        return model
    from peft import PeftModel

    from lmforge.model.adapters import check_adapter

    for i, path in enumerate(adapters):
        trained_on = check_adapter(path, base).get("base_model_name_or_path") or "an unknown base model"
        _check_same_architecture(path, trained_on, base, model)
        name = f"adapter_{i}"
        try:
            if i == 0 or merge:
                model = PeftModel.from_pretrained(model, path, adapter_name=name)
            else:
                model.load_adapter(path, adapter_name=name)
        except (RuntimeError, ValueError, KeyError, OSError) as err:
            raise UserError(
                f"Adapter '{path}' does not fit the model '{base}' (it was trained on {trained_on}): "
                f"{str(err).splitlines()[0]}"
            ) from None
        if merge:
            model = model.merge_and_unload()
    if not merge:
        names = [f"adapter_{i}" for i in range(len(adapters))]
        model.base_model.set_adapter(names if len(names) > 1 else names[0])
        model.requires_grad_(False)
    return model.eval()
