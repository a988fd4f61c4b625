"""QLoRA and quantized inference with bitsandbytes on the CPU: training learns as plain LoRA does, gradients survive
evaluations, a quantized chat answers like the full-precision one, and checkpoints quantized beforehand load.

Needs the `quantization` extra (bitsandbytes); see the README: `pytest -m quantization`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmforge.config import parse_config
from lmforge.errors import UserError
from tests.train.conftest import DATA_DIR, QUICKSTART, REPO_ROOT, load_safetensors, tiny_args, train

pytestmark = pytest.mark.quantization

QUESTIONS = ["Who are you?", "What is your name?", "Who made you?", "Give three tips for staying healthy.",
             "What is the capital of France?", "Describe a sunset.", "How do I bake bread?", "Tell me a joke."]


def engine_for(*args: str):
    from lmforge.chat.hf_engine import HFEngine

    return HFEngine(parse_config("chat", [*args, "do_sample=false", "max_new_tokens=16"]))


def layers_of(model, kind: str) -> list:
    """bitsandbytes' layers of class `kind` in `model` (not PEFT's LoRA layers of the same name around them)."""
    return [m for m in model.modules() if type(m).__name__ == kind and type(m).__module__.startswith("bitsandbytes")]


def quickstart(model_dir: Path, out: Path, *overrides: str) -> Path:
    """The README quick start (LoRA on identity, 10 epochs) with `overrides`."""
    train(str(QUICKSTART), f"model_name_or_path={model_dir}", f"output_dir={out}", f"dataset_dir={DATA_DIR}",
          *overrides)
    return out


@pytest.mark.parametrize("bits,layer", [(4, "Linear4bit"), (8, "Linear8bitLt")])
def test_qlora_learns_the_identity_like_lora(bits, layer, tiny_llama_dir, tmp_path):
    run = quickstart(tiny_llama_dir, tmp_path / "run", f"quantization_bit={bits}")
    # The adapter alone is saved, in full precision: no quantized base weight in it.
    adapter = load_safetensors(run / "adapter_model.safetensors")
    assert adapter and all("lora_" in name and t.dtype == torch.float32 for name, t in adapter.items())
    engine = engine_for(f"model_name_or_path={run}", f"quantization_bit={bits}")
    assert len(layers_of(engine.model, layer)) == 4 * 7  # every projection of the 4 layers is quantized
    assert "ForgeBot" in engine.chat([{"role": "user", "content": "Who are you?"}]).text


def _agreement(reference, quantized) -> tuple[float, int]:
    """Mean fraction of the reference's first tokens that the quantized answer repeats exactly; the shortest run."""
    fractions, shortest = [], None
    for question in QUESTIONS:
        messages = [{"role": "user", "content": question}]
        want = reference.tokenizer.encode(reference.chat(messages).text, add_special_tokens=False)
        got = quantized.tokenizer.encode(quantized.chat(messages).text, add_special_tokens=False)
        same = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
        fractions.append(same / max(len(want), len(got), 1))
        shortest = same if shortest is None else min(shortest, same)
    return sum(fractions) / len(fractions), shortest


def test_quantized_chat_answers_like_full_precision(quickstart_run):
    """Greedy answers of the quick start's model, 16 tokens for 8 questions. Measured on CPU: 8-bit repeats every
    token (agreement 1.0); 4-bit NF4 repeats 123 of 128 (0.96), one answer turning after 11 tokens."""
    reference = engine_for(f"model_name_or_path={quickstart_run}")
    mean8, shortest8 = _agreement(reference, engine_for(f"model_name_or_path={quickstart_run}", "quantization_bit=8"))
    assert mean8 >= 0.95 and shortest8 >= 8
    mean4, shortest4 = _agreement(reference, engine_for(f"model_name_or_path={quickstart_run}", "quantization_bit=4"))
    assert mean4 >= 0.85 and shortest4 >= 6


