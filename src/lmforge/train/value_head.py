"""A language model with a scalar value head: the reward model of stage rm and the critic of stage ppo.

The head has trl's (and so LLaMA-Factory's) layout: one `Linear(hidden_size, 1)` named
`v_head.summary`, applied to the last hidden state (after the final norm). Its weights are saved
beside the model's, in `value_head.safetensors` with the keys `v_head.summary.weight` and
`v_head.summary.bias`: a reward model trained by LLaMA-Factory loads here, and one trained here
loads there. A sequence's score is the value at its last real (non-padding) token.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

VALUE_HEAD_FILE = "value_head.safetensors"
_PREFIX = "v_head."


def hidden_size(config) -> int:
    """The width of the model's last hidden state (multimodal configs keep it in their text config)."""
    size = getattr(config, "hidden_size", None)
    return int(size if size is not None else config.get_text_config().hidden_size)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... over the real tokens, whichever side the padding is on (as `generate` numbers them)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """The position of each row's last real token (right, left or both-sided padding)."""
    return attention_mask.shape[1] - 1 - attention_mask.long().flip(-1).argmax(-1)


class ValueHead(nn.Module):
    """trl's value head: `summary`, a Linear(hidden_size, 1)."""

    def __init__(self, size: int):
        super().__init__()
        self.summary = nn.Linear(size, 1)
        # Zero at the start: an untrained head gives every text the same score, so it prefers
        # nothing (pair accuracy is chance) and a fresh critic expects no reward.
        nn.init.zeros_(self.summary.weight)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1)


def save_value_head(head: ValueHead, output_dir: str | Path) -> None:
    from safetensors.torch import save_file

    tensors = {f"{_PREFIX}{name}": param.detach().contiguous().cpu() for name, param in head.state_dict().items()}
    save_file(tensors, str(Path(output_dir) / VALUE_HEAD_FILE), metadata={"format": "pt"})


def load_value_head(folder: str | Path) -> ValueHead | None:
    """The value head saved in `folder`, or None when it has none."""
    from safetensors.torch import load_file

    path = Path(folder) / VALUE_HEAD_FILE
    if not path.is_file():
        return None
    tensors = {key[len(_PREFIX):]: value for key, value in load_file(str(path)).items() if key.startswith(_PREFIX)}
    head = ValueHead(tensors["summary.weight"].shape[-1])
    head.load_state_dict(tensors)
    return head


class ValueHeadModel(nn.Module):
    """`pretrained_model` (a causal LM, or a PeftModel around one) plus `v_head`.

    `forward` returns (logits, values): values for every position, logits for the last
    `logits_to_keep` positions only (0: all), so scoring never builds a vocabulary-sized tensor
    for the whole sequence.
    """

    # The Trainer must divide our mean loss by the gradient accumulation steps itself.
    accepts_loss_kwargs = False

    def __init__(self, pretrained_model, v_head: ValueHead | None = None):
        super().__init__()
        self.pretrained_model = pretrained_model
        self.v_head = v_head if v_head is not None else ValueHead(hidden_size(pretrained_model.config))

    @property
    def config(self):
        return self.pretrained_model.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int = 1,
                **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask,
                                    position_ids=position_ids(attention_mask), output_hidden_states=True,
                                    logits_to_keep=logits_to_keep, use_cache=False, **kwargs)
        return out.logits, self.v_head(out.hidden_states[-1])

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs) -> torch.Tensor:
        """One score per row: the value at its last real token."""
        _, values = self(input_ids, attention_mask, **kwargs)
        return values.gather(1, last_token_index(attention_mask).unsqueeze(1)).squeeze(1)

    def save_pretrained(self, output_dir: str | Path, **kwargs) -> None:
        self.pretrained_model.save_pretrained(str(output_dir), **kwargs)
        save_value_head(self.v_head, output_dir)

    # The Trainer turns activation checkpointing on through the model it trains.
    def activation_checkpointing_enable(self, **kwargs) -> None:
        model = self.pretrained_model
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(**kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs.get(
                "activation_checkpointing_kwargs"))
