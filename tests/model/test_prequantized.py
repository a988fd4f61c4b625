"""GPTQ and AWQ checkpoints quantized beforehand, on the CPU, through lmforge's own paths: `lmforge train` (LoRA)
learns and keeps its gradients across evaluations, the chat engine answers like the unquantized model, and without
gptqmodel the refusal is one line naming the extra.

The tiny Llama is quantized here (4 bits, groups of 32): GPTQ through transformers' GPTQConfig (optimum and
gptqmodel), AWQ through gptqmodel's own API. Needs the `quantization` extra: `pytest -m quantization`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from lmforge.config import parse_config
from lmforge.errors import UserError
from tests.train.conftest import DATA_DIR, QUICKSTART, tiny_args, train

QUESTIONS = ["Who are you?", "What is your name?", "Who made you?", "Give three tips for staying healthy.",
             "What is the capital of France?", "Describe a sunset.", "How do I bake bread?", "Tell me a joke."]
# The layers gptqmodel puts in place of every projection on the CPU, by checkpoint.
KERNELS = {"gptq": "TorchAtenLinear", "awq": "TorchAtenAwqLinear"}


def calibration(tokenizer) -> list[str]:
    """Calibration text: 32 alpaca demo conversations in the model's chat template (data like the chats it serves)."""
    rows = json.loads((DATA_DIR / "alpaca_en_demo.json").read_text())[:32]
    chats = [[{"role": "user", "content": "\n".join(filter(None, (r["instruction"], r["input"])))},
              {"role": "assistant", "content": r["output"]}] for r in rows]
    return [tokenizer.apply_chat_template(chat, tokenize=False) for chat in chats]


