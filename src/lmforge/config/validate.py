"""Cross-field checks and derived defaults, applied once after parsing.

Every problem is collected and reported together (a user fixing a config should not
discover the problems one run at a time). A setting is checked only for the commands that read
it (`lmforge.config.run.checked_readers`): a key a command does not read is ignored there, with a
warning from the parser, not refused.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import fields

from lmforge.config.data import MIX_STRATEGIES
from lmforge.config.export import EXPORT_FORMATS, GGUF_TYPES
from lmforge.config.finetune import (
    FINETUNING_TYPES,
    GRPO_LOSS_TYPES,
    GRPO_SCALE_REWARDS,
    IMPLEMENTED_STAGES,
    PREF_LOSSES,
    REWARD_MODEL_TYPES,
    STAGES,
)
from lmforge.config.readers import DATASET, EVAL, EXPORT, MODEL, TEMPLATE, TRAINING
from lmforge.config.run import COMMAND_GROUPS, GROUPS, RunConfig, checked_readers, read_by
from lmforge.errors import did_you_mean

INFER_BACKENDS = ("huggingface", "vllm", "llamacpp")
INFER_DTYPES = ("auto", "float16", "bfloat16", "float32")
FLASH_ATTN = ("auto", "disabled", "sdpa", "fa2", "fa3")
EVAL_STRATEGIES = ("no", "steps", "epoch")

# LLaMA-Factory keys that lmforge knows but does not implement: accepted when off, refused when on,
# so that a config never silently trains differently from what it asks for.
UNSUPPORTED_SWITCHES = {
    "use_unsloth": "",
    "use_unsloth_gc": "",
    "enable_liger_kernel": "",
    "shift_attn": "",
    # The mixture-of-depth package imports names transformers 5 removed (TRANSFORMERS_CACHE).
    "mixture_of_depths": " (the mixture-of-depth package does not load with transformers 5)",
    "use_swanlab": "",
}

# Keys (or key prefixes) of LLaMA-Factory features lmforge does not have: an unknown key among them is
# named as its feature, rather than given a look-alike key that does something else.
MISSING_FEATURES = {
    "unsloth_": "Unsloth (use_unsloth)",
    "liger_": "Liger kernels (enable_liger_kernel)",
    "swanlab_": "SwanLab logging (use_swanlab)",
    "use_kt": "KTransformers training (use_kt)",
    "kt_": "KTransformers training (use_kt)",
    "sglang_": "the SGLang inference backend (infer_backend: sglang)",
    "enable_torch_profiler": "the torch profiler (enable_torch_profiler)",
    "profiler_": "the torch profiler (enable_torch_profiler)",
    "use_mca": "Megatron-Core training (use_mca)",
    "use_hyper_parallel": "HyperParallel training (use_hyper_parallel)",
    "hyper_parallel_": "HyperParallel training (use_hyper_parallel)",
}

# The optimizers that replace the Trainer's (`optim`): one at a time.
OPTIMIZER_SWITCHES = ("use_galore", "use_apollo", "use_badam", "use_adam_mini", "use_muon")
SFT_LOSS_SWITCHES = ("use_dft_loss", "use_asft_loss", "use_eaft_loss")


def missing_feature(key: str) -> str | None:
    """The LLaMA-Factory feature `key` belongs to, when lmforge lacks it."""
    for prefix, feature in MISSING_FEATURES.items():
        if key == prefix or (prefix.endswith("_") and key.startswith(prefix)):
            return feature
    return None


def finalize(cfg: RunConfig, template_names: Collection[str] | None = None) -> list[str]:
    """Fill derived defaults and return every cross-field problem found (empty when valid).

    `template_names`: the valid values of `template`; None skips that check.
    """
    _derive(cfg, COMMAND_GROUPS[cfg.command])
    return check(cfg, template_names)


def check(cfg: RunConfig, template_names: Collection[str] | None = None) -> list[str]:
    """Every cross-field problem of `cfg`, looking only at the settings its command reads."""
    readers = checked_readers(cfg.command)
    problems: list[str] = []
    _check_common(cfg, readers, template_names, problems)
    if DATASET in readers:
        _check_dataset(cfg, problems)
    if MODEL in readers:
        _check_model(cfg, readers, problems)
    if TRAINING in readers:
        _check_training(cfg, problems)
    if EXPORT in readers:
        _check_export(cfg, problems)
    if EVAL in readers:
        _check_eval(cfg, problems)
    return problems


def _derive(cfg: RunConfig, groups: tuple[str, ...]) -> None:
    ft, data, train = cfg.finetune, cfg.data, cfg.train
    if ft.lora_alpha is None:
        ft.lora_alpha = ft.lora_rank * 2
    if data.neat_packing:
        data.packing = True
    if data.packing is None:
        data.packing = ft.stage == "pt"
    if "train" in groups:
        if train.evaluation_strategy and train.eval_strategy == "no":
            train.eval_strategy = train.evaluation_strategy
        if train.generation_max_length is None:
            train.generation_max_length = data.cutoff_len
        if train.report_to is None:
            train.report_to = ["none"]


def _choice(problems: list[str], key: str, value, choices) -> None:
    if value not in choices:
        hint = did_you_mean(str(value), choices) if isinstance(value, str) else ""
        problems.append(f"'{key}' is '{value}', which is not one of: {', '.join(map(str, choices))}.{hint}")


def _reads(readers: frozenset[str], group: str, key: str) -> bool:
    """Whether one of `readers` reads `key` (for the keys that several readers read)."""
    return any(readers.intersection(read_by(f)) for f in fields(GROUPS[group]) if f.name == key)


def _check_stage(stage, problems: list[str]) -> None:
    if stage in IMPLEMENTED_STAGES:
        return
    if stage in STAGES:
        problems.append(f"'stage' is '{stage}', which is not available in this version of lmforge; "
                        f"available stages: {', '.join(IMPLEMENTED_STAGES)}.")
        return
    hint = did_you_mean(stage, STAGES) if isinstance(stage, str) else ""
    problems.append(f"'stage' is '{stage}', which is not one of: {', '.join(IMPLEMENTED_STAGES)}.{hint}")


def _check_common(cfg: RunConfig, readers: frozenset[str], template_names: Collection[str] | None,
                  problems: list[str]) -> None:
    model, data, ft = cfg.model, cfg.data, cfg.finetune
    if not model.model_name_or_path:
        problems.append("'model_name_or_path' is required: a hub id (e.g. Qwen/Qwen2.5-0.5B-Instruct) or a local folder.")
    if _reads(readers, "finetune", "stage"):
        _check_stage(ft.stage, problems)
    if _reads(readers, "finetune", "finetuning_type"):
        _choice(problems, "finetuning_type", ft.finetuning_type, FINETUNING_TYPES)
    if _reads(readers, "model", "infer_backend"):
        _choice(problems, "infer_backend", model.infer_backend, INFER_BACKENDS)
    if _reads(readers, "model", "infer_dtype"):
        _choice(problems, "infer_dtype", model.infer_dtype, INFER_DTYPES)
    if TEMPLATE in readers and template_names is not None and data.template is not None:
        if data.template not in template_names:
            problems.append(
                f"unknown template '{data.template}'.{did_you_mean(data.template, template_names)} "
                "Run `lmforge templates` to list them."
            )
    if _reads(readers, "data", "cutoff_len") and data.cutoff_len <= 0:
        problems.append(f"'cutoff_len' must be a positive number of tokens, got {data.cutoff_len}.")
    if _reads(readers, "finetune", "pref_loss"):
        if ft.stage == "dpo":
            _choice(problems, "pref_loss", ft.pref_loss, PREF_LOSSES)
        if ft.stage in ("dpo", "kto") and ft.pref_beta <= 0:
            problems.append(f"'pref_beta' must be positive, got {ft.pref_beta}.")
        if ft.ref_model_adapters and not ft.ref_model:
            problems.append("'ref_model_adapters' needs 'ref_model': the base model the adapters belong to.")


def _check_dataset(cfg: RunConfig, problems: list[str]) -> None:
    data, ft = cfg.data, cfg.finetune
    _choice(problems, "mix_strategy", data.mix_strategy, MIX_STRATEGIES)
    if data.val_size < 0:
        problems.append(f"'val_size' must be >= 0 (a fraction below 1 or a row count), got {data.val_size}.")
    if data.max_samples is not None and data.max_samples <= 0:
        problems.append(f"'max_samples' must be a positive row count, got {data.max_samples}.")
    if data.interleave_probs is not None:
        if data.mix_strategy == "concat":
            problems.append("'interleave_probs' needs mix_strategy interleave_under, interleave_over or interleave_once.")
        else:
            probs = data.interleave_probs
            # Eval datasets are mixed like the training ones (unless each is evaluated on its own).
            mixed = [("dataset", data.dataset)]
            if not data.eval_on_each_dataset:
                mixed.append(("eval_dataset", data.eval_dataset))
            for key, names in mixed:
                if names and len(probs) != len(names):
                    problems.append(f"'interleave_probs' has {len(probs)} values but '{key}' names {len(names)} "
                                    "datasets; give one probability per dataset.")
            if any(p < 0 for p in probs) or abs(sum(probs) - 1.0) > 1e-6:
                problems.append(f"'interleave_probs' ({', '.join(map(str, probs))}) must be non-negative and sum "
                                f"to 1; they sum to {sum(probs):g}.")
    if ft.stage != "sft":
        for key in ("train_on_prompt", "mask_history", "neat_packing"):
            if getattr(data, key):
                problems.append(f"'{key}' only applies to stage sft (stage is {ft.stage}).")
    if data.train_on_prompt and data.mask_history:
        problems.append("'train_on_prompt' and 'mask_history' cannot both be true.")
    if data.val_size > 0 and data.eval_dataset:
        problems.append("'val_size' and 'eval_dataset' cannot be used together; choose one.")
    if data.streaming and data.max_samples is not None:
        problems.append("'max_samples' cannot be used with 'streaming'.")
    if data.streaming and 0 < data.val_size < 1:
        problems.append("with 'streaming', 'val_size' must be a row count (>= 1), not a fraction.")


def _check_model(cfg: RunConfig, readers: frozenset[str], problems: list[str]) -> None:
    model, ft = cfg.model, cfg.finetune
    _choice(problems, "flash_attn", model.flash_attn, FLASH_ATTN)
    if model.adapter_name_or_path and ft.finetuning_type not in ("lora", "oft"):
        problems.append(f"'adapter_name_or_path' needs finetuning_type lora or oft (it is {ft.finetuning_type}).")
    if model.quantization_bit is not None:
        _check_quantization(cfg, readers, problems)
    if _reads(readers, "model", "quantization_device_map") and model.quantization_device_map not in (None, "auto"):
        problems.append(f"'quantization_device_map' is '{model.quantization_device_map}'; the only value is auto "
                        "(spread a quantized model over the GPUs and the CPU, for inference).")
    if _reads(readers, "finetune", "ref_model_quantization_bit"):
        for key in ("ref_model_quantization_bit", "reward_model_quantization_bit"):
            if getattr(ft, key) not in (None, 4, 8):
                problems.append(f"'{key}' must be 4 or 8 (bitsandbytes), got {getattr(ft, key)}.")


# Bit widths each on-the-fly method quantizes to.
QUANTIZATION_BITS = {"bnb": (4, 8), "hqq": (1, 2, 3, 4, 8), "eetq": (8,)}


def _check_quantization(cfg: RunConfig, readers: frozenset[str], problems: list[str]) -> None:
    """The rules of a model quantized on the fly (`quantization_bit`), as LLaMA-Factory enforces them."""
    model, ft = cfg.model, cfg.finetune
    bits = model.quantization_bit
    _choice(problems, "quantization_method", model.quantization_method, tuple(QUANTIZATION_BITS))
    allowed = QUANTIZATION_BITS.get(model.quantization_method, (4, 8))
    if bits not in allowed:
        listed = f"{', '.join(map(str, allowed[:-1]))} or {allowed[-1]}" if len(allowed) > 1 else str(allowed[0])
        problems.append(f"'quantization_bit' must be {listed} with quantization_method "
                        f"{model.quantization_method}, got {bits}.")
    if model.quantization_method == "bnb" and bits == 4:
        _choice(problems, "quantization_type", model.quantization_type, ("nf4", "fp4"))
    if cfg.command == "export":
        problems.append("export writes full-precision weights, and adapters cannot be merged into a quantized model: "
                        "remove quantization_bit (export from the unquantized base; for a smaller file use "
                        "export_format: gguf with gguf_type: q8_0, or export_quantization_bit for GPTQ).")
        return
    if ft.finetuning_type not in ("lora", "oft"):
        problems.append("quantization ('quantization_bit') is only supported with finetuning_type lora or oft.")
    if model.adapter_name_or_path and len(model.adapter_name_or_path) > 1:
        problems.append(f"a quantized model takes one adapter, applied on the fly, but adapter_name_or_path names "
                        f"{len(model.adapter_name_or_path)}: merge them into the unquantized base first (lmforge "
                        "export without quantization_bit), then load the export with the last one.")
    if model.resize_vocab:
        problems.append("'resize_vocab' cannot resize the embeddings of a quantized model; remove quantization_bit "
                        "or resize_vocab.")
    if _reads(readers, "model", "merge_adapters") and model.merge_adapters:
        problems.append("'merge_adapters' cannot merge an adapter into a quantized model: remove merge_adapters (the "
                        "adapter is applied on the fly), or export the merged model from the unquantized base "
                        "(lmforge export without quantization_bit) and load that quantized.")
    training = TRAINING in readers and cfg.train.do_train
    if training and ft.create_new_adapter and model.adapter_name_or_path:
        problems.append("'create_new_adapter' merges the given adapter into the model, which a quantized model cannot "
                        "take: remove create_new_adapter to keep training the adapter, or merge it into the "
                        "unquantized base first (lmforge export).")
    if training and model.quantization_device_map == "auto":
        problems.append("'quantization_device_map: auto' is for inference only; remove it to train (each process "
                        "trains on its own device).")


def _check_training(cfg: RunConfig, problems: list[str]) -> None:
    data, train, ft = cfg.data, cfg.train, cfg.finetune
    if ft.lora_rank <= 0:
        problems.append(f"'lora_rank' must be positive, got {ft.lora_rank}.")
    if ft.freeze_extra_modules and ft.finetuning_type != "freeze":
        problems.append("'freeze_extra_modules' only applies to finetuning_type freeze.")
    if cfg.command == "train" and not (train.do_train or train.do_eval or train.do_predict):
        problems.append("nothing to do: set do_train, do_eval or do_predict to true.")
    if cfg.command == "train" and not train.output_dir:
        problems.append("'output_dir' is required: the folder where the run writes its results.")
    if train.do_train and not data.dataset:
        problems.append("'do_train' needs 'dataset': one or more names from dataset_info.json.")
    if (train.do_eval or train.do_predict) and not (data.eval_dataset or data.val_size > 0):
        problems.append("'do_eval'/'do_predict' need 'eval_dataset' or a 'val_size' above 0.")
    if data.streaming and train.max_steps <= 0:
        problems.append("'streaming' needs 'max_steps' (a streamed dataset has no known length).")
    _choice(problems, "eval_strategy", train.eval_strategy, EVAL_STRATEGIES)
    if train.bf16 and train.fp16:
        problems.append("'bf16' and 'fp16' cannot both be true.")
    if train.predict_with_generate and ft.stage != "sft":
        problems.append("'predict_with_generate' only applies to stage sft.")
    if ft.stage == "sft" and train.do_predict and not train.predict_with_generate:
        problems.append("'do_predict' in stage sft needs 'predict_with_generate: true'.")
    if train.do_predict and ft.stage not in ("sft", "rm"):
        problems.append(f"'do_predict' is supported in stages sft and rm only (stage is {ft.stage}).")
    if train.do_predict and data.streaming:
        problems.append("'do_predict' needs a dataset of known length: remove 'streaming'.")
    if train.predict_with_generate and (train.do_train or train.do_eval):
        problems.append("'predict_with_generate' cannot be combined with do_train or do_eval: run prediction "
                        "(do_predict) as its own run, on the trained output_dir or adapter.")
    if train.predict_with_generate and ft.compute_accuracy:
        problems.append("'predict_with_generate' and 'compute_accuracy' cannot both be true.")
    if train.per_device_train_batch_size <= 0:
        problems.append("'per_device_train_batch_size' must be positive.")
    if train.gradient_accumulation_steps <= 0:
        problems.append("'gradient_accumulation_steps' must be positive.")
    if train.learning_rate <= 0:
        problems.append(f"'learning_rate' must be positive, got {train.learning_rate}.")
    _check_extras(cfg, problems)
    if ft.stage == "ppo":
        _check_ppo(cfg, problems)
    if ft.stage == "grpo":
        _check_grpo(cfg, problems)


def _check_extras(cfg: RunConfig, problems: list[str]) -> None:
    """OFT, PiSSA, the optimizers, LLaMA Pro and the SFT losses: LLaMA-Factory's rules, each in one line."""
    from lmforge.config import extras

    ft = cfg.finetune
    optimizers = [key for key in OPTIMIZER_SWITCHES if getattr(ft, key)]
    if len(optimizers) > 1:
        problems.append(f"{' and '.join(optimizers)} each replace the optimizer; keep one of them.")
    if ft.finetuning_type in ("lora", "oft") and set(optimizers) & {"use_galore", "use_apollo", "use_badam"}:
        problems.append(f"{optimizers[0]} trains the model's own weights, not a {ft.finetuning_type} adapter; set "
                        "finetuning_type: full (or freeze), or remove it.")
    if ft.use_adam_mini and ft.finetuning_type in ("lora", "oft"):
        # Adam-mini shapes its per-head blocks from the weight names; an adapter's small matrices carry those
        # names (q_proj.lora_A) without the shapes.
        problems.append(f"use_adam_mini partitions the model's own weights, not a {ft.finetuning_type} adapter; set "
                        "finetuning_type: full (or freeze).")
    if optimizers and ft.loraplus_lr_ratio:
        problems.append(f"'loraplus_lr_ratio' builds its own optimizer, so it cannot be combined with {optimizers[0]}.")
    if ft.finetuning_type != "oft":
        if ft.oft_rank or ft.module_dropout:
            problems.append("'oft_rank' and 'module_dropout' apply to finetuning_type oft only.")
    elif (ft.oft_rank == 0) == (ft.oft_block_size == 0):
        problems.append(f"finetuning_type oft needs exactly one of oft_rank and oft_block_size set, the other 0 (they "
                        f"are {ft.oft_rank} and {ft.oft_block_size}).")
    if ft.pissa_init and ft.finetuning_type != "lora":
        problems.append("'pissa_init' initialises a LoRA adapter: set finetuning_type: lora, or remove it.")
    if ft.pissa_init and (ft.stage in ("ppo", "kto") or (ft.stage == "dpo" and ft.pref_loss not in ("orpo", "simpo"))):
        problems.append(f"'pissa_init' changes the base weights that stage {ft.stage}'s reference model is made of; "
                        "remove it for this stage.")
    if ft.pissa_init and cfg.model.quantization_bit is not None:
        problems.append("'pissa_init' decomposes the base weights, which a quantized model cannot change; remove "
                        "quantization_bit or pissa_init.")
    if ft.pissa_convert and not ft.pissa_init:
        problems.append("'pissa_convert' converts a PiSSA adapter: it needs pissa_init: true.")
    if ft.use_llama_pro and ft.finetuning_type not in ("freeze", "lora"):
        problems.append(f"'use_llama_pro' trains the expanded blocks with finetuning_type freeze or lora (it is "
                        f"{ft.finetuning_type}).")
    losses = [key for key in SFT_LOSS_SWITCHES if getattr(ft, key)]
    if len(losses) > 1:
        problems.append(f"{' and '.join(losses)} are alternative losses; keep one of them.")
    if losses and ft.stage != "sft":
        problems.append(f"'{losses[0]}' is a loss of stage sft (the stage is {ft.stage}).")
    _choice(problems, "galore_proj_type", ft.galore_proj_type, extras.GALORE_PROJ_TYPES)
    _choice(problems, "apollo_proj", ft.apollo_proj, extras.APOLLO_PROJS)
    _choice(problems, "apollo_proj_type", ft.apollo_proj_type, extras.APOLLO_PROJ_TYPES)
    _choice(problems, "apollo_scale_type", ft.apollo_scale_type, extras.APOLLO_SCALE_TYPES)
    _choice(problems, "badam_mode", ft.badam_mode, extras.BADAM_MODES)
    _choice(problems, "badam_switch_mode", ft.badam_switch_mode, extras.BADAM_SWITCH_MODES)
    _choice(problems, "badam_mask_mode", ft.badam_mask_mode, extras.BADAM_MASK_MODES)
    if (ft.galore_layerwise and ft.use_galore) or (ft.apollo_layerwise and ft.use_apollo):
        if cfg.train.gradient_accumulation_steps != 1:
            problems.append("layer-wise GaLore/APOLLO updates each layer during backward, so it needs "
                            "gradient_accumulation_steps: 1.")


