"""`lmforge data {preview,check} CONFIG`: see what training will see, before it runs (see `lmforge.data.inspect`)."""

from __future__ import annotations

import argparse
import sys

from lmforge.commands.common import load_config
from lmforge.errors import UserError

USAGE = "Usage: lmforge data {preview,check} CONFIG.yaml [key=value ...] [--num N] [--split train|eval] [--json]"
OPTIONS = {"num": True, "split": True, "json": False}  # the command's own options: takes a value or not


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line with the command's own usage (exit 1)."""

    def error(self, message: str):
        raise UserError(f"{message}. {USAGE}")


def parse_options(argv: list[str]):
    """(InspectOptions, the config's own arguments) from the command line."""
    from lmforge.config.parser import split_options
    from lmforge.data.inspect import InspectOptions

    if not argv:
        raise UserError(USAGE)
    if argv[0] not in ("preview", "check"):
        raise UserError(f"'{argv[0]}' is not a data action; use preview or check. {USAGE}")
    own, rest = split_options(argv[1:], OPTIONS)
    parser = _Parser(prog="lmforge data", add_help=False)
    parser.add_argument("--num", type=int, default=3)
    parser.add_argument("--split", default="train")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(own)
    if args.num < 1:
        raise UserError(f"--num must be at least 1, got {args.num}.")
    if args.split not in ("train", "eval"):
        raise UserError(f"--split must be train or eval, got '{args.split}'.")
    return InspectOptions(argv[0], args.num, args.split, args.json), rest


def main(argv: list[str]) -> int:
    from lmforge.data.inspect import check, preview
    from lmforge.model.tokenizer import load_mm_processor, load_tokenizer_and_template

    options, config_argv = parse_options(argv)
    cfg = load_config("data", config_argv)
    # Exactly as `lmforge train` prepares them: a vision-language model's processor keeps its media rows.
    tokenizer, template = load_tokenizer_and_template(cfg.model, cfg.data)
    mm_processor = load_mm_processor(cfg.model)
    try:
        action = preview if options.action == "preview" else check
        return action(options, cfg, tokenizer, template, mm_processor=mm_processor)
    finally:
        sys.stdout.flush()
