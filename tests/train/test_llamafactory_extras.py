"""LLaMA-Factory's pre-training and training-extras example configs run unchanged.

Each config below has the keys and values of the LLaMA-Factory example it is named after
(`examples/train_lora/qwen3_lora_pretrain.yaml`, `examples/extras/*/`). As in
test_llamafactory_configs.py, only what cannot exist here is overridden on the command line: the hub
model (a tiny local one), the data folder (and c4_demo, which lmforge does not bundle, by its
pretrain_demo), and for time the number of steps and of worker processes.
"""

from __future__ import annotations

import json

import pytest

from tests.train.conftest import DATA_DIR, train

OUTPUT = """
### output
output_dir: saves/{name}
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true
save_only_model: false
report_to: none  # choices: [none, wandb, tensorboard, swanlab, mlflow]

### train
per_device_train_batch_size: 1
gradient_accumulation_steps: {accumulation}
learning_rate: {lr}
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
{precision}
ddp_timeout: 180000000
resume_from_checkpoint: null
"""
DATASET = """
### dataset
dataset: identity,alpaca_en_demo
template: {template}
cutoff_len: 2048
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 16
dataloader_num_workers: 4
"""


def sft(method: str, template: str = "llama3", lr: str = "1.0e-5", precision: str = "bf16: true",
        accumulation: str = "8") -> str:
    return ("### model\nmodel_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct\ntrust_remote_code: true\n\n"
            f"### method\nstage: sft\ndo_train: true\n{method}" + DATASET.format(template=template)
            + OUTPUT.format(name="run", accumulation=accumulation, lr=lr, precision=precision))


PRETRAIN = """### model
model_name_or_path: Qwen/Qwen3-4B-Instruct-2507
trust_remote_code: true

### method
stage: pt
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all

### dataset
dataset: c4_demo
cutoff_len: 2048
max_samples: 1000
preprocessing_num_workers: 16
dataloader_num_workers: 4
""" + OUTPUT.format(name="qwen3-4b/lora/pretrain", accumulation="8", lr="1.0e-4", precision="bf16: true")

EXTRAS = {
    "galore/llama3_full_sft.yaml": sft("finetuning_type: full\nuse_galore: true\ngalore_layerwise: true\n"
                                       "galore_target: all\ngalore_rank: 128\ngalore_scale: 2.0\n",
                                       precision="pure_bf16: true", accumulation="1  # use 1 for layerwise galore"),
    "apollo/llama3_full_sft.yaml": sft("finetuning_type: full\nuse_apollo: true\napollo_layerwise: true\n"
                                       "apollo_target: all\napollo_rank: 128\napollo_scale: 32.0\n"
                                       "apollo_scale_type: channel\n", precision="pure_bf16: true", accumulation="1"),
    "badam/llama3_full_sft.yaml": sft("finetuning_type: full\nuse_badam: true\nbadam_mode: layer\n"
                                      "badam_switch_mode: ascending\nbadam_switch_interval: 50\nbadam_verbose: 2\n",
                                      precision=""),
    "adam_mini/qwen2_full_sft.yaml": sft("finetuning_type: full\nuse_adam_mini: true\n", template="qwen"),
    "muon/qwen2_full_sft.yaml": sft("finetuning_type: full\nuse_muon: true\n", template="qwen"),
    "dft/qwen2_full_sft.yaml": sft("finetuning_type: full\nuse_dft_loss: true\n", template="qwen"),
    "oft/llama3_oft_sft.yaml": sft("finetuning_type: oft\noft_block_size: 32\noft_target: all\n", lr="1.0e-4"),
    "pissa/llama3_lora_sft.yaml": sft("finetuning_type: lora\nlora_rank: 8\nlora_target: all\npissa_init: true\n"
                                      "pissa_iter: 16\npissa_convert: true\n", lr="1.0e-4"),
    "loraplus/llama3_lora_sft.yaml": sft("finetuning_type: lora\nlora_rank: 8\nlora_target: all\n"
                                         "loraplus_lr_ratio: 16.0\n", lr="1.0e-4"),
    "llama_pro/llama3_freeze_sft.yaml": sft("finetuning_type: freeze\nfreeze_trainable_layers: 8\n"
                                            "freeze_trainable_modules: all\nuse_llama_pro: true\n", lr="1.0e-4"),
}
FOR_TIME = ["max_steps=2", "logging_steps=1", "preprocessing_num_workers=1", "dataloader_num_workers=0"]


def _write(tmp_path, name: str, text: str):
    config = tmp_path / name.replace("/", "_")
    config.write_text(text, encoding="utf-8")
    return config


def test_pretrain_example_packs_and_trains(tiny_llama_dir, tmp_path):
    out = tmp_path / "run"
    # Its 16 preprocessing workers are kept: the packed blocks do not depend on their number.
    train(str(_write(tmp_path, "qwen3_lora_pretrain.yaml", PRETRAIN)), f"model_name_or_path={tiny_llama_dir}",
          f"dataset_dir={DATA_DIR}", "dataset=pretrain_demo", f"output_dir={out}", "max_steps=2", "logging_steps=1",
          "dataloader_num_workers=0")
    run = json.loads((out / "lmforge_run.json").read_text())
    assert run["stage"] == "pt"
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2


@pytest.mark.extras
@pytest.mark.parametrize("name", sorted(EXTRAS))
def test_llamafactory_extras_example_runs_unchanged(name, tiny_llama_dir, tiny_qwen_dir, tmp_path):
    text = EXTRAS[name]
    model = tiny_qwen_dir if "template: qwen" in text else tiny_llama_dir
    extra = []
    if "use_llama_pro" in text:
        # Its model is an expanded one (LLaMA-Factory's expand script, then freeze_trainable_layers = the copies):
        # the tiny model's 4 layers expanded by 4, whose 4 copies train.
        from lmforge.cli import main

        expanded = tmp_path / "pro"
        assert main(["expand-blocks", "--model_name_or_path", str(model), "--output_dir", str(expanded),
                     "--num_expand", "4"]) == 0
        model, extra = expanded, ["freeze_trainable_layers=4"]
    out = tmp_path / "run"
    train(str(_write(tmp_path, name, text)), f"model_name_or_path={model}", f"dataset_dir={DATA_DIR}",
          f"output_dir={out}", *FOR_TIME, *extra)
    run = json.loads((out / "lmforge_run.json").read_text())
    assert run["stage"] == "sft"
    assert (out / "training_loss.png").is_file()  # plot_loss: true
    if "finetuning_type: full" in text or "finetuning_type: freeze" in text:
        assert (out / "model.safetensors").is_file()
    else:
        assert (out / "adapter_model.safetensors").is_file()
