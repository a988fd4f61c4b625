"""Reading dataset files (json, jsonl, csv, parquet, arrow, txt) and folders of them into `datasets`.

Files go through `datasets.load_dataset` so rows live once, in its memory-mapped arrow cache. Any
failure becomes a `UserError` naming the file and the parser's complaint (with the line when it can
be found), never a traceback from datasets, pandas or pyarrow.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from lmforge.errors import UserError

if TYPE_CHECKING:
    from datasets import Dataset, IterableDataset

    from lmforge.data.registry import DatasetSpec

FILEEXT2TYPE = {"arrow": "arrow", "csv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet", "txt": "text"}
CLOUD_PROTOCOLS = ("s3", "gs", "gcs")


def _extension(path: str) -> str:
    return path.rsplit(".", 1)[-1].lower() if "." in os.path.basename(path) else ""


def _allowed() -> str:
    return ", ".join(f".{ext}" for ext in FILEEXT2TYPE)


def resolve_data_files(spec: DatasetSpec) -> tuple[str, list[str]]:
    """The `datasets` builder name and the files of a local `file_name` (a file or a folder of same-typed files)."""
    path = os.path.abspath(os.path.join(spec.dataset_dir, spec.source))
    if os.path.isdir(path):
        files = sorted(
            os.path.join(path, name)
            for name in os.listdir(path)
            if not name.startswith(".") and os.path.isfile(os.path.join(path, name))
        )
        if not files:
            raise UserError(f"Dataset '{spec.name}': folder {path} has no data files. Put {_allowed()} files in it.")
        extensions = sorted({_extension(f) for f in files})
        types = {FILEEXT2TYPE.get(ext) for ext in extensions}
        if len(types) > 1:
            found = ", ".join(f".{ext}" if ext else "(no extension)" for ext in extensions)
            raise UserError(
                f"Dataset '{spec.name}': folder {path} mixes file types ({found}). All files of a folder must "
                f"share one type; move the others out or define them as separate datasets."
            )
        if None in types:
            raise UserError(
                f"Dataset '{spec.name}': folder {path} holds files of an unsupported type "
                f"(.{extensions[0] or '(none)'}). Supported: {_allowed()}."
            )
        return FILEEXT2TYPE[extensions[0]], files
    if os.path.isfile(path):
        builder = FILEEXT2TYPE.get(_extension(path))
        if builder is None:
            raise UserError(
                f"Dataset '{spec.name}': file {path} has an unsupported type (.{_extension(path) or '(none)'}). "
                f"Supported: {_allowed()}; rename it if its content is one of these."
            )
        return builder, [path]
    if os.path.isabs(spec.source):
        raise UserError(f"Dataset '{spec.name}': file {path} not found (`file_name` in {spec.where}); fix the path.")
    raise UserError(
        f"Dataset '{spec.name}': file {path} not found. `file_name: {spec.source}` in {spec.where} is read "
        f"relative to `dataset_dir` ({os.path.abspath(spec.dataset_dir)}); fix the name or move the file there."
    )


def load_local_dataset(spec: DatasetSpec) -> Dataset:
    """Load the file or folder of a `file_name` dataset (always the full file: `split` is for hub datasets)."""
    from datasets import load_dataset

    builder, files = resolve_data_files(spec)
    try:
        with _quiet_datasets_errors():
            return load_dataset(builder, data_files=files, split="train")
    except Exception as err:
        raise UserError(_read_error(spec, builder, files, err)) from None


@contextmanager
def _quiet_datasets_errors() -> Iterator[None]:
    """Silence the error lines datasets logs before raising: our UserError says the same, better."""
    from datasets.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity(max(level, hf_logging.CRITICAL))
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def load_cloud_dataset(spec: DatasetSpec, streaming: bool) -> Dataset | IterableDataset:
    """Load a `cloud_file_name` (s3:// or gs:// file or folder; anonymous access first, then credentials)."""
    from datasets import load_dataset

    url = spec.source
    protocol = url.split("://", 1)[0] if "://" in url else ""
    if protocol not in CLOUD_PROTOCOLS:
        raise UserError(
            f"Dataset '{spec.name}': cloud_file_name '{url}' must start with s3:// or gs://. "
            "Use `file_name` for local files and `hf_hub_url` for hub datasets."
        )
    files = _cloud_files(spec, url)
    builder = FILEEXT2TYPE.get(_extension(files[0]))
    if builder is None or len({FILEEXT2TYPE.get(_extension(f)) for f in files}) > 1:
        raise UserError(f"Dataset '{spec.name}': {url} must hold {_allowed()} files of one type.")
    last: Exception | None = None
    for options in ({"anon": True}, {}):
        try:
            return load_dataset(builder, data_files=files, split="train", streaming=streaming, storage_options=options)
        except Exception as err:  # anonymous access refused: retry with the environment's credentials
            last = err
    raise UserError(f"Dataset '{spec.name}': cannot read {url}: {root_message(last)}.") from None


def _cloud_files(spec: DatasetSpec, url: str) -> list[str]:
    try:
        import fsspec

        fs, path = fsspec.core.url_to_fs(url, anon=True)
        if not fs.isdir(path):
            return [url]
        protocol = url.split("://", 1)[0]
        return sorted(f"{protocol}://{name}" for name in fs.ls(path, detail=False) if _extension(name) in FILEEXT2TYPE)
    except ImportError as err:
        package = "s3fs" if url.startswith("s3://") else "gcsfs"
        raise UserError(f"Dataset '{spec.name}': reading {url} needs `pip install {package}` ({err}).") from None
    except Exception as err:
        raise UserError(f"Dataset '{spec.name}': cannot list {url}: {root_message(err)}.") from None


def _read_error(spec: DatasetSpec, builder: str, files: list[str], err: Exception) -> str:
    for path in files:
        problem = _diagnose(builder, path)
        if problem:
            return (
                f"Dataset '{spec.name}': cannot read {path}: {problem}. "
                "Fix the file, or check that its extension matches its content."
            )
    shown = files[0] if len(files) == 1 else f"the files of {os.path.dirname(files[0])}"
    return f"Dataset '{spec.name}': cannot read {shown} as {builder}: {root_message(err)}."


def root_message(err: BaseException | None) -> str:
    """The innermost cause of a chained exception (the parser's own complaint), on one line."""
    while err is not None and (err.__cause__ or err.__context__) is not None:
        err = err.__cause__ or err.__context__
    text = str(err).strip() if err is not None else ""
    return " ".join(text.split()) or (type(err).__name__ if err is not None else "unknown error")


def _diagnose(builder: str, path: str) -> str | None:
    """Re-read one file with a plain parser to find what is wrong and where (None: nothing found)."""
    try:
        if builder in ("json", "text"):
            with open(path, encoding="utf-8") as f:
                text = f.read()
            return _json_problem(text, jsonl=_extension(path) == "jsonl") if builder == "json" else None
        if builder == "csv":
            import pandas as pd

            pd.read_csv(path)
        elif builder == "parquet":
            import pyarrow.parquet as pq

            pq.read_table(path)
        elif builder == "arrow":
            _read_arrow(path)
    except UnicodeDecodeError as err:
        with open(path, "rb") as f:
            line = f.read(err.start).count(b"\n") + 1
        return f"line {line}: not UTF-8 text (byte {err.start}); save the file as UTF-8"
    except Exception as err:
        return root_message(err).rstrip(".")
    return None


def _read_arrow(path: str) -> Any:
    import pyarrow as pa

    with open(path, "rb") as f:
        try:
            return pa.ipc.open_stream(f).read_all()
        except pa.ArrowInvalid:
            f.seek(0)
            return pa.ipc.open_file(f).read_all()


def _json_problem(text: str, jsonl: bool) -> str | None:
    """Where a .json (one document or JSON lines) or .jsonl file stops being valid JSON."""
    if not jsonl:
        try:
            json.loads(text)
            return None
        except json.JSONDecodeError as err:
            # A .json file may hold JSON lines; then only a bad line is an error.
            if err.msg != "Extra data":
                return f"line {err.lineno}, column {err.colno}: {err.msg}"
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                json.loads(line)
            except json.JSONDecodeError as err:
                return f"line {number}, column {err.colno}: {err.msg}"
    return None
