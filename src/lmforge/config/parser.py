"""Read a run's settings: a YAML/JSON file plus `key=value` and `--key value` overrides.

Keys are flat (as LLaMA-Factory users write them) and belong to one dataclass each. Every
problem (unknown key, wrong type, cross-field conflict) is collected and reported at once,
before anything heavy is imported (transformers is imported only to look up a key of a training
config that is in none of lmforge's dataclasses).

The groups, RunConfig and which keys each command reads live in `lmforge.config.run` (GROUPS,
GROUP_TITLES, COMMAND_GROUPS and RunConfig are re-exported here for existing imports); the
cross-field checks in `lmforge.config.validate`.
"""

from __future__ import annotations

import json
import re
import types
import typing
from collections.abc import Collection
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from lmforge.config.run import (
    COMMAND_GROUPS,
    CONFIG_OF,
    GROUP_TITLES,
    GROUPS,
    RunConfig,
    reads,
)
from lmforge.config.train import trainer_keys
from lmforge.config.validate import UNSUPPORTED_SWITCHES, finalize, missing_feature
from lmforge.errors import UserError, did_you_mean
from lmforge.utils.logging import get_logger

__all__ = [
    "COMMAND_GROUPS",
    "GROUPS",
    "GROUP_TITLES",
    "ConfigError",
    "RunConfig",
    "coerce",
    "load_config_file",
    "parse_config",
    "split_argv",
    "split_options",
]

logger = get_logger(__name__)

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
_KEY_VALUE = re.compile(r"^[A-Za-z_][\w-]*=")


