"""Rough memory estimates that decide defaults: activation memory of a training step, free memory of a device."""

from __future__ import annotations


def activation_bytes(config, tokens: int, dtype_bytes: int, *, eager_attention: bool = False,
                     seq_len: int | None = None) -> int:
    """Bytes a decoder keeps for the backward pass of a `tokens`-token batch without activation checkpointing.

    Per token and layer a Llama-style block keeps about 10 hidden-size vectors (norm inputs and outputs,
    q/k/v, the attention output, dropout outputs of LoRA) and 5 intermediate-size ones (gate, up, the
    activation, its product, the down projection's dropout), which is a little more than it really keeps
    (lmforge's own gated MLP, `model.mlp`, does not keep the activation);
    eager attention adds its scores and probabilities (heads x sequence length).
    """
    text = getattr(config, "text_config", None) or config
    hidden = getattr(text, "hidden_size", 0) or 0
    intermediate = getattr(text, "intermediate_size", None) or 4 * hidden
    layers = getattr(text, "num_hidden_layers", 0) or 0
    per_token = 10 * hidden + 5 * intermediate
    if eager_attention and seq_len:
        per_token += 2 * (getattr(text, "num_attention_heads", 0) or 0) * seq_len
    return int(tokens) * layers * per_token * dtype_bytes


def free_memory(device_type: str) -> int | None:
    """Bytes free now on the device training will use ("cuda" or "cpu"); None when it cannot be told."""
    if device_type == "cuda":
        import torch

        try:
            return torch.cuda.mem_get_info()[0]
        except RuntimeError:
            return None
    import psutil  # a dependency of accelerate, so always installed with transformers' Trainer

    return psutil.virtual_memory().available


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"
