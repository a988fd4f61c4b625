"""Reading settings: files, overrides, types, unknown keys and cross-field checks."""

from __future__ import annotations

import json

import pytest

from lmforge.config import ConfigError, parse_config
from lmforge.config.parser import split_argv
from lmforge.data.templates import list_templates
from lmforge.errors import UserError

BASE = ["model_name_or_path=m", "do_train=true", "dataset=identity", "output_dir=out"]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_yaml_file_with_key_value_and_flag_overrides(tmp_path):
    cfg_path = write(
        tmp_path,
        "run.yaml",
        "model_name_or_path: m\nstage: sft\ndo_train: true\nfinetuning_type: lora\nlora_target: all\n"
        "dataset: identity,alpaca_en_demo\ntemplate: llama3\ncutoff_len: 1024\nlearning_rate: 1.0e-4\n"
        "output_dir: saves/x\nbf16: false\nddp_timeout: 180000000\nreport_to: none\n",
    )
    cfg = parse_config("train", [cfg_path, "learning_rate=2e-4", "--lora_rank", "16", "--plot_loss", "cutoff_len=256"])
    assert cfg.data.dataset == ["identity", "alpaca_en_demo"]
    assert cfg.train.learning_rate == 2e-4
    assert cfg.finetune.lora_rank == 16
    assert cfg.finetune.lora_alpha == 32  # derived: 2 x rank
    assert cfg.finetune.plot_loss is True
    assert cfg.data.cutoff_len == 256
    assert cfg.train.ddp_timeout == 180000000
    assert cfg.train.report_to == ["none"]
    assert cfg.source == cfg_path


def test_json_config_file(tmp_path):
    cfg_path = write(tmp_path, "run.json", json.dumps({"model_name_or_path": "m", "template": "qwen", "top_p": 0.5}))
    cfg = parse_config("chat", [cfg_path])
    assert cfg.data.template == "qwen"
    assert cfg.generate.top_p == 0.5


def test_flags_only_without_file():
    cfg = parse_config("train", ["--model_name_or_path", "m", "--do_train", "--dataset", "a", "--output_dir=o"])
    assert cfg.train.do_train is True and cfg.train.output_dir == "o"


def test_flag_followed_by_key_value_is_boolean():
    source, overrides = split_argv(["--bf16", "learning_rate=1e-4"])
    assert source is None and overrides == {"bf16": "true", "learning_rate": "1e-4"}


def test_other_trainer_keys_pass_through_typed():
    cfg = parse_config("train", [*BASE, "dataloader_persistent_workers=true", "eval_accumulation_steps=4"])
    assert cfg.train.hf_passthrough == {"dataloader_persistent_workers": True, "eval_accumulation_steps": 4}


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError) as err:
        parse_config("train", [*BASE, "lora_rnak=8"])
    assert str(err.value) == "Config error: unknown key 'lora_rnak'. Did you mean 'lora_rank'?"


def test_unknown_key_in_file_names_the_file(tmp_path):
    cfg_path = write(tmp_path, "bad.yaml", "model_name_or_path: m\nlearnig_rate: 1e-4\n")
    with pytest.raises(ConfigError) as err:
        parse_config("chat", [cfg_path])
    assert str(err.value) == f"Config error in {cfg_path}: unknown key 'learnig_rate'. See `lmforge chat --help` for the valid keys."


def test_key_of_another_command_is_explained():
    with pytest.raises(ConfigError) as err:
        parse_config("chat", ["model_name_or_path=m", "learning_rate=1e-4"])
    assert "'learning_rate' is a training setting that `lmforge chat` does not use; remove it." in str(err.value)