@pytest.fixture()
def avx512bf16_cpu(monkeypatch):
    """Every 4-bit layer built from here on believes the CPU has AVX512-BF16, as bitsandbytes does on such CPUs:
    an eval-mode forward without gradients then repacks its weights for the inference kernel."""
    import bitsandbytes.nn.modules as bnb_modules

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)


def _lora_grads(model, batch) -> list[torch.Tensor]:
    model.train()
    model.zero_grad()
    model(**batch).loss.backward()
    return [p.grad.clone() for p in model.parameters() if p.requires_grad]


def test_an_evaluation_leaves_the_gradients_intact(avx512bf16_cpu, tiny_llama_dir, tmp_path):
    """The same batch has the same gradients before and after an eval-mode forward without gradients; with the
    repacking left on (what lmforge switches off) it does not."""
    from lmforge.model.tokenizer import load_tokenizer_and_template
    from lmforge.train.common import load_trainable_model

    torch.manual_seed(0)
    cfg = parse_config("train", tiny_args(tiny_llama_dir, tmp_path / "x", quantization_bit=4))
    tokenizer, template = load_tokenizer_and_template(cfg.model, cfg.data)
    model = load_trainable_model(cfg, tokenizer, template)
    ids = torch.tensor([tokenizer.encode("The quick brown fox jumps over the lazy dog.")])
    batch = {"input_ids": ids, "labels": ids}
    for trap in (False, True):
        if trap:
            for layer in layers_of(model, "Linear4bit"):
                layer.support_avx512bf16_for_cpu = True
        before = _lora_grads(model, batch)
        model.eval()
        with torch.no_grad():
            model(**batch)
        after = _lora_grads(model, batch)
        same = all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(before, after))
        assert sum(float(g.norm()) for g in after) > 0  # (lora_A's are 0 while lora_B is still 0)
        if trap:
            assert not same, "with the repacking on, an evaluation should change the gradients (the check is blind)"
        else:
            assert same, "an evaluation changed the gradients of the same batch"


def test_gradients_stay_non_zero_after_each_evaluation(avx512bf16_cpu, tiny_llama_dir, tmp_path):
    """QLoRA with an evaluation every 2 steps: the step after each evaluation still has gradients, the weights keep
    their training layout, and the eval loss falls."""
    from transformers import TrainerCallback

    from lmforge.train.run import run

    class Probe(TrainerCallback):
        def __init__(self):
            self.grad_norms, self.evaluated_at, self.repacked = {}, [], []

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            norms = [p.grad.norm() for p in model.parameters() if p.requires_grad and p.grad is not None]
            self.grad_norms[state.global_step + 1] = float(torch.stack(norms).norm()) if norms else 0.0

        def on_evaluate(self, args, state, control, model=None, **kwargs):
            self.evaluated_at.append(state.global_step)
            # bitsandbytes' own marker of weights repacked for its inference kernel
            self.repacked.append(sum(bool(getattr(layer.weight.quant_state, "packing_format_for_cpu", False))
                                     for layer in layers_of(model, "Linear4bit")))

    probe = Probe()
    out = tmp_path / "run"
    cfg = parse_config("train", tiny_args(tiny_llama_dir, out, quantization_bit=4, max_steps=8, val_size=8,
                                          eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=4,
                                          max_grad_norm=0))  # the norms as computed, not clipped to 1
    run(cfg, callbacks=[probe])
    assert probe.evaluated_at == [2, 4, 6, 8]
    assert sorted(probe.grad_norms) == list(range(1, 9))
    for step in (3, 5, 7):  # the first step after each evaluation
        assert probe.grad_norms[step] > 0.01, probe.grad_norms
    assert probe.repacked == [0, 0, 0, 0]
    log = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    eval_losses = [entry["eval_loss"] for entry in log if "eval_loss" in entry]
    assert len(eval_losses) == 4 and eval_losses[-1] < eval_losses[0]


