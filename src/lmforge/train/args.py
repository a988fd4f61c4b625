"""Turn lmforge's TrainArguments into transformers' Seq2SeqTrainingArguments (or a stage's own subclass of
TrainingArguments, such as trl's GRPOConfig)."""

from __future__ import annotations

import copy
import copyreg
import dataclasses
from typing import TYPE_CHECKING

from transformers import Seq2SeqTrainingArguments

from lmforge.errors import UserError
from lmforge.utils import hardware
from lmforge.utils.secrets import is_secret

if TYPE_CHECKING:
    from lmforge.config import RunConfig

# Fields of ours that transformers 5 no longer has, or that lmforge handles itself: never passed on.
_OWN_FIELDS = {"hf_passthrough", "overwrite_output_dir", "evaluation_strategy", "warmup_ratio", "logging_dir",
               "ray_num_workers", "ray_init_kwargs", "resources_per_worker", "placement_strategy", "ray_run_name",
               "ray_storage_path", "ray_storage_filesystem", "master_addr", "master_port", "fp8", "fp8_backend",
               "fp8_enable_fsdp_float8_all_gather",
               # lmforge compiles the decoder layers itself (`lmforge.train.compile`); the Trainer would compile
               # the whole model, around the hooks that the supervised-positions loss relies on.
               "torch_compile", "torch_compile_backend", "torch_compile_mode"}
# Fields of ours that only Seq2SeqTrainingArguments has (sft prediction): left out for other argument classes.
_SEQ2SEQ_FIELDS = {"predict_with_generate", "generation_max_length", "generation_num_beams"}


class WithoutSecrets:
    """Put before a TrainingArguments class: arguments that never write a token to disk, however the Trainer
    saves them.

    The Trainer pickles its arguments into `training_args.bin` of every checkpoint and of the final
    folder (and of the folders it pushes to the hub). What is pickled is a plain `PICKLED_AS`
    (loadable without lmforge) whose token fields (`hub_token`) are None. The object in memory, and
    its copies, keep them, so a `push_to_hub` run still authenticates.
    """

    PICKLED_AS: type = Seq2SeqTrainingArguments

    def __reduce_ex__(self, protocol):
        state = {name: None if is_secret(name) else value for name, value in self.__dict__.items()}
        # copyreg's own reconstructor: pickle's __newobj__ would insist on the object's exact class.
        return copyreg._reconstructor, (self.PICKLED_AS, object, None), state

    # copy and deepcopy fall back on __reduce_ex__: they must not lose the token nor the class.
    def __copy__(self):
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        return clone

    def __deepcopy__(self, memo):
        clone = object.__new__(type(self))
        memo[id(self)] = clone
        clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return clone


class TrainingArgumentsWithoutSecrets(WithoutSecrets, Seq2SeqTrainingArguments):
    """Seq2SeqTrainingArguments that never write a token to disk (see `WithoutSecrets`)."""


def build_training_args(cfg: RunConfig, resume_from: str | None, args_class: type = TrainingArgumentsWithoutSecrets,
                        extra: dict | None = None):
    """`args_class` (Seq2SeqTrainingArguments by default) for this run (non-padding token counting on, our own
    progress bar); `extra`: the stage's own settings, set last."""
    import torch

    train = cfg.train
    accepted = _init_fields(args_class)
    seq2seq = "predict_with_generate" in accepted
    kwargs = {f.name: getattr(train, f.name) for f in dataclasses.fields(train)
              if f.name not in _OWN_FIELDS and (seq2seq or f.name not in _SEQ2SEQ_FIELDS)}
    for key, value in train.hf_passthrough.items():
        if not seq2seq and key not in accepted:
            # Validated against Seq2SeqTrainingArguments' keys; the stage's arguments class lacks this one.
            raise UserError(f"'{key}' is not a setting of stage {cfg.finetune.stage}'s trainer "
                            f"({getattr(args_class, 'PICKLED_AS', args_class).__name__}); remove it.")
        kwargs[key] = value
    if train.warmup_ratio and not train.warmup_steps:
        kwargs["warmup_steps"] = train.warmup_ratio  # transformers 5 reads a float below 1 as a ratio
    kwargs["resume_from_checkpoint"] = resume_from
    kwargs["bf16"] = bool(kwargs.get("bf16"))  # unset means off where `train.run.choose_precision` did not decide
    kwargs["remove_unused_columns"] = False  # our collators need every processed column
    kwargs.setdefault("include_num_input_tokens_seen", "non_padding")
    kwargs["disable_tqdm"] = True  # the console progress bar is ours
    kwargs.setdefault("log_level", "warning")
    if cfg.finetune.finetuning_type in ("lora", "oft"):
        kwargs.setdefault("label_names", ["labels"])
    if cfg.finetune.pure_bf16:
        kwargs["bf16"] = False  # the weights are already bf16: no autocast on top
    if not torch.cuda.is_available():
        if train.fp16:
            # CPU autocast in fp16 is unsupported; say so instead of failing deep inside.
            raise UserError("fp16 needs a CUDA GPU; this machine has none. Remove fp16 (or use bf16).")
        if not hardware.other_accelerator():
            # A CPU-only machine: transformers refuses bf16 (every LLaMA-Factory example sets it) unless told so.
            kwargs["use_cpu"] = True
        kwargs.setdefault("dataloader_pin_memory", False)
    if "ddp_find_unused_parameters" not in kwargs and cfg.finetune.finetuning_type in ("lora", "oft"):
        kwargs["ddp_find_unused_parameters"] = False
    from lmforge.train import optimizers

    kwargs.update(optimizers.training_args_overrides(cfg))  # GaLore/APOLLO are transformers' own optim choices
    kwargs.update(extra or {})
    if "activation_checkpointing" in accepted:
        # transformers 5 renamed the flag; passing the old name only adds a deprecation warning.
        kwargs["activation_checkpointing"] = kwargs.pop("gradient_checkpointing") or kwargs.get(
            "activation_checkpointing", False)
    _check_reporters(kwargs.get("report_to"))
    from lmforge.train import engines

    engines.check_settings(kwargs.get("deepspeed"), kwargs.get("fsdp"))
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        # Config validation lets through only transformers' own keys, and _OWN_FIELDS removes ours:
        # anything else here is a bug in lmforge, not in the user's config.
        raise RuntimeError(f"lmforge bug: {', '.join(map(repr, unknown))} reached {args_class.__name__}, which "
                           "has no such field; add it to _OWN_FIELDS in lmforge/train/args.py or stop passing it.")
    try:
        return args_class(**kwargs)
    except (ValueError, TypeError) as err:
        raise UserError(f"Invalid training settings: {str(err).splitlines()[0]}") from None


def _init_fields(args_class: type) -> frozenset[str]:
    if issubclass(args_class, Seq2SeqTrainingArguments):
        from lmforge.config.train import trainer_keys

        return trainer_keys()
    return frozenset(f.name for f in dataclasses.fields(args_class) if f.init)


_REPORTER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "swanlab": "swanlab",
                      "trackio": "trackio", "comet_ml": "comet_ml", "clearml": "clearml"}


def _check_reporters(report_to) -> None:
    """Fail before training when a logger in report_to is not installed (instead of deep in the Trainer)."""
    import importlib.util

    for name in report_to or []:
        if name in ("none", "all"):
            continue
        package = _REPORTER_PACKAGES.get(name)
        if package is None:
            continue  # transformers validates the remaining names itself
        if importlib.util.find_spec(package) is None:
            raise UserError(f"report_to: {name} needs the '{package}' package: pip install {package}")