def test_all_problems_reported_together():
    with pytest.raises(ConfigError) as err:
        parse_config("train", ["do_train=true", "stage=sftt", "cutoff_len=abc", "lora_targte=all", "bf16=true", "fp16=true"])
    message = str(err.value)
    assert message.startswith("Config has ")
    for expected in [
        "unknown key 'lora_targte'. Did you mean 'lora_target'?",
        "'cutoff_len': expected an integer, got 'abc'.",
        "'stage' is 'sftt', which is not one of: pt, sft, rm, ppo, dpo, kto, grpo. Did you mean 'sft'?",
        "'model_name_or_path' is required",
        "'output_dir' is required",
        "'do_train' needs 'dataset'",
        "'bf16' and 'fp16' cannot both be true.",
    ]:
        assert expected in message


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["val_size=0.1", "eval_dataset=x"], "'val_size' and 'eval_dataset' cannot be used together"),
        (["streaming=true"], "'streaming' needs 'max_steps'"),
        (["stage=pt", "train_on_prompt=true"], "'train_on_prompt' only applies to stage sft"),
        (["train_on_prompt=true", "mask_history=true"], "'train_on_prompt' and 'mask_history' cannot both be true."),
        (["finetuning_type=full", "adapter_name_or_path=a"], "'adapter_name_or_path' needs finetuning_type lora"),
        (["do_predict=true", "eval_dataset=x"], "'do_predict' in stage sft needs 'predict_with_generate: true'."),
        (["mix_strategy=interleave", "dataset=a,b"], "Did you mean 'interleave_over'?"),
        (["mix_strategy=interleave_under", "interleave_probs=0.5,0.5"], "'interleave_probs' has 2 values but 'dataset'"),
        (["mix_strategy=interleave", "dataset=a,b"], "'mix_strategy' is 'interleave', which is not one of: concat, "
         "interleave_under, interleave_over, interleave_once. Did you mean 'interleave_over'?"),
        (["mix_strategy=interleave_under", "dataset=a,b", "interleave_probs=0.5,0.6"],
         "'interleave_probs' (0.5, 0.6) must be non-negative and sum to 1; they sum to 1.1."),
        (["mix_strategy=interleave_under", "dataset=a,b", "eval_dataset=c,d,e", "interleave_probs=0.5,0.5"],
         "'interleave_probs' has 2 values but 'eval_dataset' names 3 datasets; give one probability per dataset."),
        (["dataset=a,b", "interleave_probs=0.5,0.5"], "'interleave_probs' needs mix_strategy interleave_under"),
        (["quantization_bit=3"], "'quantization_bit' must be 4 or 8 with quantization_method bnb, got 3."),
        (["use_unsloth=true"], "'use_unsloth' is not supported by lmforge"),
        (["do_eval=true"], "'do_eval'/'do_predict' need 'eval_dataset' or a 'val_size' above 0."),
        (["template=qwen-3"], "unknown template 'qwen-3'. Did you mean 'qwen3'? Run `lmforge templates` to list them."),
        (["stage=ppo"], "stage ppo needs 'reward_model': the output_dir of a LoRA reward model run (stage rm), a full "
         "reward model folder with reward_model_type: full, or a URL with reward_model_type: api."),
        (["stage=ppo", "reward_model=r", "reward_model_type=loar"], "'reward_model_type' is 'loar', which is not one "
         "of: lora, full, api. Did you mean 'lora'?"),
        (["stage=ppo", "reward_model=r", "reward_model_type=api"], "reward_model_type api needs 'reward_model' to be "
         "an http(s) URL, got 'r'."),
        (["stage=ppo", "reward_model=r", "finetuning_type=full"], "stage ppo trains a LoRA policy (the reference is the "
         "policy without its adapter); set finetuning_type: lora (it is full)."),
        (["stage=ppo", "reward_model=r", "val_size=0.1"], "stage ppo has no evaluation or prediction; remove do_eval, "
         "do_predict, val_size and eval_dataset"),
        (["stage=ppo", "reward_model=r", "reward_model_adapters=a"], "'reward_model_adapters' applies to "
         "reward_model_type full"),
        (["stage=ppo", "reward_model=r", "early_stopping_steps=3"], "'early_stopping_steps' is not supported with "
         "stage ppo; remove it."),
        (["stage=dpo", "do_predict=true", "eval_dataset=x"], "'do_predict' is supported in stages sft and rm only "
         "(stage is dpo)."),
        (["stage=dpoo"], "'stage' is 'dpoo', which is not one of: pt, sft, rm, ppo, dpo, kto, grpo. Did you mean "
         "'dpo'?"),
        (["stage=dpo", "pref_loss=orp"], "'pref_loss' is 'orp', which is not one of: sigmoid, hinge, ipo, kto_pair, "
         "orpo, simpo. Did you mean 'orpo'?"),
        (["stage=kto", "pref_beta=0"], "'pref_beta' must be positive, got 0.0."),
        (["stage=grpo"], "stage grpo needs a reward: set 'reward_funcs' (built-in exact_match, format, length_penalty, "
         "or path/to/file.py:function) and/or 'reward_model'."),
        (["stage=grpo", "reward_funcs=exact_match", "num_generations=3"], "stage grpo samples 3 completions per "
         "prompt (num_generations): per_device_train_batch_size x gradient_accumulation_steps (8) must be a multiple "
         "of it."),
        (["stage=grpo", "reward_funcs=format", "do_sample=false"], "the format reward needs a regular expression"),
        (["stage=grpo", "reward_funcs=format", "do_sample=false"], "stage grpo samples its completions: remove "
         "'do_sample: false'"),
    ],
)
def test_cross_field_rules(extra, expected):
    with pytest.raises(ConfigError) as err:
        parse_config("train", [*BASE, *extra], template_names=list_templates())
    assert expected in str(err.value)