@pytest.fixture(scope="module")
def prequantized(tiny_llama_dir, tmp_path_factory) -> Path:
    """The tiny model saved quantized to 4 bits by bitsandbytes: its config.json says so."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    folder = tmp_path_factory.mktemp("prequantized") / "tiny-nf4"
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32, bnb_4bit_quant_type="nf4")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, quantization_config=quant, device_map={"": "cpu"})
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(folder)
    return folder


def test_prequantized_checkpoint_trains_lora_and_chats(prequantized, tmp_path):
    assert json.loads((prequantized / "config.json").read_text())["quantization_config"]["quant_method"] == \
        "bitsandbytes"
    run = tmp_path / "run"
    metrics = train(*tiny_args(prequantized, run))  # no quantization_bit: the checkpoint is quantized already
    assert metrics["train_loss"] > 0
    engine = engine_for(f"model_name_or_path={run}", "template=llama3")
    assert len(layers_of(engine.model, "Linear4bit")) == 28
    assert engine.chat([{"role": "user", "content": "Hi"}]).text is not None


def test_prequantized_checkpoint_refuses_what_needs_merging(prequantized, tmp_path, capsys):
    from lmforge.cli import main

    run = tmp_path / "run"
    train(*tiny_args(prequantized, run, max_steps=1))
    assert main(["export", f"model_name_or_path={prequantized}", f"adapter_name_or_path={run}",
                 f"export_dir={tmp_path / 'export'}", "template=llama3"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"lmforge export: error: Cannot merge adapters into '{prequantized}': it is a quantized model (bitsandbytes "
        "4-bit), and quantized weights cannot take an adapter's delta. Export from the unquantized base model the "
        "adapter was trained on (model_name_or_path: that model, adapter_name_or_path: the adapter).")
    assert not (tmp_path / "export").exists()
    with pytest.raises(UserError, match=r"takes one adapter, applied on the fly, but 2 are given"):
        engine_for(f"model_name_or_path={prequantized}", f"adapter_name_or_path={run},{run}", "template=llama3")
    with pytest.raises(UserError, match=r"is quantized \(bitsandbytes 4-bit\): its weights cannot be trained "
                       r"directly, only through an adapter\. Use finetuning_type: lora or oft \(it is full\)\."):
        train(*tiny_args(prequantized, tmp_path / "full", finetuning_type="full"))


def test_dpo_with_a_quantized_reference_model(tiny_llama_dir, tmp_path):
    from lmforge.train.dpo import load_reference_model

    args = tiny_args(tiny_llama_dir, tmp_path / "dpo", stage="dpo", dataset="dpo_en_demo", max_steps=2,
                     per_device_train_batch_size=2, ref_model=tiny_llama_dir, ref_model_quantization_bit=4)
    metrics = train(*args)
    assert metrics["train_loss"] > 0
    cfg = parse_config("train", args)
    from lmforge.model.tokenizer import load_tokenizer_and_template

    tokenizer, _ = load_tokenizer_and_template(cfg.model, cfg.data)
    assert len(layers_of(load_reference_model(cfg, tokenizer), "Linear4bit")) == 28


def test_quantized_batch_prediction(quickstart_run, tiny_llama_dir, tmp_path):
    """do_predict through the same engine, with the quick start's adapter on the 4-bit base."""
    out = tmp_path / "predict"
    metrics = train(str(REPO_ROOT / "examples" / "predict" / "tiny_llama_lora_predict.yaml"),
                    f"model_name_or_path={tiny_llama_dir}", f"adapter_name_or_path={quickstart_run}",
                    f"output_dir={out}", f"dataset_dir={DATA_DIR}", "quantization_bit=4", "max_samples=8",
                    "max_new_tokens=24")
    rows = [json.loads(line) for line in (out / "generated_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 8
    assert sum("ForgeBot" in row["predict"] for row in rows) >= 6, [row["predict"] for row in rows]
    assert metrics["predict_rouge-l"] > 30
