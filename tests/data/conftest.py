"""Fixtures for the data tests: a throwaway dataset_dir with a dataset_info.json and data files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

BUNDLED_DATA = Path(__file__).resolve().parents[2] / "data"


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows in the format its extension names (json list, jsonl, csv, parquet, arrow stream)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix
    if suffix == ".json":
        path.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    else:
        import pyarrow as pa

        table = pa.Table.from_pylist(rows)
        if suffix == ".csv":
            import pyarrow.csv as pcsv

            pcsv.write_csv(table, path)
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, path)
        elif suffix == ".arrow":
            with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
        else:
            raise ValueError(suffix)
    return path


@pytest.fixture()
def data_dir(tmp_path) -> Callable[..., Path]:
    """`data_dir(info, files)`: write dataset_info.json and {relative path: rows or text} under tmp_path/data."""

    def make(info: dict[str, Any], files: dict[str, Any] | None = None) -> Path:
        root = tmp_path / "data"
        root.mkdir(exist_ok=True)
        (root / "dataset_info.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
        for name, content in (files or {}).items():
            target = root / name
            if isinstance(content, (str, bytes)):
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
            else:
                write_rows(target, content)
        return root

    return make


@pytest.fixture()
def bundled_data() -> Path:
    """The repository's own demo data folder (data/), in LLaMA-Factory's layout."""
    return BUNDLED_DATA
