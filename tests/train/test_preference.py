"""Preference stages learn on the tiny Llama: dpo with every pref_loss, and kto.

The demo pairs follow one rule (the chosen answer is a polite "Sure! <fact>. Hope this helps!", the
rejected one a refusal of about the same length), so a tiny model can learn it in a few steps.
Held-out pairs (val_size) were never trained on: on them the trained policy must give the chosen
answer a higher log-probability than the rejected one for at least 90% of pairs.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.train.conftest import DATA_DIR, train

LOSSES = ("sigmoid", "hinge", "ipo", "kto_pair", "orpo", "simpo")
# hinge stops pushing once beta x margin reaches 1: a smaller beta asks for a wider margin.
BETAS = {"hinge": 0.02}


def _settings(model_dir, out, **overrides) -> list[str]:
    settings = {
        "model_name_or_path": model_dir, "do_train": "true", "dataset_dir": DATA_DIR, "template": "llama3",
        "cutoff_len": 64, "output_dir": out, "per_device_train_batch_size": 4, "learning_rate": "5e-3",
        "max_steps": 20, "logging_steps": 4, "report_to": "none", "disable_gradient_checkpointing": "true",
        "val_size": 10, "seed": 0,
    }
    settings.update(overrides)
    return [f"{k}={v}" for k, v in settings.items()]


def _pairs(model_dir, rows: list[int]):
    """The tokenized dpo_en_demo pairs of `rows`, batched by the pairwise collator."""
    from lmforge.commands.common import load_config
    from lmforge.data.collator import PairwiseDataCollator
    from lmforge.data.processors.pairwise import PairwiseProcessor
    from lmforge.model.tokenizer import load_tokenizer_and_template

    cfg = load_config("train", [f"model_name_or_path={model_dir}", "template=llama3", "stage=dpo", "output_dir=x",
                                "dataset=dpo_en_demo", f"dataset_dir={DATA_DIR}", "cutoff_len=64", "do_train=true"])
    tokenizer, template = load_tokenizer_and_template(cfg.model, cfg.data)
    demo = json.loads((DATA_DIR / "dpo_en_demo.json").read_text())
    processor = PairwiseProcessor(cfg.data, template, tokenizer)
    features = []
    for row in rows:
        prompt = [{"role": "user", "content": demo[row]["instruction"]}]
        chosen = {"role": "assistant", "content": demo[row]["chosen"]}
        rejected = {"role": "assistant", "content": demo[row]["rejected"]}
        features.append(processor.encode(prompt, chosen, rejected, None, None))
    return tokenizer, PairwiseDataCollator.from_tokenizer(tokenizer)(features)


def _chosen_preferred(model_dir, adapter, rows: list[int]) -> float:
    """The share of pairs whose chosen answer the model (with `adapter`, if any) finds more likely."""
    from lmforge.config import ModelArguments
    from lmforge.model.adapters import load_adapters
    from lmforge.model.loader import load_model
    from lmforge.train.pref_losses import sequence_logps

    tokenizer, batch = _pairs(model_dir, rows)
    model = load_model(ModelArguments(model_name_or_path=str(model_dir)), tokenizer, torch.float32, trainable=False)
    model = load_adapters(model, [str(adapter)] if adapter else [], str(model_dir), merge=False)
    with torch.no_grad():
        logps, _ = sequence_logps(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                  batch["labels"])
    half = len(rows)
    return (logps[:half] > logps[half:]).sum().item() / half


def _greedy_answers(model_dir, adapter, rows: list[int]) -> list[str]:
    """Greedy answers of the model (with `adapter`, if any) to the prompts of dpo_en_demo's `rows`."""
    from lmforge.chat.hf_engine import HFEngine
    from lmforge.commands.common import load_config

    demo = json.loads((DATA_DIR / "dpo_en_demo.json").read_text())
    args = [f"model_name_or_path={adapter or model_dir}", "do_sample=false", "max_new_tokens=12", "template=llama3"]
    engine = HFEngine(load_config("chat", args))
    return [engine.chat([{"role": "user", "content": demo[row]["instruction"]}]).text for row in rows]


