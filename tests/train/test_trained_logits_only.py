"""`trained_logits_only`: the loss at the supervised positions equals transformers' loss, gradients included."""

from __future__ import annotations

import json

import pytest

from tests.train.conftest import tiny_args, train


def _lora_model(model_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    config = LoraConfig(r=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    model = get_peft_model(model, config)
    model.train()
    return model


def _batch():
    import torch

    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(10, 4000, (3, 24), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 18:] = 0  # right padding
    attention_mask[2, 9:] = 0
    labels = input_ids.clone()
    labels[0, :10] = -100  # prompts
    labels[1, :5] = -100
    labels[1, 18:] = -100
    labels[2, :] = -100  # a row with nothing to learn
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _loss_and_grads(model, compute):
    model.zero_grad()
    loss = compute()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def _full_model(model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.train()
    return model


@pytest.mark.parametrize("arch_fixture", ["tiny_llama_dir", "tiny_qwen_dir"])
@pytest.mark.parametrize("num_items", [None, 40])
@pytest.mark.parametrize("chunk_rows", [None, 4])
@pytest.mark.parametrize("tuning", ["lora", "full"])
def test_the_loss_and_gradients_match_transformers(arch_fixture, num_items, chunk_rows, tuning, request, monkeypatch):
    import torch

    from lmforge.train import loss as loss_module

    model_dir = request.getfixturevalue(arch_fixture)
    model = _lora_model(model_dir) if tuning == "lora" else _full_model(model_dir)
    if chunk_rows:
        monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", chunk_rows * model.config.vocab_size)
    batch = _batch()
    kwargs = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    expected, expected_grads = _loss_and_grads(model, lambda: model(**batch, **kwargs).loss)
    head_rows, chunk_sizes = [], []
    head = (model.get_base_model() if tuning == "lora" else model).lm_head
    hook = head.register_forward_hook(lambda _m, args, _out: head_rows.append(args[0].reshape(-1, args[0].shape[-1]).shape[0]))
    logsumexp = torch.logsumexp
    monkeypatch.setattr(torch, "logsumexp", lambda x, *a, **k: chunk_sizes.append(x.shape[0]) or logsumexp(x, *a, **k))
    got, got_grads = _loss_and_grads(model, lambda: loss_module.supervised_loss(model, batch, kwargs.get(
        "num_items_in_batch")))
    hook.remove()
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6), (got, expected)
    assert got_grads.keys() == expected_grads.keys()
    if tuning == "full":
        assert "lm_head.weight" in got_grads or "model.embed_tokens.weight" in got_grads
    for name, grad in expected_grads.items():
        assert torch.allclose(got_grads[name], grad, rtol=1e-4, atol=1e-5), (name, (got_grads[name] - grad).abs().max())
    # The model's own head ran on no position; the loss then took the 14 + 13 supervised
    # positions only (row 0 predicts tokens 10..23, row 1 tokens 5..17), not all 3 x 24, in chunks.
    assert head_rows == [0]
    assert chunk_sizes == ([4] * 6 + [3] if chunk_rows else [27])


def test_models_with_other_logits_keep_the_transformers_loss(tiny_vl_dir):
    from transformers import AutoConfig, Gemma2Config

    from lmforge.train.loss import applies

    class Holder:
        def __init__(self, config):
            self.config = config

    assert not applies(Holder(Gemma2Config(final_logit_softcapping=30.0)))
    assert not applies(Holder(AutoConfig.from_pretrained(str(tiny_vl_dir))))


def _losses(output_dir) -> list[float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def test_training_logs_the_same_losses_with_and_without_it(tiny_llama_dir, tmp_path, one_thread):
    runs = {}
    for value in ("true", "false"):
        out = tmp_path / value
        train(*tiny_args(tiny_llama_dir, out, trained_logits_only=value, gradient_accumulation_steps=2,
                         max_steps=3))
        runs[value] = _losses(out)
    assert len(runs["true"]) == 3
    assert runs["true"] == pytest.approx(runs["false"], rel=1e-4)


@pytest.mark.parametrize("arch_fixture", ["tiny_llama_dir", "tiny_qwen_dir"])
@pytest.mark.parametrize("chunk_rows", [None, 4])
@pytest.mark.parametrize("tuning", ["lora", "full"])
def test_preference_scores_and_gradients_match_the_full_logits(arch_fixture, chunk_rows, tuning, request,
                                                               monkeypatch):
    import torch

    from lmforge.train import loss as loss_module
    from lmforge.train.pref_losses import sequence_logps

    model_dir = request.getfixturevalue(arch_fixture)
    model = _lora_model(model_dir) if tuning == "lora" else _full_model(model_dir)
    if chunk_rows:
        monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", chunk_rows * model.config.vocab_size)
    batch = _batch()
    weights = torch.tensor([0.7, -1.3, 2.0])  # a per-sequence upstream gradient, as a DPO loss gives

    def scores_of(compute):
        model.zero_grad()
        sums, counts = compute()
        (sums * weights).sum().backward()
        return sums.detach(), counts, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    expected, expected_counts, expected_grads = scores_of(
        lambda: sequence_logps(model(input_ids=ids, attention_mask=mask).logits, labels))
    got, counts, grads = scores_of(lambda: loss_module.label_logps(model, ids, mask, labels))
    assert counts.tolist() == expected_counts.tolist() == [14, 13, 0]
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-4), (got, expected)
    assert got[2] == 0.0
    for name, grad in expected_grads.items():
        assert torch.allclose(grads[name], grad, rtol=1e-4, atol=1e-5), (name, (grads[name] - grad).abs().max())
    with torch.no_grad():  # the reference's scores: no gradient kept
        ref, _ = loss_module.label_logps(model, ids, mask, labels)
    assert ref.grad_fn is None and torch.allclose(ref, expected, rtol=1e-5, atol=1e-4)


def _float32_copy_scores(part, weight, targets):
    """The chunk's scores through a float32 copy of all its logits (what `_chunk_scores` did for bf16)."""
    import torch

    logits = torch.nn.functional.linear(part, weight).float()
    lse = torch.logsumexp(logits, dim=-1)
    log_probs = logits.gather(1, targets[:, None]).squeeze(1) - lse
    logits.sub_(lse[:, None]).exp_()
    logits[torch.arange(part.shape[0]), targets] -= 1.0
    return log_probs, logits.to(weight.dtype)


def _outputs_made(compute) -> list:
    """The (dtype, shape) of every tensor (or view) an operation made while `compute` ran."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    made = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for item in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(item, torch.Tensor):
                    made.append((item.dtype, tuple(item.shape)))
            return out

    with Watch():
        compute()
    return made


def _largest_float32_output(compute) -> int:
    """The most elements of any float32 tensor an operation made while `compute` ran."""
    import math

    import torch

    return max((math.prod(shape) for dtype, shape in _outputs_made(compute) if dtype == torch.float32), default=0)


def test_bf16_chunks_are_widened_a_vocabulary_slice_at_a_time(monkeypatch):
    """bf16 logits become float32 one slice of the vocabulary at a time, never a whole chunk, for the same
    log-probabilities and gradient as a float32 copy of the chunk gives (the log-sum-exp is summed in another
    order: within float32 rounding)."""
    import torch

    from lmforge.train import loss as loss_module

    monkeypatch.setattr(loss_module, "VOCAB_SLICE", 4096)
    generator = torch.Generator().manual_seed(0)
    rows, vocab, hidden = 7, 20_000, 32  # five slices, the last one ragged
    weight = (torch.randn(vocab, hidden, generator=generator) * 0.3).bfloat16()
    part = torch.randn(rows, hidden, generator=generator).bfloat16()
    targets = torch.tensor([0, 4095, 4096, 9000, 16_383, 16_384, 19_999])  # slice edges, first and last ids
    log_probs, grad = loss_module._chunk_scores(part, weight, targets, True)
    expected_log_probs, expected_grad = _float32_copy_scores(part, weight, targets)
    assert grad.dtype == torch.bfloat16 and grad.shape == (rows, vocab)
    torch.testing.assert_close(log_probs, expected_log_probs, rtol=0, atol=1e-5)
    torch.testing.assert_close(grad.float(), expected_grad.float(), rtol=1e-2, atol=1e-7)
    assert (grad == expected_grad).float().mean() > 0.999
    assert torch.all(grad[torch.arange(rows), targets] < 0)  # softmax - 1 at each target
    only_scores, none = loss_module._chunk_scores(part, weight, targets, False)
    assert none is None and torch.equal(only_scores, log_probs)

    chunk = rows * vocab
    assert _largest_float32_output(lambda: loss_module._chunk_scores(part, weight, targets, True)) <= rows * 4096
    assert _largest_float32_output(lambda: _float32_copy_scores(part, weight, targets)) == chunk


def _widest_output(compute) -> int:
    """The longest dimension of any tensor (or view) an operation made while `compute` ran."""
    return max((max(shape) for _, shape in _outputs_made(compute) if shape), default=0)


def test_an_untrained_bf16_head_is_streamed_a_vocabulary_slice_at_a_time(monkeypatch):
    """A bf16 head that is not trained (LoRA, freeze, the preference stages' scores) never makes a tensor as wide
    as the vocabulary: the softmax is normalised slice by slice, rescaled when a later slice holds a larger logit,
    for the same log-probabilities and a gradient as close to the exact one as the whole-chunk path's."""
    import torch

    from lmforge.train import loss as loss_module

    generator = torch.Generator().manual_seed(0)
    rows, vocab, hidden = 7, 20_000, 32
    monkeypatch.setattr(loss_module, "STREAM_SLICE_ELEMENTS", rows * 4096)  # five slices, the last one ragged
    weight = torch.randn(vocab, hidden, generator=generator) * 0.3
    weight[16_384:] *= 3  # most rows' largest logits come in the last slice: what came before is rescaled
    part = torch.randn(rows, hidden, generator=generator)
    weight[100], weight[5000] = part[0], part[1]  # but row 0 peaks in the first slice, row 1 in the second
    weight, part = weight.bfloat16(), part.bfloat16()
    targets = torch.tensor([0, 4095, 4096, 9000, 16_383, 16_384, 19_999])  # slice edges, first and last ids
    logits = torch.nn.functional.linear(part, weight).float()
    assert logits.argmax(-1)[:2].tolist() == [100, 5000] and torch.all(logits.argmax(-1)[2:] >= 16_384)

    log_probs, grad = loss_module._streamed_chunk_scores(part, weight, targets, True)
    expected_log_probs, expected_grad_logits = _float32_copy_scores(part, weight, targets)
    torch.testing.assert_close(log_probs, expected_log_probs, rtol=0, atol=1e-5)
    exact_logits = part.double() @ weight.double().T
    exact = (torch.softmax(exact_logits, -1) - torch.nn.functional.one_hot(targets, vocab)) @ weight.double()
    assert grad.dtype == torch.bfloat16 and grad.shape == (rows, hidden)
    for bf16_grad in grad, expected_grad_logits @ weight:  # this path and the whole chunk's: bf16 logits' rounding
        assert (bf16_grad.double() - exact).norm() / exact.norm() < 1e-2
    only_scores, none = loss_module._streamed_chunk_scores(part, weight, targets, False)
    assert none is None and torch.equal(only_scores, log_probs)
    # The same steps in float32 give the exact gradient: the bf16 distance above is the softmax's rounding.
    _, grad32 = loss_module._streamed_chunk_scores(part.float(), weight.float(), targets, True)
    torch.testing.assert_close(grad32.double(), exact, rtol=0, atol=2e-6 * exact.abs().max().item())

    assert _widest_output(lambda: loss_module._streamed_chunk_scores(part, weight, targets, True)) == 4096
    assert _widest_output(lambda: loss_module._chunk_scores(part, weight, targets, True)) == vocab

    # Through the losses: cross-entropy (sft, pt) and the scores of the preference stages.
    hidden_states = part.clone().requires_grad_()
    total = loss_module._head_cross_entropy().apply(hidden_states, weight, targets, 3, True, False)
    total.backward()
    torch.testing.assert_close(total, -expected_log_probs.sum(), rtol=1e-6, atol=1e-5)
    assert torch.equal(hidden_states.grad, grad)
    hidden_states.grad = None
    scores = loss_module._head_log_probs().apply(hidden_states, weight, targets, 3, True)
    (scores * 2).sum().backward()
    assert torch.equal(scores, log_probs) and torch.equal(hidden_states.grad, -2 * grad)


def test_a_bf16_model_gets_transformers_loss_and_gradients(tiny_qwen_dir):
    import torch

    from lmforge.train import loss as loss_module

    model = _lora_model(tiny_qwen_dir).to(torch.bfloat16)
    batch = _batch()
    expected, expected_grads = _loss_and_grads(model, lambda: model(**batch).loss)
    got, grads = _loss_and_grads(model, lambda: loss_module.supervised_loss(model, batch))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected.float(), rtol=1e-4, atol=0)
    for name, grad in expected_grads.items():  # bf16 backward passes: about 1% apart in either order
        distance = (grads[name].float() - grad.float()).norm() / grad.float().norm()
        assert distance < 0.03, (name, distance)


def test_bf16_head_products_come_in_few_row_counts_and_give_the_same_scores(monkeypatch):
    """oneDNN builds and keeps kernels for each new row count of a bf16 product on a CPU, and the number of trained
    tokens is new at almost every step: the head's products are computed for that count rounded up to 16, 32 or 64,
    and above 64 to one of 8 sizes an octave (under 12.5% more rows); the extra rows change no score and no
    gradient."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from lmforge.train import loss as loss_module

    bf16, fp32 = torch.empty(0, dtype=torch.bfloat16), torch.empty(0)
    for octave in range(3, 12):
        counts = {loss_module._product_rows(n, bf16) for n in range(2 ** octave + 1, 2 ** (octave + 1) + 1)}
        assert len(counts) <= 8, (octave, sorted(counts))
    assert {loss_module._product_rows(n, bf16) for n in range(9, 65)} == {16, 32, 64}
    for n in range(1, 4097):
        padded = loss_module._product_rows(n, bf16)
        assert n <= padded and (padded == n if n <= 8 else padded < 2 * n if n <= 64 else padded < n + n / 8)
        assert padded % 8 == 0 or n <= 8
        assert loss_module._product_rows(n, fp32) == n  # MKL's float32 products keep no kernels per shape

    # The streamed head's slices are as wide as the product's rows allow: one slice of this vocabulary for 37 rows
    # and for 64, so that both sum in the same order (cut elsewhere, the gradient rounds in another order).
    monkeypatch.setattr(loss_module, "STREAM_SLICE_ELEMENTS", 1 << 21)
    generator = torch.Generator().manual_seed(0)
    weight = (torch.randn(20_000, 64, generator=generator) * 0.3).bfloat16()
    hidden = torch.randn(37, 64, generator=generator).bfloat16().requires_grad_()
    targets = torch.randint(0, 20_000, (37,), generator=generator)
    product_rows = set()

    class Rows(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default) and args[-1].dtype == torch.bfloat16:
                product_rows.add(args[-2].shape[0])
            return func(*args, **(kwargs or {}))

    def loss_and_grad():
        hidden.grad = None
        total = loss_module._head_cross_entropy().apply(hidden, weight, targets, 110, True, False)
        total.backward()
        return total.detach(), hidden.grad.clone()

    def scores_and_grad():  # the preference stages' scores, through a head that is not trained
        hidden.grad = None
        scores = loss_module._head_log_probs().apply(hidden, weight, targets, 110, True)
        (scores * torch.linspace(-1, 1, 37)).sum().backward()
        return scores.detach(), hidden.grad.clone()

    with Rows():
        rounded = loss_and_grad(), scores_and_grad()
    assert product_rows == {64}  # 37 rounded up, forward and backward
    monkeypatch.setattr(loss_module, "_product_rows", lambda rows, part: rows)
    exact = loss_and_grad(), scores_and_grad()
    for got, expected in zip(rounded, exact, strict=True):
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