def _check_ppo(cfg: RunConfig, problems: list[str]) -> None:
    ft, train = cfg.finetune, cfg.train
    if not ft.reward_model:
        problems.append("stage ppo needs 'reward_model': the output_dir of a LoRA reward model run (stage rm), "
                        "a full reward model folder with reward_model_type: full, or a URL with reward_model_type: api.")
    _choice(problems, "reward_model_type", ft.reward_model_type, REWARD_MODEL_TYPES)
    if ft.reward_model and ft.reward_model_type == "api" and not ft.reward_model.startswith(("http://", "https://")):
        problems.append(f"reward_model_type api needs 'reward_model' to be an http(s) URL, got '{ft.reward_model}'.")
    if ft.reward_model_adapters and ft.reward_model_type != "full":
        problems.append("'reward_model_adapters' applies to reward_model_type full (a lora reward model is its rm "
                        "run folder alone).")
    if ft.finetuning_type != "lora":
        problems.append(f"stage ppo trains a LoRA policy (the reference is the policy without its adapter); "
                        f"set finetuning_type: lora (it is {ft.finetuning_type}).")
    if train.do_eval or train.do_predict or cfg.data.val_size > 0 or cfg.data.eval_dataset:
        problems.append("stage ppo has no evaluation or prediction; remove do_eval, do_predict, val_size and "
                        "eval_dataset (evaluate the trained policy with `lmforge chat` or an sft do_predict run).")
    if cfg.data.streaming:
        problems.append("stage ppo does not support 'streaming'; remove it (use max_samples for a large dataset).")
    if ft.ppo_epochs < 1 or ft.ppo_buffer_size < 1:
        problems.append(f"'ppo_epochs' and 'ppo_buffer_size' must be at least 1, got {ft.ppo_epochs} and "
                        f"{ft.ppo_buffer_size}.")
    if ft.ppo_target <= 0:
        problems.append(f"'ppo_target' (the target KL) must be positive, got {ft.ppo_target}.")
    for key in ("loraplus_lr_ratio", "early_stopping_steps"):
        if getattr(ft, key):
            problems.append(f"'{key}' is not supported with stage ppo; remove it.")
    if train.fp16:
        problems.append("'fp16' is not supported with stage ppo; use bf16, or neither.")


