"""Steps shared by the training stages: load the trainable model, run the Trainer, write the outputs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.train.outputs import write_run_file
from lmforge.utils.atomic import STAGING_PREFIX, publish_files, staging_dir
from lmforge.utils.logging import get_logger

if TYPE_CHECKING:
    from lmforge.config import RunConfig

logger = get_logger(__name__)


def compute_dtype(cfg: RunConfig):
    """The dtype the base weights are loaded in for training."""
    import torch

    if cfg.train.bf16 or cfg.finetune.pure_bf16:
        return torch.bfloat16
    if cfg.train.fp16:
        return torch.float16
    return torch.float32


def pad_multiple(cfg: RunConfig) -> int:
    """The multiple a training batch's length is padded up to: 8, or 16 for bf16/fp16 compute on a CPU.

    On a CPU, oneDNN builds a kernel set for each new matrix shape and keeps it in two caches (its own and
    PyTorch's, up to 1024 entries each): about 0.6 MiB and 1.75 ms per product, and a LoRA'd decoder has about
    28 distinct products per sequence length. Padding to 8 makes every eighth length a new shape; 16 builds and
    keeps half as many. Measured (peak RSS, 2 CPU cores): the 4-layer model's 224-step bf16 sft 781 MiB with 8,
    684 with 16, 628 with 32, at the same speed; its dpo, whose rows are all under 64 tokens, 5.3 s with 8 and
    16 but 5.5 s with 32 (more padding than kernels saved). The extra positions are padding, masked as any
    other: the loss is the same. GPU kernels have no such cost, so 8 stays there (what tensor cores want).
    """
    import torch

    from lmforge.utils import hardware

    on_cpu = cfg.train.use_cpu or hardware.cpu_only()
    return 16 if on_cpu and compute_dtype(cfg) in (torch.bfloat16, torch.float16) else 8


def load_trainable_model(cfg: RunConfig, tokenizer, template):
    """The model with its adapter / freeze mask attached, ready for the Trainer."""
    import torch

    from lmforge.model.adapters import init_adapter
    from lmforge.model.loader import load_model
    from lmforge.utils import hardware

    trainable = cfg.train.do_train
    dtype = compute_dtype(cfg)
    if trainable and dtype == torch.bfloat16 and hardware.cpu_only():
        from lmforge.model.attention import use_float32_sdpa_for_short_cpu_bf16

        use_float32_sdpa_for_short_cpu_bf16()  # short sequences' attention backward is faster in float32 there
    model = load_model(cfg.model, tokenizer, dtype, trainable=trainable, max_length=cfg.data.cutoff_len)
    if trainable and use_checkpointing(cfg, model):
        # Recompute activations in the backward pass: much less memory for about a third more compute.
        options = {"use_reentrant": cfg.model.use_reentrant_gc}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 renamed it
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
        model.enable_input_require_grads()
    stop_ids = template.stop_token_ids(tokenizer)
    model.generation_config.eos_token_id = stop_ids if len(stop_ids) > 1 else stop_ids[0]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if trainable and cfg.model.upcast_layernorm:
        import torch

        for name, param in model.named_parameters():
            if param.ndim == 1 and "norm" in name:
                param.data = param.data.to(torch.float32)
    model = init_adapter(model, cfg.model, cfg.finetune, trainable=trainable)
    if trainable and cfg.finetune.finetuning_type == "lora" and not cfg.train.deepspeed:
        from lmforge.model.adapters import scale_lora_weights_not_outputs

        scale_lora_weights_not_outputs(model)
    if trainable:
        from lmforge.model.mlp import keep_gate_and_up_only
        from lmforge.model.norm import keep_narrow_norm_inputs

        # Less activation memory for the same values: two intermediate-size tensors per token and layer fewer,
        # and the norms' bf16 inputs kept instead of their float32 copies (their outputs, and attention's, as
        # recipes in the LoRA adapters that keep them: `lmforge.model.adapters`).
        keep_gate_and_up_only(model)
        keep_narrow_norm_inputs(model)
    from lmforge.train import compile as regional

    if trainable and regional.wanted(cfg.train):
        regional.compile_layers(model, cfg.train)  # after the adapters, which the compiled layers must contain
    if cfg.model.print_param_status:
        for name, param in model.named_parameters():
            print(f"name: {name}, dtype: {param.dtype}, device: {param.device}, trainable: {param.requires_grad}")
    return model


# Share of the memory left after the model (and its trainable states) that the activations may take before
# checkpointing is switched on by itself: the rest is for the batch, the loss, the allocator's slack.
ACTIVATION_SHARE = 0.5
# Sequences one sample puts through the policy's forward pass with gradients: a pair's chosen and rejected
# answers (dpo, rm), a kto row and its mismatched KL row. PPO and GRPO (rollouts, value model) keep
# checkpointing on unless told otherwise.
SEQUENCES_PER_SAMPLE = {"sft": 1, "pt": 1, "dpo": 2, "rm": 2, "kto": 2}


def use_checkpointing(cfg: RunConfig, model) -> bool:
    """Whether to recompute activations: the user's `disable_gradient_checkpointing` when set; otherwise (sft,
    pt, dpo, kto, rm) only when a full batch's activations would not fit comfortably in the memory left."""
    setting = cfg.model.disable_gradient_checkpointing
    if setting is not None:
        return not setting
    if cfg.finetune.stage not in SEQUENCES_PER_SAMPLE:
        return True  # rollouts and value models: LLaMA-Factory's default, on
    import os

    import torch

    from lmforge.model.memory import activation_bytes, free_memory, gib

    device = "cuda" if torch.cuda.is_available() else "cpu"
    free = free_memory(device)
    if free is None:
        return True
    if device == "cpu":  # the processes of one machine share its memory
        free //= max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    params = list(model.parameters())
    dtype_bytes = params[0].element_size() if params else 4
    weights = sum(p.numel() * p.element_size() for p in params)
    if device != "cpu":  # the weights are still in host memory; on the GPU they will take their share
        free -= weights
    if _separate_reference(cfg):  # loaded after the policy: a second copy of the weights
        free -= weights
    if cfg.finetune.finetuning_type not in ("lora", "oft"):
        # Gradients and Adam's two moments of every trainable weight (float32), not yet allocated.
        trainable = sum(p.numel() for p in params if p.requires_grad)
        free -= trainable * 12
    sequences = cfg.train.per_device_train_batch_size * SEQUENCES_PER_SAMPLE[cfg.finetune.stage]
    tokens = sequences * cfg.data.cutoff_len
    need = activation_bytes(model.config, tokens, dtype_bytes, eager_attention=cfg.model.flash_attn == "disabled",
                            seq_len=cfg.data.cutoff_len)
    on = need > ACTIVATION_SHARE * max(free, 0)
    logger.info(
        f"Gradient checkpointing {'on' if on else 'off'}: a {sequences} x "
        f"{cfg.data.cutoff_len}-token batch keeps about {gib(need)} of activations, with {gib(max(free, 0))} free "
        f"on the {device} (set disable_gradient_checkpointing to choose).")
    return on


