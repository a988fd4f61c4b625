"""Attach what trains to a loaded model (LoRA adapters, freeze masks, or everything), and load trained adapters.

`load_adapters` is the one adapter loader: training continues or merges adapters with it, and
inference applies them merged into the weights or unmerged (on the fly).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.errors import UserError
from lmforge.model.recipes import noted_recipe, recipe_for, recipes_apply
from lmforge.utils.logging import get_logger

if TYPE_CHECKING:
    from lmforge.config import FinetuningArguments, ModelArguments

logger = get_logger(__name__)

# Output heads are never LoRA targets under `lora_target: all`: their adapters would be saved as
# part of a vocabulary-sized matrix and they break weight tying.
HEAD_NAMES = ("lm_head", "output_layer", "output", "embed_out")


def find_all_linear_modules(model) -> list[str]:
    """Leaf names of every Linear layer except the output head (`lora_target: all`)."""
    names = set()
    for full_name, module in model.named_modules():
        if "Linear" in type(module).__name__ and "Embedding" not in type(module).__name__:
            leaf = full_name.split(".")[-1]
            if leaf not in HEAD_NAMES:
                names.add(leaf)
    return sorted(names)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = total = 0
    for param in model.parameters():
        # Under DeepSpeed ZeRO-3 a process holds an empty placeholder; `ds_numel` is the whole parameter's size.
        n = getattr(param, "ds_numel", None) or param.numel()
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total


def _num_layers(model) -> int:
    config = model.config
    # A vision-language model counts the layers of its language model (`text_config`), as LLaMA-Factory does.
    for source in (getattr(config, "text_config", None), config):
        for key in ("num_hidden_layers", "num_layers", "n_layer"):
            if source is not None and getattr(source, key, None):
                return int(getattr(source, key))
    raise UserError("Cannot find the number of layers in the model config; use finetuning_type lora or full.")


def setup_full(model, ft: FinetuningArguments) -> None:
    """Train every parameter (kept in float32 unless pure_bf16)."""
    model.requires_grad_(True)
    if not ft.pure_bf16:
        model.float()


def setup_freeze(model, ft: FinetuningArguments) -> list[str]:
    """Train only the chosen layers (and modules within them); return the trainable parameter names."""
    import torch

    n_layers = _num_layers(model)
    k = ft.freeze_trainable_layers
    if ft.use_llama_pro:
        from lmforge.model.llama_pro import expanded_layer_ids

        # LLaMA Pro: only the blocks `lmforge expand-blocks` added, evenly spaced, train.
        layer_ids = expanded_layer_ids(n_layers, k)
    elif k == 0 or abs(k) > n_layers:
        raise UserError(f"'freeze_trainable_layers' must be between 1 and {n_layers} (or -1 and -{n_layers}), got {k}.")
    else:
        layer_ids = range(n_layers - k, n_layers) if k > 0 else range(-k)
    modules = ft.freeze_trainable_modules
    extra = ft.freeze_extra_modules or []
    layer_pattern = re.compile(r"\.(?:layers|h|blocks)\.(\d+)\.")
    available_modules: set[str] = set()
    trainable: list[str] = []
    for name, param in model.named_parameters():
        match = layer_pattern.search(f".{name}")
        train = False
        if match:
            inner = name[match.end() - 1:].split(".")
            available_modules.update(part for part in inner[:-1] if part)
            if int(match.group(1)) in layer_ids:
                train = modules == ["all"] or any(m in inner for m in modules)
        elif any(f".{m}." in f".{name}" for m in extra):
            train = True
        param.requires_grad_(train)
        if train:
            trainable.append(name)
            if not ft.pure_bf16 and param.dtype != torch.float32:
                param.data = param.data.float()
    if modules != ["all"]:
        unknown = [m for m in modules if m not in available_modules]
        if unknown:
            raise UserError(
                f"freeze_trainable_modules {unknown} not found in the layers; choose from: {', '.join(sorted(available_modules))}."
            )
    if not trainable:
        raise UserError("The freeze settings leave no parameter to train; check freeze_trainable_layers/modules.")
    return trainable


def read_adapter_config(path: str) -> dict:
    """The adapter's config, or a clear error when `path` holds no LoRA adapter."""
    config_file = Path(path) / "adapter_config.json"
    if not config_file.is_file():
        raise UserError(
            f"Adapter '{path}' not found: expected {config_file}. Point adapter_name_or_path at a LoRA training output_dir."
        )
    try:
        return json.loads(config_file.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{config_file} is not valid JSON; the adapter folder is damaged.") from None


def _check_same_architecture(adapter: str, trained_on: str, base: str, model) -> None:
    """Refuse an adapter whose recorded base model (when it is on disk) has another architecture.

    Shapes alone can match by chance (tiny models do), and PEFT then loads the adapter silently.
    """
    config_file = Path(trained_on) / "config.json"
    if not config_file.is_file():
        return
    try:
        recorded = json.loads(config_file.read_text()).get("model_type")
    except (OSError, json.JSONDecodeError):
        return  # the recorded base is not readable here; PEFT's own shape checks still apply
    current = getattr(getattr(model, "config", None), "model_type", None)
    if recorded and current and recorded != current:
        raise UserError(
            f"Adapter '{adapter}' does not fit the model '{base}' (it was trained on {trained_on}): "
            f"that base is a {recorded} model, this one is a {current} model."
        )


def load_adapters(model, paths: Sequence[str], base: str, *, merge: bool, trainable: bool = False):
    """Apply LoRA adapters in order: the one adapter loader of training and inference.

    `merge`: each adapter is merged into the weights; otherwise they stay stacked and unmerged,
    all active (applied on the fly). `trainable`: the last adapter stays unmerged and keeps
    training (the others are merged). Every adapter is checked against the model's architecture
    first; an unreadable or mismatched adapter is one clear error naming it.
    """
    if not paths:
        return model
    from peft import PeftModel

    from lmforge.model.quantization import describe, is_quantized

    if is_quantized(model):
        # Quantized weights cannot take an adapter's delta: its one adapter stays unmerged (on the fly).
        if len(paths) > 1:
            raise UserError(
                f"A quantized model ({describe(model)}) takes one adapter, applied on the fly, but "
                f"{len(paths)} are given ({', '.join(paths)}). Merge them into the unquantized base first "
                "(lmforge export without quantization_bit), then use the export with its last adapter."
            )
        merge = False
    stacked: list[str] = []
    for i, path in enumerate(paths):
        adapter_config = read_adapter_config(path)
        init = adapter_config.get("init_lora_weights")
        if isinstance(init, str) and init.startswith("pissa"):
            # Trained on the residual of its base (the base less its principal components), not on the base.
            raise UserError(f"Adapter '{path}' is a PiSSA adapter saved as trained, which only fits the residual of its "
                            "base model. Train with pissa_convert: true to save it as a plain LoRA that applies to "
                            "the base model.")
        trained_on = adapter_config.get("base_model_name_or_path") or "an unknown base model"
        _check_same_architecture(path, trained_on, base, model)
        keep_training = trainable and i == len(paths) - 1
        # The adapter that keeps training must be PEFT's "default" one: only that one is saved at the top level.
        name = "default" if keep_training else f"adapter_{i}"
        try:
            if isinstance(model, PeftModel) and not keep_training:
                model.load_adapter(path, adapter_name=name)
            else:
                model = PeftModel.from_pretrained(model, path, adapter_name=name, is_trainable=keep_training)
        except (RuntimeError, ValueError, KeyError, OSError) as err:
            raise UserError(
                f"Adapter '{path}' does not fit the model '{base}' (it was trained on {trained_on}): "
                f"{str(err).splitlines()[0]}"
            ) from None
        if keep_training:
            return model
        if merge or trainable:
            model = model.merge_and_unload()
        else:
            stacked.append(name)
    if stacked:
        model.base_model.set_adapter(stacked if len(stacked) > 1 else stacked[0])
        model.requires_grad_(False)
    return model.eval()


def setup_lora(model, model_args: ModelArguments, ft: FinetuningArguments):
    """Attach a LoRA (or OFT) adapter for training: resume the last given adapter or create a new one."""
    from peft import PeftModel, get_peft_model

    from lmforge.model.quantization import describe, is_quantized, prepare_for_training

    paths = model_args.adapter_name_or_path or []
    resume = bool(paths) and not ft.create_new_adapter
    if is_quantized(model):
        if paths and ft.create_new_adapter:
            raise UserError(f"create_new_adapter merges the given adapters into the model, and a quantized model "
                            f"({describe(model)}) cannot be merged into. Remove create_new_adapter to keep training "
                            "the adapter, or merge it into the unquantized base first (lmforge export).")
        prepare_for_training(model)
    if paths:
        # Merge every adapter but the one that keeps training (or all of them for a new adapter).
        model = load_adapters(model, paths, model_args.model_name_or_path, merge=True, trainable=resume)
    if resume and isinstance(model, PeftModel):
        return model
    from lmforge.model.multimodal import is_multimodal, lora_target_names

    oft = ft.finetuning_type == "oft"
    option = "oft_target" if oft else "lora_target"
    wanted = ft.oft_target if oft else ft.lora_target
    targets = find_all_linear_modules(model) if wanted == ["all"] else list(wanted)
    present = set(find_all_linear_modules(model)) | {n.split(".")[-1] for n, _ in model.named_modules()}
    missing = [t for t in targets if t not in present]
    if missing:
        raise UserError(
            f"{option} {missing} not found in the model; its linear layers are: "
            f"{', '.join(find_all_linear_modules(model))} (or use {option}: all)."
        )
    if is_multimodal(model):
        # Only the unfrozen parts (by default the language model) get adapters.
        targets = lora_target_names(model, targets, ft)
        if not targets:
            raise UserError("The freeze_vision_tower / freeze_multi_modal_projector / freeze_language_model flags "
                            f"leave no adapter target; unfreeze a part or change {option}.")
    if ft.use_llama_pro:
        from lmforge.model.llama_pro import llama_pro_targets

        # LLaMA Pro: adapters on the expanded blocks only, not on the same-named modules of the original layers.
        targets = llama_pro_targets(model, targets, ft.freeze_trainable_layers, _num_layers(model))
    config = _oft_config(model, targets, ft) if oft else _lora_config(targets, ft)
    model = get_peft_model(model, config)
    for param in model.parameters():
        if param.requires_grad and param.dtype != _float32():
            param.data = param.data.float()
    return model


def _lora_config(targets: list[str], ft: FinetuningArguments):
    from peft import LoraConfig, TaskType

    init = True
    if ft.pissa_init:
        # PiSSA: A and B start as the principal singular vectors; the base keeps the residual weight.
        init = "pissa" if ft.pissa_iter == -1 else f"pissa_niter_{ft.pissa_iter}"
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=ft.lora_rank,
        lora_alpha=ft.lora_alpha,
        lora_dropout=ft.lora_dropout,
        target_modules=targets,
        modules_to_save=ft.additional_target,
        use_rslora=ft.use_rslora,
        use_dora=ft.use_dora,
        init_lora_weights=init,
    )


