"""Dataset definitions: `dataset_info.json` (LLaMA-Factory's schema) parsed into immutable `DatasetSpec`s.

`dataset_dir` is a folder holding `dataset_info.json`, the word `ONLINE` (every name is a hub id),
`REMOTE:<hub dataset repo>` (the file is downloaded from that repo), or the parsed dict itself.

Two rules follow LLaMA-Factory exactly and are worth knowing:
- a `columns` object replaces every default column (`{"prompt": "text"}` means there is no
  `input`/`output` column), so a plain-text file needs no dummy columns;
- source keys are chosen in the order hub urls, `script_url`, `cloud_file_name`, `file_name`.
One rule is deliberately different: a `tags` object only overrides the tags it names. LLaMA-Factory
sets the unnamed ones to null, which only ever turns valid rows into dropped ones (a leading
`system` message, a `tool` role), never the reverse.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from lmforge.errors import UserError, did_you_mean

DATA_CONFIG = "dataset_info.json"
ONLINE = "ONLINE"
REMOTE_PREFIX = "REMOTE:"
FORMATS = ("alpaca", "sharegpt", "openai")
SOURCE_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name", "file_name")
# `revision` (hub revision) and `file_sha1` appear in dataset_info.json files written for older
# LLaMA-Factory versions; they are accepted so such files keep working (`file_sha1` is ignored).
ENTRY_KEYS = SOURCE_KEYS + (
    "formatting", "ranking", "subset", "split", "folder", "num_samples", "columns", "tags", "revision", "file_sha1",
)  # fmt: skip
_MAX_LISTED = 20


@dataclass(frozen=True)
class Columns:
    """Which source column holds each part of a row (None: the dataset has no such column)."""

    prompt: str | None = "instruction"
    query: str | None = "input"
    response: str | None = "output"
    history: str | None = None
    messages: str | None = "conversations"
    system: str | None = None
    tools: str | None = None
    images: str | None = None
    videos: str | None = None
    audios: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    kto_tag: str | None = None


@dataclass(frozen=True)
class Tags:
    """Keys and role names of the messages of sharegpt/openai rows."""

    role_tag: str = "from"
    content_tag: str = "value"
    user_tag: str = "human"
    assistant_tag: str = "gpt"
    observation_tag: str = "observation"
    function_tag: str = "function_call"
    system_tag: str = "system"


OPENAI_TAGS = Tags(
    role_tag="role",
    content_tag="content",
    user_tag="user",
    assistant_tag="assistant",
    observation_tag="tool",
    function_tag="function_call",
    system_tag="system",
)
COLUMN_KEYS = tuple(f.name for f in fields(Columns))
TAG_KEYS = tuple(f.name for f in fields(Tags))


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of `dataset_info.json`, with LLaMA-Factory's defaults filled in.

    `load_from` is where the rows come from (`file`, `hf_hub`, `ms_hub`, `om_hub`, `script`,
    `cloud_file`, or `hf_file`: a `file_name` inside a `REMOTE:` repo) and `source` is the path, hub
    id or url used to load them. `info_path` is the dataset_info.json it came from (None for a dict or
    `ONLINE`) and `where` says the same in words, for messages.
    """

    name: str
    load_from: str
    source: str
    dataset_dir: str = "."
    info_path: str | None = None
    where: str = f"`dataset_dir: {ONLINE}`"
    file_name: str | None = None
    hf_hub_url: str | None = None
    ms_hub_url: str | None = None
    om_hub_url: str | None = None
    script_url: str | None = None
    cloud_file_name: str | None = None
    formatting: str = "alpaca"
    ranking: bool = False
    subset: str | None = None
    split: str = "train"
    folder: str | None = None
    num_samples: int | None = None
    revision: str | None = None
    columns: Columns = field(default_factory=Columns)
    columns_given: bool = False
    tags: Tags = field(default_factory=Tags)

    @property
    def location(self) -> str:
        """The file, folder, hub id or url the rows are read from, for error messages."""
        if self.load_from in ("file", "script"):
            return os.path.abspath(os.path.join(self.dataset_dir, self.source))
        return self.source


def is_env_enabled(name: str) -> bool:
    """LLaMA-Factory's switch semantics: `1`, `true` or `y` (any case) turn an env variable on."""
    return os.getenv(name, "0").strip().lower() in ("1", "true", "y")


