"""The package's shape: layers and no cycles (import-linter), one entry module per command, no private names
imported across modules, small modules. These hold the architecture of docs/architecture.md in place."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import lmforge
from lmforge.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(lmforge.__file__).parent
MAX_MODULE_LINES = 600


def _contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def test_import_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    kept = [c["name"] for c in _contracts()]
    for name in kept:
        assert f"{name} KEPT" in result.stdout
    assert f"Contracts: {len(kept)} kept, 0 broken." in result.stdout


def test_every_package_has_a_layer():
    """A new top-level package or module must be placed in the layers, or it would escape the check."""
    layers = next(c for c in _contracts() if c["type"] == "layers")["layers"]
    placed = {name.strip() for layer in layers for name in layer.replace(":", "|").split("|")}
    present = {f"lmforge.{p.stem if p.is_file() else p.name}" for p in PACKAGE.iterdir()
               if (p.is_dir() and (p / "__init__.py").is_file()) or (p.suffix == ".py" and p.stem != "__init__")}
    assert present - {"lmforge.__main__"} == placed


def test_the_layers_reject_an_upward_import(tmp_path):
    """The contract is not vacuous: a copy of the package with config importing train breaks it."""
    import shutil

    copy = tmp_path / "src"
    shutil.copytree(PACKAGE, copy / "lmforge", ignore=shutil.ignore_patterns("__pycache__"))
    validate = copy / "lmforge" / "config" / "validate.py"
    validate.write_text(validate.read_text() + "\nfrom lmforge.train import outputs  # noqa\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    lint = Path(sys.executable).with_name("lint-imports")
    env = {"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([str(lint), "--no-cache"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env=env)
    assert result.returncode == 1
    assert "lmforge.config is not allowed to import lmforge.train" in result.stdout


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: c.name)
def test_every_command_has_its_entry_module(cmd):
    module, function = cmd.target.split(":")
    if cmd.name in ("help", "version"):  # the CLI's own
        assert module == "lmforge.cli"
        return
    assert module == f"lmforge.commands.{cmd.name.replace('-', '_')}" and function == "main"
    if cmd.name != "webui":  # not available yet: its module is missing on purpose
        assert (PACKAGE / "commands" / f"{cmd.name.replace('-', '_')}.py").is_file()


def test_no_private_name_is_imported_across_modules():
    found = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lmforge") or (
                    isinstance(node, ast.ImportFrom) and node.level):
                found += [f"{path.relative_to(PACKAGE)}: {node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert found == []


def test_modules_stay_small():
    long = [f"{path.relative_to(PACKAGE)}: {n}" for path, _ in _modules()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES]
    assert long == []