def _oft_config(model, targets: list[str], ft: FinetuningArguments):
    """peft's OFT: each target's input is rotated by a block-diagonal orthogonal matrix that trains."""
    from peft import OFTConfig, TaskType

    size = ft.oft_block_size or None
    for name, module in model.named_modules():
        features = getattr(module, "in_features", None)
        if name.split(".")[-1] in targets and features and size and features % size:
            raise UserError(f"oft_block_size {size} does not divide the {features} input features of '{name}'; "
                            "choose a divisor (or set oft_rank and oft_block_size: 0).")
    return OFTConfig(
        task_type=TaskType.CAUSAL_LM,
        r=ft.oft_rank,
        oft_block_size=ft.oft_block_size,
        target_modules=targets,
        module_dropout=ft.module_dropout,
        modules_to_save=ft.additional_target,
    )


class _OutsideAutocast:
    """Truthy except while autocast is on: the value of a PEFT layer's `cast_input_dtype_enabled`.

    PEFT casts a layer's input to the adapter's dtype (a bf16 activation to the float32 adapter) before the
    adapter's linear layers; under autocast those cast it straight back to bf16, so the first cast is a copy of
    every adapted input, and of its gradient, for nothing: about 4% of a 0.5B LoRA step in bf16 on a CPU.
    Skipping it only while autocast is on gives the same values (bf16 -> float32 -> bf16 is exact); outside
    autocast (inference, float32 training) the cast still happens.
    """

    def __bool__(self) -> bool:
        import torch

        return not (torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda"))


def cast_inputs_outside_autocast_only(model) -> None:
    """Let the PEFT layers of `model` skip their input cast while autocast is on (see `_OutsideAutocast`)."""
    flag = _OutsideAutocast()
    for module in model.modules():
        if hasattr(module, "cast_input_dtype_enabled"):
            module.cast_input_dtype_enabled = flag


def _lora_forward_scaling_the_weight(self, x, *args, **kwargs):
    """PEFT's `lora.Linear.forward` for plain LoRA adapters, the scaling applied to lora_B's weight ([out, r])
    rather than to lora_B's output ([tokens, out]).

    That multiplication, and its gradient's, of a whole activation per adapted layer and step is about 2% of a
    0.5B LoRA step on a CPU. With LLaMA-Factory's default scaling (lora_alpha = 2 * lora_rank: a power of two)
    the outputs and gradients are the same bit for bit; other scalings differ by rounding only. Anything else
    (DoRA and other variants, a bias on lora_B, merged or disabled adapters, per-row adapter names) goes
    through PEFT's own forward.
    """
    import torch.nn.functional as F

    if args or kwargs or self.disable_adapters or self.merged:
        return type(self).forward(self, x, *args, **kwargs)
    active = [name for name in self.active_adapters if name in self.lora_A]
    if any(name in self.lora_variant or self.lora_B[name].bias is not None for name in active):
        return type(self).forward(self, x, *args, **kwargs)
    result = self.base_layer(x)
    result_dtype = result.dtype
    for name in active:
        lora_a = self.lora_A[name]
        x = self._cast_input_dtype(x, lora_a.weight.dtype)
        result = result + F.linear(_down_projection(lora_a, self.lora_dropout[name], x),
                                   self.lora_B[name].weight * self.scaling[name])
    return result.to(result_dtype)


def _down_projection(lora_a, dropout, x):
    """lora_A of the (dropped-out) input. lora_A keeps its input for its weight's gradient; where that input has
    a noted recipe (a norm's output, attention's: `lmforge.model.recipes`), it keeps the recipe instead."""
    recipe = noted_recipe(x)
    with recipe_for(x, recipe) if recipe is not None and recipes_apply() else nullcontext():
        return lora_a(dropout(x))


def scale_lora_weights_not_outputs(model) -> None:
    """Give the LoRA linear layers of `model` `_lora_forward_scaling_the_weight`.

    Not under DeepSpeed ZeRO-3, which gathers a partitioned weight only when its own module is called.
    """
    from types import MethodType

    from peft.tuners.lora import Linear

    for module in model.modules():
        if type(module) is Linear:
            module.forward = MethodType(_lora_forward_scaling_the_weight, module)


def _float32():
    import torch

    return torch.float32


def init_adapter(model, model_args: ModelArguments, ft: FinetuningArguments, trainable: bool):
    """Prepare `model` for training with `ft.finetuning_type`, or apply adapters for inference."""
    if not trainable:
        return load_adapters(model, model_args.adapter_name_or_path or [], model_args.model_name_or_path, merge=True)
    from lmforge.model.multimodal import freeze_parts
    from lmforge.model.quantization import describe, is_quantized

    if ft.finetuning_type not in ("lora", "oft") and is_quantized(model):
        raise UserError(f"'{model_args.model_name_or_path}' is quantized ({describe(model)}): its weights cannot be "
                        f"trained directly, only through an adapter. Use finetuning_type: lora or oft (it is "
                        f"{ft.finetuning_type}).")
    if ft.finetuning_type == "full":
        setup_full(model, ft)
        freeze_parts(model, ft)
    elif ft.finetuning_type == "freeze":
        setup_freeze(model, ft)
        freeze_parts(model, ft)
    else:
        model = setup_lora(model, model_args, ft)
        cast_inputs_outside_autocast_only(model)
    trainable_n, total = count_parameters(model)
    logger.info(f"trainable params: {trainable_n:,} || all params: {total:,} || trainable%: {100 * trainable_n / total:.4f}")
    return model
