"""The SFT loss variants (use_dft_loss, use_eaft_loss, use_asft_loss): their values against the formulas, and runs."""

from __future__ import annotations

import json

import pytest
import torch

from lmforge.train import loss as loss_module
from lmforge.train.loss import Variant, supervised_loss
from tests.train.conftest import tiny_args, train

IDS = torch.tensor([[1, 5, 9, 20, 33, 41, 7, 12], [3, 8, 2, 19, 25, 6, 0, 0]])
LABELS = torch.tensor([[-100, -100, -100, 20, 33, 41, 7, 12], [-100, -100, 2, 19, 25, 6, -100, -100]])
MASK = torch.tensor([[1] * 8, [1] * 6 + [0] * 2])


def token_terms(logits: torch.Tensor):
    """(per-token cross-entropy, logits) at the supervised positions, from the model's full logits."""
    shift = torch.nn.functional.pad(LABELS, (0, 1), value=-100)[..., 1:]
    keep = shift != -100
    chosen = logits[keep].float()
    return torch.nn.functional.cross_entropy(chosen, shift[keep], reduction="none"), chosen


def expected(kind: str, logits: torch.Tensor, ref_logits: torch.Tensor | None = None, alpha: float = 1.0):
    ce, chosen = token_terms(logits)
    if kind == "dft":
        return (ce * torch.exp(-ce).detach()).sum() / ce.numel()
    if kind == "eaft":
        top = torch.topk(chosen.detach(), 20, dim=-1).values
        p = torch.softmax(top, -1)
        entropy = -(p * torch.log(p)).sum(-1)
        return (ce * (entropy / 3.0) ** alpha).sum() / ce.numel()
    _, ref = token_terms(ref_logits)
    kl = torch.nn.functional.kl_div(torch.log_softmax(chosen, -1), torch.softmax(ref, -1), reduction="none").sum(-1)
    return expected("dft", logits) + alpha * kl.mean()


@pytest.fixture()
def lora_model(tiny_llama_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    return model.train()


@pytest.mark.parametrize("full_logits", [False, True])
@pytest.mark.parametrize(("kind", "alpha"), [("dft", 1.0), ("eaft", 1.0), ("eaft", 0.5), ("asft", 0.1)])
def test_loss_values_and_gradients_match_the_formula(lora_model, kind, alpha, full_logits):
    inputs = {"input_ids": IDS, "attention_mask": MASK, "labels": LABELS}
    value = supervised_loss(lora_model, inputs, variant=Variant(kind, alpha), full_logits=full_logits)
    value.backward()
    got = {n: p.grad.clone() for n, p in lora_model.named_parameters() if p.requires_grad}
    lora_model.zero_grad()

    ref_logits = None
    if kind == "asft":  # the reference is the policy with its adapter switched off
        with torch.no_grad(), lora_model.disable_adapter():
            ref_logits = lora_model(input_ids=IDS, attention_mask=MASK).logits
        assert (ref_logits - lora_model(input_ids=IDS, attention_mask=MASK).logits).abs().max() > 1e-3
    want = expected(kind, lora_model(input_ids=IDS, attention_mask=MASK).logits, ref_logits, alpha)
    want.backward()
    torch.testing.assert_close(value, want, atol=1e-5, rtol=1e-5)
    for name, param in lora_model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(got[name], param.grad, atol=1e-5, rtol=1e-4)


def test_plain_cross_entropy_is_unchanged_by_the_variants_code(lora_model):
    inputs = {"input_ids": IDS, "attention_mask": MASK, "labels": LABELS}
    ours = supervised_loss(lora_model, inputs)
    theirs = lora_model(**inputs).loss
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


# The logged training loss is the variant's own objective. DFT and ASFT weight each token by its probability,
# so they refine a model that already knows the data (the LoRA runs continue the quick start's adapter), and
# their objective then falls; EAFT learns from scratch, and the plain cross-entropy of evaluation falls.
@pytest.mark.extras
@pytest.mark.parametrize(("key", "finetuning_type", "kind"), [
    ("use_dft_loss", "lora", "dft"), ("use_eaft_loss", "lora", "eaft"), ("use_asft_loss", "lora", "asft"),
    ("use_asft_loss", "full", "asft"),
])
def test_training_with_a_variant_uses_it_and_learns(key, finetuning_type, kind, tiny_llama_dir, quickstart_run, tmp_path,
                                                    monkeypatch):
    seen = []
    original = loss_module._chunk_loss

    def spy(head, features, targets, variant=None, ref_logits=None):
        seen.append((variant.kind if variant else None, ref_logits is not None))
        return original(head, features, targets, variant, ref_logits)

    monkeypatch.setattr(loss_module, "_chunk_loss", spy)
    out = tmp_path / "run"
    settings = {key: "true", "finetuning_type": finetuning_type, "max_steps": 10, "learning_rate": "5e-3"}
    if finetuning_type == "full":
        settings["learning_rate"] = "1e-3"
    elif kind != "eaft":
        settings["adapter_name_or_path"] = quickstart_run
    if kind == "eaft":
        settings.update(max_steps=12, val_size=0.1, eval_strategy="steps", eval_steps=4, per_device_eval_batch_size=8)
    train(*tiny_args(tiny_llama_dir, out, **settings))

    assert seen and set(seen) == {(kind, kind == "asft")}  # ASFT's KL term had its reference logits
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    if kind == "eaft":
        evals = [entry["eval_loss"] for entry in history if "eval_loss" in entry]
        assert evals[-1] < evals[0] - 0.5
    elif finetuning_type == "full":  # from random weights every probability starts near zero, so does the objective
        assert max(losses[-3:]) < max(losses) / 4
    else:
        assert sum(losses[-3:]) < sum(losses[:3]) / 2


def test_variants_are_sft_only_and_one_at_a_time(tiny_llama_dir, tmp_path):
    from lmforge.config import parse_config
    from lmforge.config.parser import ConfigError

    with pytest.raises(ConfigError) as caught:
        parse_config("train", [*tiny_args(tiny_llama_dir, tmp_path), "use_dft_loss=true", "use_eaft_loss=true",
                               "stage=pt", "dataset=pretrain_demo"])
    assert "use_dft_loss and use_eaft_loss are alternative losses; keep one of them." in str(caught.value)
    assert "'use_dft_loss' is a loss of stage sft (the stage is pt)." in str(caught.value)
