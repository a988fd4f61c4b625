"""The data pipeline up to aligned rows: load, sample, convert, count drops, mix, split.

Per dataset, in LLaMA-Factory's order: load (local file or folder, hub, script folder, cloud file),
`num_samples` (seeded permutation, upsampled with replacement when larger), `max_samples` (first N),
convert to aligned rows (`converters`), then drop invalid rows into a `DropReport`. The datasets are
then mixed (`mix_strategy`) and split (`val_size`) or paired with `eval_dataset`.
"""

from __future__ import annotations

import inspect
import logging
import os
from typing import TYPE_CHECKING, Any

from lmforge.config.data import MIX_STRATEGIES
from lmforge.data.columns import EVAL_SPLIT, TRAIN_SPLIT
from lmforge.data.converters import RowConverter, aligned_features
from lmforge.data.files import load_cloud_dataset, load_local_dataset, root_message
from lmforge.data.mapping import mapped_columns, unread_columns
from lmforge.data.registry import FORMATS, DatasetSpec, get_dataset_specs, is_env_enabled
from lmforge.data.report import DropReport, collect_drops
from lmforge.errors import UserError

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict

    from lmforge.config.data import DataArguments

logger = logging.getLogger(__name__)

RANKING_STAGES = ("rm", "dpo")
_PEEK_ROWS = 10
_HINTS = {
    "unknown_role": "the roles of the messages are not the ones its `tags` name",
    "invalid_role_order": (
        "turns must alternate user (or observation) then assistant (or function_call), starting with the user"
    ),
    "odd_message_count": 'a conversation must end with an assistant turn (for preference data set "ranking": true)',
    "even_message_count": (
        "a ranking conversation must end with the user turn; the answers go in the chosen/rejected columns"
    ),
    "missing_chosen_rejected": "ranking rows need both a chosen and a rejected answer",
    "invalid_content": "message contents must be text",
    "invalid_response": "the answers must be text",
    "missing_column": "the message list is null",
}


def load_aligned_datasets(
    data_args: DataArguments,
    names: list[str] | str | None,
    seed: int = 42,
    report: DropReport | None = None,
    stage: str | None = None,
) -> Dataset | IterableDataset | None:
    """Load `names` from `data_args.dataset_dir`, convert them to aligned rows and mix them.

    Dropped rows are counted into `report`. With `stage` (pt, sft, rm, dpo, kto, ppo) a preference
    dataset is required for rm/dpo and refused otherwise, and a `kto_tag` dataset likewise for kto. Returns None when `names` is empty.
    """
    specs = get_dataset_specs(names, data_args.dataset_dir)
    if not specs:
        return None
    report = report if report is not None else DropReport()
    loaded = [load_aligned_dataset(spec, data_args, seed=seed, report=report, stage=stage) for spec in specs]
    return merge_datasets(loaded, data_args, seed)


def fits_stage(spec: DatasetSpec, stage: str) -> bool:
    """Whether `stage` can train on `spec`: preference data for rm/dpo only, feedback data for kto only."""
    return spec.ranking == (stage in RANKING_STAGES) and bool(spec.columns.kto_tag) == (stage == "kto")


def load_aligned_dataset(
    spec: DatasetSpec,
    data_args: DataArguments,
    seed: int = 42,
    report: DropReport | None = None,
    stage: str | None = None,
) -> Dataset | IterableDataset:
    """One dataset: load, sample, convert, and return its valid rows (drops are counted into `report`).

    A map-style dataset left with no valid row raises a `UserError` listing the reasons; a streamed
    one cannot be checked before it is iterated, so its drops are counted as rows pass.
    """
    if stage is not None and spec.ranking != (stage in RANKING_STAGES):
        if spec.ranking:
            raise UserError(
                f"Dataset '{spec.name}' is preference data (`ranking: true` in {spec.where}) and cannot train "
                f"stage '{stage}'; use it with stage rm or dpo, or pick a dataset without `ranking`."
            )
        raise UserError(
            f"Stage '{stage}' needs preference data, but dataset '{spec.name}' has no `ranking: true` in {spec.where}. "
            'Use a dataset with chosen/rejected answers and set "ranking": true (plus its chosen/rejected columns).'
        )
    if stage is not None and bool(spec.columns.kto_tag) != (stage == "kto"):
        if stage == "kto":
            raise UserError(
                f"Stage 'kto' needs feedback data, but dataset '{spec.name}' maps no `kto_tag` column in {spec.where}. "
                'Add "kto_tag": "<column>" to its `columns` (true when the answer is desirable, false when not).'
            )
        raise UserError(
            f"Dataset '{spec.name}' is KTO feedback data (a `kto_tag` column in {spec.where}) and cannot train "
            f"stage '{stage}'; use it with stage kto, or remove `kto_tag` from its `columns`."
        )
    report = report if report is not None else DropReport()
    raw = load_source(spec, data_args)
    raw, source_rows = sample_rows(raw, spec, data_args, seed)
    column_names = check_columns(raw, spec)
    for unread in unread_columns(spec, column_names, stage):
        report.add_unread(unread)
    aligned = _align(raw, spec, data_args, column_names, source_rows)
    valid = collect_drops(aligned, report, stage="convert")
    if not data_args.streaming and len(valid) == 0:
        raise UserError(_no_valid_rows_message(spec, raw, len(aligned), report))
    return valid