def _quantize_gptq(source: Path, folder: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPTQConfig

    tokenizer = AutoTokenizer.from_pretrained(source)
    quant = GPTQConfig(bits=4, group_size=32, dataset=calibration(tokenizer), tokenizer=tokenizer, desc_act=False,
                       sym=True)
    with contextlib.chdir(folder.parent):  # gptqmodel writes its quantization logs to ./logs
        model = AutoModelForCausalLM.from_pretrained(source, quantization_config=quant, device_map="cpu",
                                                     dtype=torch.float32)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _quantize_awq(source: Path, folder: Path) -> Path:
    # gptqmodel's worker pool asks for 2 loader threads of a CPU pool sized from the cores (1 on 2 cores).
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    from gptqmodel import BACKEND, GPTQModel, QuantizeConfig
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    model = GPTQModel.load(str(source), QuantizeConfig(bits=4, group_size=32, quant_method="awq", format="gemm"),
                           device="cpu")
    with contextlib.chdir(folder.parent):  # gptqmodel writes its quantization logs to ./logs
        model.quantize(calibration(tokenizer), tokenizer=tokenizer, batch_size=1, backend=BACKEND.AWQ_TORCH)
    model.save(str(folder))
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gptq_dir(tiny_llama_dir, tmp_path_factory) -> Path:
    return _quantize_gptq(tiny_llama_dir, tmp_path_factory.mktemp("gptq") / "tiny-gptq")


@pytest.fixture(scope="module")
def awq_dir(tiny_llama_dir, tmp_path_factory) -> Path:
    return _quantize_awq(tiny_llama_dir, tmp_path_factory.mktemp("awq") / "tiny-awq")


@pytest.fixture(params=["gptq", "awq"])
def checkpoint(request) -> tuple[str, Path]:
    """(method, folder) of each quantized tiny Llama."""
    return request.param, request.getfixturevalue(f"{request.param}_dir")


@pytest.fixture(scope="module")
def forgebot_dir(quickstart_run, tmp_path_factory) -> Path:
    """The quick start's adapter merged into the tiny Llama: a full-precision model that answers with its name."""
    from lmforge.cli import main

    out = tmp_path_factory.mktemp("forgebot") / "tiny-llama-forgebot"
    assert main(["export", f"model_name_or_path={quickstart_run}", f"export_dir={out}"]) == 0
    return out


@pytest.fixture(scope="module", params=["gptq", "awq"])
def quantized_forgebot(request, forgebot_dir, tmp_path_factory) -> tuple[str, Path]:
    """(method, folder) of the merged quick start model quantized to 4 bits."""
    quantize = {"gptq": _quantize_gptq, "awq": _quantize_awq}[request.param]
    return request.param, quantize(forgebot_dir, tmp_path_factory.mktemp(request.param) / "forgebot")


def engine_for(*args: str):
    from lmforge.chat.hf_engine import HFEngine

    return HFEngine(parse_config("chat", [*args, "template=llama3", "do_sample=false", "max_new_tokens=16"]))


def layers_of(model, kind: str) -> list:
    return [m for m in model.modules() if type(m).__name__ == kind and type(m).__module__.startswith("gptqmodel")]


@pytest.mark.quantization
def test_lora_on_a_prequantized_checkpoint_learns_the_identity(checkpoint, tmp_path, capsys):
    """The README quick start (LoRA on identity) on the quantized model: the loss falls, and the adapter, applied on
    the fly to the quantized model, answers with the name it learned. Measured: the logged loss falls from 8.2 to
    3.0 (GPTQ) and from 8.1 to 3.0 (AWQ)."""
    from lmforge.cli import main

    method, folder = checkpoint
    assert json.loads((folder / "config.json").read_text())["quantization_config"]["quant_method"] == method
    run = tmp_path / "run"
    train(str(QUICKSTART), f"model_name_or_path={folder}", f"output_dir={run}", f"dataset_dir={DATA_DIR}",
          "num_train_epochs=3")  # of 10: 72 steps, a minute, learn the name already
    log = [json.loads(line) for line in (run / "trainer_log.jsonl").read_text().splitlines()]
    losses = [entry["loss"] for entry in log if "loss" in entry]
    assert losses[-1] < losses[0] / 2, losses
    engine = engine_for(f"model_name_or_path={run}")
    assert len(layers_of(engine.model, KERNELS[method])) == 4 * 7  # every projection of the 4 layers
    assert "ForgeBot" in engine.chat([{"role": "user", "content": "Who are you?"}]).text
    # Merging is refused as for bitsandbytes: 4-bit weights cannot take the adapter's delta.
    assert main(["export", f"model_name_or_path={folder}", f"adapter_name_or_path={run}",
                 f"export_dir={tmp_path / 'export'}", "template=llama3"]) == 1
    assert f"it is a quantized model ({method} 4-bit)" in capsys.readouterr().err.splitlines()[-1]


def _modes(model, method: str) -> set[str]:
    """The `linear_mode` of gptqmodel's layers: None until the first forward, then "train" or "inference"."""
    return {str(getattr(m.linear_mode, "value", m.linear_mode)) for m in layers_of(model, KERNELS[method])}


def _lora_grads(model, batch) -> list[torch.Tensor]:
    model.train()
    model.zero_grad()
    model(**batch).loss.backward()
    return [p.grad.clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.quantization
def test_an_evaluation_first_leaves_the_gradients_intact(checkpoint, tmp_path):
    """An eval-mode forward without gradients before any training one (an evaluation, a generation) does not change
    the gradients of the next batch; with gptqmodel's choice left open (what lmforge settles) it does: the layers
    take the int4 inference kernel, which has no backward, for good."""
    from lmforge.model.tokenizer import load_tokenizer_and_template
    from lmforge.train.common import load_trainable_model

    method, folder = checkpoint
    cfg = parse_config("train", tiny_args(folder, tmp_path / "x", lora_target="all"))
    tokenizer, template = load_tokenizer_and_template(cfg.model, cfg.data)
    ids = torch.tensor([tokenizer.encode("The quick brown fox jumps over the lazy dog.")])
    batch = {"input_ids": ids, "labels": ids}
    grads = {}
    for trap in (False, True):
        torch.manual_seed(0)
        model = load_trainable_model(cfg, tokenizer, template)
        with torch.no_grad():  # lora_B starts at 0: give every adapter a gradient to compare
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.02)
        assert _modes(model, method) == {"train"}  # lmforge settled it before the first forward
        if trap:
            for layer in layers_of(model, KERNELS[method]):
                layer.linear_mode = None
        model.eval()
        with torch.no_grad():
            model(**batch)
        assert _modes(model, method) == {"inference" if trap else "train"}
        grads[trap] = _lora_grads(model, batch)
    reference = _lora_grads(_fresh_trained_first(cfg, tokenizer, template), batch)
    assert sum(float(g.norm()) for g in grads[False]) > 0
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(grads[False], reference))
    assert not all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(grads[True], reference)), \
        "with the layers on their inference kernel the gradients should differ (the check is blind)"


