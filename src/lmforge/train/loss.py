"""The causal-LM loss computed only where labels are trained (`trained_logits_only`).

transformers computes logits for every position of the batch, upcasts them to float32 and then ignores
the positions whose label is -100 (prompt, padding). With a 150k vocabulary that tokens x vocabulary
tensor, its log-softmax and its gradient dominate memory and much of the step. Here the model's forward
stops at the decoder's hidden states (its own output head runs on no position), the hidden states of
the supervised positions are gathered, and the head and cross-entropy run on them in chunks. For plain
cross-entropy each chunk's gradients are computed as soon as its logits are (the loss is the graph's last
node), so no chunk's logits outlive it; the weighted variants (DFT, EAFT, ASFT) recompute a large chunk in
the backward pass instead. The loss is the same sum over the same tokens with the same divisor, so the
value and the gradients match transformers'.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100
# Decoder-only models whose logits are exactly `lm_head(final hidden state)`: no soft-capping, logit
# scaling or router loss added to the language-model loss (those keep transformers' own loss).
MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "olmo2", "starcoder2"})
# Float32 logits per chunk, in elements (64 MiB). Smaller chunks would read the head's weight (136M
# values for a 150k vocabulary) more often per step; the weighted variants recompute a chunk of this size
# in the backward pass.
CHUNK_ELEMENTS = 1 << 24
# Vocabulary columns a bf16 chunk's logits are widened to float32 at a time (`_low_precision_chunk_scores`).
VOCAB_SLICE = 8192
# A head that is not trained, in bf16/fp16 (`_streamed_chunk_scores`): rows per chunk (each chunk reads the whole
# weight twice), and float32 logits per vocabulary slice (at least 1024 columns). Fewer rows get wider slices:
# each slice costs a dozen operations' overhead, which at 16 rows and 8192 columns was 15% of the head's time.
STREAM_ROWS = 1024
STREAM_SLICE_ELEMENTS = 1 << 20


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
        if variant is None and _plain_head(head):
            need_hidden = torch.is_grad_enabled() and features.requires_grad
            need_weight = torch.is_grad_enabled() and head.weight.requires_grad
            total = _head_cross_entropy().apply(features, head.weight, targets, rows, need_hidden, need_weight)
        else:
            total, kl = _weighted_loss(model, ref, head, features, targets, ref_features, ref_head, variant, rows)
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


def label_logps(model, input_ids, attention_mask, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the label tokens' log-probabilities, number of label tokens) per row, as the preference stages
    score a sequence, with the output head run at the label positions only (as `supervised_loss` does)."""
    import torch

    features, targets, head = _supervised_features(
        model, {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}, False)
    keep = _shifted(labels) != IGNORE_INDEX
    rows_of = keep.nonzero(as_tuple=True)[0].to(features.device)
    rows = max(1, CHUNK_ELEMENTS // head.weight.shape[0])
    if _plain_head(head) and not (torch.is_grad_enabled() and head.weight.requires_grad):
        need_hidden = torch.is_grad_enabled() and features.requires_grad
        per_token = _head_log_probs().apply(features, head.weight, targets, rows, need_hidden)
    else:  # the head itself is trained (or wrapped): autograd, a large chunk recomputed in backward
        parts = []
        for start in range(0, targets.numel(), rows):
            part, part_targets = features[start:start + rows], targets[start:start + rows]
            if part.shape[0] * head.weight.shape[0] >= CHUNK_ELEMENTS and torch.is_grad_enabled():
                from torch.utils.checkpoint import checkpoint

                parts.append(checkpoint(_chunk_log_probs, head, part, part_targets, use_reentrant=False))
            else:
                parts.append(_chunk_log_probs(head, part, part_targets))
        per_token = torch.cat(parts) if parts else features.new_zeros((0,), dtype=torch.float32)
    sums = per_token.new_zeros(labels.shape[0]).index_add(0, rows_of, per_token)
    if not targets.numel():
        sums = sums + features.sum() * 0.0  # keeps the graph alive
    return sums, keep.sum(-1).to(sums.device)


def _chunk_log_probs(head, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    import torch

    logits = _logits(head, features)
    return logits.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)


def _weighted_loss(model, ref, head, features, targets, ref_features, ref_head, variant, rows):
    """(summed token losses, summed KL) chunk by chunk through autograd; a large chunk is recomputed in backward."""
    import torch

    total = features.new_zeros((), dtype=torch.float32)
    kl = features.new_zeros((), dtype=torch.float32)
    for start in range(0, targets.numel(), rows):
        part, part_targets = features[start:start + rows], targets[start:start + rows]
        part_ref = None
        if ref_features is not None:
            with torch.no_grad(), _reference(model, ref):
                part_ref = _logits(ref_head, ref_features[start:start + rows])
        if part.shape[0] * (part.shape[-1] if head is None else head.weight.shape[0]) >= CHUNK_ELEMENTS and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            ce, div = checkpoint(_chunk_loss, head, part, part_targets, variant, part_ref, use_reentrant=False)
        else:
            ce, div = _chunk_loss(head, part, part_targets, variant, part_ref)
        total, kl = total + ce, kl + div
    return total, kl


def _shifted(labels):
    """The label each position predicts: position t predicts token t + 1, as in transformers' ForCausalLMLoss."""
    import torch

    return torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]