def load_source(spec: DatasetSpec, data_args: DataArguments) -> Dataset | IterableDataset:
    """The raw rows of a dataset, from wherever its spec says (streaming: an `IterableDataset`)."""
    from datasets import load_dataset

    streaming = data_args.streaming
    if spec.load_from == "file":
        dataset = load_local_dataset(spec)
        return dataset.to_iterable_dataset() if streaming else dataset
    if spec.load_from == "cloud_file":
        return load_cloud_dataset(spec, streaming)
    if spec.load_from == "ms_hub":
        return _load_modelscope(spec, streaming)
    if spec.load_from == "om_hub":
        return _load_openmind(spec, streaming)
    if spec.load_from == "hf_file":  # a `file_name` inside a REMOTE: repo
        kwargs: dict[str, Any] = dict(data_files=spec.file_name, split="train")
    else:  # hf_hub, script
        kwargs = dict(name=spec.subset, data_dir=spec.folder, split=spec.split)
        if spec.revision:
            kwargs["revision"] = spec.revision
    path = os.path.join(spec.dataset_dir, spec.source) if spec.load_from == "script" else spec.source
    try:
        return load_dataset(path, streaming=streaming, **kwargs)
    except Exception as err:
        raise UserError(_hub_error(spec, err)) from None


def _hub_error(spec: DatasetSpec, err: Exception) -> str:
    message = f"{type(err).__name__}: {root_message(err)}"
    if spec.load_from == "script":
        if "script" in message.lower() and "no longer supported" in message.lower():
            return (
                f"Dataset '{spec.name}': {spec.location} holds a loading script, which datasets>=4 no longer runs. "
                "Convert it to data files (json, jsonl, csv, parquet, arrow) and use `file_name`."
            )
        return f"Dataset '{spec.name}': cannot load the folder {spec.location} (script_url in {spec.where}): {message}."
    where = f"'{spec.source}' (dataset '{spec.name}')"
    if is_env_enabled("HF_HUB_OFFLINE") or is_env_enabled("HF_DATASETS_OFFLINE"):
        return (
            f"Cannot load {where} from the Hugging Face Hub: offline mode is on (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE) "
            "and it is not in the local cache. Download it once with network access (unset HF_HUB_OFFLINE), "
            f"or save it as a local file and use `file_name`. ({message})"
        )
    name = type(err).__name__
    if (
        name in ("DatasetNotFoundError", "RepositoryNotFoundError", "GatedRepoError")
        or "doesn't exist on the Hub" in message
    ):
        return (
            f"Cannot load {where} from the Hugging Face Hub: not found or not accessible. Check `hf_hub_url` in "
            f"{spec.where}, and log in (`hf auth login`) for a private or gated dataset. ({message})"
        )
    if isinstance(err, (ConnectionError, TimeoutError)) or "connect" in message.lower():
        return f"Cannot reach the Hugging Face Hub to load {where}; check your connection or proxy. ({message})"
    return (
        f"Cannot load {where} from the Hugging Face Hub: {message}. Check `split` ('{spec.split}'), "
        f"`subset` and `folder` in {spec.where}."
    )


