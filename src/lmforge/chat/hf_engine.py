"""The transformers inference engine (`infer_backend: huggingface`), shared by chat, api, webchat, predict and eval.

It generates with transformers' `generate` (streaming token by token when asked), honours stop
strings, and keeps LoRA adapters unmerged (applied on the fly) unless `merge_adapters` is set.
`generate_batch(..., watch=GenerationWatch)` follows every row of a batch token by token: the API
streams several answers from one batch, and stops a row whose client went away at the next step.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from lmforge.chat.base import ChatEngine, GenerationWatch, Media, Response, cut_at_stop
from lmforge.errors import UserError
from lmforge.utils.logging import quiet_known_warnings

if TYPE_CHECKING:
    from lmforge.config import RunConfig


class HFEngine(ChatEngine):
    """transformers `generate` behind a chat interface."""

    watches_generation = True
    takes_media = True

    def __init__(self, cfg: RunConfig):
        if cfg.model.infer_backend != "huggingface":
            raise UserError(f"infer_backend: {cfg.model.infer_backend} is served by `lmforge chat`, `webchat` and "
                            "`api`; use infer_backend: huggingface here.")
        quiet_known_warnings()
        super().__init__(cfg)

    def _load_mm_processor(self):
        from lmforge.model.tokenizer import load_mm_processor, with_model_path

        return load_mm_processor(with_model_path(self.cfg.model, self.resolved.base))

    def _media_inputs(self, media, input_ids) -> dict[str, Any]:
        """Pixel inputs on the model's device, in its dtype (empty without media)."""
        import torch

        from lmforge.chat.media import model_inputs

        if not media or not any(media):
            return {}
        inputs = model_inputs(self, media, input_ids)
        dtype = self.model.dtype
        return {key: value.to(self.model.device, dtype=dtype if value.is_floating_point() else None)
                if isinstance(value, torch.Tensor) else value for key, value in inputs.items()}

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
    def generate_batch(self, prompts: list[list[int]], *, watch: GenerationWatch | None = None,
                       media: Sequence[Media | None] | None = None, **overrides) -> list[Response]:
        """Generate answers for several prompts together (left padding); `watch` follows each row (see base)."""
        import torch
        from transformers import StoppingCriteriaList

        gen = self._generate_kwargs(overrides)
        stop = list(overrides.get("stop") or self.generating.stop or [])
        follower = None
        if watch is not None and (gen.get("num_beams") or 1) == 1:  # beams reorder rows: no per-row hooks
            # The follower finds stop strings in the text it decodes anyway; transformers' own
            # stop-string criterion precomputes tables per string (slow, and cached for good).
            gen.pop("stop_strings", None)
            gen.pop("tokenizer", None)
            follower = _RowFollower(self, prompts, gen["max_new_tokens"], stop, watch)
            gen["stopping_criteria"] = StoppingCriteriaList([follower])
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.model.device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.model.device)
        pixels = self._media_inputs(media, input_ids)
        with torch.inference_mode():
            output = self.model.generate(input_ids=input_ids, attention_mask=attention, **pixels, **gen)

        def decoded(row: int) -> Response:
            return self._response(output[row][width:].tolist(), len(prompts[row]), gen["max_new_tokens"], stop)

        if follower is not None:
            return follower.finish(decoded)
        responses = [decoded(row) for row in range(len(prompts))]
        if watch is not None:
            for row, response in enumerate(responses):
                if response.text and watch.streams(row):
                    watch.piece(row, response.text)
                watch.end(row, response)
        return responses

    def _response(self, generated: list[int], prompt_length: int, max_new_tokens: int, stop: list[str]) -> Response:
        ended = next((i for i, t in enumerate(generated) if t in self.stop_ids), None)
        tokens = generated if ended is None else generated[:ended]
        tokens = [t for t in tokens if t != self.tokenizer.pad_token_id or t in self.stop_ids]
        text = self.tokenizer.decode(tokens, skip_special_tokens=self.generating.skip_special_tokens)
        hit = cut_at_stop(text, stop)
        finish = "stop" if ended is not None or hit is not None or len(generated) < max_new_tokens else "length"
        return Response(text if hit is None else text[:hit], len(tokens), prompt_length, finish)

    def stream_chat(self, messages: Sequence[dict], system: str | None = None, tools: str | None = None,
                    media: Media | None = None, **overrides) -> Iterator[str]:
        """Yield the answer piece by piece as it is generated (stop strings are never yielded)."""
        import torch
        from transformers import TextIteratorStreamer

        ids = self.prompt_ids(messages, system, tools, media)
        gen = self._generate_kwargs(overrides)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True,
                                        skip_special_tokens=self.generating.skip_special_tokens)
        inputs = torch.tensor([ids], device=self.model.device)
        gen.update(self._media_inputs([media] if media else None, inputs))
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