def _check_grpo(cfg: RunConfig, problems: list[str]) -> None:
    from lmforge.config.rewards import BUILTIN_REWARDS, reward_spec_problems

    ft, train = cfg.finetune, cfg.train
    funcs = ft.reward_funcs or []
    if not funcs and not ft.reward_model:
        problems.append(f"stage grpo needs a reward: set 'reward_funcs' (built-in {', '.join(BUILTIN_REWARDS)}, or "
                        "path/to/file.py:function) and/or 'reward_model'.")
    problems.extend(reward_spec_problems(funcs, ft.reward_format_regex))
    rewards = len(funcs) + (1 if ft.reward_model else 0)
    if ft.reward_weights is not None and len(ft.reward_weights) != rewards:
        problems.append(f"'reward_weights' has {len(ft.reward_weights)} values for {rewards} rewards; give one per "
                        "reward_funcs entry, then one for reward_model.")
    if ft.reward_model:
        _choice(problems, "reward_model_type", ft.reward_model_type, REWARD_MODEL_TYPES)
        if ft.reward_model_type == "api" and not ft.reward_model.startswith(("http://", "https://")):
            problems.append(f"reward_model_type api needs 'reward_model' to be an http(s) URL, got '{ft.reward_model}'.")
    if ft.num_generations < 2:
        problems.append(f"'num_generations' must be at least 2 (GRPO compares the completions of a prompt), "
                        f"got {ft.num_generations}.")
    elif (train.per_device_train_batch_size * train.gradient_accumulation_steps) % ft.num_generations:
        problems.append(f"stage grpo samples {ft.num_generations} completions per prompt (num_generations): "
                        "per_device_train_batch_size x gradient_accumulation_steps "
                        f"({train.per_device_train_batch_size * train.gradient_accumulation_steps}) must be a multiple "
                        "of it.")
    elif (train.do_eval or train.eval_strategy != "no") and train.per_device_eval_batch_size % ft.num_generations:
        problems.append(f"'per_device_eval_batch_size' ({train.per_device_eval_batch_size}) must be a multiple of "
                        f"num_generations ({ft.num_generations}) in stage grpo.")
    if ft.max_completion_length < 1:
        problems.append(f"'max_completion_length' must be positive, got {ft.max_completion_length}.")
    if ft.beta < 0:
        problems.append(f"'beta' (the KL coefficient) must be >= 0, got {ft.beta}.")
    if ft.num_iterations < 1:
        problems.append(f"'num_iterations' must be at least 1, got {ft.num_iterations}.")
    _choice(problems, "loss_type", ft.loss_type, GRPO_LOSS_TYPES)
    _choice(problems, "scale_rewards", ft.scale_rewards, GRPO_SCALE_REWARDS)
    if not cfg.generate.do_sample:
        problems.append("stage grpo samples its completions: remove 'do_sample: false' (set temperature, top_p and "
                        "top_k to shape the sampling).")
    if cfg.data.packing:
        problems.append("'packing' does not apply to stage grpo (it generates from one prompt at a time); remove it.")
    if ft.ref_model:
        problems.append("'ref_model' applies to stages dpo and kto; stage grpo's reference (beta > 0) is the policy "
                        "without its LoRA adapter, or the base model for freeze and full.")