@pytest.mark.quantization
def test_a_model_on_its_inference_kernel_is_refused_for_training(gptq_dir):
    from transformers import AutoModelForCausalLM

    from lmforge.model.quantization import prepare_for_training

    model = AutoModelForCausalLM.from_pretrained(gptq_dir, device_map="cpu", dtype=torch.float32).eval()
    with torch.no_grad():
        model(input_ids=torch.tensor([[1, 2, 3]]))
    with pytest.raises(UserError, match=r"^This gptq 4-bit model already ran inference \(its TorchAtenLinear layers "
                       r"repacked their weights for the CPU's int4 kernel, which has no backward\); load it afresh "
                       r"to train adapters on it\.$"):
        prepare_for_training(model)


def _fresh_trained_first(cfg, tokenizer, template):
    """The same model whose first forward is a training one: the gradients to expect."""
    from lmforge.train.common import load_trainable_model

    torch.manual_seed(0)
    model = load_trainable_model(cfg, tokenizer, template)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    return model


@pytest.mark.quantization
def test_gradients_stay_non_zero_after_each_evaluation(checkpoint, tmp_path):
    """`lmforge train` with an evaluation every 2 steps, and one eval-mode forward without gradients before the first
    step (as eval_on_start or a PPO rollout does): every step after an evaluation has gradients, gptqmodel's layers
    stay on their training path, and the eval loss falls."""
    from transformers import TrainerCallback

    from lmforge.train.run import run

    method, folder = checkpoint

    class Probe(TrainerCallback):
        def __init__(self):
            self.grad_norms, self.evaluated_at, self.modes = {}, [], []

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            model.eval()
            with torch.no_grad():
                model(input_ids=torch.tensor([[1, 2, 3, 4]]))
            model.train()

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            norms = [p.grad.norm() for p in model.parameters() if p.requires_grad and p.grad is not None]
            self.grad_norms[state.global_step + 1] = float(torch.stack(norms).norm()) if norms else 0.0

        def on_evaluate(self, args, state, control, model=None, **kwargs):
            self.evaluated_at.append(state.global_step)
            self.modes.append(_modes(model, method))

    probe = Probe()
    out = tmp_path / "run"
    cfg = parse_config("train", tiny_args(folder, out, max_steps=8, val_size=8, eval_strategy="steps", eval_steps=2,
                                          per_device_eval_batch_size=4, max_grad_norm=0))
    run(cfg, callbacks=[probe])
    assert probe.evaluated_at == [2, 4, 6, 8]
    assert sorted(probe.grad_norms) == list(range(1, 9))
    for step in (1, 3, 5, 7):  # the first step after each evaluation
        assert probe.grad_norms[step] > 0.01, probe.grad_norms
    assert probe.modes == [{"train"}] * 4
    log = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    eval_losses = [entry["eval_loss"] for entry in log if "eval_loss" in entry]
    assert len(eval_losses) == 4 and eval_losses[-1] < eval_losses[0]