def get_dataset_specs(
    names: Sequence[str] | str | None, dataset_dir: str | Mapping[str, Any] = "data"
) -> list[DatasetSpec]:
    """Return the specs of `names` (in order) as defined by `dataset_dir`.

    Raises `UserError` naming the file and the fix for a missing or invalid dataset_info.json, an
    unknown dataset name, and every problem in the requested entries (all reported at once).
    """
    if names is None:
        return []
    if isinstance(names, str):
        names = [name.strip() for name in names.split(",") if name.strip()]
    if isinstance(dataset_dir, Mapping):
        info, info_path, base_dir = dict(dataset_dir), None, "."
    elif dataset_dir == ONLINE:
        return [_online_spec(name) for name in names]
    elif dataset_dir.startswith(REMOTE_PREFIX):
        info_path = _download_remote_info(dataset_dir[len(REMOTE_PREFIX) :])
        info, base_dir = _read_info(info_path), os.path.dirname(info_path)
    else:
        info_path = os.path.join(dataset_dir, DATA_CONFIG)
        info, base_dir = _read_info(info_path, dataset_dir), dataset_dir

    where = os.path.abspath(info_path) if info_path else "the dataset_info dict"
    specs, problems = [], []
    for name in names:
        if name not in info:
            raise UserError(_unknown_name_message(name, info, where, base_dir))
        entry_problems: list[str] = []
        spec = _parse_entry(name, info[name], base_dir, info_path, where, entry_problems)
        problems.extend(entry_problems)
        if spec is not None:
            specs.append(spec)
    if problems:
        numbered = problems[0] if len(problems) == 1 else " ".join(f"({i}) {p}" for i, p in enumerate(problems, 1))
        raise UserError(f"Invalid dataset definition in {where}: {numbered}")
    if isinstance(dataset_dir, str) and dataset_dir.startswith(REMOTE_PREFIX):
        repo = dataset_dir[len(REMOTE_PREFIX) :]
        specs = [_as_remote_file(spec, repo) for spec in specs]
    return specs


def _online_spec(name: str) -> DatasetSpec:
    if is_env_enabled("USE_MODELSCOPE_HUB"):
        return DatasetSpec(name=name, load_from="ms_hub", source=name, ms_hub_url=name)
    if is_env_enabled("USE_OPENMIND_HUB"):
        return DatasetSpec(name=name, load_from="om_hub", source=name, om_hub_url=name)
    return DatasetSpec(name=name, load_from="hf_hub", source=name, hf_hub_url=name)


def _as_remote_file(spec: DatasetSpec, repo: str) -> DatasetSpec:
    if spec.load_from != "file":
        return spec
    return replace(spec, load_from="hf_file", source=repo)


def _download_remote_info(repo: str) -> str:
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id=repo, filename=DATA_CONFIG, repo_type="dataset")
    except Exception as err:
        offline = " (HF_HUB_OFFLINE is set and it is not cached)" if is_env_enabled("HF_HUB_OFFLINE") else ""
        raise UserError(
            f"Cannot download {DATA_CONFIG} from the hub dataset repo '{repo}'{offline}: {_first_line(err)}. "
            f"Check the `dataset_dir: {REMOTE_PREFIX}{repo}` setting and your connection, or use a local folder."
        ) from None


def list_datasets(dataset_dir: str) -> tuple[list[DatasetSpec], list[str]]:
    """Every entry of `dataset_dir`'s dataset_info.json that parses, and one message per problem.

    For pickers (LLaMA Board): a broken file or entry is reported with its text, never hidden.
    Raises UserError when dataset_info.json itself cannot be read.
    """
    info_path = os.path.join(dataset_dir, DATA_CONFIG)
    info = _read_info(info_path, dataset_dir)
    where = os.path.abspath(info_path)
    specs, problems = [], []
    for name, entry in info.items():
        entry_problems: list[str] = []
        spec = _parse_entry(name, entry, dataset_dir, info_path, where, entry_problems)
        if entry_problems:
            problems.append(f"Invalid dataset definition in {where}: {' '.join(entry_problems)}")
        elif spec is not None:
            specs.append(spec)
    return specs, problems


def _read_info(info_path: str, dataset_dir: str | None = None) -> dict[str, Any]:
    if not os.path.isfile(info_path):
        folder = os.path.abspath(dataset_dir if dataset_dir is not None else os.path.dirname(info_path))
        hint = f" (`dataset_dir: {dataset_dir}` is read relative to the working directory {os.getcwd()})"
        if dataset_dir is not None and os.path.isabs(dataset_dir):
            hint = ""
        raise UserError(
            f"{DATA_CONFIG} not found in '{folder}'{hint}. Set `dataset_dir` to the folder that holds it, "
            f"or use `dataset_dir: {ONLINE}` to load hub datasets by id."
        )
    try:
        with open(info_path, encoding="utf-8") as f:
            info = json.load(f)
    except json.JSONDecodeError as err:
        raise UserError(
            f"Invalid JSON in {os.path.abspath(info_path)} at line {err.lineno}, column {err.colno}: {err.msg}. "
            "Fix the file (a trailing comma or a missing quote is the usual cause)."
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"Cannot read {os.path.abspath(info_path)}: {err}.") from None
    if not isinstance(info, dict):
        raise UserError(
            f"{os.path.abspath(info_path)} must hold a JSON object that maps dataset names to their "
            f'definitions, like {{"my_data": {{"file_name": "my_data.json"}}}}; found a {type(info).__name__}.'
        )
    return info


