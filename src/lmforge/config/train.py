"""How to train: the Trainer's own settings (Hugging Face TrainingArguments names).

The common settings are fields here, so they are typed and documented once. Any other
Hugging Face TrainingArguments key is accepted as is and handed to the Trainer untouched
(`hf_passthrough`), so that configs written for the Trainer keep working. Which keys those are
comes from transformers itself (`trainer_keys`), looked up only when a config has such a key.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, fields

from lmforge.config.readers import DATASET, TRAINING


@dataclass
class TrainArguments:
    """Trainer settings; names follow transformers' TrainingArguments."""

    output_dir: str | None = field(
        default=None, metadata={"help": "Where checkpoints, weights and logs are written.", "read_by": (TRAINING,)}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace a finished result in output_dir.", "read_by": (TRAINING,)}
    )
    do_train: bool = field(default=False, metadata={"help": "Run training.", "read_by": (TRAINING,)})
    do_eval: bool = field(default=False, metadata={"help": "Run evaluation.", "read_by": (TRAINING,)})
    do_predict: bool = field(
        default=False, metadata={"help": "Run prediction on eval_dataset.", "read_by": (TRAINING,)}
    )
    eval_strategy: str = field(
        default="no", metadata={"help": "When to evaluate: no, steps or epoch.", "read_by": (TRAINING,)}
    )
    evaluation_strategy: str | None = field(
        default=None, metadata={"help": "Older spelling of eval_strategy.", "read_by": (TRAINING,)}
    )
    eval_steps: float | None = field(default=None, metadata={"help": "Evaluate every N steps.", "read_by": (TRAINING,)})
    per_device_train_batch_size: int = field(
        default=8, metadata={"help": "Training batch size per device.", "read_by": (TRAINING,)}
    )
    per_device_eval_batch_size: int = field(
        default=8, metadata={"help": "Evaluation batch size per device.", "read_by": (TRAINING,)}
    )
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Batches accumulated per optimizer step.", "read_by": (TRAINING,)}
    )
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate.", "read_by": (TRAINING,)})
    weight_decay: float = field(default=0.0, metadata={"help": "Weight decay.", "read_by": (TRAINING,)})
    adam_beta1: float = field(default=0.9, metadata={"help": "Adam beta1.", "read_by": (TRAINING,)})
    adam_beta2: float = field(default=0.999, metadata={"help": "Adam beta2.", "read_by": (TRAINING,)})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "Adam epsilon.", "read_by": (TRAINING,)})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm.", "read_by": (TRAINING,)})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Number of epochs.", "read_by": (TRAINING,)})
    max_steps: int = field(
        default=-1,
        metadata={"help": "Total optimizer steps; overrides num_train_epochs when > 0.", "read_by": (TRAINING,)},
    )
    lr_scheduler_type: str = field(
        default="linear", metadata={"help": "Scheduler: linear, cosine, constant, ...", "read_by": (TRAINING,)}
    )
    lr_scheduler_kwargs: dict | None = field(
        default=None, metadata={"help": "Extra scheduler arguments.", "read_by": (TRAINING,)}
    )
    warmup_ratio: float = field(
        default=0.0, metadata={"help": "Warm-up as a fraction of total steps.", "read_by": (TRAINING,)}
    )
    warmup_steps: float = field(
        default=0, metadata={"help": "Warm-up steps (overrides warmup_ratio when > 0).", "read_by": (TRAINING,)}
    )
    logging_steps: float = field(default=500, metadata={"help": "Log every N steps.", "read_by": (TRAINING,)})
    logging_dir: str | None = field(default=None, metadata={"help": "TensorBoard log folder.", "read_by": (TRAINING,)})
    save_strategy: str = field(
        default="steps", metadata={"help": "When to save checkpoints: no, steps or epoch.", "read_by": (TRAINING,)}
    )
    save_steps: float = field(
        default=500, metadata={"help": "Save a checkpoint every N steps.", "read_by": (TRAINING,)}
    )
    save_total_limit: int | None = field(
        default=None, metadata={"help": "Keep at most N checkpoints.", "read_by": (TRAINING,)}
    )
    save_only_model: bool = field(
        default=False, metadata={"help": "Checkpoints without optimizer state.", "read_by": (TRAINING,)}
    )
    load_best_model_at_end: bool = field(
        default=False, metadata={"help": "Load the best checkpoint after training.", "read_by": (TRAINING,)}
    )
    metric_for_best_model: str | None = field(
        default=None, metadata={"help": "Metric that picks the best model.", "read_by": (TRAINING,)}
    )
    greater_is_better: bool | None = field(
        default=None, metadata={"help": "Whether a larger metric is better.", "read_by": (TRAINING,)}
    )
    seed: int = field(default=42, metadata={"help": "Random seed.", "read_by": (TRAINING, DATASET)})
    data_seed: int | None = field(default=None, metadata={"help": "Seed of the data sampler.", "read_by": (TRAINING,)})
    bf16: bool | None = field(
        default=None,
        metadata={"help": "Mixed precision with bfloat16. Unset: on where a CUDA GPU computes bf16 natively (compute "
                          "capability 8.0 or newer), or on a CPU with AMX for a model of hidden size 896 or more (not "
                          "quantized), when fp16 and pure_bf16 are off; float32 elsewhere.",
                  "read_by": (TRAINING,)},
    )
    fp16: bool = field(default=False, metadata={"help": "Mixed precision with float16.", "read_by": (TRAINING,)})
    tf32: bool | None = field(
        default=None, metadata={"help": "Allow TF32 matmuls on Ampere+ GPUs.", "read_by": (TRAINING,)}
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations to save memory.", "read_by": (TRAINING,)}
    )
    optim: str = field(
        default="adamw_torch_fused",
        metadata={"help": "Optimizer name (transformers' names). The default, transformers' own, updates all the "
                          "trained tensors in one fused AdamW kernel (on a CPU too, 5x faster than adamw_torch's "
                          "loop over a LoRA model's tensors, the same update up to float rounding).",
                  "read_by": (TRAINING,)})
    torch_compile: bool = field(
        default=False,
        metadata={"help": "Compile each decoder layer with torch.compile (regional compilation).", "read_by": (TRAINING,)},
    )
    torch_compile_backend: str | None = field(
        default=None,
        metadata={"help": "torch.compile backend (default inductor); setting it turns torch_compile on.",
                  "read_by": (TRAINING,)},
    )
    torch_compile_mode: str | None = field(
        default=None,
        metadata={"help": "torch.compile mode (default, reduce-overhead, max-autotune); setting it turns "
                          "torch_compile on.", "read_by": (TRAINING,)},
    )
    report_to: list[str] | None = field(
        default=None, metadata={"help": "none, tensorboard, wandb, ... (comma list).", "read_by": (TRAINING,)}
    )
    run_name: str | None = field(default=None, metadata={"help": "Run name for loggers.", "read_by": (TRAINING,)})
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "Checkpoint folder to resume from.", "read_by": (TRAINING,)}
    )
    dataloader_num_workers: int = field(
        default=0, metadata={"help": "Data loader worker processes.", "read_by": (TRAINING,)}
    )
    ddp_timeout: int = field(default=1800, metadata={"help": "Distributed timeout in seconds.", "read_by": (TRAINING,)})
    deepspeed: str | None = field(
        default=None, metadata={"help": "DeepSpeed JSON config path.", "read_by": (TRAINING,)}
    )
    predict_with_generate: bool = field(
        default=False, metadata={"help": "Generate in predict/eval (sft).", "read_by": (TRAINING,)}
    )
    generation_max_length: int | None = field(
        default=None, metadata={"help": "Generation length in predict.", "read_by": (TRAINING,)}
    )
    generation_num_beams: int | None = field(
        default=None, metadata={"help": "Beams in predict.", "read_by": (TRAINING,)}
    )
    disable_tqdm: bool = field(default=False, metadata={"help": "Hide progress bars.", "read_by": (TRAINING,)})
    use_cpu: bool = field(
        default=False, metadata={"help": "Train on the CPU even when a GPU is present.", "read_by": (TRAINING,)}
    )
    # FP8 (LLaMA-Factory's keys): needs a GPU with FP8 units; lmforge refuses it elsewhere in one line.
    fp8: bool = field(default=False, metadata={"help": "FP8 mixed-precision training (needs an NVIDIA GPU with FP8 "
                                                       "support; refused elsewhere).", "read_by": (TRAINING,)})
    fp8_backend: str = field(default="auto", metadata={"help": "FP8: backend (auto, torchao, te, msamp).",
                                                       "read_by": (TRAINING,)})
    fp8_enable_fsdp_float8_all_gather: bool = field(
        default=False, metadata={"help": "FP8 with FSDP: gather the weights in float8.", "read_by": (TRAINING,)})
    # Ray (USE_RAY=1): the same training on the workers of a Ray cluster (see docs/distributed.md).
    ray_num_workers: int = field(default=1, metadata={"help": "Ray: training workers.", "read_by": (TRAINING,)})
    ray_init_kwargs: dict | None = field(
        default=None, metadata={"help": "Ray: keyword arguments of ray.init (address, num_cpus, ...).",
                                "read_by": (TRAINING,)}
    )
    resources_per_worker: dict | None = field(
        default=None, metadata={"help": "Ray: resources of each worker (default {\"GPU\": 1} on a cluster with GPUs, "
                                        "else {\"CPU\": 1}).", "read_by": (TRAINING,)}
    )
    placement_strategy: str = field(
        default="PACK", metadata={"help": "Ray: worker placement: PACK, SPREAD, STRICT_PACK or STRICT_SPREAD.",
                                  "read_by": (TRAINING,)}
    )
    ray_run_name: str | None = field(default=None, metadata={"help": "Ray: run name.", "read_by": (TRAINING,)})
    ray_storage_path: str = field(
        default="./saves", metadata={"help": "Ray: folder of Ray Train's run state.", "read_by": (TRAINING,)}
    )
    master_addr: str | None = field(
        default=None, metadata={"help": "Ray: rendezvous address (Ray Train chooses its own).", "read_by": ()}
    )
    master_port: int | None = field(
        default=None, metadata={"help": "Ray: rendezvous port (Ray Train chooses its own).", "read_by": ()}
    )
    ray_storage_filesystem: str | None = field(
        default=None, metadata={"help": "Ray: remote storage for ray_storage_path (not supported).", "read_by": ()}
    )
    hf_passthrough: dict = field(
        default_factory=dict,
        metadata={"help": "Other TrainingArguments keys, passed to the Trainer as given.", "read_by": (TRAINING,)},
    )


@functools.cache
def trainer_keys() -> frozenset[str]:
    """The keys transformers' Seq2SeqTrainingArguments takes (its init fields). Imports transformers: slow."""
    from transformers import Seq2SeqTrainingArguments

    return frozenset(f.name for f in fields(Seq2SeqTrainingArguments) if f.init)