def _load_modelscope(spec: DatasetSpec, streaming: bool) -> Dataset | IterableDataset:
    try:
        from modelscope import MsDataset
    except ImportError:
        raise UserError(
            f"Dataset '{spec.name}' is read from ModelScope ('{spec.source}'), which needs `pip install modelscope`. "
            "Or unset USE_MODELSCOPE_HUB to use its hf_hub_url when it has one."
        ) from None
    try:
        dataset = MsDataset.load(
            dataset_name=spec.source,
            subset_name=spec.subset,
            data_dir=spec.folder,
            split=spec.split,
            use_streaming=streaming,
        )
        return dataset.to_hf_dataset() if isinstance(dataset, MsDataset) else dataset
    except Exception as err:
        raise UserError(
            f"Cannot load '{spec.source}' (dataset '{spec.name}') from ModelScope: {root_message(err)}."
        ) from None


def _load_openmind(spec: DatasetSpec, streaming: bool) -> Dataset | IterableDataset:
    try:
        from openmind import OmDataset
    except ImportError:
        raise UserError(
            f"Dataset '{spec.name}' is read from OpenMind ('{spec.source}'), which needs `pip install openmind`. "
            "Or unset USE_OPENMIND_HUB to use its hf_hub_url when it has one."
        ) from None
    try:
        return OmDataset.load_dataset(
            path=spec.source, name=spec.subset, data_dir=spec.folder, split=spec.split, streaming=streaming
        )
    except Exception as err:
        raise UserError(
            f"Cannot load '{spec.source}' (dataset '{spec.name}') from OpenMind: {root_message(err)}."
        ) from None


def sample_rows(
    dataset: Dataset | IterableDataset, spec: DatasetSpec, data_args: DataArguments, seed: int
) -> tuple[Any, Any]:
    """Apply `num_samples` then `max_samples`; returns the rows and their source indices (None: unchanged order).

    The rows are selected through an index mapping, not copied.
    """
    if data_args.streaming:
        if spec.num_samples is not None:
            logger.warning("Dataset '%s': num_samples is ignored when streaming.", spec.name)
        return (dataset.take(data_args.max_samples) if data_args.max_samples is not None else dataset), None

    import numpy as np

    indices = None
    if spec.num_samples is not None:
        size = len(dataset)
        if size == 0:
            raise UserError(f"Dataset '{spec.name}' ({spec.location}) is empty, so num_samples cannot sample from it.")
        rng = np.random.default_rng(seed)
        indices = rng.permutation(size)[: spec.num_samples]
        if spec.num_samples > size:  # upsample: every row once, then random extra rows
            indices = np.concatenate([indices, rng.choice(size, spec.num_samples - size)])
        logger.info("Sampled %d rows from dataset '%s' (%d rows).", spec.num_samples, spec.name, size)
    if data_args.max_samples is not None:
        if indices is None:
            return dataset.select(range(min(data_args.max_samples, len(dataset)))), None
        indices = indices[: data_args.max_samples]
    return (dataset if indices is None else dataset.select(indices)), indices


def _column_names(dataset: Dataset | IterableDataset) -> list[str]:
    if dataset.column_names is not None:
        return list(dataset.column_names)
    first = next(iter(dataset.take(1)), None)
    return list(first) if first is not None else []


def _peek(dataset: Dataset | IterableDataset, count: int = _PEEK_ROWS) -> list[dict[str, Any]]:
    from datasets import IterableDataset

    if isinstance(dataset, IterableDataset):
        return list(dataset.take(count))
    return list(dataset.select(range(min(count, len(dataset)))))


def _required_columns(spec: DatasetSpec) -> dict[str, str]:
    """{columns key: source column} of the columns the file of `spec` must have."""
    used = mapped_columns(spec)
    if spec.formatting == "alpaca" and not spec.columns_given:
        # LLaMA-Factory requires the default input/output columns; instruction-only data is fine here.
        for key in ("query", "response"):
            used.pop(key, None)
    return used


def check_columns(dataset: Dataset | IterableDataset, spec: DatasetSpec) -> list[str]:
    """Raise one `UserError` for missing mapped columns or mismatched message tags; returns the column names."""
    names = _column_names(dataset)
    if spec.formatting not in FORMATS:
        return names
    missing = [(key, column) for key, column in _required_columns(spec).items() if column not in names]
    if missing:
        wanted = ", ".join(f"'{column}' (mapped as `{key}`)" for key, column in missing)
        example = ", ".join(f'"{key}": "<column>"' for key, _ in missing)
        raise UserError(
            f"Dataset '{spec.name}' ({spec.location}) has no column {wanted}. Its columns are: "
            f"{', '.join(names) or '(none)'}. Map the right columns in the `columns` of '{spec.name}' in "
            f'{spec.where}, e.g. "columns": {{{example}}}.{_format_hint(spec, names)}'
        )
    if spec.formatting != "alpaca":
        _check_tags(dataset, spec)
    return names