def _supervised_features(model, inputs: dict, full_logits: bool):
    """(hidden states or logits at the supervised positions, their target ids, the head to apply or None)."""
    import torch

    labels = inputs["labels"]
    forward_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    shift_labels = _shifted(labels)
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
        # No position at all for the model's own head: even one per row would read its whole weight (545 MB
        # for a 150k vocabulary in float32) on every forward pass, for logits nobody uses.
        no_position = torch.empty(0, dtype=torch.long, device=labels.device)
        model(**forward_inputs, use_cache=False, logits_to_keep=no_position)
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


def _plain_head(head) -> bool:
    """Whether `head` is exactly `hidden @ weight.T`: a plain Linear without bias (not quantized, no adapter)."""
    import torch

    return head is not None and type(head) is torch.nn.Linear and head.bias is None


def _product_rows(rows: int, part) -> int:
    """The rows a bf16/fp16 head product on a CPU is computed for: over 8 rows, `rows` rounded up to 16, 32 or 64,
    and above 64 to one of 8 sizes an octave (multiples of 8, under 12.5% more rows).

    oneDNN builds and caches a kernel set for each new row count (about 3 MiB for a 150k vocabulary, forward
    and backward products together), and the number of trained tokens in a batch is a new count at almost
    every step: the cache grew by two such products per step until it was full. Rounded, the counts are few,
    in a product that reads the whole head weight anyway (at these sizes the weight's reading is the cost: the
    0.5B's 152k x 896 head, streamed, 50 ms for 16 rows and 70 ms for 64). Up to 64 rows, powers of two: the
    0.5B bf16 sft (answers of 10 to 59 tokens) kept 10 MiB less than with multiples of 8, at the same speed.
    float32 products (MKL) and other devices keep no such cache.
    """
    import torch

    if rows <= 8 or part.device.type != "cpu" or part.dtype not in (torch.bfloat16, torch.float16):
        return rows
    if rows <= 64:
        return max(16, 1 << (rows - 1).bit_length())
    step = max(8, 1 << (rows.bit_length() - 4))
    return -(-rows // step) * step


def _chunk_scores(part, weight, targets, want_grad: bool):
    """(log p(target) per row of `part @ weight.T` in float32, and d(-log p)/d(logits) = softmax - one_hot(target)
    in the weight's dtype, or None); the float32 logits become that gradient in place and go with this call.
    The gradient may have more rows than `part` (`_product_rows`): the rows past `part`'s are not part of it."""
    import torch

    rows = part.shape[0]
    product_rows = _product_rows(rows, part)
    if product_rows != rows:
        part = torch.cat([part, part.new_zeros(product_rows - rows, part.shape[1])])
    logits = torch.nn.functional.linear(part, weight)
    if logits.dtype != torch.float32:
        log_probs, grad = _low_precision_chunk_scores(logits[:rows], targets, want_grad)
        return log_probs, None if grad is None else logits  # the padding rows' products are not used
    lse = torch.logsumexp(logits, dim=-1)
    log_probs = logits.gather(1, targets[:, None]).squeeze(1) - lse
    if not want_grad:
        return log_probs, None
    logits.sub_(lse[:, None]).exp_()  # softmax, in place
    logits[torch.arange(part.shape[0], device=part.device), targets] -= 1.0
    return log_probs, logits


def _low_precision_chunk_scores(logits, targets, want_grad: bool):
    """`_chunk_scores` for bf16/fp16 logits, in float32 a vocabulary slice at a time.

    A float32 copy of the whole chunk next to its bf16 logits would hold 6 bytes per logit at once (54 MB
    for 59 tokens of a 152k vocabulary, the largest short-lived allocation of a small model's step); here
    the bf16 logits are the only chunk-sized tensor, and they become the gradient in place.
    """
    import torch

    peak = logits.amax(dim=-1).float()  # exact: the largest logit of each row
    total = torch.zeros_like(peak)
    for start in range(0, logits.shape[1], VOCAB_SLICE):
        total += (logits[:, start:start + VOCAB_SLICE].float() - peak[:, None]).exp_().sum(dim=-1)
    lse = peak + total.log()
    log_probs = logits.gather(1, targets[:, None]).squeeze(1).float() - lse
    if not want_grad:
        return log_probs, None
    rows = torch.arange(logits.shape[0], device=logits.device)
    for start in range(0, logits.shape[1], VOCAB_SLICE):
        block = logits[:, start:start + VOCAB_SLICE]
        softmax = block.float().sub_(lse[:, None]).exp_()
        here = (targets >= start) & (targets < start + block.shape[1])
        softmax[rows[here], targets[here] - start] -= 1.0  # in float32, rounded once, as for float32 logits
        block.copy_(softmax)
    return log_probs, logits


def _streams(hidden, need_weight: bool) -> bool:
    """Whether a head's chunks go through `_streamed_chunk_scores`: bf16/fp16, and no gradient for the weight
    (which needs the whole softmax of each row at once)."""
    import torch

    return not need_weight and hidden.dtype in (torch.bfloat16, torch.float16)


def _streamed_chunk_scores(part, weight, targets, want_grad: bool):
    """(log p(target) per row of `part @ weight.T` in float32, and -(d log p(target) / d part) =
    softmax @ weight - weight[target] in `part`'s dtype, or None), one vocabulary slice at a time.

    The softmax is normalised as it goes (as flash attention does): each slice's logits are exponentiated
    against the largest logit seen so far, their products with the slice's weight rows are added up in float32,
    and what was added before is rescaled whenever a later slice holds a larger logit. No tensor as wide as the
    vocabulary is made, so a chunk's memory does not grow with the vocabulary (a chunk of 110 rows of a 152k
    vocabulary held 33 MB of bf16 logits), and the weight is read twice per chunk, as before. The logits are
    the same bf16 products, widened to float32; the softmax is rounded to bf16 for its product with the weight
    as before, and weight[target] is subtracted in float32 (before: the one-hot was subtracted from the softmax
    and rounded with it).
    """
    import torch

    rows = part.shape[0]
    product_rows = _product_rows(rows, part)
    if product_rows != rows:
        part = torch.cat([part, part.new_zeros(product_rows - rows, part.shape[1])])
    vocab = weight.shape[0]
    columns = max(1024, STREAM_SLICE_ELEMENTS // product_rows // 256 * 256)
    peak = torch.full((product_rows,), float("-inf"), dtype=torch.float32, device=part.device)
    total = torch.zeros_like(peak)
    target_logits = torch.zeros(rows, dtype=torch.float32, device=part.device)
    mixed = torch.zeros(product_rows, part.shape[1], dtype=torch.float32, device=part.device) if want_grad else None
    for start in range(0, vocab, columns):
        block = weight[start:start + columns]
        logits = torch.nn.functional.linear(part, block).float()
        # A gather and a select rather than a boolean mask: no host-device synchronisation per slice on a GPU.
        here = (targets >= start) & (targets < start + block.shape[0])
        picked = logits[:rows].gather(1, (targets - start).clamp(0, block.shape[0] - 1)[:, None]).squeeze(1)
        target_logits = torch.where(here, picked, target_logits)
        new_peak = torch.maximum(peak, logits.amax(dim=-1))
        rescale = (peak - new_peak).exp_()  # 0 at the first slice (the peak was -inf)
        peak = new_peak
        logits.sub_(peak[:, None]).exp_()
        total.mul_(rescale).add_(logits.sum(dim=-1))
        if mixed is not None:
            mixed.mul_(rescale[:, None]).add_(logits.to(part.dtype) @ block)
    log_probs = target_logits - (peak[:rows] + total[:rows].log())
    if mixed is None:
        return log_probs, None
    grad = mixed[:rows].div_(total[:rows, None]).sub_(weight[targets].float())
    return log_probs, grad.to(part.dtype)


@functools.cache
def _head_cross_entropy():
    import torch

    class HeadCrossEntropy(torch.autograd.Function):
        """Summed cross-entropy of `hidden @ weight.T` against `targets`, chunk by chunk, gradients included.

        The loss is the graph's last node, so the gradients of the hidden states and of the head's weight
        are known as soon as a chunk's logits are: they are computed here, in the forward pass, and the
        chunk's logits are freed at once. transformers keeps the logits' log-softmax until the backward
        pass and then allocates gradients of the same size; here nothing of vocabulary size outlives a
        chunk, and no chunk is computed twice.
        """

        @staticmethod
        def forward(ctx, hidden, weight, targets, rows, need_hidden, need_weight):
            grad_hidden = torch.empty_like(hidden) if need_hidden else None
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
            total = hidden.new_zeros((), dtype=torch.float32)
            streamed = _streams(hidden, need_weight)
            rows = STREAM_ROWS if streamed else rows
            for start in range(0, hidden.shape[0], rows):
                part, part_targets = hidden[start:start + rows], targets[start:start + rows]
                w = weight if weight.dtype == part.dtype else weight.to(part.dtype)
                if streamed:
                    log_probs, grad_part = _streamed_chunk_scores(part, w, part_targets, need_hidden)
                    total -= log_probs.sum()
                    if need_hidden:
                        grad_hidden[start:start + rows] = grad_part
                    continue
                log_probs, grad_logits = _chunk_scores(part, w, part_targets, need_hidden or need_weight)
                total -= log_probs.sum()
                if need_hidden:
                    grad_hidden[start:start + rows] = (grad_logits @ w)[:part.shape[0]]
                if need_weight:
                    grad_weight.addmm_(grad_logits[:part.shape[0]].t().float(), part.float())
            ctx.weight_dtype = weight.dtype
            ctx.save_for_backward(grad_hidden, grad_weight)
            return total

        @staticmethod
        def backward(ctx, grad_output):
            grad_hidden, grad_weight = ctx.saved_tensors
            if grad_hidden is not None:
                grad_hidden = grad_hidden * grad_output.to(grad_hidden.dtype)
            if grad_weight is not None:
                grad_weight = (grad_weight * grad_output).to(ctx.weight_dtype)
            return grad_hidden, grad_weight, None, None, None, None

    return HeadCrossEntropy


@functools.cache
def _head_log_probs():
    import torch

    class HeadLogProbs(torch.autograd.Function):
        """log p(target) of each row of `hidden @ weight.T`, chunk by chunk, for a head that is not trained.

        Each token's log-probability depends on its own hidden state only, through a fixed head, so its
        gradient with respect to that state, (one_hot(target) - softmax) @ weight, is computed as soon as the
        chunk's logits are; the backward pass only scales it by the incoming gradient. No chunk's logits
        outlive it and none is computed twice.
        """

        @staticmethod
        def forward(ctx, hidden, weight, targets, rows, need_hidden):
            out = hidden.new_empty(hidden.shape[0], dtype=torch.float32)
            slopes = torch.empty_like(hidden) if need_hidden else None
            streamed = _streams(hidden, False)
            rows = STREAM_ROWS if streamed else rows
            for start in range(0, hidden.shape[0], rows):
                part, part_targets = hidden[start:start + rows], targets[start:start + rows]
                w = weight if weight.dtype == part.dtype else weight.to(part.dtype)
                if streamed:
                    out[start:start + rows], grad_part = _streamed_chunk_scores(part, w, part_targets, need_hidden)
                    if need_hidden:
                        slopes[start:start + rows] = -grad_part
                    continue
                out[start:start + rows], grad_logits = _chunk_scores(part, w, part_targets, need_hidden)
                if need_hidden:
                    slopes[start:start + rows] = -(grad_logits @ w)[:part.shape[0]]
            ctx.save_for_backward(slopes)
            return out

        @staticmethod
        def backward(ctx, grad_output):
            (slopes,) = ctx.saved_tensors
            grad = None if slopes is None else slopes * grad_output[:, None].to(slopes.dtype)
            return grad, None, None, None, None

    return HeadLogProbs


def _unwrap(model):
    # DistributedDataParallel keeps the model in `.module`; the hooks go on the real decoder.
    inner = getattr(model, "module", None)
    return model if inner is None or not hasattr(inner, "config") else inner
