"""Stage grpo on the tiny Llama: the reward goes up, every fine-tuning type trains and serves, a killed run
resumes to the same weights, and each mistake in the rewards is one line naming it.

The rule reward is one a random tiny model can reach by sampling: the share of a completion's visible
characters that are ASCII letters. The tiny tokenizer was trained on English and Chinese text, so the
untrained model writes a mix of both; GRPO must move it to English pieces.
"""

from __future__ import annotations

import json
import shutil
import textwrap

import pytest

from lmforge.cli import main
from tests.train.conftest import DATA_DIR, load_safetensors, train

REWARDS = textwrap.dedent('''
    def english(completions, **kwargs):
        shares = []
        for text in completions:
            visible = [c for c in text if not c.isspace()]
            shares.append(sum(c.isascii() and c.isalpha() for c in visible) / max(1, len(visible)))
        return shares


    def picky(completions, source, **kwargs):
        if any(s.endswith("row 1") for s in source):
            raise ValueError("row 1 has no reward")
        return [0.0] * len(completions)


    def one_number(completions, **kwargs):
        return 0.5


    def no_kwargs(completions):
        return [0.0] * len(completions)


    def record(completions, prompts, prompt_ids, answer, completion_ids, **kwargs):
        import json

        with open("seen.jsonl", "a") as seen:
            for row in zip(completions, prompts, prompt_ids, answer, completion_ids):
                seen.write(json.dumps(row) + "\\n")
        return [0.0] * len(completions)
''')


def _settings(model_dir, out, **overrides) -> list[str]:
    settings = {
        "model_name_or_path": model_dir, "stage": "grpo", "do_train": "true", "dataset": "identity",
        "dataset_dir": DATA_DIR, "template": "llama3", "cutoff_len": 64, "output_dir": out,
        "per_device_train_batch_size": 16, "num_generations": 8, "max_completion_length": 8,
        "learning_rate": "5e-3", "max_steps": 20, "logging_steps": 1, "save_steps": 100, "report_to": "none",
        "disable_gradient_checkpointing": "true", "reward_funcs": "rewards.py:english",
        # Sample from the whole distribution: the tiny model must be able to find the English pieces.
        "temperature": 1.0, "top_p": 1.0, "top_k": 0,
    }
    settings.update(overrides)
    return [f"{k}={v}" for k, v in settings.items()]


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    """A folder holding rewards.py, as the working directory (reward_funcs paths are relative to it)."""
    (tmp_path / "rewards.py").write_text(REWARDS)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("seed", [0, 1])
def test_grpo_raises_the_reward(seed, tiny_llama_dir, workdir, one_thread):
    from lmforge.chat.hf_engine import HFEngine
    from lmforge.commands.common import load_config

    out = workdir / "run"
    train(*_settings(tiny_llama_dir, out, seed=seed))
    rewards = [entry["rewards/english/mean"] for entry in _log(out) if "rewards/english/mean" in entry]
    assert len(rewards) == 20
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > first + 0.15, rewards
    run = json.loads((out / "lmforge_run.json").read_text())
    assert run["stage"] == "grpo" and run["config"]["reward_funcs"] == ["rewards.py:english"]
    # The run folder serves as an sft one does: the base model with the trained adapter.
    engine = HFEngine(load_config("chat", [f"model_name_or_path={out}", "do_sample=false", "max_new_tokens=8"]))
    assert engine.resolved.adapters == (str(out),)
    assert engine.chat([{"role": "user", "content": "Who are you?"}]).response_length > 0


@pytest.mark.parametrize("finetuning_type", ["full", "freeze"])
def test_built_in_rewards_train_evaluate_and_serve(finetuning_type, tiny_llama_dir, workdir, one_thread):
    from lmforge.chat.hf_engine import HFEngine
    from lmforge.commands.common import load_config

    out = workdir / "run"
    metrics = train(*_settings(tiny_llama_dir, out, finetuning_type=finetuning_type, max_steps=2, learning_rate="1e-4",
                               reward_funcs="exact_match,length_penalty,format:[A-Za-z ]*", reward_weights="1,0.1,1",
                               beta=0.04, save_steps=1, do_eval="true", val_size=2))
    # Evaluation samples completions for the held-out prompts and scores them; a GRPO loss has no perplexity.
    assert {"train_loss", "eval_reward", "eval_rewards/format/mean"} <= set(metrics)
    assert "eval_perplexity" not in metrics
    logged = _log(out)[0]
    assert {"rewards/exact_match/mean", "rewards/length_penalty/mean", "rewards/format/mean", "reward", "kl"} <= set(logged)
    # Every completion is 8 tokens long (the random model never ends its turn): the penalty is -8 / 8.
    assert logged["rewards/length_penalty/mean"] == -1.0
    assert (out / "model.safetensors").is_file() and (out / "checkpoint-2" / "model.safetensors").is_file()
    engine = HFEngine(load_config("chat", [f"model_name_or_path={out}", "do_sample=false", "max_new_tokens=8"]))
    assert engine.template.name == "llama3"
    assert engine.chat([{"role": "user", "content": "Who are you?"}]).response_length > 0


