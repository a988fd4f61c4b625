"""The causal-LM loss computed only where labels are trained (`trained_logits_only`).

transformers computes logits for every position of the batch, upcasts them to float32 and then ignores
the positions whose label is -100 (prompt, padding). With a 150k vocabulary that tokens x vocabulary
tensor, its log-softmax and its gradient dominate memory and much of the step. Here the model's forward
stops at the decoder's hidden states (the output head runs on one position only), the hidden states of
the supervised positions are gathered, and the head and cross-entropy run on them in chunks; a chunk
whose float32 logits would be large is recomputed in the backward pass instead of kept. The loss is the
same sum over the same tokens with the same divisor, so the value and the gradients match transformers'.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100
# Decoder-only models whose logits are exactly `lm_head(final hidden state)`: no soft-capping, logit
# scaling or router loss added to the language-model loss (those keep transformers' own loss).
MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "olmo2", "starcoder2"})
# Float32 logits per chunk, in elements (64 MiB); chunks are recomputed in backward above this size.
CHUNK_ELEMENTS = 1 << 24


def core_model(model):
    """The transformers model under a PEFT wrapper (the same object when there is none)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def applies(model) -> bool:
    """Whether `model` (unwrapped, PEFT or not) is one the supervised-positions loss is exact for."""
    core = core_model(model)
    config = getattr(core, "config", None)
    if getattr(config, "model_type", None) not in MODEL_TYPES:
        return False
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return False
    return callable(getattr(core, "get_decoder", None)) and core.get_output_embeddings() is not None


def supervised_loss(model, inputs: dict, num_items_in_batch=None) -> torch.Tensor:
    """transformers' causal-LM loss for `inputs` (with `labels`), computed at the supervised positions only.

    `model` is what the Trainer calls (possibly wrapped for DDP); its forward runs as usual, so wrappers
    see it, and a forward hook on the decoder keeps the final hidden states.
    """
    import torch

    core = core_model(_unwrap(model))
    decoder = core.get_decoder()
    head = core.get_output_embeddings()
    captured: list = []

    def keep_hidden(_module, _args, output):
        captured.append(output[0] if isinstance(output, tuple) else output.last_hidden_state)

    labels = inputs["labels"]
    forward_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    handle = decoder.register_forward_hook(keep_hidden)
    try:
        model(**forward_inputs, use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    hidden = captured[-1]
    # Position t predicts token t + 1, as in transformers' ForCausalLMLoss.
    shift_labels = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    keep = shift_labels != IGNORE_INDEX
    hidden = hidden[keep]
    targets = shift_labels[keep].to(hidden.device)
    total = hidden.new_zeros((), dtype=torch.float32)
    if targets.numel():
        vocab = head.weight.shape[0]
        rows = max(1, CHUNK_ELEMENTS // vocab)
        for start in range(0, targets.numel(), rows):
            part, part_targets = hidden[start:start + rows], targets[start:start + rows]
            if part.shape[0] * vocab >= CHUNK_ELEMENTS and torch.is_grad_enabled():
                from torch.utils.checkpoint import checkpoint

                total = total + checkpoint(_chunk_loss, head, part, part_targets, use_reentrant=False)
            else:
                total = total + _chunk_loss(head, part, part_targets)
    else:
        total = total + hidden.sum() * 0.0  # keeps the graph (and DDP's gradient hooks) alive
    if num_items_in_batch is None:
        return total / max(targets.numel(), 1) if targets.numel() else total
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def _chunk_loss(head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    import torch

    logits = head(hidden).float()
    return torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")


def _unwrap(model):
    # DistributedDataParallel keeps the model in `.module`; the hooks go on the real decoder.
    inner = getattr(model, "module", None)
    return model if inner is None or not hasattr(inner, "config") else inner