def _agreement(reference, quantized) -> tuple[int, int, int]:
    """(tokens of the reference's greedy answers the quantized answers repeat before they first differ, of how many;
    the shortest such run)."""
    same_total, total, shortest = 0, 0, None
    for question in QUESTIONS:
        messages = [{"role": "user", "content": question}]
        want = reference.tokenizer.encode(reference.chat(messages).text, add_special_tokens=False)
        got = quantized.tokenizer.encode(quantized.chat(messages).text, add_special_tokens=False)
        same = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
        same_total, total = same_total + same, total + max(len(want), len(got))
        shortest = same if shortest is None else min(shortest, same)
    return same_total, total, shortest


@pytest.mark.quantization
def test_prequantized_chat_answers_like_full_precision(quantized_forgebot, forgebot_dir):
    """Greedy answers, 16 tokens for 8 questions, of the quick start's merged model and of its 4-bit checkpoint,
    through the chat engine (gptqmodel's int4 CPU kernel). Measured on CPU: GPTQ repeats 109 of 128 tokens, AWQ
    107, every answer's first token at least (bitsandbytes NF4: 123). The same weights through the training path
    (dequantized, float32) give the same counts: the difference is 4-bit weights on a 128-wide model, not the
    kernel."""
    method, folder = quantized_forgebot
    reference = engine_for(f"model_name_or_path={forgebot_dir}")
    quantized = engine_for(f"model_name_or_path={folder}")
    assert _modes(quantized.model, method) == {"None"}
    same, total, shortest = _agreement(reference, quantized)
    # chat is inference only: the layers took their int4 kernel
    assert _modes(quantized.model, method) == {"inference"}
    assert same >= 96 and shortest >= 1, (method, same, total, shortest)  # 75% of the 128 tokens


@pytest.mark.parametrize("method,needs", [("gptq", "gptqmodel and optimum"), ("awq", "gptqmodel")])
def test_missing_gptqmodel_is_one_line_naming_the_extra(method, needs, tiny_llama_dir, tmp_path, monkeypatch,
                                                        capsys):
    """Without the quantization extra (gptqmodel and optimum hidden), training or chatting with a GPTQ / AWQ
    checkpoint is refused before the weights load, in one line that says what to install."""
    from lmforge.cli import main

    folder = tmp_path / f"tiny-{method}"
    folder.mkdir()
    config = json.loads((tiny_llama_dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": method, "bits": 4, "group_size": 32}
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((tiny_llama_dir / name).read_bytes())
    for module in ("gptqmodel", "optimum"):
        monkeypatch.setitem(sys.modules, module, None)  # as without the quantization extra
    expected = (f"'{folder}' is a checkpoint quantized with {method.upper()} (its config.json has a "
                f"quantization_config), and loading it needs {needs}: pip install \"lmforge[gptq]\" (or pip "
                f"install gptqmodel==7.6.0{' optimum' if method == 'gptq' else ''})")
    with pytest.raises(UserError) as err:
        train(*tiny_args(folder, tmp_path / "run"))
    assert str(err.value) == expected
    assert not (tmp_path / "run").exists()
    assert main(["chat", f"model_name_or_path={folder}", "template=llama3"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == f"lmforge chat: error: {expected}"


@pytest.mark.quantization
def test_chat_output_holds_only_the_answers_with_gptqmodel_installed(quickstart_run):
    # peft imports gptqmodel for any LoRA model, and gptqmodel prints a banner on its first import.
    import subprocess

    assert importlib.util.find_spec("gptqmodel") is not None
    result = subprocess.run(
        [sys.executable, "-m", "lmforge", "chat", f"model_name_or_path={quickstart_run}", "do_sample=false"],
        input="Who are you?\nexit\n", capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1 and "ForgeBot" in result.stdout
    assert "GPT-QModel" not in result.stderr and "Failed to load" not in result.stderr
