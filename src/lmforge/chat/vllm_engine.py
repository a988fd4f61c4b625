"""The vLLM inference engine (`infer_backend: vllm`), for CUDA machines with the `vllm` package.

Prompts are rendered and tokenized by the run's template exactly as in the transformers engine and
handed to vLLM as token ids, so both engines see the same prompt. A LoRA adapter is served by vLLM's
own LoRA support (unmerged). It has the interface of `HFEngine`: `prompt_ids`, `chat`,
`generate_batch`, `stream_chat`, `template`, `tokenizer`, `generating`. vLLM's offline engine has no
token stream, so `stream_chat` yields the whole answer at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from lmforge.chat.base import ChatEngine, Response
from lmforge.chat.media import refuse_media
from lmforge.errors import UserError
from lmforge.utils.logging import get_logger

if TYPE_CHECKING:
    from lmforge.config import GeneratingArguments, RunConfig
    from lmforge.model.resolve import ResolvedModel

logger = get_logger(__name__)

INSTALL_HINT = "pip install vllm (on a machine with a CUDA GPU)"
_SUPPORTED = {"do_sample", "temperature", "top_p", "top_k", "max_new_tokens", "repetition_penalty", "stop",
              "num_beams", "length_penalty", "seed"}


def sampling_settings(generating: GeneratingArguments, overrides: dict[str, Any], stop_ids: list[int]) -> dict:
    """Keyword arguments of vLLM's `SamplingParams` for lmforge's generation settings (greedy: temperature 0)."""
    unknown = {k for k, v in overrides.items() if v is not None} - _SUPPORTED
    if unknown:
        raise UserError(f"infer_backend: vllm does not support {', '.join(sorted(unknown))}.")
    gen = {key: getattr(generating, key) for key in ("do_sample", "temperature", "top_p", "top_k", "max_new_tokens",
                                                     "repetition_penalty", "num_beams")}
    gen.update({k: v for k, v in overrides.items() if v is not None and k in gen})
    if gen["num_beams"] > 1:
        raise UserError("infer_backend: vllm does not do beam search through lmforge; set num_beams: 1.")
    greedy = not gen["do_sample"] or gen["temperature"] == 0
    settings = dict(
        n=1,
        temperature=0.0 if greedy else gen["temperature"],
        top_p=1.0 if greedy else gen["top_p"],
        top_k=-1 if greedy or not gen["top_k"] else gen["top_k"],  # vLLM spells "no top-k" as -1
        repetition_penalty=gen["repetition_penalty"],
        max_tokens=gen["max_new_tokens"],
        stop=list(overrides.get("stop") or generating.stop or []) or None,
        stop_token_ids=list(stop_ids),
        skip_special_tokens=generating.skip_special_tokens,
    )
    if overrides.get("seed") is not None:
        settings["seed"] = int(overrides["seed"])
    return settings


def engine_settings(cfg: RunConfig, base: str, adapters: Sequence[str]) -> dict:
    """Keyword arguments of `vllm.LLM` for the run's model settings (`vllm_config` goes last and wins)."""
    model_args = cfg.model
    if len(adapters) > 1:
        raise UserError("infer_backend: vllm serves one LoRA adapter; merge the others into the base first "
                        "with `lmforge export`, or use infer_backend: huggingface.")
    if model_args.quantization_bit is not None:
        raise UserError("infer_backend: vllm does not load bitsandbytes quantization (quantization_bit); remove it.")
    if model_args.rope_scaling is not None:
        raise UserError("infer_backend: vllm takes rope scaling from the model's config; remove rope_scaling.")
    settings = dict(
        model=base,
        trust_remote_code=model_args.trust_remote_code,
        download_dir=model_args.cache_dir,
        dtype=model_args.infer_dtype,
        max_model_len=model_args.vllm_maxlen,
        gpu_memory_utilization=model_args.vllm_gpu_util,
        enforce_eager=model_args.vllm_enforce_eager,
        enable_lora=bool(adapters),
        max_lora_rank=model_args.vllm_max_lora_rank,
        disable_log_stats=True,
    )
    if model_args.model_revision != "main":
        settings["revision"] = model_args.model_revision
    settings.update(model_args.vllm_config or {})
    return settings


class VllmEngine(ChatEngine):
    """vLLM generation behind the chat interface of `HFEngine`."""

    def _resolve(self, cfg: RunConfig) -> ResolvedModel:
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise UserError(f"infer_backend: vllm needs the vllm package: {INSTALL_HINT}.") from None
        from lmforge.model.adapters import read_adapter_config

        if cfg.finetune.stage != "sft":
            raise UserError(f"infer_backend: vllm serves sft models only (stage is {cfg.finetune.stage}).")
        resolved = super()._resolve(cfg)
        for adapter in resolved.adapters:
            read_adapter_config(adapter)
        return resolved

    def _load_model(self) -> None:
        import vllm
        from vllm.lora.request import LoRARequest

        resolved = self.resolved
        self.lora = LoRARequest("adapter", 1, resolved.adapters[0]) if resolved.adapters else None
        self._tokens_prompt = vllm.TokensPrompt
        self._sampling_params = vllm.SamplingParams
        self.llm = vllm.LLM(**engine_settings(self.cfg, resolved.base, resolved.adapters))
        logger.info(f"vLLM serves {resolved.base}" + (f" with the adapter {resolved.adapters[0]}" if self.lora else ""))

    def generate_batch(self, prompts: list[list[int]], *, media=None, **overrides) -> list[Response]:
        """Generate answers for several prompts in one vLLM call (vLLM schedules them together)."""
        refuse_media(self, media)
        overrides = {k: v for k, v in overrides.items() if k != "stopping_criteria"}
        params = self._sampling_params(**sampling_settings(self.generating, overrides, self.stop_ids))
        outputs = self.llm.generate([self._tokens_prompt(prompt_token_ids=list(p)) for p in prompts], params,
                                    lora_request=self.lora, use_tqdm=False)
        responses = []
        for prompt, output in zip(prompts, outputs):
            completion = output.outputs[0]
            finish = "length" if completion.finish_reason == "length" else "stop"
            responses.append(Response(completion.text, len(completion.token_ids), len(prompt), finish))
        return responses

    def stream_chat(self, messages: Sequence[dict], system: str | None = None, tools: str | None = None,
                    media=None, **overrides) -> Iterator[str]:
        """The whole answer as one piece (vLLM's offline engine does not stream)."""
        text = self.chat(messages, system, tools, media, **overrides).text
        if text:
            yield text
