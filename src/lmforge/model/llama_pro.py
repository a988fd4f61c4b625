"""LLaMA Pro block expansion: add copies of evenly spaced decoder layers that start as the identity.

A decoder layer adds its attention and MLP outputs to the residual stream. A copy whose output
projections (`o_proj`, `down_proj`) are zero adds nothing, so the expanded model computes exactly
what the original did; training only the copies (`use_llama_pro`) then adds knowledge without
overwriting the original layers. With L layers and N copies, a copy follows every (L/N)-th layer,
so in the expanded model the copies are layers stride-1, 2*stride-1, ... with stride (L+N)/N.
"""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

from lmforge.errors import UserError
from lmforge.utils.atomic import publish_dir, staging_dir

# The projections that write into the residual stream: zero in a copy, so the copy starts as the identity.
OUTPUT_PROJECTIONS = ("o_proj", "down_proj")
# Config lists with one entry per layer (attention kind, RoPE on/off): a copy takes its original's entry.
PER_LAYER_CONFIG_KEYS = ("layer_types", "no_rope_layers")
# A decoder layer's number in a parameter or module name (model.layers.3.mlp, transformer.h.3.attn, ...).
_LAYER_ID = re.compile(r"\.(?:layers|h|blocks)\.(\d+)\.")
_SHARD_SIZE = re.compile(r"\d+(?:[KMG]i?B)?", re.IGNORECASE)


def expanded_layer_ids(num_layers: int, num_trainable: int) -> list[int]:
    """The ids of the expanded blocks in a model of `num_layers` layers that has `num_trainable` of them."""
    if num_trainable <= 0 or num_layers % num_trainable:
        raise UserError(
            f"use_llama_pro trains freeze_trainable_layers expanded blocks, evenly spaced, so it must be a positive "
            f"divisor of the model's {num_layers} layers; got {num_trainable}. Set it to the --num_expand given to "
            "`lmforge expand-blocks`."
        )
    stride = num_layers // num_trainable
    return list(range(stride - 1, num_layers, stride))


def expand_blocks(model_path: str, output_dir: str | Path, num_expand: int, *, max_shard_size: str = "5GB",
                  trust_remote_code: bool = False) -> Path:
    """Write `model_path` with `num_expand` identity blocks added (weights, config and tokenizer) to `output_dir`.

    The folder appears whole or not at all: it is written into a staging folder beside it, then renamed.
    """
    from lmforge.model.loader import check_model_path

    output_dir = Path(output_dir).expanduser().absolute()
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise UserError(f"output_dir '{output_dir}' already exists and is not empty; choose a new folder "
                        "(the expanded model is written whole into it).")
    if num_expand <= 0:
        raise UserError(f"num_expand must be a positive number of blocks to add, got {num_expand}.")
    if not _SHARD_SIZE.fullmatch(str(max_shard_size)):
        raise UserError(f"shard_size '{max_shard_size}' is not a size; write a whole number and a unit, e.g. 2GB, "
                        "500MB or 1GiB.")
    check_model_path(str(model_path))

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = _load(AutoConfig, model_path, "config", trust_remote_code)
    num_layers = getattr(config, "num_hidden_layers", None)
    if not isinstance(num_layers, int):
        raise UserError(f"'{model_path}' has no num_hidden_layers in its config ({type(config).__name__}); block "
                        "expansion needs a decoder-only language model such as Llama or Qwen.")
    if num_layers % num_expand:
        divisors = [d for d in range(1, num_layers + 1) if num_layers % d == 0]
        raise UserError(f"num_expand must divide the model's {num_layers} layers, so that the new blocks are evenly "
                        f"spaced; got {num_expand}. Choose one of: {', '.join(map(str, divisors))}.")
    tokenizer = _load(AutoTokenizer, model_path, "tokenizer", trust_remote_code)
    model = _load(AutoModelForCausalLM, model_path, "model", trust_remote_code, dtype="auto")
    _insert_copies(model, model_path, num_layers, num_expand)

    staging = staging_dir(output_dir.parent, output_dir.name)
    try:
        model.save_pretrained(staging, max_shard_size=_shard_size(max_shard_size))
        tokenizer.save_pretrained(staging)
        publish_dir(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir


def _load(auto_class, path, what: str, trust_remote_code: bool, **kwargs):
    try:
        return auto_class.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"Cannot load the {what} of '{path}': {str(err).splitlines()[0]}") from None


def _shard_size(size: str) -> int | str:
    # transformers reads a bare number as bytes only when it is an int.
    return int(size) if str(size).isdigit() else str(size)


def _insert_copies(model, model_path, num_layers: int, num_expand: int) -> None:
    """Insert a zero-output copy after every (num_layers / num_expand)-th layer, in place, and renumber."""
    import torch

    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) != num_layers:
        raise UserError(f"'{model_path}' ({type(model).__name__}) is not a decoder with model.layers; block expansion "
                        "needs a decoder-only language model such as Llama or Qwen.")
    stride = num_layers // num_expand
    expanded: list[torch.nn.Module] = []
    origin: list[int] = []  # the original layer each expanded layer comes from
    for i, layer in enumerate(layers):
        expanded.append(layer)
        origin.append(i)
        if (i + 1) % stride == 0:
            expanded.append(_identity_copy(layer, model_path))
            origin.append(i)
    for new_id, layer in enumerate(expanded):
        # Attention modules index the KV cache by their layer number; a copy must not share its original's.
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_id
    model.model.layers = torch.nn.ModuleList(expanded)

    config = model.config
    for key in PER_LAYER_CONFIG_KEYS:
        values = getattr(config, key, None)
        if isinstance(values, (list, tuple)) and len(values) == num_layers:
            setattr(config, key, [values[i] for i in origin])
    config.num_hidden_layers = len(expanded)


def _identity_copy(layer, model_path):
    """A copy of `layer` whose output projections (weights and biases) are zero: it leaves its input unchanged."""
    import torch

    clone = copy.deepcopy(layer)
    zeroed = set()
    with torch.no_grad():
        for name, param in clone.named_parameters():
            # `o_proj.weight`, `o_proj.bias`, or a fused tensor of experts named `experts.down_proj`.
            hit = [part for part in name.split(".")[-2:] if part in OUTPUT_PROJECTIONS]
            if hit:
                param.zero_()
                zeroed.add(hit[0])
    if zeroed != set(OUTPUT_PROJECTIONS):
        raise UserError(f"The layers of '{model_path}' have no {' and '.join(OUTPUT_PROJECTIONS)} projections, so a "
                        "copy cannot be made to start as the identity; block expansion supports Llama-style decoders "
                        "(Llama, Qwen, Mistral, ...).")
    return clone


def llama_pro_targets(model, targets: list[str], num_trainable: int, num_layers: int) -> list[str]:
    """Full names of the LoRA target modules (leaf or full names in `targets`) inside the expanded blocks.

    Full names keep LoRA off the original layers, which also hold q_proj, down_proj and the like.
    """
    ids = set(expanded_layer_ids(num_layers, num_trainable))
    wanted = set(targets)
    names = []
    for name, _ in model.named_modules():
        match = _LAYER_ID.search(f".{name}.")
        if match and int(match.group(1)) in ids and (name in wanted or name.split(".")[-1] in wanted):
            names.append(name)
    if not names:
        raise UserError(f"use_llama_pro finds none of the LoRA targets {sorted(wanted)} in the expanded blocks "
                        f"{sorted(ids)}; check lora_target.")
    return names
