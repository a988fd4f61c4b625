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
    target: str  # "module:function"; the function takes the argument list and returns an exit code
    usage: str
    config: bool = True  # takes a YAML/JSON config plus key=value overrides


COMMANDS = [
    Command("train", "Fine-tune or pre-train a model (sft, pt; LoRA, freeze, full).", "lmforge.train.run:main",
            "lmforge train CONFIG.yaml [key=value ...]"),
    Command("chat", "Chat with a model in the terminal.", "lmforge.chat.cli:main",
            "lmforge chat CONFIG.yaml [key=value ...]"),
    Command("webchat", "Chat with a model in the browser (Gradio).", "lmforge.webui.webchat:main",
            "lmforge webchat CONFIG.yaml [key=value ...]"),
    Command("webui", "Open LLaMA Board: train, evaluate, chat and export from one page.", "lmforge.webui.board:main",
            "lmforge webui", config=False),
    Command("api", "Serve a model with an OpenAI-compatible API.", "lmforge.api.server:main",
            "lmforge api CONFIG.yaml [key=value ...]"),
    Command("export", "Merge adapters and export safetensors, GGUF and an Ollama Modelfile.", "lmforge.export.run:main",
            "lmforge export CONFIG.yaml [key=value ...]"),
    Command("eval", "Evaluate on MMLU / CMMLU / C-Eval style multiple-choice benchmarks.", "lmforge.eval.run:main",
            "lmforge eval CONFIG.yaml [key=value ...]"),
    Command("eval-predictions", "Score a generated_predictions.jsonl with BLEU-4 and ROUGE.", "lmforge.eval.score:main",
            "lmforge eval-predictions FILE [--output SCORES.json]", config=False),
    Command("data", "Inspect datasets: `data preview` renders samples, `data check` validates every row.",
            "lmforge.data.inspect:main", "lmforge data {preview,check} CONFIG.yaml [key=value ...] [--json]"),
    Command("templates", "List chat templates, or show one: `lmforge templates NAME`.", "lmforge.data.templates.show:main",
            "lmforge templates [NAME]", config=False),
    Command("tiny-model", "Build a tiny random-weight model offline (for tests, demos, benchmarks).",
            "lmforge.testing.cli:main",
            "lmforge tiny-model OUTPUT_DIR [--arch llama|qwen2|qwen3] [--size tiny|0.5b] [--seed N]", config=False),
    Command("env", "Print the platform and library versions.", "lmforge.cli:env_main", "lmforge env", config=False),
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
    lines = [f"Usage: {cmd.usage}", "", cmd.summary]
    if cmd.config:
        from lmforge.config.parser import COMMAND_GROUPS, GROUP_TITLES, GROUPS

        name = "data" if cmd.name == "data" else cmd.name
        lines += [
            "",
            "Settings come from a YAML or JSON file, then key=value or --key value overrides (comma-separated",
            "lists: dataset=a,b). Unknown keys are an error.",
        ]
        from dataclasses import fields

        for group in COMMAND_GROUPS[name]:
            lines += ["", f"{GROUP_TITLES[group].capitalize()} settings:"]
            for f in fields(GROUPS[group]):
                if f.name == "hf_passthrough":
                    lines.append("  (any other transformers TrainingArguments key is passed to the Trainer)")
                    continue
                lines.append(f"  {f.name:<34} {f.metadata.get('help', '')}")
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


def env_main(argv: list[str]) -> int:
    import platform
    from importlib import metadata

    rows = [("lmforge", __version__), ("Platform", platform.platform()), ("Python", platform.python_version())]
    for package in ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "tokenizers", "safetensors",
                    "gradio", "fastapi", "gguf", "vllm", "deepspeed", "bitsandbytes"):
        try:
            rows.append((package, metadata.version(package)))
        except metadata.PackageNotFoundError:
            if package in ("torch", "transformers", "peft", "trl", "datasets", "accelerate"):
                rows.append((package, "not installed"))
    try:
        import torch

        cuda = torch.cuda.is_available()
        rows.append(("CUDA available", str(cuda)))
        if cuda:
            rows.append(("GPU", torch.cuda.get_device_name(0)))
            rows.append(("GPU count", str(torch.cuda.device_count())))
    except ImportError:
        rows.append(("CUDA available", "unknown (torch not installed)"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"- {key:<{width}} : {value}")
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
