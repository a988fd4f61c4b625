"""What to train: the stage, the fine-tuning type and its LoRA / freeze settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmforge.config.extras import ExtrasArguments
from lmforge.config.readers import DATASET, MODEL, SERVING, TRAINING

# Every LLaMA-Factory stage name (for the did-you-mean of a misspelt stage), and the ones lmforge runs.
STAGES = ("pt", "sft", "rm", "ppo", "dpo", "kto", "grpo")
IMPLEMENTED_STAGES = ("pt", "sft", "rm", "ppo", "dpo", "kto", "grpo")
PREF_LOSSES = ("sigmoid", "hinge", "ipo", "kto_pair", "orpo", "simpo")  # the dpo stage's losses
FINETUNING_TYPES = ("lora", "oft", "freeze", "full")
REWARD_MODEL_TYPES = ("lora", "full", "api")  # what `reward_model` is, for stage ppo
GRPO_LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")  # trl's GRPOConfig.loss_type
GRPO_SCALE_REWARDS = ("group", "batch", "none")  # trl's GRPOConfig.scale_rewards


@dataclass
class FinetuningArguments(ExtrasArguments):
    """Training stage, fine-tuning method and their hyper-parameters (LLaMA-Factory's names)."""

    stage: str = field(
        default="sft",
        metadata={"help": "Training stage: pt, sft, rm (reward model), ppo, dpo (pref_loss: sigmoid, hinge, ipo, kto_pair, orpo, simpo), kto or grpo (rewards: reward_funcs, reward_model).", "read_by": (DATASET, TRAINING, SERVING)},
    )
    finetuning_type: str = field(
        default="lora", metadata={"help": "lora, oft, freeze or full.", "read_by": (MODEL, TRAINING)}
    )
    freeze_trainable_layers: int = field(
        default=2,
        metadata={
            "help": "Freeze: train the last N layers (a negative N trains the first |N|).",
            "read_by": (TRAINING,),
        },
    )
    freeze_trainable_modules: list[str] = field(
        default_factory=lambda: ["all"],
        metadata={"help": "Freeze: module names to train in those layers, or all.", "read_by": (TRAINING,)},
    )
    freeze_extra_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Freeze: extra non-layer modules to train (e.g. embed_tokens).", "read_by": (TRAINING,)},
    )
    freeze_vision_tower: bool = field(
        default=True,
        metadata={"help": "Multimodal models: keep the vision tower frozen (no LoRA on it, no full training).",
                  "read_by": (TRAINING,)},
    )
    freeze_multi_modal_projector: bool = field(
        default=True,
        metadata={"help": "Multimodal models: keep the projector (vision-to-text merger) frozen.", "read_by": (TRAINING,)},
    )
    freeze_language_model: bool = field(
        default=False,
        metadata={"help": "Multimodal models: keep the language model frozen.", "read_by": (TRAINING,)},
    )
    additional_target: list[str] | None = field(
        default=None,
        metadata={"help": "LoRA: modules trained fully and saved with the adapter.", "read_by": (TRAINING,)},
    )
    lora_alpha: int | None = field(
        default=None, metadata={"help": "LoRA scale numerator (default: 2 x lora_rank).", "read_by": (TRAINING,)}
    )
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout.", "read_by": (TRAINING,)})
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank.", "read_by": (TRAINING,)})
    lora_target: list[str] = field(
        default_factory=lambda: ["all"],
        metadata={"help": "LoRA target modules, comma-separated, or all.", "read_by": (TRAINING,)},
    )
    loraplus_lr_ratio: float | None = field(
        default=None, metadata={"help": "LoRA+: learning-rate ratio of B to A.", "read_by": (TRAINING,)}
    )
    loraplus_lr_embedding: float = field(
        default=1e-6, metadata={"help": "LoRA+: learning rate of embedding adapters.", "read_by": (TRAINING,)}
    )
    use_rslora: bool = field(default=False, metadata={"help": "Rank-stabilised LoRA scaling.", "read_by": (TRAINING,)})
    use_dora: bool = field(default=False, metadata={"help": "Weight-decomposed LoRA (DoRA).", "read_by": (TRAINING,)})
    create_new_adapter: bool = field(
        default=False, metadata={"help": "Start a new adapter on top of loaded ones.", "read_by": (TRAINING,)}
    )
    pure_bf16: bool = field(
        default=False,
        metadata={"help": "Train in pure bfloat16 without float32 master weights.", "read_by": (TRAINING,)},
    )
    plot_loss: bool = field(
        default=False,
        metadata={"help": "Save training_loss.png (and eval loss) after training.", "read_by": (TRAINING,)},
    )
    compute_accuracy: bool = field(
        default=False, metadata={"help": "Report token accuracy in evaluation.", "read_by": (TRAINING,)}
    )
    disable_shuffling: bool = field(
        default=False, metadata={"help": "Keep the training data in order.", "read_by": (TRAINING,)}
    )
    trained_logits_only: bool = field(
        default=True,
        metadata={
            "help": "Compute the output head and the loss only at trained (labelled) positions, in chunks: the same "
            "loss with less memory and time (sft and pt on Llama, Mistral, Qwen2/3, Phi-3, Gemma; single process "
            "or DDP). false: logits for every position, as transformers does.",
            "read_by": (TRAINING,),
        },
    )
    early_stopping_steps: int | None = field(
        default=None, metadata={"help": "Stop after N evaluations without progress.", "read_by": (TRAINING,)}
    )
    include_effective_tokens_per_second: bool = field(
        default=False, metadata={"help": "Report effective tokens/s.", "read_by": ()}
    )
    # Preference stages (dpo, kto).
    pref_beta: float = field(default=0.1, metadata={"help": "Preference losses: beta.", "read_by": (TRAINING,)})
    pref_ftx: float = field(default=0.0, metadata={"help": "Preference losses: SFT loss weight.", "read_by": (TRAINING,)})
    pref_loss: str = field(
        default="sigmoid",
        metadata={"help": "Preference loss: sigmoid, hinge, ipo, kto_pair, orpo, simpo.", "read_by": (TRAINING,)},
    )
    dpo_label_smoothing: float = field(default=0.0, metadata={"help": "DPO label smoothing.", "read_by": (TRAINING,)})
    kto_chosen_weight: float = field(default=1.0, metadata={"help": "KTO: weight of desirable samples.", "read_by": (TRAINING,)})
    kto_rejected_weight: float = field(
        default=1.0, metadata={"help": "KTO: weight of undesirable samples.", "read_by": (TRAINING,)}
    )
    simpo_gamma: float = field(default=0.5, metadata={"help": "SimPO: target reward margin.", "read_by": (TRAINING,)})
    ref_model: str | None = field(default=None, metadata={"help": "Reference model for DPO/KTO (default: the policy without its LoRA adapters, or a copy of the base).", "read_by": (TRAINING,)})
    ref_model_adapters: str | None = field(
        default=None, metadata={"help": "Adapters of the reference model (comma-separated), merged into it.", "read_by": (TRAINING,)}
    )
    ref_model_quantization_bit: int | None = field(
        default=None, metadata={"help": "Load the reference model quantized: 4 or 8 (bitsandbytes).", "read_by": (TRAINING,)}
    )
    # PPO (stage ppo) and its reward model (trained with stage rm).
    reward_model: str | None = field(default=None, metadata={"help": "PPO, GRPO: the reward model: an rm run folder (lora), a full rm folder (full) or a URL (api); GRPO also takes a one-label sequence classifier folder.", "read_by": (TRAINING,)})
    reward_model_adapters: str | None = field(
        default=None, metadata={"help": "PPO, reward_model_type full: rm adapters (comma-separated) merged into reward_model; the last holds the value head.", "read_by": (TRAINING,)}
    )
    reward_model_quantization_bit: int | None = field(
        default=None, metadata={"help": "PPO, reward_model_type full: load the reward model quantized: 4 or 8 (bitsandbytes).", "read_by": (TRAINING,)}
    )
    reward_model_type: str = field(
        default="lora", metadata={"help": "PPO: what reward_model is: lora (an rm LoRA run on the policy's base model), full or api.", "read_by": (TRAINING,)}
    )
    ppo_buffer_size: int = field(
        default=1, metadata={"help": "PPO: rollout batches of per_device_train_batch_size x gradient_accumulation_steps prompts per PPO step.", "read_by": (TRAINING,)}
    )
    ppo_epochs: int = field(default=4, metadata={"help": "PPO: optimisation passes over each step's rollouts.", "read_by": (TRAINING,)})
    ppo_score_norm: bool = field(default=False, metadata={"help": "PPO: normalise rewards with their running mean and std.", "read_by": (TRAINING,)})
    ppo_target: float = field(default=6.0, metadata={"help": "PPO: target KL of the adaptive KL controller.", "read_by": (TRAINING,)})
    ppo_whiten_rewards: bool = field(default=False, metadata={"help": "PPO: whiten the per-token rewards before GAE.", "read_by": (TRAINING,)})
    # GRPO (stage grpo, lmforge's own): trl's GRPOTrainer, its settings under trl's GRPOConfig names. Sampling
    # reads the generation settings (temperature, top_p, top_k, repetition_penalty), as LLaMA-Factory's PPO does.
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={"help": "GRPO: reward functions: exact_match, format (or format:<regex>), length_penalty, or "
                          "path/to/file.py:function; comma-separated. See docs/stages.md.", "read_by": (TRAINING,)},
    )
    reward_weights: list[float] | None = field(
        default=None,
        metadata={"help": "GRPO: one weight per reward, in order: reward_funcs, then reward_model (default: all 1).",
                  "read_by": (TRAINING,)},
    )
    reward_format_regex: str | None = field(
        default=None,
        metadata={"help": "GRPO: the regular expression of the `format` reward (the whole completion must match).",
                  "read_by": (TRAINING,)},
    )
    num_generations: int = field(
        default=8, metadata={"help": "GRPO: completions sampled per prompt (a group).", "read_by": (TRAINING,)}
    )
    max_completion_length: int = field(
        default=512, metadata={"help": "GRPO: most tokens sampled per completion.", "read_by": (TRAINING,)}
    )
    beta: float = field(
        default=0.0,
        metadata={"help": "GRPO: KL coefficient against the reference model (0: no reference).", "read_by": (TRAINING,)},
    )
    loss_type: str = field(
        default="dapo",
        metadata={"help": "GRPO: loss: grpo, dr_grpo, dapo, bnpo, cispo, sapo, luspo or vespo.", "read_by": (TRAINING,)},
    )
    epsilon: float = field(default=0.2, metadata={"help": "GRPO: clipping range of the ratio.", "read_by": (TRAINING,)})
    num_iterations: int = field(
        default=1, metadata={"help": "GRPO: optimisation passes over each batch of completions.", "read_by": (TRAINING,)}
    )
    scale_rewards: str = field(
        default="group",
        metadata={"help": "GRPO: divide advantages by the reward std of the group, the batch, or none.",
                  "read_by": (TRAINING,)},
    )
    mask_truncated_completions: bool = field(
        default=False,
        metadata={"help": "GRPO: leave completions cut at max_completion_length out of the loss.", "read_by": (TRAINING,)},
    )