def _format_hint(spec: DatasetSpec, names: list[str]) -> str:
    if spec.formatting != "alpaca" and {"instruction", "output"} & set(names):
        return ' These look like alpaca columns: remove "formatting" from the entry (alpaca is the default).'
    chat = [name for name in ("conversations", "messages") if name in names]
    if spec.formatting == "alpaca" and chat:
        return (
            ' This looks like chat data: set "formatting": "sharegpt" (or "openai"), '
            f'with "columns": {{"messages": "{chat[0]}"}}.'
        )
    return ""


def _check_tags(dataset: Dataset | IterableDataset, spec: DatasetSpec) -> None:
    tags = spec.tags
    for row in _peek(dataset):
        messages = row.get(spec.columns.messages)
        if isinstance(messages, list) and messages and isinstance(messages[0], dict):
            keys = [key for key, value in messages[0].items() if value is not None]
            if tags.role_tag not in keys or tags.content_tag not in keys:
                raise UserError(
                    f"Dataset '{spec.name}' ({spec.location}): its messages have the keys {', '.join(keys)}, "
                    f"but its tags expect '{tags.role_tag}' and '{tags.content_tag}'. Set them in the entry in "
                    f"{spec.where}, e.g. "
                    '"tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", '
                    '"assistant_tag": "assistant"}.'
                )
            return


def _media_feature(dataset: Dataset | IterableDataset, spec: DatasetSpec) -> Any:
    """The fixed aligned features, or None when a media column holds decoded objects (let datasets infer)."""
    from datasets import List, Value

    features = getattr(dataset, "features", None)
    for kind in ("images", "videos", "audios"):
        column = getattr(spec.columns, kind)
        if column and features is not None and column in features:
            feature = features[column]
            inner = getattr(feature, "feature", None)
            if not (feature == Value("string") or (isinstance(feature, List) and inner == Value("string"))):
                return None
    return aligned_features()


def _align(dataset, spec: DatasetSpec, data_args: DataArguments, column_names: list[str], source_rows: Any):
    from datasets import IterableDataset

    converter = RowConverter(spec, media_dir=data_args.media_dir, source_rows=source_rows)
    kwargs: dict[str, Any] = dict(
        with_indices=True, remove_columns=column_names, features=_media_feature(dataset, spec)
    )
    if not isinstance(dataset, IterableDataset):
        kwargs.update(
            num_proc=data_args.preprocessing_num_workers,
            load_from_cache_file=not data_args.overwrite_cache,
            desc=f"Converting {spec.name}",
        )
    return dataset.map(converter, **kwargs)


def _no_valid_rows_message(spec: DatasetSpec, raw, total: int, report: DropReport) -> str:
    if total == 0:
        return f"Dataset '{spec.name}' ({spec.location}) has no rows."
    reasons = [entry.reason for entry in report.entries(spec.name, "convert")]
    hints = {reason: _HINTS[reason] for reason in reasons if reason in _HINTS}
    if "unknown_role" in hints:
        roles, tags = _roles_seen(raw, spec), spec.tags
        hints["unknown_role"] = (
            f"the messages use the roles {', '.join(roles) or '(none)'}, but its tags name {tags.user_tag} (user), "
            f"{tags.assistant_tag} (assistant), {tags.observation_tag}, {tags.function_tag} and {tags.system_tag}; "
            f"set `tags` in {spec.where}"
        )
    hints = list(hints.values())[:2]
    hint = f" Likely cause: {'; '.join(hints)}." if hints else ""
    return (
        f"Dataset '{spec.name}' ({spec.location}) has no valid rows: all {total} rows were dropped "
        f"({spec.formatting} format). Reasons: {report.describe(spec.name, 'convert')}.{hint}"
    )


def _roles_seen(raw, spec: DatasetSpec) -> list[str]:
    roles: dict[str, None] = {}
    for row in _peek(raw):
        for message in row.get(spec.columns.messages) or []:
            if isinstance(message, dict) and message.get(spec.tags.role_tag) is not None:
                roles.setdefault(str(message[spec.tags.role_tag]), None)
    return list(roles)


