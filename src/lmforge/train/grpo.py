"""GRPO (`stage: grpo`): rewards -> tokenizer -> template -> prompts -> model -> trl's GRPOTrainer -> outputs.

For each prompt the policy samples `num_generations` completions; each completion is scored by the
reward functions (`reward_funcs`, weighted by `reward_weights`) and/or the reward model
(`reward_model`), and the policy learns to prefer the completions that score above their group's
mean. The prompts are rendered by lmforge's template and handed to trl as token ids, so the policy
samples from exactly the format it is trained and served with (trl would otherwise re-tokenize the
prompt text or apply the tokenizer's chat template). The dataset's answer is not trained on: it is
the reference (`answer`) that reward functions may compare a completion with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trl import GRPOConfig, GRPOTrainer

from lmforge.data.pipeline import get_dataset
from lmforge.model.tokenizer import load_tokenizer_and_template
from lmforge.train.args import WithoutSecrets, build_training_args
from lmforge.train.common import build_trainer, compute_dtype, finish, load_trainable_model
from lmforge.train.rewards import build_reward_functions
from lmforge.train.trainer import ForgeTrainerMixin
from lmforge.utils.logging import get_logger

if TYPE_CHECKING:
    from lmforge.config import RunConfig

logger = get_logger(__name__)


class GRPOArgumentsWithoutSecrets(WithoutSecrets, GRPOConfig):
    """trl's GRPOConfig that never writes a token to disk (pickled as a plain GRPOConfig)."""

    PICKLED_AS = GRPOConfig


class ForgeGRPOTrainer(ForgeTrainerMixin, GRPOTrainer):
    """trl's GRPOTrainer with lmforge's atomic checkpoints and LoRA+, sampling from lmforge's prompt ids."""

    _prompt_ids: list[list[int]] = []

    def _generate_and_score_completions(self, inputs):
        # trl keeps only the prompt text on its way to `_tokenize_prompts`; remember the ids of this batch.
        self._prompt_ids = [list(row["prompt_ids"]) for row in inputs]
        return super()._generate_and_score_completions(inputs)

    def _tokenize_prompts(self, prompts: list):
        # The template's own ids: re-tokenizing the rendered text could merge tokens across the template's
        # boundaries or add a second BOS. No images, no multimodal fields.
        if len(self._prompt_ids) != len(prompts):
            raise RuntimeError("lmforge bug: the prompt ids do not match the prompts trl is generating from")
        return self._prompt_ids, None, {}

    def create_model_card(self, *args, **kwargs):
        # trl writes its card into args.output_dir at every checkpoint, which is then the checkpoint's staging
        # folder (see ForgeTrainerMixin._save_checkpoint); the run folder's README comes from the final save.
        return None


def grpo_settings(cfg: RunConfig) -> dict:
    """GRPOConfig's own settings for this run (the Trainer's come from build_training_args)."""
    ft, gen = cfg.finetune, cfg.generate
    settings = dict(
        num_generations=ft.num_generations, max_completion_length=ft.max_completion_length, beta=ft.beta,
        loss_type=ft.loss_type, epsilon=ft.epsilon, num_iterations=ft.num_iterations,
        scale_rewards=ft.scale_rewards, mask_truncated_completions=ft.mask_truncated_completions,
        reward_weights=ft.reward_weights, shuffle_dataset=not ft.disable_shuffling,
        # Sampling follows the generation settings, as in LLaMA-Factory's PPO.
        temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k, repetition_penalty=gen.repetition_penalty,
        # trl counts the prompt and completion tokens itself; the Trainer's count expects tensor batches.
        include_num_input_tokens_seen="no",
    )
    if not cfg.model.disable_gradient_checkpointing:
        # trl switches checkpointing off to generate and back on with these settings: keep lmforge's.
        settings["activation_checkpointing_kwargs"] = {"use_reentrant": cfg.model.use_reentrant_gc}
    return settings


def _prompts_for_trl(dataset):
    """The processor's columns as the trainer and the reward functions read them."""
    if dataset is None:
        return None
    if isinstance(dataset, dict):
        return {name: _prompts_for_trl(split) for name, split in dataset.items()}
    dataset = dataset.remove_columns(["attention_mask"])
    return dataset.rename_column("input_ids", "prompt_ids")


def run_grpo(cfg: RunConfig, resume_from: str | None, callbacks=()) -> dict:
    """Run grpo training and/or evaluation; return the metrics."""
    from lmforge.train.grpo_reward_model import load_reward_model

    rewards = build_reward_functions(cfg)  # user code is checked first: its errors come before any loading
    tokenizer, template = load_tokenizer_and_template(cfg.model, cfg.data, padding_side="left")
    tokenizer.chat_template = template.to_jinja(tokenizer)  # saved with every checkpoint and the result
    dataset = get_dataset(cfg, tokenizer, template, stage="grpo")
    model = load_trainable_model(cfg, tokenizer, template)
    args = build_training_args(cfg, resume_from, GRPOArgumentsWithoutSecrets, grpo_settings(cfg))
    if cfg.finetune.reward_model:
        rewards.append(load_reward_model(cfg, tokenizer, model.config, args.device, compute_dtype(cfg),
                                         template.recorded_name))
    trainer = build_trainer(
        ForgeGRPOTrainer, cfg, resume_from, callbacks, args=args, model=model, reward_funcs=rewards,
        processing_class=tokenizer, train_dataset=_prompts_for_trl(dataset.train_dataset),
        eval_dataset=_prompts_for_trl(dataset.eval_dataset))
    peft_config = getattr(trainer.model, "peft_config", {})
    if "ref" in peft_config:
        # With beta > 0 trl copies a LoRA policy's adapter as the reference. lmforge's reference for LoRA is the
        # policy with its adapter switched off (as in dpo), which trl uses when there is no such copy; without it
        # the copy is neither kept in memory nor saved next to the trained adapter.
        trainer.model.delete_adapter("ref")
    return finish(cfg, trainer, tokenizer, template, dataset, resume_from)