def test_template_names_are_checked_only_when_given():
    cfg = parse_config("train", [*BASE, "template=qwen-3"])  # the template registry refuses it when it loads
    assert cfg.data.template == "qwen-3"
    with pytest.raises(ConfigError, match="unknown template 'qwen-3'"):
        parse_config("chat", ["model_name_or_path=m", "template=qwen-3"], template_names=list_templates())
    assert parse_config("chat", ["model_name_or_path=m", "template=qwen3"], template_names=list_templates())


def test_derived_defaults():
    cfg = parse_config("train", [*BASE, "stage=pt", "evaluation_strategy=steps", "cutoff_len=128"])
    assert cfg.data.packing is True  # pt packs by default
    assert cfg.train.eval_strategy == "steps"
    assert cfg.train.generation_max_length == 128
    cfg = parse_config("train", [*BASE, "neat_packing=true"])
    assert cfg.data.packing is True


def test_bad_yaml_reports_line(tmp_path):
    cfg_path = write(tmp_path, "broken.yaml", "model_name_or_path: m\nlora_rank: [8\n")
    with pytest.raises(UserError) as err:
        parse_config("chat", [cfg_path])
    assert str(err.value).startswith(f"{cfg_path}:3:1: invalid YAML:")


def test_missing_config_file():
    with pytest.raises(UserError) as err:
        parse_config("chat", ["nope.yaml"])
    assert str(err.value).startswith("Config file 'nope.yaml' not found.")


def test_config_must_be_a_mapping(tmp_path):
    cfg_path = write(tmp_path, "list.yaml", "- a\n- b\n")
    with pytest.raises(UserError, match="a config file must be a mapping of key: value, got a list"):
        parse_config("chat", [cfg_path])


def test_not_a_config_argument():
    with pytest.raises(UserError, match="Expected a config file ending in .yaml, .yml or .json"):
        parse_config("chat", ["config.txt"])


def test_null_and_lists_from_text():
    cfg = parse_config("train", [*BASE, "max_samples=null", "lora_target=q_proj,v_proj", "interleave_probs=0.2,0.8",
                                 "mix_strategy=interleave_over", "dataset=a,b"])
    assert cfg.data.max_samples is None
    assert cfg.finetune.lora_target == ["q_proj", "v_proj"]
    assert cfg.data.interleave_probs == [0.2, 0.8]


def test_flat_dict_round_trip():
    cfg = parse_config("train", [*BASE, "lora_rank=4", "dataloader_persistent_workers=true"])
    flat = cfg.to_flat_dict()
    again = parse_config("train", values=flat)
    assert again.to_flat_dict() == flat
    assert cfg.to_flat_dict(only_set=True)["lora_rank"] == 4


@pytest.mark.parametrize("key, message", [
    ("kt_weight_path", "'kt_weight_path' belongs to KTransformers training (use_kt), a LLaMA-Factory feature that "
                       "lmforge does not have yet; remove it."),
    ("swanlab_project", "'swanlab_project' belongs to SwanLab logging (use_swanlab), a LLaMA-Factory feature that "
                        "lmforge does not have yet; remove it."),
    ("profiler_wait_steps", "'profiler_wait_steps' belongs to the torch profiler (enable_torch_profiler), a "
                            "LLaMA-Factory feature that lmforge does not have yet; remove it."),
    # Shares '_num_workers' with dataloader_num_workers (0.6 alike), but is no typo of it.
    ("tokenizer_num_workers", "unknown key 'tokenizer_num_workers'. See `lmforge train --help` for the valid keys."),
])
def test_unknown_keys_get_their_feature_or_only_a_close_suggestion(key, message):
    from lmforge.config import parse_config

    with pytest.raises(UserError) as err:
        parse_config("train", [f"{key}=1", "model_name_or_path=x", "stage=sft", "do_train=true", "dataset=identity",
                               "output_dir=/tmp/lmforge-parser-test"])
    assert str(err.value) == f"Config error: {message}"