class _IncrementalText:
    """The text of a growing list of token ids, decoded a few tokens at a time.

    Each new token is decoded together with the few before it (whose text is subtracted), so
    tokenizers that drop a leading space at the start of a decode still get it right, and an
    incomplete UTF-8 character (`\ufffd`) waits for the next token. The cost per token is constant.
    """

    def __init__(self, tokenizer, skip_special_tokens: bool):
        self.decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        self.ids: list[int] = []
        self.text = ""
        self._prefix = 0
        self._read = 0

    def add(self, token: int) -> None:
        self.ids.append(token)
        before = self.decode(self.ids[self._prefix:self._read])
        after = self.decode(self.ids[self._prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before):]
            self._prefix, self._read = self._read, len(self.ids)


class _RowFollower:
    """A stopping criterion that follows every row of one `generate` call for a `GenerationWatch`.

    transformers calls it once per decoding step with all ids so far; the last column is the step's
    token of each row. A row ends at a stop token, a stop string, `max_new_tokens`, or when the watch
    says it is cancelled; the criterion then reports it finished, so transformers pads it from then
    on, and the whole call returns as soon as every row has ended.
    """

    def __init__(self, engine: HFEngine, prompts: list[list[int]], max_new_tokens: int, stop: list[str],
                 watch: GenerationWatch):
        self.engine = engine
        self.watch = watch
        self.prompt_lengths = [len(p) for p in prompts]
        self.max_new_tokens = max_new_tokens
        self.stop = stop
        self.hold = max((len(s) for s in stop), default=1) - 1  # a stop string's start may be in the tail
        self.streams = [watch.streams(row) for row in range(len(prompts))]
        skip = engine.generating.skip_special_tokens
        decode = bool(stop) or any(self.streams)
        self.texts = [_IncrementalText(engine.tokenizer, skip) if decode else None for _ in prompts]
        self.generated: list[list[int]] = [[] for _ in prompts]
        self.sent = [0] * len(prompts)  # characters of text handed to watch.piece
        self.done = [False] * len(prompts)
        self.ended: list[Response | None] = [None] * len(prompts)
        self.stop_ids = set(engine.stop_ids)
        self.pad = engine.tokenizer.pad_token_id

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        for row, token in enumerate(input_ids[:, -1].tolist()):
            if self.done[row]:
                continue
            self.generated[row].append(token)
            if self.watch.cancelled(row) or token in self.stop_ids:
                self._end(row)
                continue
            text = self.texts[row]
            if text is not None and token != self.pad:  # a generated pad is dropped, as _response drops it
                seen = len(text.text)
                text.add(token)
                if self.stop:
                    tail = max(0, seen - self.hold)
                    if cut_at_stop(text.text[tail:], self.stop) is not None:
                        self._end(row)
                        continue
                if self.streams[row] and len(text.text) - self.hold > self.sent[row]:
                    safe = len(text.text) - self.hold
                    self.watch.piece(row, text.text[self.sent[row]:safe])
                    self.sent[row] = safe
            if len(self.generated[row]) >= self.max_new_tokens:
                self._end(row)
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)

    def _end(self, row: int, response: Response | None = None) -> None:
        self.done[row] = True
        if response is None:
            response = self.engine._response(self.generated[row], self.prompt_lengths[row], self.max_new_tokens,
                                             self.stop)
        self.ended[row] = response
        if self.streams[row]:
            # The final text is decoded in one piece; the streamed text is its prefix except where a
            # tokenizer decodes differently in parts (then the rest of the difference is not sent).
            streamed = self.texts[row].text[:self.sent[row]]
            if response.text.startswith(streamed) and len(response.text) > len(streamed):
                self.watch.piece(row, response.text[len(streamed):])
        self.watch.end(row, response)

    def finish(self, decoded) -> list[Response]:
        """The batch's answers: each row's as it ended, or `decoded(row)` (from the output) if it never did."""
        for row, done in enumerate(self.done):
            if not done:  # generation stopped for another reason (the model's own max_length)
                self._end(row, decoded(row))
        return list(self.ended)
