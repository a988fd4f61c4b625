"""Stand-in for vLLM's offline API on transformers (see ../README.md). Greedy decoding only."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    repetition_penalty: float = 1.0
    max_tokens: int = 16
    stop: list | None = None
    stop_token_ids: list = field(default_factory=list)
    skip_special_tokens: bool = True
    seed: int | None = None


def TokensPrompt(prompt_token_ids):  # noqa: N802 - vLLM's name
    return {"prompt_token_ids": prompt_token_ids}


@dataclass
class _Completion:
    text: str
    token_ids: list
    finish_reason: str


@dataclass
class _RequestOutput:
    outputs: list


class LLM:
    def __init__(self, model: str, **settings):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        record = os.environ.get("FAKE_VLLM_RECORD")
        if record:
            with open(record, "w") as handle:
                json.dump({"model": model, **settings}, handle)
        self.model = AutoModelForCausalLM.from_pretrained(model).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.adapter = None

    def generate(self, prompts, params: SamplingParams, lora_request=None, use_tqdm=True):
        import torch
        from peft import PeftModel

        assert params.temperature == 0.0, "the stand-in decodes greedily only"
        model = self.model
        if lora_request is not None:
            if self.adapter is None:
                self.adapter = PeftModel.from_pretrained(self.model, lora_request.lora_path).eval()
            model = self.adapter
        results = []
        for prompt in prompts:
            ids = torch.tensor([prompt["prompt_token_ids"]])
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=params.max_tokens, eos_token_id=params.stop_token_ids,
                                     pad_token_id=params.stop_token_ids[0])
            tokens = out[0, ids.shape[1]:].tolist()
            ended = next((i for i, t in enumerate(tokens) if t in params.stop_token_ids), None)
            tokens = tokens if ended is None else tokens[:ended]
            text = self.tokenizer.decode(tokens, skip_special_tokens=params.skip_special_tokens)
            reason = "stop" if ended is not None else "length"
            results.append(_RequestOutput([_Completion(text, tokens, reason)]))
        return results