def merge_datasets(datasets: list[Any], data_args: DataArguments, seed: int = 42) -> Dataset | IterableDataset:
    """Mix aligned datasets with `data_args.mix_strategy` (concat, or interleave with `interleave_probs`)."""
    from datasets import concatenate_datasets, interleave_datasets

    if len(datasets) == 1:
        return datasets[0]
    strategy = MIX_STRATEGIES[data_args.mix_strategy]
    if strategy is None:
        try:
            return concatenate_datasets(datasets)
        except ValueError as err:
            raise UserError(f"Cannot concatenate the datasets: {err}") from None
    if strategy not in str(inspect.signature(interleave_datasets)):
        import datasets as hf_datasets

        raise UserError(
            f"mix_strategy {data_args.mix_strategy} needs a newer `datasets` than {hf_datasets.__version__} "
            f"(stopping strategy '{strategy}'); upgrade it or use interleave_under/interleave_over."
        )
    return interleave_datasets(
        datasets, probabilities=data_args.interleave_probs, seed=seed, stopping_strategy=strategy
    )


def split_train_eval(
    dataset: Dataset | IterableDataset, data_args: DataArguments, seed: int = 42
) -> DatasetDict | IterableDatasetDict:
    """Hold out `val_size` rows: a fraction (< 1) or a count (>= 1), with `train_test_split(seed)`.

    A streamed dataset is shuffled with `buffer_size`, then `val_size` (a whole count) rows are taken.
    """
    from datasets import DatasetDict, IterableDatasetDict

    val_size = data_args.val_size
    if val_size <= 1e-6:
        if data_args.streaming:
            return IterableDatasetDict({TRAIN_SPLIT: dataset.shuffle(buffer_size=data_args.buffer_size, seed=seed)})
        return DatasetDict({TRAIN_SPLIT: dataset})
    whole = float(val_size).is_integer()
    if data_args.streaming:
        if val_size < 1 or not whole:
            raise UserError(
                f"val_size {val_size:g} is a fraction, but a streamed dataset has no known length; give a whole number "
                "of rows (e.g. val_size: 500) or turn off streaming."
            )
        shuffled = dataset.shuffle(buffer_size=data_args.buffer_size, seed=seed)
        return IterableDatasetDict({TRAIN_SPLIT: shuffled.skip(int(val_size)), EVAL_SPLIT: shuffled.take(int(val_size))})
    if val_size >= 1 and not whole:
        raise UserError(f"val_size {val_size:g} is neither a fraction below 1 nor a whole number of rows.")
    test_size = int(val_size) if val_size >= 1 else val_size
    rows = len(dataset)
    held = test_size if isinstance(test_size, int) else int(rows * test_size)
    if held < 1 or held >= rows:
        raise UserError(
            f"val_size {val_size:g} would hold out {held} of {rows} rows; it must leave at least one row for "
            "evaluation and one for training."
        )
    split = dataset.train_test_split(test_size=test_size, seed=seed)
    return DatasetDict({TRAIN_SPLIT: split["train"], EVAL_SPLIT: split["test"]})


def get_aligned_splits(
    data_args: DataArguments, seed: int = 42, report: DropReport | None = None, stage: str | None = None
) -> DatasetDict | IterableDatasetDict:
    """`dataset` and `eval_dataset` as aligned splits: train, validation (or validation_<name> per eval dataset)."""
    from datasets import DatasetDict, IterableDatasetDict

    report = report if report is not None else DropReport()
    splits: dict[str, Any] = {}
    train = load_aligned_datasets(data_args, data_args.dataset, seed=seed, report=report, stage=stage)
    if train is not None:
        splits.update(split_train_eval(train, data_args, seed))

    eval_names = get_dataset_specs(data_args.eval_dataset, data_args.dataset_dir)
    groups = [[spec.name] for spec in eval_names] if data_args.eval_on_each_dataset else [[s.name for s in eval_names]]
    for group in groups if eval_names else []:
        evaluation = load_aligned_datasets(data_args, group, seed=seed, report=report, stage=stage)
        if data_args.streaming:
            evaluation = evaluation.shuffle(buffer_size=data_args.buffer_size, seed=seed)
        key = f"{EVAL_SPLIT}_{group[0]}" if data_args.eval_on_each_dataset else EVAL_SPLIT
        splits[key] = evaluation
    return IterableDatasetDict(splits) if data_args.streaming else DatasetDict(splits)