def _separate_reference(cfg: RunConfig) -> bool:
    """Whether a preference stage loads a reference model of its own (LoRA's is the policy, adapters off)."""
    from lmforge.train.pref_losses import NO_REFERENCE

    ft = cfg.finetune
    if ft.stage not in ("dpo", "kto") or (ft.stage == "dpo" and ft.pref_loss in NO_REFERENCE):
        return False
    return bool(ft.ref_model) or ft.finetuning_type not in ("lora", "oft")


def training_callbacks(cfg: RunConfig, resume_from: str | None, extra=()) -> list:
    """The log/progress callback, early stopping when asked, and the caller's own callbacks."""
    from lmforge.train.callbacks import LogCallback
    from lmforge.train.stop import StopOnSignal

    callbacks = [LogCallback(cfg.train.output_dir, resuming=resume_from is not None), StopOnSignal()]
    if cfg.finetune.pissa_init and cfg.finetune.pissa_convert:
        from lmforge.train.pissa import SavePissaInit

        callbacks.append(SavePissaInit(cfg.train.output_dir))
    if cfg.finetune.early_stopping_steps:
        from transformers import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.finetune.early_stopping_steps))
    return [*callbacks, *extra]


def build_trainer(trainer_class, cfg: RunConfig, resume_from: str | None, callbacks=(), *, dataset=None, args=None,
                  **kwargs):
    """`trainer_class` with what every stage gives it: the training arguments (`args`, else the stage's default),
    lmforge's callbacks, the finetuning settings and `dataset`'s train and eval splits; `kwargs` are the stage's."""
    from transformers import PrinterCallback

    from lmforge.train.args import build_training_args

    if dataset is not None:
        kwargs.update(train_dataset=dataset.train_dataset, eval_dataset=dataset.eval_dataset)
    trainer = trainer_class(args=args or build_training_args(cfg, resume_from),
                            callbacks=training_callbacks(cfg, resume_from, callbacks), finetuning_args=cfg.finetune,
                            **kwargs)
    trainer.remove_callback(PrinterCallback)  # LogCallback prints progress; no raw dicts on the console
    return trainer


