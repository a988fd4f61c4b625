"""LLaMA-Factory's own example configs for the preference and RL stages run unchanged.

The texts below are those of LLaMA-Factory's `examples/train_lora/llama3_lora_{reward,dpo,kto,ppo}.yaml`.
Only what cannot exist here is overridden on the command line, as a user would: the hub model (a tiny
local one), the data folder, the reward model's path (this test's own rm run) and, for time, the number
of steps, the preprocessing processes and the length of ppo's rollouts.
"""

from __future__ import annotations

import json

import pytest

from tests.train.conftest import DATA_DIR, train

TRAIN = """
### output
output_dir: saves/llama3-8b/lora/{stage_dir}
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true

### train
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
learning_rate: {lr}
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
ddp_timeout: 180000000
"""
DATASET = """
### dataset
dataset: {dataset}
template: llama3
cutoff_len: 2048
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 16
"""
CONFIGS = {
    "llama3_lora_reward.yaml": """### model
model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct
trust_remote_code: true

### method
stage: rm
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all
""" + DATASET.format(dataset="dpo_en_demo") + TRAIN.format(stage_dir="reward", lr="1.0e-4") + """
### eval
# val_size: 0.1
# per_device_eval_batch_size: 1
# eval_strategy: steps
# eval_steps: 500
""",
    "llama3_lora_dpo.yaml": """### model
model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct
trust_remote_code: true

### method
stage: dpo
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all
pref_beta: 0.1
pref_loss: sigmoid  # choices: [sigmoid (dpo), orpo, simpo]
""" + DATASET.format(dataset="dpo_en_demo") + TRAIN.format(stage_dir="dpo", lr="5.0e-6") + """
### eval
# val_size: 0.1
# per_device_eval_batch_size: 1
# eval_strategy: steps
# eval_steps: 500
""",
    "llama3_lora_kto.yaml": """### model
model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct

### method
stage: kto
do_train: true
finetuning_type: lora
lora_target: all
pref_beta: 0.1
""" + DATASET.format(dataset="kto_en_demo") + TRAIN.format(stage_dir="kto", lr="5.0e-6") + """
### eval
val_size: 0.1
per_device_eval_batch_size: 1
eval_strategy: steps
eval_steps: 500
""",
    "llama3_lora_ppo.yaml": """### model
model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct
reward_model: saves/llama3-8b/lora/reward

### method
stage: ppo
do_train: true
finetuning_type: lora
lora_target: all
""" + DATASET.format(dataset="identity,alpaca_en_demo") + TRAIN.format(stage_dir="ppo", lr="1.0e-5") + """
### generate
max_new_tokens: 512
top_k: 0
top_p: 0.9
""",
}
# The stage's own metric in trainer_log.jsonl, under LLaMA-Factory's and trl's names.
METRIC = {"rm": "loss", "dpo": "rewards/margins", "kto": "kl", "ppo": "reward"}


@pytest.fixture(scope="module")
def reward_run(tiny_llama_dir, tmp_path_factory):
    """The reward example's output: ppo's reward_model."""
    out = tmp_path_factory.mktemp("llamafactory") / "reward"
    _run("llama3_lora_reward.yaml", tiny_llama_dir, out)
    return out


def _run(name, model_dir, out, *extra):
    config = out.parent / name
    config.write_text(CONFIGS[name], encoding="utf-8")
    return train(str(config), f"model_name_or_path={model_dir}", f"dataset_dir={DATA_DIR}", f"output_dir={out}",
                 "max_steps=2", "logging_steps=1", "preprocessing_num_workers=1", *extra)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_llamafactory_example_runs_unchanged(name, tiny_llama_dir, reward_run, tmp_path):
    stage = next(line.split()[1] for line in CONFIGS[name].splitlines() if line.startswith("stage:"))
    if stage == "rm":
        out = reward_run
    else:
        out = tmp_path / "run"
        extra = [f"reward_model={reward_run}", "max_new_tokens=16"] if stage == "ppo" else []
        _run(name, tiny_llama_dir, out, *extra)
    run = json.loads((out / "lmforge_run.json").read_text())
    assert run["stage"] == stage and run["config"]["finetuning_type"] == "lora"
    log = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert any(METRIC[stage] in entry for entry in log), log
    assert (out / "adapter_model.safetensors").is_file()
    assert (out / "training_loss.png").is_file()  # plot_loss: true
    if stage == "rm":
        assert (out / "value_head.safetensors").is_file()