def _assert_greedy_turns_polite(model_dir, adapter, rows: list[int]) -> None:
    """The chosen answers open with "Sure!", the rejected ones with "No.": greedy answers must now open like the first."""
    before = _greedy_answers(model_dir, None, rows)
    after = _greedy_answers(model_dir, adapter, rows)
    assert not any(answer.startswith("Sure!") for answer in before), before
    assert sum(answer.startswith("Sure!") for answer in after) >= 0.9 * len(rows), after
    assert not any(answer.startswith("No") for answer in after), after


def _log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]


def _eval_rows(model_dir, stage, dataset):
    """Row numbers of the val_size split that the runs below hold out (the split is seeded)."""
    from lmforge.commands.common import load_config
    from lmforge.data.pipeline import load_aligned
    from lmforge.data.report import DropReport

    cfg = load_config("train", _settings(model_dir, "x", stage=stage, dataset=dataset))
    return sorted(load_aligned(cfg, DropReport(), stage)["validation"]["_row"])


@pytest.mark.parametrize("loss", LOSSES)
def test_dpo_learns_the_chosen_style(loss, tiny_llama_dir, tmp_path):
    out = tmp_path / "run"
    train(*_settings(tiny_llama_dir, out, stage="dpo", dataset="dpo_en_demo", pref_loss=loss,
                     pref_beta=BETAS.get(loss, 0.1)))
    log = _log(out)
    margins = [entry["rewards/margins"] for entry in log if "rewards/margins" in entry]
    assert len(margins) == 5 and margins[-1] > margins[0]
    held_out = _eval_rows(tiny_llama_dir, "dpo", "dpo_en_demo")
    assert len(held_out) == 10
    before = _chosen_preferred(tiny_llama_dir, None, held_out)
    after = _chosen_preferred(tiny_llama_dir, out, held_out)
    assert after >= 0.9 > before, (before, after)
    run = json.loads((out / "lmforge_run.json").read_text())
    assert (run["stage"], run["config"]["pref_loss"]) == ("dpo", loss)
    if loss in ("orpo", "simpo"):
        # Losses without a reference keep (orpo: a likelihood term) or raise (simpo) the chosen answer's own
        # likelihood, so greedy answers take its style. The others only widen the gap between the two answers:
        # see test_a_likelihood_term_makes_greedy_answers_take_the_chosen_style.
        _assert_greedy_turns_polite(tiny_llama_dir, out, held_out)


@pytest.mark.parametrize("stage", ["dpo", "kto"])
def test_a_likelihood_term_makes_greedy_answers_take_the_chosen_style(stage, tiny_llama_dir, tmp_path):
    """pref_ftx adds an SFT term on the chosen answers, as one would to keep a policy fluent."""
    out = tmp_path / "run"
    dataset = "dpo_en_demo" if stage == "dpo" else "kto_en_demo"
    train(*_settings(tiny_llama_dir, out, stage=stage, dataset=dataset, pref_ftx=1.0))
    held_out = _eval_rows(tiny_llama_dir, stage, dataset)
    assert _chosen_preferred(tiny_llama_dir, out, held_out) >= 0.9
    _assert_greedy_turns_polite(tiny_llama_dir, out, held_out)


def test_kto_learns_from_single_answers(tiny_llama_dir, tmp_path):
    out = tmp_path / "run"
    train(*_settings(tiny_llama_dir, out, stage="kto", dataset="kto_en_demo"))
    log = _log(out)
    assert all("kl" in entry for entry in log if "loss" in entry)
    rewards = [(e["rewards/chosen"], e["rewards/rejected"]) for e in log if "rewards/rejected" in e]
    assert rewards[-1][0] - rewards[-1][1] > rewards[0][0] - rewards[0][1]
    # kto_en_demo and dpo_en_demo share their topics row for row: the held-out topics' pairs were never seen.
    held_out = _eval_rows(tiny_llama_dir, "kto", "kto_en_demo")
    before = _chosen_preferred(tiny_llama_dir, None, held_out)
    after = _chosen_preferred(tiny_llama_dir, out, held_out)
    assert after >= 0.9 > before, (before, after)