def save_final(trainer, tokenizer, output_dir: Path) -> list[str]:
    """Write the final weights and tokenizer next to each other, all at once (staging + rename).

    Every process calls it (a sharded model is gathered by save_model); the main process writes."""
    main = trainer.is_world_process_zero()
    staging = staging_dir(output_dir, "final") if main else output_dir / f"{STAGING_PREFIX}final"
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staging))
    published = []
    if main:
        ft = trainer.finetuning_args
        if ft is not None and ft.pissa_init and ft.pissa_convert:
            from lmforge.train.pissa import save_converted

            save_converted(trainer.accelerator.unwrap_model(trainer.model), staging, output_dir)
        tokenizer.save_pretrained(str(staging))
        if getattr(trainer, "processor_source", None):  # a vision-language model: its processor configs too
            from lmforge.model.vl_processor import copy_processor_files

            copy_processor_files(trainer.processor_source, staging)
        published = publish_files(staging, output_dir)
    trainer.accelerator.wait_for_everyone()
    return published


def finish(cfg: RunConfig, trainer, tokenizer, template, dataset_module, resume_from: str | None,
           predict=None) -> dict:
    """Train and/or evaluate, then write weights, metrics, state, plots and the run file; return the metrics.

    `predict`: with do_predict, a function that writes the stage's predictions and returns their metrics
    (before the run file, which marks the run finished).
    """
    out = Path(cfg.train.output_dir)
    all_metrics: dict = {}
    if cfg.train.do_train:
        result = trainer.train(resume_from_checkpoint=resume_from)
        for callback in trainer.callback_handler.callbacks:
            if hasattr(callback, "check"):  # StopOnSignal: stopped by SIGTERM, with a checkpoint and no final save
                callback.check(str(out), trainer.state.global_step, trainer.state.max_steps)
        save_final(trainer, tokenizer, out)
        metrics = dict(result.metrics)
        tokens = getattr(trainer.state, "num_input_tokens_seen", 0)
        if tokens and metrics.get("train_runtime"):
            metrics["train_tokens_per_second"] = round(tokens / metrics["train_runtime"], 2)
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
        all_metrics.update(metrics)
        if cfg.finetune.plot_loss and trainer.is_world_process_zero():
            from lmforge.train.plotting import plot_keys, plot_losses

            for path in plot_losses(trainer.state.log_history, out, plot_keys(cfg.finetune.stage)):
                logger.info(f"Loss curve written to {path}")
    if cfg.train.do_eval and dataset_module.eval_dataset is not None:
        metrics = trainer.evaluate(metric_key_prefix="eval")
        # grpo's loss is a policy-gradient surrogate and rm's a pairwise loss, not likelihoods: no perplexity.
        if "eval_loss" in metrics and cfg.finetune.stage not in ("grpo", "rm"):
            import math

            try:
                metrics["eval_perplexity"] = math.exp(metrics["eval_loss"])
            except OverflowError:
                metrics["eval_perplexity"] = float("inf")
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        all_metrics.update(metrics)
    if predict is not None and cfg.train.do_predict:
        all_metrics.update(predict())
    if cfg.train.do_train and trainer.is_world_process_zero():
        write_run_file(cfg, out, template.recorded_name)
    return all_metrics
