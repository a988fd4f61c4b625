"""How to train: the Trainer's own settings (Hugging Face TrainingArguments names).

The common settings are fields here, so they are typed and documented once. Any other
Hugging Face TrainingArguments key is accepted as is and handed to the Trainer untouched
(`hf_passthrough`), so that configs written for the Trainer keep working.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainArguments:
    """Trainer settings; names follow transformers' TrainingArguments."""

    output_dir: str | None = field(default=None, metadata={"help": "Where checkpoints, weights and logs are written."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace a finished result in output_dir."})
    do_train: bool = field(default=False, metadata={"help": "Run training."})
    do_eval: bool = field(default=False, metadata={"help": "Run evaluation."})
    do_predict: bool = field(default=False, metadata={"help": "Run prediction on eval_dataset."})
    eval_strategy: str = field(default="no", metadata={"help": "When to evaluate: no, steps or epoch."})
    evaluation_strategy: str | None = field(default=None, metadata={"help": "Older spelling of eval_strategy."})
    eval_steps: float | None = field(default=None, metadata={"help": "Evaluate every N steps."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Training batch size per device."})
    per_device_eval_batch_size: int = field(default=8, metadata={"help": "Evaluation batch size per device."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Batches accumulated per optimizer step."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate."})
    weight_decay: float = field(default=0.0, metadata={"help": "Weight decay."})
    adam_beta1: float = field(default=0.9, metadata={"help": "Adam beta1."})
    adam_beta2: float = field(default=0.999, metadata={"help": "Adam beta2."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "Adam epsilon."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Number of epochs."})
    max_steps: int = field(default=-1, metadata={"help": "Total optimizer steps; overrides num_train_epochs when > 0."})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "Scheduler: linear, cosine, constant, ..."})
    lr_scheduler_kwargs: dict | None = field(default=None, metadata={"help": "Extra scheduler arguments."})
    warmup_ratio: float = field(default=0.0, metadata={"help": "Warm-up as a fraction of total steps."})
    warmup_steps: float = field(default=0, metadata={"help": "Warm-up steps (overrides warmup_ratio when > 0)."})
    logging_steps: float = field(default=500, metadata={"help": "Log every N steps."})
    logging_dir: str | None = field(default=None, metadata={"help": "TensorBoard log folder."})
    save_strategy: str = field(default="steps", metadata={"help": "When to save checkpoints: no, steps or epoch."})
    save_steps: float = field(default=500, metadata={"help": "Save a checkpoint every N steps."})
    save_total_limit: int | None = field(default=None, metadata={"help": "Keep at most N checkpoints."})
    save_only_model: bool = field(default=False, metadata={"help": "Checkpoints without optimizer state."})
    load_best_model_at_end: bool = field(default=False, metadata={"help": "Load the best checkpoint after training."})
    metric_for_best_model: str | None = field(default=None, metadata={"help": "Metric that picks the best model."})
    greater_is_better: bool | None = field(default=None, metadata={"help": "Whether a larger metric is better."})
    seed: int = field(default=42, metadata={"help": "Random seed."})
    data_seed: int | None = field(default=None, metadata={"help": "Seed of the data sampler."})
    bf16: bool = field(default=False, metadata={"help": "Mixed precision with bfloat16."})
    fp16: bool = field(default=False, metadata={"help": "Mixed precision with float16."})
    tf32: bool | None = field(default=None, metadata={"help": "Allow TF32 matmuls on Ampere+ GPUs."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations to save memory."})
    optim: str = field(default="adamw_torch", metadata={"help": "Optimizer name."})
    report_to: list[str] | None = field(default=None, metadata={"help": "none, tensorboard, wandb, ... (comma list)."})
    run_name: str | None = field(default=None, metadata={"help": "Run name for loggers."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "Checkpoint folder to resume from."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "Data loader worker processes."})
    ddp_timeout: int = field(default=1800, metadata={"help": "Distributed timeout in seconds."})
    deepspeed: str | None = field(default=None, metadata={"help": "DeepSpeed JSON config path."})
    predict_with_generate: bool = field(default=False, metadata={"help": "Generate in predict/eval (sft)."})
    generation_max_length: int | None = field(default=None, metadata={"help": "Generation length in predict."})
    generation_num_beams: int | None = field(default=None, metadata={"help": "Beams in predict."})
    disable_tqdm: bool = field(default=False, metadata={"help": "Hide progress bars."})
    use_cpu: bool = field(default=False, metadata={"help": "Train on the CPU even when a GPU is present."})
    hf_passthrough: dict = field(
        default_factory=dict, metadata={"help": "Other TrainingArguments keys, passed to the Trainer as given."}
    )