def _unknown_name_message(name: str, info: Mapping[str, Any], where: str, base_dir: str) -> str:
    defined = list(info)
    listed = ", ".join(defined[:_MAX_LISTED]) + (
        f", ... ({len(defined) - _MAX_LISTED} more)" if len(defined) > _MAX_LISTED else ""
    )
    message = f"Dataset '{name}' is not defined in {where}.{did_you_mean(name, defined)} Defined: {listed or '(none)'}."
    if (
        os.path.exists(os.path.join(base_dir, name))
        or os.path.exists(name)
        or os.path.splitext(name)[1] in (".json", ".jsonl", ".csv", ".parquet", ".arrow", ".txt")
    ):
        stem = os.path.splitext(os.path.basename(name.rstrip("/")))[0] or "my_data"
        message += (
            f" `dataset` takes names defined in {DATA_CONFIG}, not file paths: add an entry such as "
            f'"{stem}": {{"file_name": "{name}"}} and use `dataset: {stem}`.'
        )
    else:
        message += (
            f" Add an entry for it to {DATA_CONFIG}, or use `dataset_dir: {ONLINE}` to load '{name}' from the hub."
        )
    return message


def _parse_entry(
    name: str, entry: Any, base_dir: str, info_path: str | None, where: str, problems: list[str]
) -> DatasetSpec | None:
    if not isinstance(entry, dict):
        problems.append(
            f'dataset \'{name}\' must be a JSON object, like {{"file_name": "{name}.json"}}; found {entry!r}.'
        )
        return None

    for key in entry:
        if key not in ENTRY_KEYS:
            problems.append(
                f"dataset '{name}' has unknown field '{key}'.{did_you_mean(key, ENTRY_KEYS)} "
                f"Valid fields: {', '.join(k for k in ENTRY_KEYS if k != 'file_sha1')}."
            )

    strings = {key: _get_str(name, entry, key, problems) for key in SOURCE_KEYS + ("subset", "folder", "revision")}
    formatting = entry.get("formatting", "alpaca")
    formats = _known_formats()
    if formatting not in formats:
        shown = formatting if isinstance(formatting, str) else repr(formatting)
        hint = did_you_mean(shown, formats) if isinstance(formatting, str) else ""
        problems.append(f"dataset '{name}' has formatting '{shown}'.{hint} Use one of: {', '.join(formats)}.")
        formatting = "alpaca"
    ranking = entry.get("ranking", False)
    if not isinstance(ranking, bool):
        problems.append(f"dataset '{name}' has `ranking: {json.dumps(ranking)}`; it must be true or false.")
        ranking = False
    split = entry.get("split", "train")
    if not isinstance(split, str) or not split:
        problems.append(
            f"dataset '{name}' has `split: {json.dumps(split)}`; it must be a split name such as \"train\"."
        )
        split = "train"
    num_samples = entry.get("num_samples")
    if num_samples is not None and (
        isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1
    ):
        problems.append(
            f"dataset '{name}' has `num_samples: {json.dumps(num_samples)}`; it must be a positive integer."
        )
        num_samples = None

    columns, columns_given = _parse_columns(name, entry, formatting, problems)
    if ranking and (columns.chosen is None or columns.rejected is None):
        problems.append(
            f"dataset '{name}' has `ranking: true` but no chosen/rejected columns; add "
            f'"columns": {{..., "chosen": "chosen", "rejected": "rejected"}} naming the preferred and the '
            "rejected answers."
        )
    tags = _parse_tags(name, entry, formatting, problems)

    load_from, source = _pick_source(strings)
    if source is None:
        problems.append(
            f"dataset '{name}' has no source: give one of {', '.join(SOURCE_KEYS)} "
            f'(for a local file: "file_name": "{name}.json").'
        )
        return None
    return DatasetSpec(
        name=name,
        load_from=load_from,
        source=source,
        dataset_dir=base_dir,
        info_path=os.path.abspath(info_path) if info_path else None,
        where=where,
        file_name=strings["file_name"],
        hf_hub_url=strings["hf_hub_url"],
        ms_hub_url=strings["ms_hub_url"],
        om_hub_url=strings["om_hub_url"],
        script_url=strings["script_url"],
        cloud_file_name=strings["cloud_file_name"],
        formatting=formatting,
        ranking=ranking,
        subset=strings["subset"],
        split=split,
        folder=strings["folder"],
        num_samples=num_samples,
        revision=strings["revision"],
        columns=columns,
        columns_given=columns_given,
        tags=tags,
    )


