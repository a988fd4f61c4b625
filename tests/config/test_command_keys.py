"""Which keys each command reads: the help lists exactly those, validation looks at no other, and a set
key that the command does not read is accepted with a warning."""

from __future__ import annotations

import ast
import logging
import re
import subprocess
import sys
import types
import typing
from dataclasses import MISSING, fields

import pytest

from lmforge.cli import main
from lmforge.config import ConfigError, parse_config
from lmforge.config import parser as parser_module
from lmforge.config.readers import ALL_READERS
from lmforge.config.run import (
    COMMAND_GROUPS,
    COMMAND_READERS,
    CONFIG_OF,
    GROUPS,
    RunConfig,
    checked_readers,
    command_keys,
    read_by,
)
from lmforge.config.validate import check
from tests.conftest import REPO_ROOT

BASE = ["model_name_or_path=m", "do_train=true", "dataset=identity", "output_dir=out"]
EXPORT = ["model_name_or_path=m", "export_dir=out"]


def help_keys(capsys, command: str) -> dict[str, list[str]]:
    """The keys `lmforge help COMMAND` lists, by the title of their settings block."""
    assert main(["help", command]) == 0
    listed: dict[str, list[str]] = {}
    block = None
    for line in capsys.readouterr().out.splitlines():
        if line.endswith(" settings:"):
            block = line[: -len(" settings:")].lower()
            listed[block] = []
        elif block and (match := re.match(r"^  (\w+) ", line)):
            listed[block].append(match.group(1))
    return listed


def flat(listed: dict[str, list[str]]) -> set[str]:
    return {key for keys in listed.values() for key in keys}


@pytest.fixture()
def warnings_logged():
    """The messages parse_config logs as warnings (the lmforge logger does not propagate to caplog)."""
    records: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = parser_module.logger
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


# -- the help ------------------------------------------------------------------------------------------


def test_help_export_lists_only_what_export_reads(capsys):
    keys = flat(help_keys(capsys, "export"))
    assert {"export_dir", "model_name_or_path", "template", "adapter_name_or_path", "gguf_type"} <= keys
    assert not keys & {"pref_beta", "lora_rank", "ppo_epochs", "dataset", "cutoff_len", "temperature", "stage"}


def test_help_chat_lists_only_what_chat_reads(capsys):
    keys = flat(help_keys(capsys, "chat"))
    assert {"template", "temperature", "max_new_tokens", "system", "infer_backend", "vllm_maxlen"} <= keys
    assert not keys & {"cutoff_len", "dataset", "lora_rank", "learning_rate", "export_dir", "max_length"}


def test_help_train_and_data(capsys):
    train = flat(help_keys(capsys, "train"))
    assert {"learning_rate", "lora_rank", "cutoff_len", "max_new_tokens", "tokenized_path", "infer_backend"} <= train
    assert not train & {"system", "vllm_maxlen", "max_length", "export_dir"}
    assert {"pref_beta", "pref_loss", "ref_model"} <= train  # the dpo and kto stages
    assert {"reward_model", "reward_model_type", "ppo_epochs", "ppo_buffer_size", "ppo_target"} <= train  # rm, ppo
    assert {"reward_funcs", "reward_weights", "num_generations", "max_completion_length", "beta"} <= train  # grpo
    data = help_keys(capsys, "data")
    assert "generation" not in data  # a group the command reads nothing of is left out
    assert {"dataset", "cutoff_len", "template", "seed", "stage"} <= flat(data)
    assert not flat(data) & {"learning_rate", "lora_rank", "tokenized_path", "adapter_name_or_path"}


@pytest.mark.parametrize("command", COMMAND_GROUPS)
def test_help_lists_exactly_the_keys_the_command_reads(capsys, command):
    listed = help_keys(capsys, command)
    accepted = {f.name for group in COMMAND_GROUPS[command] for f in fields(GROUPS[group])}
    assert flat(listed) <= accepted
    reads = {key for keys in command_keys(command).values() for key in keys} - {"hf_passthrough"}
    assert flat(listed) == reads


# -- the record: every field says who reads it -----------------------------------------------------------