class ConfigError(UserError):
    """One or more problems in a run's settings, reported together."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = problems
        where = f" in {source}" if source else ""
        if len(problems) == 1:
            message = f"Config error{where}: {problems[0]}"
        else:
            listed = "\n".join(f"  - {p}" for p in problems)
            message = f"Config has {len(problems)} problems{where}:\n{listed}"
        super().__init__(message)


def field_index(command: str) -> dict[str, str]:
    """Map each accepted key of `command` to its group name."""
    index: dict[str, str] = {}
    for group in COMMAND_GROUPS[command]:
        for f in fields(GROUPS[group]):
            if f.name != "hf_passthrough":
                index.setdefault(f.name, group)
    return index


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Load a YAML or JSON mapping, with file and line in every error."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Config file '{path}' not found. Check the path (it is relative to {Path.cwd()}).")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{err.lineno}:{err.colno}: invalid JSON: {err.msg}.") from None
    else:
        import yaml

        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
            problem = getattr(err, "problem", None) or str(err)
            raise UserError(f"{where}: invalid YAML: {problem}.") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: a config file must be a mapping of key: value, got a {type(loaded).__name__}.")
    return loaded


def split_argv(argv: list[str]) -> tuple[str | None, dict[str, Any]]:
    """Split `[config.yaml] key=value --key value --flag` into the file path and raw overrides."""
    source = None
    rest = list(argv)
    if rest and not rest[0].startswith("-") and "=" not in rest[0]:
        if not rest[0].endswith(CONFIG_SUFFIXES):
            raise UserError(
                f"Expected a config file ending in .yaml, .yml or .json, or key=value settings; got '{rest[0]}'."
            )
        source = rest.pop(0)
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(rest):
        token = rest[i]
        if token.startswith("--"):
            key = token[2:]
            if "=" in key:
                key, value = key.split("=", 1)
            elif i + 1 < len(rest) and not rest[i + 1].startswith("--") and not _KEY_VALUE.match(rest[i + 1]):
                i += 1
                value = rest[i]
            else:
                value = "true"
        elif "=" in token:
            key, value = token.split("=", 1)
        else:
            raise UserError(f"Cannot read '{token}': write settings as key=value or --key value.")
        overrides[key.replace("-", "_")] = value
        i += 1
    return source, overrides


def split_options(argv: list[str], options: dict[str, bool]) -> tuple[list[str], list[str]]:
    """Separate a command's own options from its config arguments: (own, rest), each in order.

    `options` maps each option name to whether it takes a value (`{"num": True, "json": False}`):
    `--num 3`, `--num=3` and `--json` are the command's own; everything else (the config file,
    key=value, --key value) is left for `parse_config`.
    """
    own: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        name, has_value = (token[2:].split("=", 1)[0], "=" in token) if token.startswith("--") else (None, False)
        if name in options and options[name] and not has_value:
            own += argv[i : i + 2]  # the option and its value (argparse reports a missing one)
            i += 2
            continue
        if name in options and (options[name] or not has_value):
            own.append(token)
        else:
            rest.append(token)
        i += 1
    return own, rest


def parse_config(
    command: str,
    argv: list[str] | None = None,
    values: dict[str, Any] | None = None,
    *,
    template_names: Collection[str] | None = None,
) -> RunConfig:
    """Build a validated RunConfig for `command` from argv (`[config.yaml] key=value ...`), or from a dict of values.

    `template_names` are the names `template` may take (`lmforge.data.templates.list_templates()`):
    an unknown template is then reported with the other problems. With None that check is skipped,
    and loading the template fails later instead.

    Every key of the command's groups is accepted. One that the command does not read
    (`lmforge.config.run.command_keys`) and that is set to something other than its default is
    logged as a warning, once, by this function ("'pref_beta' is not used by `lmforge export`; it
    is ignored."); the caller has nothing to print. A key that is in none of lmforge's groups is, for
    the commands that train, looked up in transformers' TrainingArguments (transformers is imported
    only then) and handed to the Trainer.
    """
    source = None
    raw: dict[str, Any] = {}
    from_cli: set[str] = set()
    if argv is not None:
        source, overrides = split_argv(argv)
        if source:
            raw.update(load_config_file(source))
        raw.update(overrides)
        from_cli = set(overrides)
    if values:
        raw.update(values)
    raw = {str(key): value for key, value in raw.items()}

    index = field_index(command)
    problems: list[str] = []
    grouped: dict[str, dict[str, Any]] = {g: {} for g in COMMAND_GROUPS[command]}
    passthrough: dict[str, Any] = {}
    settings: list[tuple[str, str, Any]] = []  # (group, key, value) of the keys set, in config order
    hf_keys = _trainer_keys_if_needed(command, raw)
    for key, value in raw.items():
        group = index.get(key)
        if group is None:
            if key in UNSUPPORTED_SWITCHES:
                if coerce(value, bool | str | None, from_text=key in from_cli) not in (None, False, "", "none"):
                    problems.append(f"'{key}' is not supported by lmforge{UNSUPPORTED_SWITCHES[key]}; remove it or set "
                                    "it to false.")
                continue
            if key in hf_keys:
                passthrough[key] = _from_text(value) if key in from_cli else value
                continue
            problems.append(_unknown_key_message(key, command, index, hf_keys))
            continue
        hint = _field_types()[GROUPS[group]][key]
        try:
            grouped[group][key] = coerce(value, hint, from_text=key in from_cli)
            settings.append((group, key, grouped[group][key]))
        except ValueError as err:
            problems.append(f"'{key}': {err}")
    cfg = RunConfig(command=command, source=source)
    for group, kwargs in grouped.items():
        setattr(cfg, group, GROUPS[group](**kwargs))
    if passthrough:
        cfg.train.hf_passthrough = passthrough

    problems.extend(finalize(cfg, template_names))
    if problems:
        raise ConfigError(problems, source)
    for key in unused_keys(command, settings):
        logger.warning(f"'{key}' is not used by `lmforge {command}`; it is ignored.")
    return cfg


def unused_keys(command: str, settings: list[tuple[str, str, Any]]) -> list[str]:
    """The keys of `settings` ((group, key, value), in config order) that `command` does not read.

    A key set to its default is left out: whether read or not, it changes nothing. `lmforge data`
    takes a training config: the keys `lmforge train` reads are used there (`CONFIG_OF`).
    """
    commands = [command, *([CONFIG_OF[command]] if command in CONFIG_OF else [])]
    unused = []
    for group, key, value in settings:
        if any(reads(c, group, key) for c in commands):
            continue
        if value != _default(next(f for f in fields(GROUPS[group]) if f.name == key)):
            unused.append(key)
    return unused


def _default(f) -> Any:
    if f.default_factory is not MISSING:
        return f.default_factory()
    return f.default


def _own_keys() -> set[str]:
    return {f.name for cls in GROUPS.values() for f in fields(cls)}


def _trainer_keys_if_needed(command: str, raw: dict[str, Any]) -> frozenset[str]:
    """transformers' TrainingArguments keys, looked up only when a training config has a key that is not lmforge's."""
    if "train" not in COMMAND_GROUPS[command]:
        return frozenset()
    own = _own_keys()
    if all(key in own or key in UNSUPPORTED_SWITCHES for key in raw):
        return frozenset()
    return trainer_keys()


def _unknown_key_message(key: str, command: str, index: dict[str, str], hf_keys: frozenset[str]) -> str:
    for group, cls in GROUPS.items():
        if group not in COMMAND_GROUPS[command] and key in {f.name for f in fields(cls)}:
            return f"'{key}' is a {GROUP_TITLES[group]} setting that `lmforge {command}` does not use; remove it."
    feature = missing_feature(key)
    if feature:
        return f"'{key}' belongs to {feature}, a LLaMA-Factory feature that lmforge does not have yet; remove it."
    # Keys share long words (_num_workers, _backend, _loss): only a near spelling is a likely typo.
    hint = did_you_mean(key, [*index, *sorted(hf_keys)], cutoff=0.75)
    return f"unknown key '{key}'.{hint or ' See `lmforge ' + command + ' --help` for the valid keys.'}"


_TYPE_CACHE: dict[type, dict[str, Any]] = {}


def _field_types() -> dict[type, dict[str, Any]]:
    if not _TYPE_CACHE:
        for cls in GROUPS.values():
            _TYPE_CACHE[cls] = typing.get_type_hints(cls)
    return _TYPE_CACHE


def _from_text(value: Any) -> Any:
    """Interpret a command-line string as YAML would, with numbers like 1e-4 read as floats."""
    if not isinstance(value, str):
        return value
    import yaml

    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    if isinstance(parsed, str):
        try:
            return float(parsed)
        except ValueError:
            return parsed
    return parsed


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def coerce(value: Any, hint: Any, from_text: bool = False) -> Any:
    """Convert `value` to the field type `hint`; raise ValueError with a readable reason."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if value is None or (from_text and isinstance(value, str) and value.lower() in ("null", "none", "")):
            if type(None) in args:
                return None
        if len(non_none) == 1:
            return coerce(value, non_none[0], from_text)
        for candidate in non_none:
            try:
                return coerce(value, candidate, from_text)
            except ValueError:
                continue
        raise ValueError(f"cannot read {value!r} as {_type_name(hint)}.")
    if value is None:
        raise ValueError(f"must not be null (expected {_type_name(hint)}).")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(f"expected true or false, got {value!r}.")
    if hint is int:
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {value!r}.")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                try:
                    number = float(value)
                except ValueError:
                    pass
                else:
                    if number.is_integer():
                        return int(number)
        raise ValueError(f"expected an integer, got {value!r}.")
    if hint is float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}.")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ValueError(f"expected a number, got {value!r}.")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"expected a string, got {value!r}.")
    if origin is list:
        item = args[0] if args else str
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",") if p.strip()]
        elif isinstance(value, (list, tuple)):
            parts = list(value)
        else:
            parts = [value]
        return [coerce(p, item, from_text=isinstance(p, str)) for p in parts]
    if hint is dict or origin is dict:
        if isinstance(value, dict):
            return value
        if isinstance(value, str):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                parsed = None
            if isinstance(parsed, dict):
                return parsed
        raise ValueError(f"expected a mapping (a YAML mapping or a JSON object), got {value!r}.")
    return value


def _type_name(hint: Any) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}
    if hint in names:
        return names[hint]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is list:
        return "a comma-separated list"
    return " or ".join(_type_name(a) for a in args) if args else str(hint)
