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

import contextlib
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Variant:
    """An SFT loss other than plain cross-entropy: `dft`, `eaft` or `asft` (LLaMA-Factory's use_*_loss keys)."""

    kind: str
    alpha: float = 1.0


def variant_of(ft) -> Variant | None:
    """The loss variant a run's finetuning arguments ask for (None: cross-entropy)."""
    if ft is None:
        return None
    if ft.use_dft_loss:
        return Variant("dft")
    if ft.use_eaft_loss:
        return Variant("eaft", ft.eaft_alpha)
    if ft.use_asft_loss:
        return Variant("asft", ft.asft_alpha)
    return None


def supervised_loss(model, inputs: dict, num_items_in_batch=None, variant: Variant | None = None, ref=None,
                    full_logits: bool = False) -> torch.Tensor:
    """transformers' causal-LM loss for `inputs` (with `labels`), computed at the supervised positions only.

    `model` is what the Trainer calls (possibly wrapped for DDP); its forward runs as usual, so wrappers
    see it, and a forward hook on the decoder keeps the final hidden states. `full_logits`: the model's
    own logits are used instead (models the hidden-state path is not exact for). `variant` weights each
    token's cross-entropy (DFT, EAFT) or adds a KL term to `ref` (ASFT: a frozen model, or None for the
    policy with its adapters switched off).
    """
    import torch

    features, targets, head = _supervised_features(model, inputs, full_logits)
    ref_features = ref_head = None
    if variant is not None and variant.kind == "asft":
        with torch.no_grad(), _reference(model, ref) as reference:
            ref_features, _, ref_head = _supervised_features(reference, inputs, full_logits)
    total = features.new_zeros((), dtype=torch.float32)
    kl = features.new_zeros((), dtype=torch.float32)
    if targets.numel():
        vocab = features.shape[-1] if head is None else head.weight.shape[0]
        rows = max(1, CHUNK_ELEMENTS // vocab)
        for start in range(0, targets.numel(), rows):
            part, part_targets = features[start:start + rows], targets[start:start + rows]
            part_ref = None
            if ref_features is not None:
                with torch.no_grad(), _reference(model, ref):
                    part_ref = _logits(ref_head, ref_features[start:start + rows])
            if part.shape[0] * vocab >= CHUNK_ELEMENTS and torch.is_grad_enabled():
                from torch.utils.checkpoint import checkpoint

                ce, div = checkpoint(_chunk_loss, head, part, part_targets, variant, part_ref, use_reentrant=False)
            else:
                ce, div = _chunk_loss(head, part, part_targets, variant, part_ref)
            total, kl = total + ce, kl + div
    else:
        total = total + features.sum() * 0.0  # keeps the graph (and DDP's gradient hooks) alive
    if num_items_in_batch is None:
        loss = total / max(targets.numel(), 1) if targets.numel() else total
    else:
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(total.device)
        loss = total / num_items_in_batch
    if variant is not None and variant.kind == "asft" and targets.numel():
        loss = loss + variant.alpha * kl / targets.numel()  # the KL is a mean over this batch's trained tokens
    return loss


def _supervised_features(model, inputs: dict, full_logits: bool):
    """(hidden states or logits at the supervised positions, their target ids, the head to apply or None)."""
    import torch

    labels = inputs["labels"]
    forward_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    # Position t predicts token t + 1, as in transformers' ForCausalLMLoss.
    shift_labels = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    keep = shift_labels != IGNORE_INDEX
    if full_logits:
        logits = model(**forward_inputs, use_cache=False).logits
        return logits[keep], shift_labels[keep].to(logits.device), None
    core = core_model(_unwrap(model))
    decoder = core.get_decoder()
    captured: list = []

    def keep_hidden(_module, _args, output):
        captured.append(output[0] if isinstance(output, tuple) else output.last_hidden_state)

    handle = decoder.register_forward_hook(keep_hidden)
    try:
        model(**forward_inputs, use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    hidden = captured[-1][keep]
    return hidden, shift_labels[keep].to(hidden.device), core.get_output_embeddings()


@contextlib.contextmanager
def _reference(model, ref):
    """The reference model of ASFT: `ref` itself, or the policy with its adapters switched off."""
    if ref is not None:
        yield ref
        return
    peft_model = _unwrap(model)
    with peft_model.disable_adapter():
        yield model


def _logits(head, features: torch.Tensor) -> torch.Tensor:
    return (features if head is None else head(features)).float()


def _chunk_loss(head, features: torch.Tensor, targets: torch.Tensor, variant: Variant | None = None,
                ref_logits: torch.Tensor | None = None):
    """(summed token losses, summed KL to the reference) of one chunk of supervised positions."""
    import torch

    logits = _logits(head, features)
    ce = torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="none")
    kl = logits.new_zeros(())
    if variant is None:
        return ce.sum(), kl
    with torch.no_grad():
        if variant.kind in ("dft", "asft"):
            weight = torch.exp(-ce)  # the token's probability: confident tokens count more
        else:  # eaft: entropy of the top-20 distribution, scaled to about [0, 1], to the power alpha
            top = torch.topk(logits, k=min(20, logits.shape[-1]), dim=-1).values
            log_top = top - torch.logsumexp(top, dim=-1, keepdim=True)
            entropy = -(log_top.exp() * log_top).sum(-1)
            weight = torch.pow(entropy / 3.0, variant.alpha)
    if ref_logits is not None:
        ref_log = torch.log_softmax(ref_logits, dim=-1)
        kl = (ref_log.exp() * (ref_log - torch.log_softmax(logits, dim=-1))).sum()  # KL(reference || policy)
    return (ce * weight).sum(), kl


def _unwrap(model):
    # DistributedDataParallel keeps the model in `.module`; the hooks go on the real decoder.
    inner = getattr(model, "module", None)
    return model if inner is None or not hasattr(inner, "config") else inner