def test_every_field_names_its_readers():
    for group, cls in GROUPS.items():
        for f in fields(cls):
            assert "read_by" in f.metadata, f"{group}.{f.name} has no read_by"
            assert isinstance(f.metadata["read_by"], tuple)
            assert set(f.metadata["read_by"]) <= set(ALL_READERS), f"{group}.{f.name}"
    assert set(COMMAND_READERS) == set(COMMAND_GROUPS)
    for readers in COMMAND_READERS.values():
        assert set(readers) <= set(ALL_READERS)


@pytest.mark.parametrize("command", COMMAND_GROUPS)
def test_a_command_reads_no_key_it_does_not_accept(command):
    readers = checked_readers(command)
    for group, cls in GROUPS.items():
        if group not in COMMAND_GROUPS[command]:
            assert not [f.name for f in fields(cls) if readers.intersection(read_by(f))], group


class Recorder:
    """A settings group that records which of its fields are read."""

    def __init__(self, obj, group: str, seen: set):
        self._obj, self._group, self._seen = obj, group, seen

    def __getattr__(self, name):
        self._seen.add((self._group, name))
        return getattr(self._obj, name)


def _busy_value(hint):
    """A value that makes a check look further: true, a non-empty list, a small number."""
    origin, args = typing.get_origin(hint), [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        return _busy_value(args[0])
    if hint is bool:
        return True
    if origin is list:
        return [_busy_value(args[0] if args else str)]
    return {int: 0, float: 0.5, str: "x", dict: {"a": 1}}.get(hint, None)


def _busy(cls, **fixed):
    hints = typing.get_type_hints(cls)
    values = {f.name: _busy_value(hints[f.name]) for f in fields(cls) if f.name != "hf_passthrough"}
    values.update(fixed)
    return cls(**values)


@pytest.mark.parametrize("command", COMMAND_GROUPS)
@pytest.mark.parametrize("variant", ["defaults", "busy-pt", "busy-sft", "busy-interleave"])
def test_validation_reads_only_what_the_command_reads(command, variant):
    cfg = RunConfig(command=command)
    if variant != "defaults":
        for group, cls in GROUPS.items():
            fixed = {}
            if group == "finetune":
                fixed = {"stage": variant.split("-")[1] if "interleave" not in variant else "sft"}
            if group == "data" and variant == "busy-interleave":
                fixed = {"mix_strategy": "interleave_under", "dataset": ["a", "b"]}
            setattr(cfg, group, _busy(cls, **fixed))
    seen: set[tuple[str, str]] = set()
    for group in GROUPS:
        setattr(cfg, group, Recorder(getattr(cfg, group), group, seen))
    check(cfg, template_names=["t"])
    readers = checked_readers(command)
    allowed = {(g, f.name) for g, cls in GROUPS.items() for f in fields(cls) if readers.intersection(read_by(f))}
    assert seen - allowed == set()


def test_validate_does_not_import_the_parser():
    tree = ast.parse((REPO_ROOT / "src" / "lmforge" / "config" / "validate.py").read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert "lmforge.config.parser" not in imported
    assert not any(name.startswith("lmforge.data") for name in imported)


# -- keys a command accepts but does not read ------------------------------------------------------------


def test_unused_key_is_accepted_with_one_warning(warnings_logged):
    cfg = parse_config("export", [*EXPORT, "pref_beta=0.5", "lora_rank=16", "dataset=identity"])
    assert cfg.finetune.pref_beta == 0.5
    assert warnings_logged == [
        "'pref_beta' is not used by `lmforge export`; it is ignored.",
        "'lora_rank' is not used by `lmforge export`; it is ignored.",
        "'dataset' is not used by `lmforge export`; it is ignored.",
    ]


def test_unused_key_warning_reaches_stderr(capsys):
    parse_config("chat", ["model_name_or_path=m", "cutoff_len=512"])
    err = capsys.readouterr().err
    assert err.count("'cutoff_len' is not used by `lmforge chat`; it is ignored.") == 1


def test_no_warning_for_keys_read_or_left_at_their_default(warnings_logged):
    parse_config("export", [*EXPORT, "template=llama3", "finetuning_type=lora", "infer_dtype=float16",
                            "lora_rank=8", "stage=sft"])
    parse_config("train", [*BASE, "max_new_tokens=64", "infer_backend=huggingface", "lora_rank=16"])
    assert warnings_logged == []


def test_data_takes_a_training_config(warnings_logged):
    parse_config("data", [*BASE, "learning_rate=1e-4", "lora_rank=16", "dataloader_persistent_workers=true",
                          "include_effective_tokens_per_second=true"])
    assert warnings_logged == ["'include_effective_tokens_per_second' is not used by `lmforge data`; it is ignored."]
    assert CONFIG_OF["data"] == "train"
    with pytest.raises(ConfigError, match="'bf16' and 'fp16' cannot both be true."):
        parse_config("data", [*BASE, "bf16=true", "fp16=true"])  # checked as `lmforge train` checks it


def test_a_key_a_command_does_not_read_is_not_checked_there(warnings_logged):
    cfg = parse_config("export", [*EXPORT, "lora_rank=0", "stage=dpo"])
    assert cfg.finetune.lora_rank == 0
    assert len(warnings_logged) == 2
    with pytest.raises(ConfigError, match="'lora_rank' must be positive, got 0."):
        parse_config("train", [*BASE, "lora_rank=0"])


# -- stages ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["train", "data", "chat"])
def test_unknown_stage_is_refused(command):
    with pytest.raises(ConfigError) as err:
        parse_config(command, [*BASE, "stage=ppx"] if command in ("train", "data") else ["model_name_or_path=m",
                                                                                          "stage=ppx"])
    assert "'stage' is 'ppx', which is not one of: pt, sft, rm, ppo, dpo, kto, grpo. Did you mean 'ppo'?" in str(
        err.value)


# -- transformers' own TrainingArguments keys --------------------------------------------------------------


def _imports_transformers(*args: str) -> bool:
    code = (
        "import sys\n"
        "from lmforge.config import parse_config\n"
        f"parse_config({args[0]!r}, {list(args[1:])!r})\n"
        "print('transformers' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip() == "True"


def test_transformers_is_imported_only_for_a_key_that_is_not_lmforge_s():
    assert not _imports_transformers("train", *BASE, "learning_rate=1e-4", "use_galore=false")
    assert not _imports_transformers("chat", "model_name_or_path=m", "temperature=0.5")
    assert _imports_transformers("train", *BASE, "dataloader_persistent_workers=true")


def test_unknown_trainer_key_suggests_from_transformers_keys():
    with pytest.raises(ConfigError) as err:
        parse_config("train", [*BASE, "dataloader_persistant_workers=true", "lerning_rate=1e-4"])
    message = str(err.value)
    assert "unknown key 'dataloader_persistant_workers'. Did you mean 'dataloader_persistent_workers'?" in message
    assert "unknown key 'lerning_rate'. Did you mean 'learning_rate'?" in message


def test_training_args_drop_only_lmforge_s_own_fields(tmp_path):
    from lmforge.config.train import TrainArguments, trainer_keys
    from lmforge.train import args as train_args

    ours = {f.name for f in fields(TrainArguments)}
    assert ours - trainer_keys() <= train_args._OWN_FIELDS
    # Trainer keys that lmforge carries out itself (the decoder layers compiled, not the whole model).
    assert train_args._OWN_FIELDS - (ours - trainer_keys()) == {"torch_compile", "torch_compile_backend",
                                                                "torch_compile_mode"}
    cfg = parse_config("train", [*BASE[:-1], f"output_dir={tmp_path}", "use_cpu=true"])
    assert train_args.build_training_args(cfg, None).output_dir == str(tmp_path)
    cfg.train.hf_passthrough = {"not_a_trainer_key": 1}
    with pytest.raises(RuntimeError, match="'not_a_trainer_key'"):
        train_args.build_training_args(cfg, None)


def test_field_defaults_are_plain():
    """unused_keys compares set values with the defaults: every default must be a value or a factory."""
    for cls in GROUPS.values():
        for f in fields(cls):
            assert f.default is not MISSING or f.default_factory is not MISSING


def test_split_options():
    from lmforge.config.parser import split_options

    own, rest = split_options(["run.yaml", "--num", "5", "lr=1", "--json", "--split=eval", "--bf16", "--x", "3"],
                              {"num": True, "split": True, "json": False})
    assert own == ["--num", "5", "--json", "--split=eval"]
    assert rest == ["run.yaml", "lr=1", "--bf16", "--x", "3"]
