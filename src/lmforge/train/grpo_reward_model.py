"""The reward model of stage grpo: `reward_model` scores each prompt + completion, one more reward.

- A reward model trained by lmforge (stage rm: `value_head.safetensors` beside the adapter or the
  weights) or a URL, read with stage ppo's `reward_model_type` (lora, full, api; see
  `train/reward_model.py`). It reads the policy's token ids (the prompt as the template rendered it,
  then the completion up to and with its end token), so it must share the policy's tokenizer. A LoRA
  reward model is merged into its own frozen copy of the base model, not attached to the policy as
  in ppo: the GRPO trainer saves every adapter of the policy, and the reward adapter is not the run's.
- A folder holding a plain sequence-classification model (`...ForSequenceClassification` with one
  label, e.g. a hub reward model) and its own tokenizer: it scores the text, the rendered prompt
  followed by the completion, tokenized by its tokenizer.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.errors import UserError
from lmforge.train.rewards import RewardFunction
from lmforge.utils.logging import get_logger

if TYPE_CHECKING:
    from lmforge.config import RunConfig

logger = get_logger(__name__)

NAME = "reward_model"  # the metrics are rewards/reward_model/mean and /std


def is_sequence_classifier(path: str) -> bool:
    """Whether `path` is a folder with a `...ForSequenceClassification` model and no lmforge value head."""
    from lmforge.train.value_head import VALUE_HEAD_FILE

    folder = Path(path)
    if not folder.is_dir() or (folder / VALUE_HEAD_FILE).is_file():
        return False
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return any(str(a).endswith("ForSequenceClassification") for a in config.get("architectures") or [])


class TokenScorer:
    """Scores prompt ids + completion ids with a scorer of stage ppo: (input_ids, attention_mask) -> scores."""

    def __init__(self, scorer, pad_token_id: int, device):
        self.scorer, self.pad_token_id, self.device = scorer, pad_token_id, device

    def __call__(self, prompt_ids: list[list[int]], completion_ids: list[list[int]], **kwargs) -> list[float]:
        import torch

        sequences = [list(p) + list(c) for p, c in zip(prompt_ids, completion_ids)]
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, sequence in enumerate(sequences):  # right padding: the score is read at the last real token
            ids[row, :len(sequence)] = torch.tensor(sequence, dtype=torch.long)
            mask[row, :len(sequence)] = 1
        with torch.no_grad():
            return self.scorer(ids.to(self.device), mask.to(self.device)).float().cpu().tolist()


class TextScorer:
    """Scores rendered prompt + completion text with a sequence-classification model and its own tokenizer."""

    def __init__(self, path: str, device, dtype):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype)
        except (OSError, ValueError, RuntimeError) as err:
            raise UserError(f"reward_model '{path}' cannot be loaded as a one-label sequence classifier: "
                            f"{str(err).strip().splitlines()[0]}") from None
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # The classifier reads its score at the last token that is not padding: it must know the pad id.
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.requires_grad_(False).eval().to(device)
        self.device = device

    def __call__(self, prompts: list[str], completions: list[str], **kwargs) -> list[float]:
        import torch

        inputs = self.tokenizer([p + c for p, c in zip(prompts, completions)], return_tensors="pt", padding=True,
                                padding_side="right", add_special_tokens=False)
        with torch.no_grad():
            return self.model(**inputs.to(self.device)).logits[:, 0].float().cpu().tolist()


def load_reward_model(cfg: RunConfig, tokenizer, policy_config, device, dtype, template_name: str | None):
    """`reward_model` as a reward function named reward_model."""
    ft = cfg.finetune
    path = ft.reward_model
    if ft.reward_model_type != "api" and is_sequence_classifier(path):
        logger.info(f"Reward model: the sequence classifier {path} (on text, with its own tokenizer)")
        return RewardFunction(TextScorer(path, device, dtype), NAME, path)
    from lmforge.train.reward_model import ApiReward, load_full_reward

    if ft.reward_model_type == "api":
        scorer = ApiReward(path, tokenizer)
    else:
        if ft.reward_model_type == "lora":
            # An rm LoRA run on the policy's base model: merged into a copy of that base (see the module docstring).
            ft = dataclasses.replace(ft, reward_model=cfg.model.model_name_or_path, reward_model_adapters=path)
            cfg = dataclasses.replace(cfg, finetune=ft)
        scorer = load_full_reward(cfg, tokenizer, policy_config, device, dtype, template_name)
    return RewardFunction(TokenScorer(scorer, tokenizer.pad_token_id, device), NAME, path)
