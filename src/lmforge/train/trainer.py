"""The Trainer used by every supervised stage: transformers' Seq2SeqTrainer with atomic checkpoints.

`ForgeTrainerMixin` holds what every lmforge trainer shares (atomic checkpoints, LoRA+, the resume
guard), so a trainer built on another library's Trainer subclass (trl's GRPOTrainer) behaves the same.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from transformers import Seq2SeqTrainer
from transformers.trainer_utils import rotate_checkpoints

from lmforge.utils.atomic import STAGING_PREFIX, fsync_tree, staging_dir


class ForgeTrainerMixin:
    """Put before a transformers Trainer class: checkpoints that appear all at once, LoRA+, no step past the end.

    Each checkpoint is written into a hidden staging folder and renamed to `checkpoint-N` when
    complete, so a run killed while saving leaves the previous checkpoints and no partial one.
    """

    def __init__(self, *args, finetuning_args=None, **kwargs):
        self.finetuning_args = finetuning_args
        self._sharded_on_cpu = False
        super().__init__(*args, **kwargs)
        if self._sharded_on_cpu:
            from lmforge.train.fsdp import ReportSharding

            self.add_callback(ReportSharding())

    def create_accelerator_and_postprocess(self):
        super().create_accelerator_and_postprocess()
        from lmforge.train.fsdp import shard_on_cpu

        # Before the Trainer decides where the model goes and how accelerate wraps it.
        self._sharded_on_cpu = shard_on_cpu(self)

    def create_optimizer(self, model=None):
        from lmforge.train import optimizers

        ratio = self.finetuning_args.loraplus_lr_ratio if self.finetuning_args is not None else None
        if self.optimizer is None and ratio:
            self.optimizer = _loraplus_optimizer(self, self.model if model is None else model, ratio)
        elif self.optimizer is None and optimizers.builds_own(self.finetuning_args):  # BAdam, Adam-mini, Muon
            self.optimizer = optimizers.create(self, self.model if model is None else model)
        optimizer = super().create_optimizer(model)
        _multi_tensor_on_cpu(optimizer)
        return optimizer

    def _run_epoch(self, *args, **kwargs):
        # transformers 5 trains a batch before it checks max_steps: resumed from a checkpoint taken at
        # the last step (a run killed while writing its final weights), it would train one step past the end.
        if self.state.max_steps > 0 and self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def _save_checkpoint(self, model, trial):
        final_dir = Path(self.args.output_dir)
        name = f"checkpoint-{self.state.global_step}"
        # Every rank writes into the staging folder (its RNG state, its optimizer shard); the main process
        # makes it and, once all are done, renames it.
        staging = staging_dir(final_dir, name) if self.args.should_save else final_dir / f"{STAGING_PREFIX}{name}"
        self.accelerator.wait_for_everyone()
        real_output_dir = self.args.output_dir
        self.args.output_dir = str(staging)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.output_dir = real_output_dir
        self.accelerator.wait_for_everyone()
        written = staging / name
        if self.args.should_save and getattr(self, "processor_source", None):
            from lmforge.model.vl_processor import copy_processor_files

            copy_processor_files(self.processor_source, written)
        best = self.state.best_model_checkpoint
        if best and Path(best).parent == staging:
            # The Trainer recorded the staging path as the best checkpoint; point it at the final place.
            self.state.best_model_checkpoint = str(final_dir / Path(best).name)
            if self.args.should_save:
                self.state.save_to_json(str(written / "trainer_state.json"))
        if self.args.should_save:
            fsync_tree(written)
            target = final_dir / name
            if target.exists():  # a checkpoint of the same step from an earlier attempt
                import shutil

                shutil.rmtree(target)
            os.replace(written, target)
            staging.rmdir()
            rotate_checkpoints(
                real_output_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
            )


class ForgeTrainer(ForgeTrainerMixin, Seq2SeqTrainer):
    """Seq2SeqTrainer with lmforge's checkpoints, LoRA+, `disable_shuffling` and packed-batch token counts."""

    _supervised_loss_ok: bool | None = None
    _non_embedding_parameters: int | None = None
    _trainable: list | None = None
    ref_model = None  # ASFT's frozen reference for freeze and full training (LoRA switches its adapters off)

    def _run_epoch(self, *args, **kwargs):
        model = kwargs.get("model", args[0] if args else None)
        if not self._cheap_walks_possible(model):
            return super()._run_epoch(*args, **kwargs)
        with _cheap_module_walks(model, self._trainable_parameters(model)):
            return super()._run_epoch(*args, **kwargs)

    def _clip_grad_norm(self, model):
        # The Trainer hands accelerate `model.parameters()`, a walk of every module on every step; the norm
        # only sees parameters with a gradient, which are the trainable ones, in the same order.
        if self._cheap_walks_possible(model) and not self._has_mixed_mesh_grads(model):
            return self.accelerator.clip_grad_norm_(self._trainable_parameters(model), self.args.max_grad_norm)
        return super()._clip_grad_norm(model)

    def _cheap_walks_possible(self, model) -> bool:
        """One process (no DDP wrapper), no engine that owns the gradients, no optimizer that changes which
        parameters are trainable (BAdam switches blocks)."""
        if model is not self.model or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return False
        return not (self.finetuning_args is not None and getattr(self.finetuning_args, "use_badam", False))

    def _trainable_parameters(self, model) -> list:
        if self._trainable is None:
            self._trainable = [p for p in model.parameters() if p.requires_grad]
        return self._trainable

    def _get_train_sampler(self, train_dataset=None):
        if self.finetuning_args is not None and self.finetuning_args.disable_shuffling:
            import torch

            return torch.utils.data.SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)
        return super()._get_train_sampler(train_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        from lmforge.train.loss import supervised_loss, variant_of

        variant = variant_of(self.finetuning_args) if model.training and "labels" in inputs else None
        if variant is None and (return_outputs or not self._trained_logits_only(model, inputs)):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if not self.model_accepts_loss_kwargs:
            num_items_in_batch = None  # the loss is then a per-batch mean, as the model's own would be
        # A loss variant runs on the model's full logits where the hidden-state path is not exact.
        full = variant is not None and not self._trained_logits_only(model, inputs)
        loss = supervised_loss(model, inputs, num_items_in_batch, variant, ref=self.ref_model, full_logits=full)
        if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            # The Trainer's own scaling: num_items_in_batch counts every process's tokens.
            loss = loss * (self.accelerator.num_processes if self.args.n_gpu <= 1 else self.args.n_gpu)
        return loss

    def _trained_logits_only(self, model, inputs) -> bool:
        return (self._supervised_loss_on() and model.training and "labels" in inputs
                and self.label_smoother is None and self.compute_loss_func is None)

    def _supervised_loss_on(self) -> bool:
        if self._supervised_loss_ok is None:  # decided once: the model and the parallelism do not change
            self._supervised_loss_ok = self._supervised_loss_possible()
        return self._supervised_loss_ok

    def _supervised_loss_possible(self) -> bool:
        """Whether the supervised-positions loss is on and exact for this run's model and parallelism."""
        from lmforge.train.loss import applies

        if self.finetuning_args is None or not self.finetuning_args.trained_logits_only:
            return False
        # FSDP and ZeRO-3 gather the output head's weights inside the model's forward only.
        if self.is_fsdp_enabled or (self.is_deepspeed_enabled and _zero_stage(self) == 3):
            return False
        return applies(self.model)

    def floating_point_ops(self, inputs) -> int:
        # The Trainer's count walks every parameter on every step (a few ms on a small model); the number of
        # non-embedding parameters does not change during training, so it is counted once.
        main_input = getattr(self.model, "main_input_name", "input_ids")
        if main_input not in inputs or not hasattr(self.model, "num_parameters"):
            return 0
        if self._non_embedding_parameters is None:
            self._non_embedding_parameters = self.model.num_parameters(exclude_embeddings=True)
        return 6 * inputs[main_input].numel() * self._non_embedding_parameters

    def _track_num_input_tokens(self, inputs):
        # The Trainer sums attention_mask, which is wrong for packed batches: neat packing replaces it
        # with an additive 4D float mask, and plain packing marks each block's padding tail with 1.
        if self.args.include_num_input_tokens_seen != "non_padding":
            return super()._track_num_input_tokens(inputs)
        import torch

        mask = inputs.get("attention_mask")
        positions = inputs.get("position_ids")
        if mask is not None and mask.dim() == 4:
            real = (mask[:, 0].diagonal(dim1=-2, dim2=-1) == 0).sum()  # a real token attends to itself
        elif positions is not None:
            real = positions.numel() - (positions.flip(-1).cumsum(-1) == 0).sum()  # trailing zero positions pad
        elif mask is not None:
            real = mask.sum()
        else:
            return super()._track_num_input_tokens(inputs)
        real = torch.as_tensor(real, device=self.args.device, dtype=torch.int64)
        self.state.num_input_tokens_seen += self.accelerator.gather(real).sum().item()


def _multi_tensor_on_cpu(optimizer) -> None:
    """torch's Adam and AdamW update CPU tensors one at a time in Python unless told `foreach`; the multi-tensor
    update gives the same values (the same operations, batched) and saves a loop over a LoRA model's hundreds
    of small tensors on every step. On GPUs torch already chooses it."""
    import torch

    if type(optimizer) not in (torch.optim.AdamW, torch.optim.Adam):
        return
    for group in optimizer.param_groups:
        if group.get("foreach") is None and not group.get("fused") and all(p.device.type == "cpu" for p in group["params"]):
            group["foreach"] = True


@contextlib.contextmanager
def _cheap_module_walks(model, trainable: list):
    """`model.train()` and `model.zero_grad()` without walking every module and parameter on every step.

    The Trainer calls both once per step; on a LoRA model with hundreds of modules the two walks cost a few
    milliseconds, a tenth of a small model's step. `train()` walks once, then is skipped while every module is
    known to be in training mode (evaluation switches them through `eval()`, which walks and is remembered);
    `zero_grad()` clears the gradients of the trainable parameters, the only ones that get any.
    """
    all_training = False  # known only after a real walk: a loaded model's layers start in eval mode under a root
    # (the PEFT wrapper) that is in training mode

    def train(mode: bool = True):
        nonlocal all_training
        if mode and all_training and model.training:
            return model
        type(model).train(model, mode)
        all_training = mode
        return model

    def zero_grad(set_to_none: bool = True):
        for param in trainable:
            if param.grad is None:
                continue
            if set_to_none:
                param.grad = None
            else:
                param.grad.detach_()
                param.grad.zero_()

    model.__dict__["train"], model.__dict__["zero_grad"] = train, zero_grad  # shadow the methods, this run only
    try:
        yield
    finally:
        model.__dict__.pop("train", None)
        model.__dict__.pop("zero_grad", None)


def _zero_stage(trainer) -> int | None:
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return getattr(plugin, "zero_stage", None) if plugin is not None else None


def _loraplus_optimizer(trainer, model, ratio: float):
    """LoRA+: the B matrices learn `ratio` times faster than the A matrices (embedding adapters slower)."""
    from transformers import Trainer

    args = trainer.args
    lr = args.learning_rate
    embedding_lr = trainer.finetuning_args.loraplus_lr_embedding
    decay = set(trainer.get_decay_parameter_names(model))
    groups: dict[tuple[float, float], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if "lora_embedding_B" in name or "lora_embedding_A" in name:
            group_lr = embedding_lr
        elif "lora_B" in name or param.ndim == 1:
            group_lr = lr * ratio if "lora_B" in name else lr
        else:
            group_lr = lr
        weight_decay = args.weight_decay if name in decay else 0.0
        groups.setdefault((group_lr, weight_decay), []).append(param)
    optim_cls, optim_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    param_groups = [{"params": ps, "lr": g_lr, "weight_decay": wd} for (g_lr, wd), ps in groups.items()]
    return optim_cls(param_groups, **optim_kwargs)
