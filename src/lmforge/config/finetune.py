"""What to train: the stage, the fine-tuning type and its LoRA / freeze settings."""

from __future__ import annotations

from dataclasses import dataclass, field

STAGES = ("pt", "sft", "rm", "ppo", "dpo", "kto")
FINETUNING_TYPES = ("lora", "freeze", "full")


@dataclass
class FinetuningArguments:
    """Training stage, fine-tuning method and their hyper-parameters (LLaMA-Factory's names)."""

    stage: str = field(default="sft", metadata={"help": "Training stage: pt, sft, rm, ppo, dpo or kto."})
    finetuning_type: str = field(default="lora", metadata={"help": "lora, freeze or full."})
    freeze_trainable_layers: int = field(
        default=2, metadata={"help": "Freeze: train the last N layers (a negative N trains the first |N|)."}
    )
    freeze_trainable_modules: list[str] = field(
        default_factory=lambda: ["all"], metadata={"help": "Freeze: module names to train in those layers, or all."}
    )
    freeze_extra_modules: list[str] | None = field(
        default=None, metadata={"help": "Freeze: extra non-layer modules to train (e.g. embed_tokens)."}
    )
    additional_target: list[str] | None = field(
        default=None, metadata={"help": "LoRA: modules trained fully and saved with the adapter."}
    )
    lora_alpha: int | None = field(default=None, metadata={"help": "LoRA scale numerator (default: 2 x lora_rank)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_target: list[str] = field(
        default_factory=lambda: ["all"], metadata={"help": "LoRA target modules, comma-separated, or all."}
    )
    loraplus_lr_ratio: float | None = field(default=None, metadata={"help": "LoRA+: learning-rate ratio of B to A."})
    loraplus_lr_embedding: float = field(default=1e-6, metadata={"help": "LoRA+: learning rate of embedding adapters."})
    use_rslora: bool = field(default=False, metadata={"help": "Rank-stabilised LoRA scaling."})
    use_dora: bool = field(default=False, metadata={"help": "Weight-decomposed LoRA (DoRA)."})
    create_new_adapter: bool = field(default=False, metadata={"help": "Start a new adapter on top of loaded ones."})
    pure_bf16: bool = field(default=False, metadata={"help": "Train in pure bfloat16 without float32 master weights."})
    plot_loss: bool = field(default=False, metadata={"help": "Save training_loss.png (and eval loss) after training."})
    compute_accuracy: bool = field(default=False, metadata={"help": "Report token accuracy in evaluation."})
    disable_shuffling: bool = field(default=False, metadata={"help": "Keep the training data in order."})
    early_stopping_steps: int | None = field(default=None, metadata={"help": "Stop after N evaluations without progress."})
    include_effective_tokens_per_second: bool = field(default=False, metadata={"help": "Report effective tokens/s."})
    pref_beta: float = field(default=0.1, metadata={"help": "Preference losses: beta."})
    pref_ftx: float = field(default=0.0, metadata={"help": "Preference losses: SFT loss weight."})
    pref_loss: str = field(default="sigmoid", metadata={"help": "Preference loss: sigmoid, hinge, ipo, kto_pair, orpo, simpo."})
    dpo_label_smoothing: float = field(default=0.0, metadata={"help": "DPO label smoothing."})
    kto_chosen_weight: float = field(default=1.0, metadata={"help": "KTO: weight of desirable samples."})
    kto_rejected_weight: float = field(default=1.0, metadata={"help": "KTO: weight of undesirable samples."})
    simpo_gamma: float = field(default=0.5, metadata={"help": "SimPO: target reward margin."})
    ref_model: str | None = field(default=None, metadata={"help": "Reference model for DPO/KTO."})
    ref_model_adapters: str | None = field(default=None, metadata={"help": "Adapters of the reference model."})
    ref_model_quantization_bit: int | None = field(default=None, metadata={"help": "Quantize the reference model."})
    reward_model: str | None = field(default=None, metadata={"help": "Reward model for PPO."})
    reward_model_adapters: str | None = field(default=None, metadata={"help": "Adapters of the reward model."})
    reward_model_quantization_bit: int | None = field(default=None, metadata={"help": "Quantize the reward model."})
    reward_model_type: str = field(default="lora", metadata={"help": "Reward model type: lora, full or api."})
    ppo_buffer_size: int = field(default=1, metadata={"help": "PPO: mini-batches per optimisation step."})
    ppo_epochs: int = field(default=4, metadata={"help": "PPO: epochs per optimisation step."})
    ppo_score_norm: bool = field(default=False, metadata={"help": "PPO: normalise scores."})
    ppo_target: float = field(default=6.0, metadata={"help": "PPO: target KL."})
    ppo_whiten_rewards: bool = field(default=False, metadata={"help": "PPO: whiten rewards."})
