"""The one table of reasons: every code the code can report has a row, and data/README.md shows that table.

Also the error texts data/README.md quotes: each is produced, word for word, by the code.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from lmforge.data import converters, processors, report
from lmforge.data.reasons import REASONS, explain, markdown_table
from lmforge.errors import UserError
from tests.conftest import REPO_ROOT

README = REPO_ROOT / "data" / "README.md"
SOURCES = [Path(converters.__file__), Path(processors.base.__file__), Path(report.__file__)]


def code_constants(path: Path) -> dict[str, str]:
    """The module-level `NAME = "snake_case"` constants of a module: the reason codes it defines."""
    found = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and len(node.targets) == 1:
            name, value = node.targets[0], node.value.value
            if isinstance(name, ast.Name) and name.id.isupper() and isinstance(value, str):
                if re.fullmatch(r"[a-z]+(_[a-z]+)+", value):
                    found[name.id] = value
    return found


def test_every_reason_code_in_the_code_has_a_row_in_the_table():
    codes = {value for path in SOURCES for value in code_constants(path).values()}
    assert codes >= {"invalid_response", "missing_response", "empty_response", "empty_prompt", "unread_column"}
    assert codes == set(REASONS)  # no code without a row, no row without a code
    # The tuples the pipeline uses hold the same codes.
    assert set(converters.REASONS) | set(processors.REASONS) | {report.UNREAD_COLUMN} == codes


def test_every_row_has_an_effect_a_meaning_and_a_fix():
    for reason in REASONS.values():
        assert reason.effect and reason.meaning.endswith(".") and reason.fix.endswith("."), reason.code
        assert explain(reason.code) == f"{reason.code}: {reason.meaning} Fix: {reason.fix}"


def test_data_readme_shows_the_table():
    text = README.read_text(encoding="utf-8")
    start = text.index("<!-- reasons table")
    table = text[text.index("\n", start) + 1 : text.index("\n<!-- end of reasons table -->")]
    assert table == markdown_table()


def test_the_readme_log_example_is_what_training_logs():
    from tests.data.test_reported import NOTES_DROPS, NOTES_WARNINGS

    text = README.read_text(encoding="utf-8")
    start = text.index("```text\n", text.index("## Dropped rows and warnings")) + len("```text\n")
    assert text[start : text.index("```", start)].splitlines() == NOTES_DROPS + NOTES_WARNINGS


def quote(prefix: str) -> str:
    """The error text data/README.md quotes, in a code span (single or double backticks), that starts with
    `prefix`; line breaks read as spaces, and its example folder /work/data/ is left in."""
    text = " ".join(README.read_text(encoding="utf-8").split())
    start = text.index(prefix)
    fence = "``" if text[start - 2 : start] == "``" else "`"
    assert text[start - len(fence) : start] == fence, f"{prefix!r} is not quoted"
    return text[start : text.index(fence, start)]


def test_the_error_texts_the_readme_quotes_are_the_codes(data_dir):
    from lmforge.config.data import DataArguments
    from lmforge.data.files import resolve_data_files
    from lmforge.data.loader import check_columns, load_source
    from lmforge.data.mapping import unread_columns
    from lmforge.data.registry import get_dataset_specs

    root = data_dir({"my_data": {"file_name": "my_data"}}, {"my_data/a.csv": "x\n1\n", "my_data/b.json": "[]"})
    with pytest.raises(UserError) as err:
        get_dataset_specs(["my_dataset"], str(root))
    assert quote("Dataset 'my_dataset' is not").replace("/work/data/", f"{root}/") in str(err.value)
    with pytest.raises(UserError) as err:
        resolve_data_files(get_dataset_specs(["my_data"], str(root))[0])
    assert str(err.value) == quote("Dataset 'my_data': folder").replace("/work/data/", f"{root}/")

    columns = {"prompt": "instruction", "response": "output"}
    root = data_dir({"identity_custom": {"file_name": "x.json", "columns": columns}},
                    {"x.json": [{"instruction": "a", "input": "b", "output": "c"}]})
    spec = get_dataset_specs(["identity_custom"], str(root))[0]
    (unread,) = unread_columns(spec, check_columns(load_source(spec, DataArguments()), spec))
    assert unread.message == quote("identity_custom: column").replace("/work/data/", f"{root}/")
