"""`lmforge expand-blocks MODEL OUTPUT_DIR --num_expand N`: LLaMA Pro block expansion (see `lmforge.model.llama_pro`).

LLaMA-Factory's `scripts/llama_pro.py` flags (--model_name_or_path, --output_dir, --num_expand) work too.
"""

from __future__ import annotations

from lmforge.commands.common import ArgumentParser
from lmforge.errors import UserError


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="lmforge expand-blocks",
                            description="Add identity copies of evenly spaced layers (LLaMA Pro).")
    parser.add_argument("model", nargs="?", help="Model folder or hub id to expand.")
    parser.add_argument("output", nargs="?", help="New folder for the expanded model and its tokenizer.")
    parser.add_argument("--model_name_or_path", help="The model, as a flag (LLaMA-Factory's name).")
    parser.add_argument("--output_dir", help="The new folder, as a flag.")
    parser.add_argument("--num_expand", type=int, required=True, help="Blocks to add; must divide the layer count.")
    parser.add_argument("--shard_size", default="5GB", help="Largest safetensors shard, e.g. 2GB (default 5GB).")
    parser.add_argument("--trust_remote_code", action="store_true", help="Run the model's own code from the hub.")
    args = parser.parse_args(argv)

    model = _one(args.model, args.model_name_or_path, "the model", "MODEL or --model_name_or_path")
    output = _one(args.output, args.output_dir, "the output folder", "OUTPUT_DIR or --output_dir")

    from lmforge.model.llama_pro import expand_blocks

    path = expand_blocks(model, output, args.num_expand, max_shard_size=args.shard_size,
                         trust_remote_code=args.trust_remote_code)
    print(f"Wrote {model} with {args.num_expand} expanded blocks to {path}. Train them with use_llama_pro: true, "
          f"finetuning_type: freeze (or lora) and freeze_trainable_layers: {args.num_expand}.")
    return 0


def _one(positional: str | None, flag: str | None, what: str, how: str) -> str:
    """The value given either way; both ways (differing) or neither is an error."""
    if positional and flag and positional != flag:
        raise UserError(f"{what} is given twice ('{positional}' and '{flag}'); give {how} once.")
    if not (positional or flag):
        raise UserError(f"expand-blocks needs {what}: give {how}. "
                        "Usage: lmforge expand-blocks MODEL OUTPUT_DIR --num_expand N [--shard_size 5GB]")
    return positional or flag
