"""From the board's fields to the YAML a job runs, and back; checked as `lmforge train` checks it.

Only what a field changes from lmforge's default is written, plus what LLaMA-Factory's board always
writes (model, stage, data, output_dir): the YAML stays short, and runs unchanged in a terminal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from lmforge.errors import UserError
from lmforge.webui.choices import BOOSTERS

# Board field -> the config key it sets (same name unless listed).
TRAIN_FIELDS = ("learning_rate", "num_train_epochs", "max_grad_norm", "max_samples", "cutoff_len",
                "per_device_train_batch_size", "gradient_accumulation_steps", "lr_scheduler_type", "logging_steps",
                "save_steps", "warmup_steps", "packing", "train_on_prompt")
LORA_FIELDS = ("lora_rank", "lora_dropout", "lora_target", "use_rslora", "use_dora")
FREEZE_FIELDS = ("freeze_trainable_layers", "freeze_trainable_modules")


def parse_json_field(text: str | None, name: str) -> dict:
    """A JSON-object field (extra settings, placeholders); UserError naming the field when it is not one."""
    if not (text or "").strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError as err:
        raise UserError(f"{name} is not valid JSON: {err}.") from None
    if not isinstance(value, dict):
        raise UserError(f'{name} must be a JSON object, like {{"key": "value"}}.')
    return value


def model_settings(v: dict[str, Any]) -> dict[str, Any]:
    """The top bar's keys: model, adapters, method, quantization, template, RoPE, attention."""
    settings: dict[str, Any] = {"model_name_or_path": (v["model_path"] or "").strip()}
    adapters = [a for a in (v.get("adapter_path") or []) if a]
    if adapters:
        settings["adapter_name_or_path"] = ",".join(adapters)
    settings["template"] = v["template"]
    settings["finetuning_type"] = v["finetuning_type"]
    if v.get("quantization_bit") not in (None, "none"):
        settings["quantization_bit"] = int(v["quantization_bit"])
    if v.get("rope_scaling") not in (None, "none"):
        settings["rope_scaling"] = v["rope_scaling"]
    if BOOSTERS.get(v.get("booster") or "auto", "auto") != "auto":
        settings["flash_attn"] = BOOSTERS[v["booster"]]
    return settings


def train_settings(v: dict[str, Any], deepspeed_config: str | None = None) -> dict[str, Any]:
    """The YAML of the Train tab."""
    stage = v["stage"]
    settings = model_settings(v)
    settings.update(stage=stage, do_train=True, dataset=",".join(v.get("dataset") or []),
                    dataset_dir=v["dataset_dir"])
    for key in TRAIN_FIELDS:
        settings[key] = _number(v[key])
    if v.get("max_steps"):
        settings["max_steps"] = int(v["max_steps"])
    if v.get("val_size"):
        settings["val_size"] = _number(v["val_size"])
    compute = v.get("compute_type", "fp32")
    if compute in ("bf16", "fp16"):
        settings[compute] = True
    elif compute == "pure_bf16":
        settings["pure_bf16"] = True
    else:  # fp32, said explicitly: bf16 left unset would be chosen on a GPU that computes it
        settings["bf16"] = False
    if v["finetuning_type"] == "lora":
        for key in LORA_FIELDS:
            settings[key] = _number(v[key])
        if v.get("lora_alpha"):
            settings["lora_alpha"] = int(v["lora_alpha"])
    if v["finetuning_type"] == "freeze":
        for key in FREEZE_FIELDS:
            settings[key] = _number(v[key])
    if stage in ("dpo", "kto"):
        settings.update(pref_beta=_number(v["pref_beta"]), pref_ftx=_number(v["pref_ftx"]))
        if stage == "dpo":
            settings["pref_loss"] = v["pref_loss"]
    if stage in ("ppo", "grpo") and (v.get("reward_model") or "").strip():
        settings["reward_model"] = v["reward_model"].strip()
    if stage == "grpo":
        funcs = [f.strip() for f in (v.get("reward_funcs") or "").split(",") if f.strip()]
        if funcs:
            settings["reward_funcs"] = funcs
        settings["num_generations"] = int(v["num_generations"])
    if deepspeed_config:
        settings["deepspeed"] = deepspeed_config
    placeholders = parse_json_field(v.get("placeholders"), "Placeholders (JSON)")
    if placeholders:
        settings["placeholders"] = placeholders
    settings.update(output_dir=v["output_dir"], plot_loss=True, report_to="none")
    settings.update(parse_json_field(v.get("extra_args"), "Extra settings (JSON)"))
    return settings