def test_killed_run_resumes_to_the_same_adapter(tiny_llama_dir, workdir, one_thread):
    import torch
    from trl import GRPOConfig

    whole, resumed = workdir / "whole", workdir / "resumed"
    settings = {"max_steps": 4, "save_steps": 2, "beta": 0.04}
    train(*_settings(tiny_llama_dir, whole, **settings))
    # With beta > 0 the reference is the policy without its adapter: no copy of the adapter is saved.
    assert not (whole / "ref").exists() and not (whole / "checkpoint-2" / "ref").exists()
    # The arguments are pickled as trl's own GRPOConfig, loadable without lmforge.
    args = torch.load(whole / "checkpoint-2" / "training_args.bin", weights_only=False)
    assert type(args) is GRPOConfig and (args.num_generations, args.beta) == (8, 0.04)
    # A run killed after its checkpoint at step 2: its folder holds that checkpoint and the log so far.
    resumed.mkdir()
    shutil.copytree(whole / "checkpoint-2", resumed / "checkpoint-2")
    shutil.copy(whole / "trainer_log.jsonl", resumed / "trainer_log.jsonl")
    train(*_settings(tiny_llama_dir, resumed, **settings))
    assert [e["current_steps"] for e in _log(resumed) if "reward" in e] == [1, 2, 3, 4]
    expected, got = load_safetensors(whole / "adapter_model.safetensors"), load_safetensors(
        resumed / "adapter_model.safetensors")
    assert expected.keys() == got.keys() and all(expected[k].equal(got[k]) for k in expected)


def test_reward_functions_see_the_served_prompt_and_the_reference(tiny_llama_dir, workdir, one_thread):
    from lmforge.chat.hf_engine import HFEngine
    from lmforge.commands.common import load_config

    questions = {"Name a colour.": "Blue.", "Count to three.": None}  # the second row has no answer: it is kept
    (workdir / "d").mkdir()
    (workdir / "d" / "qa.json").write_text(json.dumps([{"instruction": q, "output": a} for q, a in questions.items()]))
    (workdir / "d" / "dataset_info.json").write_text(json.dumps({"qa": {"file_name": "qa.json"}}))
    train(*_settings(tiny_llama_dir, workdir / "run", max_steps=1, dataset="qa", dataset_dir=workdir / "d",
                     reward_funcs="rewards.py:record"))
    seen = [json.loads(line) for line in (workdir / "seen.jsonl").read_text().splitlines()]
    assert len(seen) == 16
    # What the chat command feeds the model for the same question: the policy samples from exactly that.
    engine = HFEngine(load_config("chat", [f"model_name_or_path={tiny_llama_dir}", "template=llama3"]))
    for question, answer in questions.items():
        served = engine.prompt_ids([{"role": "user", "content": question}])
        rows = [row for row in seen if row[2] == served]
        assert len(rows) == 8  # num_generations completions of each prompt
        for completion, prompt, _, reference, completion_ids in rows:
            assert prompt == engine.tokenizer.decode(served) and reference == answer
            assert completion == engine.tokenizer.decode(completion_ids, skip_special_tokens=True)


def test_tokenized_path_keeps_the_prompts_and_their_references(tiny_llama_dir, workdir):
    from lmforge.commands.common import load_config
    from lmforge.data.pipeline import get_dataset
    from lmforge.model.tokenizer import load_tokenizer_and_template

    cfg = load_config("train", _settings(tiny_llama_dir, workdir / "run", dataset="alpaca_en_demo", max_samples=4,
                                         tokenized_path=workdir / "tokenized"))
    tokenizer, template = load_tokenizer_and_template(cfg.model, cfg.data)
    built = get_dataset(cfg, tokenizer, template).train_dataset
    loaded = get_dataset(cfg, tokenizer, template).train_dataset  # read back from tokenized_path
    assert sorted(loaded.column_names) == ["answer", "attention_mask", "input_ids", "prompt", "source"]
    assert loaded.to_list() == built.to_list() and all(loaded["answer"])


