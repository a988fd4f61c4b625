"""Reading benchmark folders: the three public CSV layouts, zipped releases, and malformed data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from lmforge.cli import main
from lmforge.errors import UserError
from lmforge.eval import tasks
from lmforge.eval.tasks import CATEGORIES, bundled_mapping, load_task, parse_task


def test_parse_task():
    assert parse_task("mmlu_test") == ("mmlu", "test")
    assert parse_task("ceval_validation") == ("ceval", "validation")
    assert parse_task("my_own_bench_val") == ("my_own_bench", "validation")
    with pytest.raises(UserError, match="task 'mmlu' is not <name>_<split>"):
        parse_task("mmlu")


def test_mmlu_layout(task_dir):
    subjects = load_task(str(task_dir), "tiny_mmlu_test", need_dev=True)
    assert [(s.key, s.name, s.category) for s in subjects] == [
        ("arithmetic", "arithmetic", "STEM"),
        ("world_capitals", "world capitals", "Social Sciences"),
        ("opposites", "opposite words", "Humanities"),
        ("time_units", "units of time", "Other"),
    ]
    arithmetic = subjects[0]
    assert (len(arithmetic.dev), len(arithmetic.target)) == (5, 4)
    first = arithmetic.target[0]
    assert first.question == "What is 18 + 27?"
    assert first.choices == {"A": "46", "B": "43", "C": "55", "D": "45"} and first.answer == "D"
    assert first.where.endswith("tiny_mmlu/data/test/arithmetic_test.csv line 1")


def test_ceval_and_cmmlu_layouts(task_dir):
    ceval = load_task(str(task_dir), "tiny_ceval_validation", need_dev=True)
    assert ceval[1].name == "世界首都" and len(ceval[1].target) == 3 and len(ceval[1].dev) == 5
    assert ceval[1].target[0].where.endswith("tiny_ceval/val/world_capitals_val.csv line 2")  # line 1 is the header
    cmmlu = load_task(str(task_dir), "tiny_cmmlu_test", need_dev=False)
    question = cmmlu[0].target[0]
    assert (question.question, question.answer) == ("21 加 13 等于多少？", "B")
    assert question.choices == {"A": "35", "B": "34", "C": "32", "D": "44"}
    assert cmmlu[0].dev == []  # not read without few-shot


def test_ceval_test_split_has_no_answers(task_dir):
    with pytest.raises(UserError, match=r"tiny_ceval/test/arithmetic_test.csv line 2: the answer is empty .*ceval_validation"):
        load_task(str(task_dir), "tiny_ceval_test", need_dev=False)


def test_zipped_release(task_dir, tmp_path):
    # The releases ship one zip per task (sometimes with a top folder); the CSVs are read from inside it.
    root = tmp_path / "zipped"
    (root / "tiny_mmlu").mkdir(parents=True)
    shutil.copy(task_dir / "tiny_mmlu" / "mapping.json", root / "tiny_mmlu")
    with zipfile.ZipFile(root / "tiny_mmlu" / "tiny_mmlu.zip", "w") as archive:
        for path in sorted((task_dir / "tiny_mmlu" / "data").rglob("*.csv")):
            archive.write(path, "tiny_mmlu/" + str(path.relative_to(task_dir / "tiny_mmlu")))
    zipped = load_task(str(root), "tiny_mmlu_test", need_dev=True)
    plain = load_task(str(task_dir), "tiny_mmlu_test", need_dev=True)
    assert [[(q.question, q.choices, q.answer) for q in s.target + s.dev] for s in zipped] == \
           [[(q.question, q.choices, q.answer) for q in s.target + s.dev] for s in plain]
    assert "tiny_mmlu.zip:tiny_mmlu/data/test/arithmetic_test.csv line 1" in zipped[0].target[0].where


def _bench(tmp_path, rows: str, mapping=None):
    root = tmp_path / "bench"
    (root / "data" / "test").mkdir(parents=True)
    (root / "mapping.json").write_text(json.dumps(mapping or {"logic": {"name": "logic", "category": "STEM"}}))
    (root / "data" / "test" / "logic_test.csv").write_text(rows, encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("Q1?,a,b,c,d,A\nQ2?,a,b,c,d\n", "logic_test.csv line 2: expected 6 columns (question, A, B, C, D, answer), found 5."),
        ("Q1?,a,b,c,d,A\n\"multi\nline\",a,b,c,d,B\nQ3?,a,b,c,d,E\n", "logic_test.csv line 4: answer 'E' is not one of A, B, C, D."),
        (",a,b,c,d,A\n", "logic_test.csv line 1: the question is empty."),
        ("", "logic_test.csv is empty."),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, rows, message):
    root = _bench(tmp_path, rows)
    with pytest.raises(UserError) as err:
        load_task(str(root), "bench_test", need_dev=False)
    assert message in str(err.value)


def test_missing_pieces(tmp_path):
    with pytest.raises(UserError, match=r"nowhere/bench/mapping.json not found \(task_dir is '.*nowhere'\)"):
        load_task(str(tmp_path / "nowhere"), "bench_test", need_dev=False)
    root = _bench(tmp_path, "Q?,a,b,c,d,A\n")
    with pytest.raises(UserError, match=r"No dev data for subject 'logic' in .*bench \(looked for data/dev/logic_dev.csv"):
        load_task(str(root), "bench_test", need_dev=True)
    (root / "bench" / "mapping.json").write_text('{"logic": {"name": "logic"}}')
    with pytest.raises(UserError, match="subject 'logic' needs a string 'name' and 'category'"):
        load_task(str(root), "bench_test", need_dev=False)


def test_public_benchmark_without_csv_goes_to_the_hub_and_fails_clearly_offline(tmp_path):
    (tmp_path / "mmlu").mkdir()
    (tmp_path / "mmlu" / "mapping.json").write_text('{"anatomy": {"name": "anatomy", "category": "STEM"}}')
    code = (f"import sys; from lmforge.cli import main; "
            f"sys.exit(main(['eval', 'task=mmlu_test', 'task_dir={tmp_path}', 'model_name_or_path=unused']))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1
    assert "Subject 'anatomy' of mmlu has no local CSV and could not be loaded from the hub dataset cais/mmlu" in result.stderr
    assert "Traceback" not in result.stderr


def test_eval_cli_errors_before_loading_a_model(tmp_path, capsys):
    assert main(["eval", "task=mmlu", "model_name_or_path=unused"]) == 1
    assert "task 'mmlu' is not <name>_<split>" in capsys.readouterr().err
    assert main(["eval", "task=mmlu_test", "lang=fr", "n_shot=-1", "model_name_or_path=unused"]) == 1
    err = capsys.readouterr().err
    assert "'lang' is 'fr', which is not one of: en, zh" in err and "'n_shot' must be >= 0, got -1." in err
    assert main(["eval", "task=mmlu_test", "batch_size=0", "model_name_or_path=unused"]) == 1
    assert "'batch_size' must be positive, got 0." in capsys.readouterr().err


@pytest.mark.parametrize(("name", "count"), [("mmlu", 57), ("cmmlu", 67), ("ceval", 52)])
def test_bundled_mappings_list_every_subject_of_the_release(name, count):
    mapping = json.loads(bundled_mapping(name).read_text(encoding="utf-8"))
    assert len(mapping) == count
    assert {info["category"] for info in mapping.values()} == set(CATEGORIES)  # each one used, nothing else
    assert all(set(info) == {"name", "category"} and info["name"] for info in mapping.values())
    chinese = [any("\u4e00" <= ch <= "\u9fff" for ch in info["name"]) for info in mapping.values()]
    assert all(chinese) if name in ("cmmlu", "ceval") else not any(chinese)
    assert bundled_mapping("tiny_mmlu") is None and bundled_mapping("bench") is None


def _csv_only_mmlu(tmp_path):
    """An mmlu folder holding the release's CSVs for its first two subjects and no mapping.json."""
    root = tmp_path / "mmlu"
    for split in ("dev", "test"):
        (root / "data" / split).mkdir(parents=True)
        for subject in ("abstract_algebra", "anatomy"):
            (root / "data" / split / f"{subject}_{split}.csv").write_text(f"{subject} {split}?,a,b,c,d,C\n")
    return root