def _check_export(cfg: RunConfig, problems: list[str]) -> None:
    export = cfg.export
    if not export.export_format:
        problems.append(f"'export_format' is empty; choose one or both of: {', '.join(EXPORT_FORMATS)}.")
    for fmt in export.export_format:
        _choice(problems, "export_format", fmt, EXPORT_FORMATS)
    _choice(problems, "gguf_type", export.gguf_type, GGUF_TYPES)
    _choice(problems, "export_device", export.export_device, ("cpu", "auto"))
    if cfg.command == "export" and not export.export_dir:
        problems.append("'export_dir' is required: the folder the exported model is written to.")
    if export.export_size <= 0:
        problems.append(f"'export_size' must be a positive number of GB, got {export.export_size}.")
    if export.export_legacy_format:
        problems.append("'export_legacy_format' (.bin weights) is not available: transformers 5 writes safetensors "
                        "only. Remove it or set it to false.")
    if export.export_quantization_bit is not None:
        if cfg.model.adapter_name_or_path:
            problems.append("quantized export cannot merge adapters: export the merged model first, then quantize it.")
        if export.export_quantization_bit not in (2, 3, 4, 8):
            problems.append(f"'export_quantization_bit' must be 2, 3, 4 or 8, got {export.export_quantization_bit}.")
        if "gguf" in export.export_format:
            problems.append("'export_quantization_bit' (GPTQ) writes safetensors; for a quantized GGUF use "
                            "export_format: gguf with gguf_type: q8_0 instead.")
        if not export.export_quantization_dataset:
            problems.append("'export_quantization_bit' needs 'export_quantization_dataset': a JSON/JSONL file "
                            "(or hub dataset) with a text column for calibration.")


def _check_eval(cfg: RunConfig, problems: list[str]) -> None:
    ev = cfg.eval
    if cfg.command == "eval" and not ev.task:
        problems.append("'task' is required, as <name>_<split> (e.g. mmlu_test, cmmlu_test, ceval_validation).")
    _choice(problems, "lang", ev.lang, ("en", "zh"))
    if ev.n_shot < 0:
        problems.append(f"'n_shot' must be >= 0, got {ev.n_shot}.")
    if ev.batch_size <= 0:
        problems.append(f"'batch_size' must be positive, got {ev.batch_size}.")
