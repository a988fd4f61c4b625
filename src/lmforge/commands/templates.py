"""`lmforge templates [NAME]`: list the templates, or show one's format and an example render."""

from __future__ import annotations

from lmforge.commands.common import ArgumentParser
from lmforge.data.templates.show import NamedSpecials, describe


def main(argv: list[str]) -> int:
    from lmforge.data.templates import get_template, list_templates

    parser = ArgumentParser(prog="lmforge templates")
    parser.add_argument("name", nargs="?")
    parser.add_argument("--model", help="Render with this model's tokenizer (its real BOS/EOS tokens).")
    args = parser.parse_args(argv)
    if args.name is None:
        for name in list_templates():
            print(name)
        return 0
    template = get_template(args.name)
    if args.model:
        from lmforge.config import ModelArguments
        from lmforge.model.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(ModelArguments(model_name_or_path=args.model))
        template.fix_tokenizer(tokenizer)
    else:
        tokenizer = NamedSpecials()
    print(describe(template, tokenizer))
    return 0