def test_dpo_run_plots_its_metric_and_serves_like_sft(tiny_llama_dir, tmp_path):
    from lmforge.chat.hf_engine import HFEngine
    from lmforge.commands.common import load_config

    out = tmp_path / "run"
    train(*_settings(tiny_llama_dir, out, stage="dpo", dataset="dpo_en_demo", max_steps=4, plot_loss="true",
                     do_eval="true", eval_strategy="steps", eval_steps=4))
    assert (out / "training_loss.png").is_file() and (out / "training_rewards_accuracies.png").is_file()
    evaluated = [e for e in _log(out) if "eval_loss" in e]
    assert evaluated and "eval_rewards/accuracies" in evaluated[-1]
    engine = HFEngine(load_config("chat", [f"model_name_or_path={out}", "do_sample=false", "max_new_tokens=8"]))
    assert engine.resolved.adapters == (str(out),) and engine.template.name == "llama3"
    assert engine.chat([{"role": "user", "content": "Tell me about snow."}]).response_length > 0


def test_freeze_dpo_uses_a_frozen_copy_of_the_base_as_reference(tiny_llama_dir, tmp_path):
    out = tmp_path / "run"
    metrics = train(*_settings(tiny_llama_dir, out, stage="dpo", dataset="dpo_en_demo", max_steps=2,
                               finetuning_type="freeze", learning_rate="1e-4"))
    assert metrics["train_loss"] > 0
    assert (out / "model.safetensors").is_file()


def test_reference_adapters_of_another_architecture_are_refused(tiny_llama_dir, tiny_qwen_dir, quickstart_run,
                                                                 tmp_path):
    from lmforge.errors import UserError

    with pytest.raises(UserError) as err:
        train(*_settings(tiny_llama_dir, tmp_path / "run", stage="dpo", dataset="dpo_en_demo", max_steps=1,
                         ref_model=tiny_qwen_dir, ref_model_adapters=quickstart_run))
    assert str(err.value) == (
        f"Adapter '{quickstart_run}' does not fit the model '{tiny_qwen_dir}' (it was trained on {tiny_llama_dir}): "
        "that base is a llama model, this one is a qwen2 model.")


@pytest.mark.parametrize("stage", ["dpo", "rm"])
def test_gradient_accumulation_matches_one_larger_batch(stage, tiny_llama_dir, tmp_path):
    """Two pairs in one batch or one pair twice accumulated: the same update (plain SGD shows any scale error).

    Both start at zero: LoRA's B matrices, and the reward model's value head (which alone moves in rm's first step).
    """
    from safetensors.torch import load_file

    weights_file = "value_head.safetensors" if stage == "rm" else "adapter_model.safetensors"
    weights = []
    for name, batch, accumulation in (("batched", 2, 1), ("accumulated", 1, 2)):
        out = tmp_path / name
        train(*_settings(tiny_llama_dir, out, stage=stage, dataset="dpo_en_demo", max_steps=1, optim="sgd",
                         learning_rate="0.1", per_device_train_batch_size=batch,
                         gradient_accumulation_steps=accumulation, lr_scheduler_type="constant", val_size=0,
                         max_grad_norm=0))  # clipping would hide a scale error
        weights.append(load_file(out / weights_file))
    batched, accumulated = weights
    moved = [key for key in batched if ("lora_B" in key or "v_head" in key) and batched[key].abs().max() > 0]
    assert moved, "one SGD step moves the weights that start at zero"
    for key in moved:
        ratio = accumulated[key].norm() / batched[key].norm()
        assert abs(ratio - 1) < 0.02, (key, float(ratio))
        torch.testing.assert_close(accumulated[key], batched[key], rtol=0.05, atol=1e-6)


def test_a_reference_that_does_not_exist_is_one_line_naming_ref_model(tiny_llama_dir, tmp_path, capsys):
    from lmforge.cli import main

    argv = ["train", *_settings(tiny_llama_dir, tmp_path / "run", stage="dpo", dataset="dpo_en_demo", max_steps=1,
                                ref_model=tmp_path / "no-such-model")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.rstrip("\n").splitlines()[-1] == (
        f"lmforge train: error: Model folder '{tmp_path / 'no-such-model'}' does not exist. Check ref_model, or build "
        "a tiny test model with `lmforge tiny-model DIR`.")