def test_public_benchmark_without_mapping_uses_the_bundled_one(tmp_path, monkeypatch, capsys):
    root = _csv_only_mmlu(tmp_path)
    asked = []

    def hub(name, subject, split, options):  # stands in for the hub: records the subjects it is asked for
        asked.append((name, subject, split))
        return []

    monkeypatch.setattr(tasks, "_hub_rows", hub)
    subjects = load_task(str(tmp_path), "mmlu_test", need_dev=True)
    assert len(subjects) == 57
    assert [(s.key, s.name, s.category) for s in subjects[:3]] == [
        ("abstract_algebra", "abstract algebra", "STEM"), ("anatomy", "anatomy", "Other"),
        ("astronomy", "astronomy", "STEM")]
    assert [(q.question, q.answer) for q in subjects[1].target + subjects[1].dev] == \
           [("anatomy test?", "C"), ("anatomy dev?", "C")]
    assert subjects[1].target[0].where.endswith("mmlu/data/test/anatomy_test.csv line 1")
    assert asked[:2] == [("mmlu", "astronomy", "test"), ("mmlu", "astronomy", "dev")]  # local ones never asked
    assert len(asked) == 2 * 55
    assert f"No mapping.json in {root}: using lmforge's bundled mmlu subjects and categories" in capsys.readouterr().err

    # A mapping.json in the folder wins: only its subjects, with its names and categories, and no hub.
    asked.clear()
    (root / "mapping.json").write_text(json.dumps({"anatomy": {"name": "Anatomie", "category": "STEM"}}))
    subjects = load_task(str(tmp_path), "mmlu_test", need_dev=True)
    assert [(s.key, s.name, s.category, len(s.target)) for s in subjects] == [("anatomy", "Anatomie", "STEM", 1)]
    assert asked == [] and "bundled" not in capsys.readouterr().err


@pytest.mark.parametrize(("task", "first", "repo"), [("mmlu_test", "astronomy", "cais/mmlu"),
                                                     ("ceval_validation", "accountant", "ceval/ceval-exam"),
                                                     ("cmmlu_test", "agronomy", "haonan-li/cmmlu")])
def test_bundled_mapping_reaches_the_hub_and_fails_clearly_offline(tmp_path, task, first, repo):
    # mmlu: local CSVs for two subjects, the third goes to the hub; ceval, cmmlu: no task folder at all.
    if task == "mmlu_test":
        _csv_only_mmlu(tmp_path)
    code = (f"import sys; from lmforge.cli import main; "
            f"sys.exit(main(['eval', 'task={task}', 'task_dir={tmp_path}', 'model_name_or_path=unused']))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    for variable in ("HF_DATASETS_CACHE", "HF_HUB_CACHE"):  # no cached copy of the benchmarks
        env.pop(variable, None)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1
    name = task.rpartition("_")[0]
    assert f"using lmforge's bundled {name} subjects and categories" in result.stderr
    assert f"Subject '{first}' of {name} has no local CSV and could not be loaded from the hub dataset {repo}" \
        in result.stderr
    assert "Traceback" not in result.stderr