def _known_formats() -> tuple[str, ...]:
    from lmforge.data.converters import converter_names  # converters import this module

    return tuple(converter_names())


def _get_str(name: str, entry: Mapping[str, Any], key: str, problems: list[str]) -> str | None:
    value = entry.get(key)
    if value is None or (isinstance(value, str) and value):
        return value
    problems.append(f"dataset '{name}' has `{key}: {json.dumps(value)}`; it must be a non-empty string.")
    return None


def _pick_source(strings: Mapping[str, str | None]) -> tuple[str, str | None]:
    hf, ms, om = strings["hf_hub_url"], strings["ms_hub_url"], strings["om_hub_url"]
    if hf or ms or om:
        if ms and (is_env_enabled("USE_MODELSCOPE_HUB") or not hf):
            return "ms_hub", ms
        if om and (is_env_enabled("USE_OPENMIND_HUB") or not hf):
            return "om_hub", om
        return "hf_hub", hf
    if strings["script_url"]:
        return "script", strings["script_url"]
    if strings["cloud_file_name"]:
        return "cloud_file", strings["cloud_file_name"]
    return "file", strings["file_name"]


def _parse_columns(name: str, entry: Mapping[str, Any], formatting: str, problems: list[str]) -> tuple[Columns, bool]:
    if "columns" not in entry:
        return Columns(), False
    given = entry["columns"]
    if not isinstance(given, dict):
        problems.append(
            f'dataset \'{name}\' has `columns` that is not an object; write it like {{"prompt": "instruction"}}.'
        )
        return Columns(), False
    values: dict[str, str | None] = {}
    for key, value in given.items():
        if key not in COLUMN_KEYS:
            problems.append(
                f"dataset '{name}' has unknown key '{key}' in `columns`.{did_you_mean(key, COLUMN_KEYS)} "
                f"Valid keys: {', '.join(COLUMN_KEYS)}."
            )
        elif value is not None and (not isinstance(value, str) or not value):
            problems.append(
                f"dataset '{name}' maps `columns.{key}` to {json.dumps(value)}; it must be a column name (a string)."
            )
        else:
            values[key] = value
    # A given `columns` object replaces all defaults (LLaMA-Factory's rule, see the module docstring).
    columns = Columns(**{key: values.get(key) for key in COLUMN_KEYS})
    if formatting == "alpaca" and columns.prompt is None and columns.query is None:
        problems.append(
            f"dataset '{name}' maps no prompt column: a `columns` object replaces the defaults, "
            f'so name it too, e.g. "columns": {{"prompt": "instruction", "query": "input", "response": "output", ...}}.'
        )
    if formatting not in FORMATS:  # a registered converter reads the columns it likes
        return columns, True
    if formatting != "alpaca" and columns.messages is None:
        problems.append(
            f"dataset '{name}' ({formatting}) maps no `messages` column: a `columns` object replaces the defaults, "
            f'so name it too, e.g. "columns": {{"messages": "conversations", ...}}.'
        )
    return columns, True


def _parse_tags(name: str, entry: Mapping[str, Any], formatting: str, problems: list[str]) -> Tags:
    base = OPENAI_TAGS if formatting == "openai" else Tags()
    given = entry.get("tags")
    if given is None:
        return base
    if not isinstance(given, dict):
        problems.append(f'dataset \'{name}\' has `tags` that is not an object; write it like {{"role_tag": "role"}}.')
        return base
    values: dict[str, str] = {}
    for key, value in given.items():
        if key not in TAG_KEYS:
            problems.append(
                f"dataset '{name}' has unknown key '{key}' in `tags`.{did_you_mean(key, TAG_KEYS)} "
                f"Valid keys: {', '.join(TAG_KEYS)}."
            )
        elif value is None:
            continue  # null keeps the default, see the module docstring
        elif not isinstance(value, str) or not value:
            problems.append(f"dataset '{name}' sets `tags.{key}` to {json.dumps(value)}; it must be a string.")
        else:
            values[key] = value
    return replace(base, **values)


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]