ERRORS = [
    ("no reward", ["reward_funcs=null"], "Config error: stage grpo needs a reward: set 'reward_funcs' (built-in "
     "exact_match, format, length_penalty, or path/to/file.py:function) and/or 'reward_model'."),
    ("missing file", ["reward_funcs=missing.py:english"], "Config error: reward function file 'missing.py' does not "
     "exist (reward_funcs entry 'missing.py:english'; a relative path is read from {w})."),
    ("missing function", ["reward_funcs=rewards.py:englsh"], "reward function file 'rewards.py' has no function "
     "'englsh' (it defines: english, no_kwargs, one_number, picky, record)."),
    ("wrong signature", ["reward_funcs=rewards.py:no_kwargs"], "reward function 'rewards.py:no_kwargs' has the "
     "signature no_kwargs(completions); it must take the completions and keyword arguments (prompts, answer, ...): "
     "`def no_kwargs(completions, **kwargs) -> list[float]`."),
    ("not a list", ["reward_funcs=rewards.py:one_number"], "reward function 'one_number' (rewards.py) returned a "
     "float; it must return a list of 16 floats, one per completion (None for a completion it does not score)."),
]


@pytest.mark.parametrize(("name", "overrides", "expected"), ERRORS, ids=[e[0] for e in ERRORS])
def test_reward_mistakes_are_one_line(name, overrides, expected, tiny_llama_dir, workdir, one_thread, capsys):
    assert main(["train", *_settings(tiny_llama_dir, workdir / "run", max_steps=1), *overrides]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.rstrip("\n").splitlines()[-1] == "lmforge train: error: " + expected.format(w=workdir)


def test_a_failing_reward_function_names_the_sample(tiny_llama_dir, workdir, one_thread, capsys):
    # Two prompts per step (rows 0 and 1); picky fails on row 1's completions only.
    argv = _settings(tiny_llama_dir, workdir / "run", max_steps=1, max_samples=2, reward_funcs="rewards.py:picky")
    assert main(["train", *argv]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.rstrip("\n").splitlines()[-1]
    prefix = "lmforge train: error: reward function 'picky' (rewards.py) failed on dataset 'identity' row 1, completion "
    assert last.startswith(prefix) and last.endswith(": ValueError: row 1 has no reward"), last


def _sequence_classifier(model_dir, folder):
    """A random one-label LlamaForSequenceClassification with the tiny tokenizer: a stand-in for a hub reward model."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(model_dir, num_labels=1))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", ["rm run", "sequence classifier"])
def test_reward_model_scores_every_completion(kind, tiny_llama_dir, workdir, one_thread):
    if kind == "rm run":
        reward_model = workdir / "rm"
        train(f"model_name_or_path={tiny_llama_dir}", "stage=rm", "do_train=true", "dataset=dpo_en_demo",
              f"dataset_dir={DATA_DIR}", "template=llama3", "cutoff_len=64", f"output_dir={reward_model}",
              "max_steps=2", "per_device_train_batch_size=4", "report_to=none", "disable_gradient_checkpointing=true")
    else:
        reward_model = _sequence_classifier(tiny_llama_dir, workdir / "classifier")
    out = workdir / "run"
    train(*_settings(tiny_llama_dir, out, max_steps=2, reward_funcs="rewards.py:english",
                     reward_model=reward_model, reward_weights="1,0.5"))
    logged = _log(out)
    assert all(entry["rewards/reward_model/std"] > 0 for entry in logged if "reward" in entry)  # a score each
    assert len([entry for entry in logged if "rewards/english/mean" in entry]) == 2


def test_data_preview_shows_the_prompt_and_its_reference(tiny_llama_dir, workdir, capsys):
    assert main(["data", "preview", *_settings(tiny_llama_dir, workdir / "run", dataset="alpaca_en_demo"),
                 "--num", "1"]) == 0
    out = capsys.readouterr().out
    assert "(the reference answer inside [[ ]])" in out and "--- sample 1: alpaca_en_demo row 0 (22 tokens) ---" in out
    assert ("What is the capital of Australia?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
            "[[The capital of Australia is Canberra.") in out
