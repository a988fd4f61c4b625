"""Multiple-choice task data: MMLU, CMMLU and C-Eval releases (or any task in one of their CSV layouts).

A task is `task_dir/<name>/` holding `mapping.json` (`{subject: {"name", "category"}}`) and the
per-subject CSV files, found in any of the three public layouts:

- MMLU:   `data/{dev,val,test}/{subject}_{split}.csv`, no header (question, A, B, C, D, answer)
- C-Eval: `{dev,val,test}/{subject}_{split}.csv`, header `id,question,A,B,C,D,answer,explanation`
- CMMLU:  `{dev,test}/{subject}.csv`, header `,Question,A,B,C,D,Answer`

The files may also sit inside `<name>.zip` in that folder, as the releases ship them. When a
subject has no local file and the task is one of the three public benchmarks, its rows are
downloaded from the Hugging Face hub with `datasets`.

For `mmlu`, `cmmlu` and `ceval` a folder without `mapping.json` (or no folder at all) uses the
mapping bundled in `lmforge/eval/mappings/<name>.json`: every subject of the public release, its
display name, and its category mapped onto CATEGORIES. A `mapping.json` in the folder wins.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.errors import UserError
from lmforge.utils.logging import get_logger

logger = get_logger(__name__)

CHOICES = ("A", "B", "C", "D")
CATEGORIES = ("STEM", "Social Sciences", "Humanities", "Other")
# task split name -> folder names used by the releases
SPLIT_FOLDERS = {"test": ("test",), "validation": ("val", "validation"), "val": ("val", "validation"),
                 "dev": ("dev",), "train": ("dev",)}
HUB_DATASETS = {"mmlu": "cais/mmlu", "ceval": "ceval/ceval-exam", "cmmlu": "haonan-li/cmmlu"}
# subject -> {"name", "category"} for each public benchmark, used when its task folder has no mapping.json
BUNDLED_MAPPINGS = Path(__file__).parent / "mappings"


@dataclass(frozen=True)
class Question:
    """One multiple-choice item; `where` names its file and line for error messages."""

    question: str
    choices: dict[str, str]
    answer: str  # "A".."D"
    where: str


@dataclass
class Subject:
    key: str
    name: str
    category: str
    dev: list[Question] = field(default_factory=list)
    target: list[Question] = field(default_factory=list)


def parse_task(task: str) -> tuple[str, str]:
    """`mmlu_test` -> ("mmlu", "test"); the split is what follows the last underscore."""
    name, sep, split = task.rpartition("_")
    if not sep or not name or split not in SPLIT_FOLDERS:
        raise UserError(
            f"task '{task}' is not <name>_<split> with split test, validation or dev "
            "(e.g. mmlu_test, cmmlu_test, ceval_validation)."
        )
    return name, "validation" if split == "val" else split


def load_task(task_dir: str, task: str, need_dev: bool, hub_options: dict | None = None) -> list[Subject]:
    """Every subject of the task with its dev rows (few-shot examples) and its evaluated rows.

    `hub_options` go to `datasets.load_dataset` for subjects read from the hub (download_mode, cache_dir, token).
    """
    name, split = parse_task(task)
    root = Path(task_dir) / name
    mapping_file = root / "mapping.json"
    if not mapping_file.is_file():
        bundled = bundled_mapping(name)
        if bundled is None:
            hint = f" (task_dir is '{task_dir}')" if not root.is_dir() else ""
            raise UserError(
                f"{mapping_file} not found{hint}: a task folder needs mapping.json listing its subjects as "
                '{"subject": {"name": ..., "category": ...}}, next to the CSV files.'
            )
        logger.info(f"No mapping.json in {root}: using lmforge's bundled {name} subjects and categories ({bundled}).")
        mapping_file = bundled
    mapping = _read_mapping(mapping_file)
    files = _TaskFiles(root, name, hub_options or {})
    subjects = []
    for key, info in mapping.items():
        subject = Subject(key, info["name"], info["category"])
        subject.target = files.rows(key, split)
        if need_dev:
            subject.dev = files.rows(key, "dev")
        subjects.append(subject)
    return subjects


def bundled_mapping(name: str) -> Path | None:
    """The mapping.json lmforge ships for a public benchmark (mmlu, cmmlu, ceval), or None."""
    path = BUNDLED_MAPPINGS / f"{name}.json"
    return path if name in HUB_DATASETS and path.is_file() else None


def _read_mapping(path: Path) -> dict[str, dict]:
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path} line {err.lineno}: not valid JSON ({err.msg}).") from None
    if not isinstance(mapping, dict) or not mapping:
        raise UserError(f"{path} must be an object mapping subjects to {{\"name\", \"category\"}}.")
    for key, info in mapping.items():
        if not isinstance(info, dict) or not isinstance(info.get("name"), str) or not isinstance(info.get("category"), str):
            raise UserError(f"{path}: subject '{key}' needs a string 'name' and 'category'.")
    return mapping


class _TaskFiles:
    """Finds a subject's CSV for a split on disk, in the task's zip, or on the hub."""

    def __init__(self, root: Path, name: str, hub_options: dict):
        self.root, self.name, self.hub_options = root, name, hub_options
        zips = sorted(root.glob("*.zip"))
        self.archive = zipfile.ZipFile(zips[0]) if zips else None

    def _candidates(self, subject: str, folder: str) -> list[str]:
        return [f"data/{folder}/{subject}_{folder}.csv", f"{folder}/{subject}_{folder}.csv", f"{folder}/{subject}.csv"]

    def rows(self, subject: str, split: str) -> list[Question]:
        for folder in SPLIT_FOLDERS[split]:
            for relative in self._candidates(subject, folder):
                path = self.root / relative
                if path.is_file():
                    return _parse_csv(path.read_text(encoding="utf-8-sig"), str(path))
                member = self._zip_member(relative)
                if member:
                    text = self.archive.read(member).decode("utf-8-sig")
                    return _parse_csv(text, f"{self.archive.filename}:{member}")
        if self.name in HUB_DATASETS:
            return _hub_rows(self.name, subject, split, self.hub_options)
        tried = ", ".join(self._candidates(subject, SPLIT_FOLDERS[split][0]))
        raise UserError(f"No {split} data for subject '{subject}' in {self.root} (looked for {tried}).")

    def _zip_member(self, relative: str) -> str | None:
        if self.archive is None:
            return None
        for member in self.archive.namelist():  # the release zips may hold a top folder
            if member == relative or member.endswith("/" + relative):
                return member
        return None


def _parse_csv(text: str, where: str) -> list[Question]:
    reader = csv.reader(io.StringIO(text))
    rows = list(_numbered(reader))
    if not rows:
        raise UserError(f"{where} is empty.")
    first_line, first = rows[0]
    columns = _header_columns(first)
    if columns is None:  # MMLU: no header, question, A, B, C, D, answer
        columns = {"question": 0, **{c: i + 1 for i, c in enumerate(CHOICES)}, "answer": 5}
        body = rows
    else:
        body = rows[1:]
    needed = max(columns.values()) + 1
    questions = []
    for line, row in body:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < needed:
            raise UserError(f"{where} line {line}: expected {needed} columns (question, A, B, C, D, answer), "
                            f"found {len(row)}.")
        question = row[columns["question"]].strip()
        answer = row[columns["answer"]].strip().upper() if "answer" in columns else ""
        if not question:
            raise UserError(f"{where} line {line}: the question is empty.")
        if answer not in CHOICES:
            raise UserError(f"{where} line {line}: {_bad_answer(row[columns['answer']] if 'answer' in columns else '')}")
        choices = {c: row[columns[c]] for c in CHOICES if c in columns}
        questions.append(Question(question, choices, answer, f"{where} line {line}"))
    return questions


def _numbered(reader):
    previous = 1
    for row in reader:
        yield previous, row  # the line a (possibly multi-line) record starts on
        previous = reader.line_num + 1


def _header_columns(row: list[str]) -> dict[str, int] | None:
    names = [cell.strip().lower() for cell in row]
    if "question" not in names or not all(c.lower() in names for c in CHOICES):
        return None
    columns = {"question": names.index("question"), **{c: names.index(c.lower()) for c in CHOICES}}
    if "answer" in names:
        columns["answer"] = names.index("answer")
    return columns


def _bad_answer(value: str) -> str:
    if not value.strip():
        return ("the answer is empty (C-Eval hides its test answers: evaluate the validation split, "
                "e.g. ceval_validation).")
    return f"answer '{value}' is not one of A, B, C, D."


def _hub_rows(name: str, subject: str, split: str, options: dict) -> list[Question]:
    """A public benchmark's subject from the hub (needs a network; offline it fails with a clear message)."""
    repo = HUB_DATASETS[name]
    hub_split = {"dev": "dev", "train": "dev", "validation": "validation" if name == "mmlu" else "val",
                 "test": "test"}[split]
    try:
        from datasets import load_dataset

        dataset = load_dataset(repo, subject, split=hub_split, **options)
    except Exception as err:  # noqa: BLE001 - any failure here means "not available from the hub"
        raise UserError(
            f"Subject '{subject}' of {name} has no local CSV and could not be loaded from the hub dataset {repo} "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no details'}). "
            f"Put the release's CSV files in the task folder, or connect to the hub."
        ) from None
    questions = []
    for index, row in enumerate(dataset):
        where = f"{repo}/{subject} {hub_split} row {index}"
        if "choices" in row:  # cais/mmlu: a list of options and an integer answer
            choices = dict(zip(CHOICES, row["choices"]))
            answer = CHOICES[row["answer"]] if isinstance(row["answer"], int) else str(row["answer"])
        else:
            choices = {c: row[c] for c in CHOICES}
            answer = str(row.get("answer", row.get("Answer", "")) or "")
        question = row.get("question", row.get("Question", ""))
        if answer not in CHOICES:
            raise UserError(f"{where}: {_bad_answer(answer)}")
        questions.append(Question(question, choices, answer, where))
    return questions
