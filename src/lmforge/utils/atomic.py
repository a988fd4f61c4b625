"""Write files and folders so that a reader (or a run killed at any moment) never sees half of them.

Everything is first written into a hidden staging folder (or a temporary file) next to its final
place, on the same file system, flushed to disk, then renamed into place: a rename is atomic, a
copy is not.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

STAGING_PREFIX = ".staging-"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that readers see either the old file or the whole new one."""
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def fsync_tree(folder: Path) -> None:
    """Flush a folder's files to disk before it is renamed into view."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def staging_dir(output_dir: Path, name: str) -> Path:
    """A fresh hidden folder next to the final location (same file system, so rename is atomic)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / f"{STAGING_PREFIX}{name}"
    if path.exists():
        shutil.rmtree(path)
    path.mkdir()
    return path


def remove_staging(folder: Path) -> None:
    """Delete the staging folders left in `folder` by an interrupted write: they are never complete."""
    for partial in folder.glob(f"{STAGING_PREFIX}*") if folder.is_dir() else []:
        shutil.rmtree(partial, ignore_errors=True)


def remove_partial_json(folder: Path) -> None:
    """Delete the temporary files of `write_json_atomic` calls interrupted before their rename."""
    for partial in folder.glob(".*.tmp") if folder.is_dir() else []:
        if partial.is_file():
            partial.unlink(missing_ok=True)


def publish_files(staging: Path, output_dir: Path) -> list[str]:
    """Move every file of `staging` into `output_dir` (each move atomic), then remove `staging`."""
    names = []
    for item in sorted(staging.iterdir()):
        target = output_dir / item.name
        if target.is_dir() and item.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
        names.append(item.name)
    staging.rmdir()
    return names


def publish_dir(staging: Path, target: Path) -> None:
    """Put the finished `staging` folder in place of `target` (renames only: never a partial folder)."""
    if not target.exists():
        os.rename(staging, target)
        return
    previous = staging.with_name(f"{staging.name}.previous")
    if previous.exists():
        shutil.rmtree(previous)
    os.rename(target, previous)
    os.rename(staging, target)
    if previous.is_dir():
        shutil.rmtree(previous, ignore_errors=True)
    else:
        previous.unlink(missing_ok=True)