def predict_settings(v: dict[str, Any]) -> dict[str, Any]:
    """The YAML of the Evaluate & Predict tab: sft evaluation (loss) or prediction (generated answers, BLEU/ROUGE)."""
    settings = model_settings(v)
    settings.update(stage="sft", dataset_dir=v["dataset_dir"], eval_dataset=",".join(v.get("eval_dataset") or []),
                    cutoff_len=int(v["eval_cutoff_len"]), max_samples=int(v["eval_max_samples"]),
                    per_device_eval_batch_size=int(v["per_device_eval_batch_size"]),
                    output_dir=v["eval_output_dir"], report_to="none")
    if v["predict"]:
        settings.update(do_predict=True, predict_with_generate=True, max_new_tokens=int(v["max_new_tokens"]),
                        top_p=float(v["top_p"]), temperature=float(v["temperature"]))
    else:
        settings["do_eval"] = True
    return settings


def benchmark_settings(v: dict[str, Any]) -> dict[str, Any]:
    """The YAML of a multiple-choice benchmark run (`lmforge eval`) from the Evaluate & Predict tab."""
    settings = model_settings(v)
    settings.update(task=v["benchmark"], task_dir=v["task_dir"], lang=v["eval_lang"], n_shot=int(v["n_shot"]),
                    batch_size=int(v["per_device_eval_batch_size"]), save_dir=v["eval_output_dir"])
    return settings


def export_settings(v: dict[str, Any]) -> dict[str, Any]:
    settings = model_settings(v)
    settings.pop("quantization_bit", None)  # an export merges full-precision weights
    formats = v.get("export_formats") or ["safetensors"]
    settings.update(export_dir=v["export_dir"], export_size=int(v["export_size"]), export_format=",".join(formats),
                    infer_dtype=v["export_dtype"])
    if "gguf" in formats:
        settings["gguf_type"] = v["gguf_type"]
    if (v.get("export_hub_model_id") or "").strip():
        settings["export_hub_model_id"] = v["export_hub_model_id"].strip()
    return settings


def launch_env(values: dict) -> dict[str, str]:
    """The environment that runs a training on several processes (torchrun), from the Devices fields."""
    processes = int(values.get("nproc") or 1)
    return {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": str(processes)} if processes > 1 else {}


def deepspeed_config(cache: Path, stage: int) -> Path:
    """A DeepSpeed ZeRO config of `stage` with every size left to the Trainer ("auto")."""
    config = {"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
              "gradient_accumulation_steps": "auto", "gradient_clipping": "auto", "zero_allow_untested_optimizer": True,
              "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"},
              "zero_optimization": {"stage": stage, "overlap_comm": False, "contiguous_gradients": True}}
    path = cache / f"ds_z{stage}_config.json"
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


def check(command: str, settings: dict[str, Any], scratch: Path) -> None:
    """Parse and validate `settings` as `lmforge COMMAND FILE.yaml` would; UserError with its message if not."""
    from lmforge.config import parse_config
    from lmforge.data.templates import list_templates

    scratch.mkdir(parents=True, exist_ok=True)
    path = scratch / f"check_{command}.yaml"
    path.write_text(to_yaml(settings), encoding="utf-8")
    parse_config(command, [str(path)], template_names=list_templates())


def to_yaml(settings: dict[str, Any]) -> str:
    return yaml.safe_dump(settings, sort_keys=False, allow_unicode=True)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise UserError(f"Cannot read settings file '{path}': {err.strerror}.") from None
    except yaml.YAMLError as err:
        raise UserError(f"'{path}' is not valid YAML: {str(err).splitlines()[0]}.") from None
    if not isinstance(data, dict):
        raise UserError(f"'{path}' does not hold settings (a YAML mapping of keys to values).")
    return data


def fields_from_yaml(data: dict[str, Any], known: set[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(board fields set by a saved YAML, the keys no field shows: they go to Extra settings)."""
    fields: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    names = {"model_name_or_path": "model_path", "dataset": "dataset", "adapter_name_or_path": "adapter_path"}
    for key, value in data.items():
        name = names.get(key, key)
        if name == "dataset":
            fields[name] = [d.strip() for d in str(value).split(",") if d.strip()]
        elif name == "adapter_path":
            fields[name] = [a.strip() for a in str(value).split(",") if a.strip()]
        elif key in ("bf16", "fp16", "pure_bf16"):
            if value:
                fields["compute_type"] = key
        elif key == "placeholders":
            fields["placeholders"] = json.dumps(value, ensure_ascii=False)
        elif key == "reward_funcs":
            fields["reward_funcs"] = ",".join(value) if isinstance(value, list) else str(value)
        elif key == "flash_attn":
            fields["booster"] = {b: f for f, b in BOOSTERS.items()}.get(value, "auto")
        elif name in known:
            fields[name] = value
        elif key not in ("do_train", "plot_loss", "report_to"):
            extra[key] = value
    return fields, extra


def _number(value):
    """Gradio numbers arrive as floats; whole ones are written as ints (save_steps: 100, not 100.0)."""
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1:
        return int(value)
    return value
