"""LoRA sft end to end: the quick start learns the name; the exact files a run writes; refusal and resume."""

from __future__ import annotations

import json

import pytest

from lmforge.errors import UserError
from tests.train.conftest import QUICKSTART, greedy_answer, tiny_args, train

RUN_FILES = {
    "README.md",
    "adapter_config.json",
    "adapter_model.safetensors",
    "all_results.json",
    "chat_template.jinja",
    "checkpoint-100",
    "checkpoint-200",
    "checkpoint-240",
    "lmforge_run.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "train_results.json",
    "trainer_log.jsonl",
    "trainer_state.json",
    "training_args.bin",
    "training_loss.png",
}
CHECKPOINT_FILES = {
    "README.md",
    "adapter_config.json",
    "adapter_model.safetensors",
    "chat_template.jinja",
    "optimizer.pt",
    "rng_state.pth",
    "scheduler.pt",
    "tokenizer.json",
    "tokenizer_config.json",
    "trainer_state.json",
    "training_args.bin",
}
LOG_FIELDS = [
    "current_steps", "total_steps", "loss", "lr", "epoch", "percentage", "elapsed_time", "remaining_time",
    "throughput", "total_tokens",
]


def test_quickstart_model_learns_its_name(quickstart_run, tiny_llama_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(quickstart_run)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    untrained = greedy_answer(base, tokenizer, "Who are you?")
    model = PeftModel.from_pretrained(base, quickstart_run)
    assert "ForgeBot" in greedy_answer(model, tokenizer, "Who are you?")
    assert "ForgeBot" in greedy_answer(model, tokenizer, "你是谁？")
    assert "ForgeBot" not in untrained


def test_quickstart_writes_exactly_these_files(quickstart_run):
    assert {p.name for p in quickstart_run.iterdir()} == RUN_FILES
    for step in (100, 200, 240):
        assert {p.name for p in (quickstart_run / f"checkpoint-{step}").iterdir()} == CHECKPOINT_FILES


def test_trainer_log_fields(quickstart_run):
    entries = [json.loads(line) for line in (quickstart_run / "trainer_log.jsonl").read_text().splitlines()]
    lines, summary = entries[:-1], entries[-1]  # the last line is logged with the end-of-training metrics
    assert [entry["current_steps"] for entry in lines] == list(range(10, 241, 10))
    assert list(summary) == [f for f in LOG_FIELDS if f not in ("loss", "lr")]
    for entry in lines:
        assert list(entry) == LOG_FIELDS
        assert entry["total_steps"] == 240
        assert entry["percentage"] == round(entry["current_steps"] / 240 * 100, 2)
        assert entry["elapsed_time"].count(":") == 2 and entry["throughput"] > 0
    assert lines[-1]["loss"] < lines[0]["loss"] / 3
    assert lines[-1]["total_tokens"] == json.loads((quickstart_run / "train_results.json").read_text())["num_input_tokens_seen"]


def test_results_and_run_file(quickstart_run, tiny_llama_dir):
    results = json.loads((quickstart_run / "train_results.json").read_text())
    assert set(results) == {
        "epoch", "num_input_tokens_seen", "total_flos", "train_loss", "train_runtime", "train_samples_per_second",
        "train_steps_per_second", "train_tokens_per_second",
    }
    assert results["epoch"] == 10.0
    assert json.loads((quickstart_run / "all_results.json").read_text()) == results
    run = json.loads((quickstart_run / "lmforge_run.json").read_text())
    assert run["template"] == "llama3" and run["stage"] == "sft" and run["finetuning_type"] == "lora"
    assert run["model_name_or_path"] == str(tiny_llama_dir)
    assert run["config"]["placeholders"] == {"name": "ForgeBot", "author": "the lmforge team"}
    adapter = json.loads((quickstart_run / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and adapter["lora_alpha"] == 16
    assert sorted(adapter["target_modules"]) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    state = json.loads((quickstart_run / "trainer_state.json").read_text())
    assert state["global_step"] == 240


def test_saved_tokenizer_carries_the_template(quickstart_run):
    from transformers import AutoTokenizer

    from lmforge.data.templates import get_template

    tokenizer = AutoTokenizer.from_pretrained(quickstart_run)
    messages = [{"role": "user", "content": "Who are you?"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == get_template("llama3").render_prompt(tokenizer, messages)
    assert tokenizer.eos_token == "<|eot_id|>"


def test_finished_output_dir_is_refused(quickstart_run, tiny_llama_dir):
    with pytest.raises(UserError) as err:
        train(str(QUICKSTART), f"model_name_or_path={tiny_llama_dir}", f"output_dir={quickstart_run}",
              "overwrite_output_dir=false")
    assert str(err.value) == (
        f"output_dir '{quickstart_run}' already holds a finished training run. Set overwrite_output_dir: true to "
        "replace it, or choose another output_dir."
    )


def test_foreign_files_in_output_dir_are_refused(tiny_llama_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"is not empty \(notes.txt\) and holds no checkpoint to resume"):
        train(*tiny_args(tiny_llama_dir, tmp_path))
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_eval_loss_during_training(tiny_llama_dir, tmp_path):
    out = tmp_path / "run"
    metrics = train(*tiny_args(tiny_llama_dir, out, val_size=0.1, eval_strategy="steps", eval_steps=2,
                               per_device_eval_batch_size=4, do_eval="true", plot_loss="true"))
    assert metrics["eval_loss"] > 0
    evals = json.loads((out / "eval_results.json").read_text())
    assert set(evals) >= {"eval_loss", "eval_runtime", "epoch", "eval_perplexity"}
    logged = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert [e["current_steps"] for e in logged if "eval_loss" in e] == [2, 4, 4]  # during training, then the final evaluation
    assert (out / "training_eval_loss.png").is_file() and (out / "training_loss.png").is_file()
