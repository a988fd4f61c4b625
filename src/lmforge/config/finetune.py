"""What to train: the stage, the fine-tuning type and its LoRA / freeze settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmforge.config.readers import DATASET, MODEL, SERVING, TRAINING

# Every LLaMA-Factory stage name (for the did-you-mean of a misspelt stage), and the ones lmforge runs.
STAGES = ("pt", "sft", "rm", "ppo", "dpo", "kto")
IMPLEMENTED_STAGES = ("pt", "sft", "dpo", "kto")
PREF_LOSSES = ("sigmoid", "hinge", "ipo", "kto_pair", "orpo", "simpo")  # the dpo stage's losses
FINETUNING_TYPES = ("lora", "freeze", "full")


@dataclass
class FinetuningArguments:
    """Training stage, fine-tuning method and their hyper-parameters (LLaMA-Factory's names)."""

    stage: str = field(
        default="sft",
        metadata={"help": "Training stage: pt, sft, dpo (pref_loss: sigmoid, hinge, ipo, kto_pair, orpo, simpo) or kto.", "read_by": (DATASET, TRAINING, SERVING)},
    )
    finetuning_type: str = field(
        default="lora", metadata={"help": "lora, freeze or full.", "read_by": (MODEL, TRAINING)}
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
    early_stopping_steps: int | None = field(
        default=None, metadata={"help": "Stop after N evaluations without progress.", "read_by": (TRAINING,)}
    )
    include_effective_tokens_per_second: bool = field(
        default=False, metadata={"help": "Report effective tokens/s.", "read_by": ()}
    )
    # Preference stages (dpo, kto). The rm and ppo settings below are accepted and not read until those stages land.
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
        default=None, metadata={"help": "Quantize the reference model.", "read_by": (TRAINING,)}
    )
    reward_model: str | None = field(default=None, metadata={"help": "Reward model for PPO.", "read_by": ()})
    reward_model_adapters: str | None = field(
        default=None, metadata={"help": "Adapters of the reward model.", "read_by": ()}
    )
    reward_model_quantization_bit: int | None = field(
        default=None, metadata={"help": "Quantize the reward model.", "read_by": ()}
    )
    reward_model_type: str = field(
        default="lora", metadata={"help": "Reward model type: lora, full or api.", "read_by": ()}
    )
    ppo_buffer_size: int = field(
        default=1, metadata={"help": "PPO: mini-batches per optimisation step.", "read_by": ()}
    )
    ppo_epochs: int = field(default=4, metadata={"help": "PPO: epochs per optimisation step.", "read_by": ()})
    ppo_score_norm: bool = field(default=False, metadata={"help": "PPO: normalise scores.", "read_by": ()})
    ppo_target: float = field(default=6.0, metadata={"help": "PPO: target KL.", "read_by": ()})
    ppo_whiten_rewards: bool = field(default=False, metadata={"help": "PPO: whiten rewards.", "read_by": ()})
