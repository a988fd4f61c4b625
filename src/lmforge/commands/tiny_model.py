"""`lmforge tiny-model DIR`: build a tiny random-weight model folder offline (see `lmforge.testing.tiny`)."""

from __future__ import annotations

from lmforge.commands.common import ArgumentParser


def main(argv: list[str]) -> int:
    from lmforge.testing.tiny import ARCHITECTURES, SIZES, STORAGE_DTYPES

    parser = ArgumentParser(prog="lmforge tiny-model", description="Build a tiny random-weight model.")
    parser.add_argument("output_dir", help="Folder to write the model and tokenizer to.")
    # qwen2_vl, qwen2_5_vl: vision-language models (image processor and vision tokens too), tiny size only.
    parser.add_argument("--arch", default="llama", choices=(*ARCHITECTURES, "qwen2_vl", "qwen2_5_vl"))
    parser.add_argument("--size", default="tiny", choices=list(SIZES))
    parser.add_argument("--seed", type=int, default=0)
    # bfloat16 stores the weights as released checkpoints (Qwen2.5's among them) are published.
    parser.add_argument("--dtype", default="float32", choices=list(STORAGE_DTYPES))
    args = parser.parse_args(argv)

    if args.arch in ("qwen2_vl", "qwen2_5_vl"):
        if args.size != "tiny" or args.dtype != "float32":
            parser.error(f"--arch {args.arch} is built in size tiny and float32 only")
        from lmforge.testing.tiny_vl import build_tiny_vl_model

        path = build_tiny_vl_model(args.output_dir, seed=args.seed, arch=args.arch)
    else:
        from lmforge.testing.tiny import build_tiny_model

        path = build_tiny_model(args.output_dir, arch=args.arch, size=args.size, seed=args.seed, dtype=args.dtype)
    print(f"Wrote a tiny {args.arch} model ({args.size}, {args.dtype}) to {path}")
    return 0
