"""docs/config.md documents every key, and is regenerated from the dataclasses."""

from __future__ import annotations

import importlib.util

from tests.conftest import REPO_ROOT


def test_config_reference_is_up_to_date():
    spec = importlib.util.spec_from_file_location("config_reference", REPO_ROOT / "scripts" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    on_disk = (REPO_ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    assert on_disk == module.render(), "docs/config.md is stale: run .venv/bin/python scripts/config_reference.py"
