"""Tiny benchmark folders in the MMLU / CMMLU / C-Eval layouts, written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def task_dir(tmp_path_factory) -> Path:
    from lmforge.testing.tasks import write_letter_task, write_tiny_tasks

    root = tmp_path_factory.mktemp("tasks")
    write_tiny_tasks(root)
    write_letter_task(root)
    return root
