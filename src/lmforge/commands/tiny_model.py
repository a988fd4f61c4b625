"""`lmforge tiny-model DIR`: build a tiny random-weight model folder offline (see `lmforge.testing.tiny`)."""

from __future__ import annotations

import argparse


def main(argv: list[str]) -> int:
    from lmforge.testing.tiny import ARCHITECTURES, SIZES

    parser = argparse.ArgumentParser(prog="lmforge tiny-model", description="Build a tiny random-weight model.")
    parser.add_argument("output_dir", help="Folder to write the model and tokenizer to.")
    parser.add_argument("--arch", default="llama", choices=ARCHITECTURES)
    parser.add_argument("--size", default="tiny", choices=list(SIZES))
    parser.add_argument("--seed", type=int, default=0)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse already printed the problem
        return int(exit_.code or 0)

    from lmforge.testing.tiny import build_tiny_model

    path = build_tiny_model(args.output_dir, arch=args.arch, size=args.size, seed=args.seed)
    print(f"Wrote a tiny {args.arch} model ({args.size}) to {path}")
    return 0
