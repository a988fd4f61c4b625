"""The `lmforge` command: a table of subcommands, each loaded only when it runs.

Nothing heavy (torch, transformers, datasets) is imported here, so `lmforge --help`,
`lmforge version` and `lmforge <cmd> --help` answer at once.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass

from lmforge import __version__
from lmforge.errors import UserError, did_you_mean


@dataclass(frozen=True)
class Command:
    name: str
    summary: str
    target: str  # "module:function" (lmforge.commands.<name>:main); takes the argument list, returns an exit code
    usage: str
    config: bool = True  # takes a YAML/JSON config plus key=value overrides


COMMANDS = [
    Command("train", "Fine-tune or pre-train a model (sft, pt; LoRA, freeze, full).", "lmforge.commands.train:main",
            "lmforge train CONFIG.yaml [key=value ...]"),
    Command("chat", "Chat with a model in the terminal.", "lmforge.commands.chat:main",
            "lmforge chat CONFIG.yaml [key=value ...]"),
    Command("webchat", "Chat with a model in the browser (Gradio).", "lmforge.commands.webchat:main",
            "lmforge webchat CONFIG.yaml [key=value ...]"),
    Command("webui", "LLaMA Board: train, evaluate and predict, chat and export from one page.",
            "lmforge.commands.webui:main", "lmforge webui [--lang en|zh]", config=False),
    Command("api", "Serve a model with an OpenAI-compatible API.", "lmforge.commands.api:main",
            "lmforge api CONFIG.yaml [key=value ...]"),
    Command("export", "Merge adapters and export safetensors, GGUF and an Ollama Modelfile.", "lmforge.commands.export:main",
            "lmforge export CONFIG.yaml [key=value ...]"),
    Command("eval", "Evaluate on MMLU / CMMLU / C-Eval style multiple-choice benchmarks.", "lmforge.commands.eval:main",
            "lmforge eval CONFIG.yaml [key=value ...]"),
    Command("eval-predictions", "Score a generated_predictions.jsonl with BLEU-4 and ROUGE.", "lmforge.commands.eval_predictions:main",
            "lmforge eval-predictions FILE [--output SCORES.json]", config=False),
    Command("data", "Inspect datasets: `data preview` renders samples, `data check` validates every row.",
            "lmforge.commands.data:main", "lmforge data {preview,check} CONFIG.yaml [key=value ...] [--json]"),
    Command("templates", "List chat templates, or show one: `lmforge templates NAME`.", "lmforge.commands.templates:main",
            "lmforge templates [NAME]", config=False),
    Command("tiny-model", "Build a tiny random-weight model offline (for tests, demos, benchmarks).",
            "lmforge.commands.tiny_model:main",
            "lmforge tiny-model OUTPUT_DIR [--arch llama|qwen2|qwen3] [--size tiny|0.5b] [--seed N]", config=False),
    Command("expand-blocks", "LLaMA Pro: add identity copies of evenly spaced layers, to train only those.",
            "lmforge.commands.expand_blocks:main",
            "lmforge expand-blocks MODEL OUTPUT_DIR --num_expand N [--shard_size 5GB]", config=False),
    Command("env", "Print the platform and library versions.", "lmforge.commands.env:main", "lmforge env", config=False),
    Command("version", "Print the lmforge version.", "lmforge.cli:version_main", "lmforge version", config=False),
    Command("help", "Show this help, or a command's help: `lmforge help train`.", "lmforge.cli:help_main",
            "lmforge help [COMMAND]", config=False),
]
BY_NAME = {c.name: c for c in COMMANDS}


def usage() -> str:
    width = max(len(c.name) for c in COMMANDS)
    lines = [
        f"lmforge {__version__}: fine-tune, serve, export and evaluate language models.",
        "",
        "Usage: lmforge <command> [CONFIG.yaml] [key=value ...] [--key value ...]",
        "",
        "Commands:",
    ]
    lines += [f"  {c.name:<{width}}  {c.summary}" for c in COMMANDS]
    lines += ["", "Run `lmforge <command> --help` for a command's settings."]
    return "\n".join(lines)


def command_help(cmd: Command) -> str:
    """The command's usage and, for a config command, the settings it reads (`lmforge.config.run.command_keys`)."""
    lines = [f"Usage: {cmd.usage}", "", cmd.summary]
    if cmd.config:
        from dataclasses import fields

        from lmforge.config.run import CONFIG_OF, GROUP_TITLES, GROUPS, command_keys

        lines += [
            "",
            "Settings come from a YAML or JSON file, then key=value or --key value overrides (comma-separated",
            f"lists: dataset=a,b). Unknown keys are an error. Listed are the keys `lmforge {cmd.name}` reads; the other",
            "LLaMA-Factory keys of these groups are accepted and ignored, with a warning when set.",
        ]
        if cmd.name in CONFIG_OF:
            other = CONFIG_OF[cmd.name]
            lines += [f"It takes a `lmforge {other}` config: the settings `lmforge {other}` reads are accepted too,",
                      f"without a warning, and checked as `lmforge {other}` checks them."]
        for group, keys in command_keys(cmd.name).items():
            if not keys:
                continue
            helps = {f.name: f.metadata.get("help", "") for f in fields(GROUPS[group])}
            lines += ["", f"{GROUP_TITLES[group].capitalize()} settings:"]
            for key in keys:
                if key == "hf_passthrough":
                    lines.append("  (any other transformers TrainingArguments key is passed to the Trainer)")
                    continue
                lines.append(f"  {key:<34} {helps[key]}")
    return "\n".join(lines)


def version_main(argv: list[str]) -> int:
    print(f"lmforge {__version__}")
    return 0


def help_main(argv: list[str]) -> int:
    if argv:
        cmd = _find(argv[0])
        if cmd is None:
            return 2
        print(command_help(cmd))
    else:
        print(usage())
    return 0


def _find(name: str) -> Command | None:
    cmd = BY_NAME.get(name)
    if cmd is None:
        print(f"lmforge: unknown command '{name}'.{did_you_mean(name, BY_NAME)} "
              "Run `lmforge help` to list the commands.", file=sys.stderr)
    return cmd


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        return version_main([])
    cmd = _find(argv[0])
    if cmd is None:
        return 2
    rest = argv[1:]
    if cmd.name != "help" and any(a in ("-h", "--help") for a in rest):
        print(command_help(cmd))
        return 0
    module_name, func_name = cmd.target.split(":")
    try:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            print(f"lmforge {cmd.name}: not available in lmforge {__version__} yet.", file=sys.stderr)
            return 1
        return int(getattr(module, func_name)(rest) or 0)
    except UserError as err:
        print(f"lmforge {cmd.name}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"lmforge {cmd.name}: interrupted.", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (e.g. `| head`); that is not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
