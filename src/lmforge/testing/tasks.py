"""Tiny multiple-choice benchmarks in the MMLU, CMMLU and C-Eval file layouts, written offline.

`lmforge eval` reads task folders laid out like the public releases. These writers produce small
ones from question banks in this module (English for MMLU, Chinese for CMMLU and C-Eval), with the
correct option placed at a seeded random letter, so tests and demos can evaluate without a network:

- `tiny_mmlu/`:  mapping.json + data/{dev,val,test}/{subject}_{split}.csv, no header row
- `tiny_ceval/`: mapping.json + {dev,val,test}/{subject}_{split}.csv, header id,question,A,B,C,D,answer,explanation
- `tiny_cmmlu/`: mapping.json + {dev,test}/{subject}.csv, header ,Question,A,B,C,D,Answer

`write_letter_task` writes a task whose answer letter is fixed per subject: a model fine-tuned on
its dev answers can learn it, which shows that the scoring reads the right tokens.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

LETTERS = ("A", "B", "C", "D")

# (subject, English name, Chinese name, category)
SUBJECTS = [
    ("arithmetic", "arithmetic", "算术", "STEM"),
    ("world_capitals", "world capitals", "世界首都", "Social Sciences"),
    ("opposites", "opposite words", "反义词", "Humanities"),
    ("time_units", "units of time", "时间单位", "Other"),
]

_CAPITALS = [
    ("France", "Paris", "法国", "巴黎"), ("Japan", "Tokyo", "日本", "东京"), ("Germany", "Berlin", "德国", "柏林"),
    ("Italy", "Rome", "意大利", "罗马"), ("Egypt", "Cairo", "埃及", "开罗"), ("Spain", "Madrid", "西班牙", "马德里"),
    ("Canada", "Ottawa", "加拿大", "渥太华"), ("Russia", "Moscow", "俄罗斯", "莫斯科"),
    ("China", "Beijing", "中国", "北京"), ("Kenya", "Nairobi", "肯尼亚", "内罗毕"),
    ("Peru", "Lima", "秘鲁", "利马"), ("Norway", "Oslo", "挪威", "奥斯陆"),
]
_OPPOSITES = [
    ("hot", "cold", "热", "冷"), ("big", "small", "大", "小"), ("fast", "slow", "快", "慢"),
    ("up", "down", "上", "下"), ("left", "right", "左", "右"), ("open", "closed", "开", "关"),
    ("new", "old", "新", "旧"), ("long", "short", "长", "短"), ("early", "late", "早", "晚"),
    ("full", "empty", "满", "空"), ("light", "dark", "明", "暗"), ("win", "lose", "赢", "输"),
]
_TIME_UNITS = [
    ("seconds", "a minute", 60, "秒", "一分钟"), ("minutes", "an hour", 60, "分钟", "一小时"),
    ("hours", "a day", 24, "小时", "一天"), ("days", "a week", 7, "天", "一周"),
    ("months", "a year", 12, "个月", "一年"), ("days", "a leap year", 366, "天", "一个闰年"),
    ("years", "a decade", 10, "年", "十年"), ("years", "a century", 100, "年", "一个世纪"),
    ("weeks", "a fortnight", 2, "周", "两周"), ("days", "a common year", 365, "天", "一个平年"),
    ("hours", "two days", 48, "小时", "两天"), ("minutes", "half an hour", 30, "分钟", "半小时"),
]


def _questions(subject: str, lang: str, rng: random.Random) -> list[tuple[str, list[str], int]]:
    """(question, four options, index of the correct one) for every item of a subject's bank."""
    items: list[tuple[str, list[str], int]] = []
    zh = lang == "zh"
    if subject == "arithmetic":
        pairs = [(3, 4), (6, 7), (12, 5), (9, 9), (15, 8), (21, 13), (7, 30), (44, 11), (18, 27), (5, 60), (33, 33), (2, 99)]
        for a, b in pairs:
            right = a + b
            wrong = [right + 1, right - 2, right + 10]
            question = f"{a} 加 {b} 等于多少？" if zh else f"What is {a} + {b}?"
            items.append(_place(question, str(right), [str(w) for w in wrong], rng))
    elif subject == "world_capitals":
        for i, (country, capital, country_zh, capital_zh) in enumerate(_CAPITALS):
            others = [c for c in _CAPITALS if c[0] != country]
            wrong = [o[3] if zh else o[1] for o in rng.sample(others, 3)]
            question = f"{country_zh}的首都是哪里？" if zh else f"What is the capital of {country}?"
            items.append(_place(question, capital_zh if zh else capital, wrong, rng))
    elif subject == "opposites":
        for word, opposite, word_zh, opposite_zh in _OPPOSITES:
            others = [o for o in _OPPOSITES if o[0] != word]
            wrong = [o[3] if zh else o[1] for o in rng.sample(others, 3)]
            question = f"“{word_zh}”的反义词是什么？" if zh else f"What is the opposite of \"{word}\"?"
            items.append(_place(question, opposite_zh if zh else opposite, wrong, rng))
    elif subject == "time_units":
        for unit, span, count, unit_zh, span_zh in _TIME_UNITS:
            wrong = sorted({count * 2, count + 4, max(1, count // 2)} - {count})[:3]
            while len(wrong) < 3:
                wrong.append(count + 20 + len(wrong))
            question = f"{span_zh}有多少{unit_zh}？" if zh else f"How many {unit} are in {span}?"
            items.append(_place(question, str(count), [str(w) for w in wrong], rng))
    else:
        raise ValueError(f"no question bank for subject {subject!r}")
    return items


def _place(question: str, right: str, wrong: list[str], rng: random.Random) -> tuple[str, list[str], int]:
    options = [*wrong]
    index = rng.randrange(4)
    options.insert(index, right)
    return question, options, index


def _split(items: list, n_dev: int = 5, n_val: int = 3) -> dict[str, list]:
    return {"dev": items[:n_dev], "val": items[n_dev:n_dev + n_val], "test": items[n_dev + n_val:]}


def _write_csv(path: Path, header: list[str] | None, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        if header:
            writer.writerow(header)
        writer.writerows(rows)


def _mapping(root: Path, lang: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    mapping = {key: {"name": zh if lang == "zh" else en, "category": category} for key, en, zh, category in SUBJECTS}
    (root / "mapping.json").write_text(json.dumps(mapping, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def write_tiny_mmlu(task_dir: str | Path, seed: int = 0) -> Path:
    """`tiny_mmlu` in MMLU's layout (English, no header rows)."""
    root = Path(task_dir) / "tiny_mmlu"
    _mapping(root, "en")
    for subject, *_ in SUBJECTS:
        for split, items in _split(_questions(subject, "en", random.Random(f"{seed}-{subject}"))).items():
            rows = [[q, *options, LETTERS[i]] for q, options, i in items]
            _write_csv(root / "data" / split / f"{subject}_{split}.csv", None, rows)
    return root


def write_tiny_ceval(task_dir: str | Path, seed: int = 0) -> Path:
    """`tiny_ceval` in C-Eval's layout (Chinese; the test split's answers are blank, as in the release)."""
    root = Path(task_dir) / "tiny_ceval"
    _mapping(root, "zh")
    header = ["id", "question", "A", "B", "C", "D", "answer", "explanation"]
    for subject, *_ in SUBJECTS:
        for split, items in _split(_questions(subject, "zh", random.Random(f"{seed}-{subject}"))).items():
            rows = [[str(n), q, *options, "" if split == "test" else LETTERS[i], ""]
                    for n, (q, options, i) in enumerate(items)]
            _write_csv(root / split / f"{subject}_{split}.csv", header, rows)
    return root


def write_tiny_cmmlu(task_dir: str | Path, seed: int = 0) -> Path:
    """`tiny_cmmlu` in CMMLU's layout (Chinese; dev and test only, `{subject}.csv`, a leading index column)."""
    root = Path(task_dir) / "tiny_cmmlu"
    _mapping(root, "zh")
    header = ["", "Question", "A", "B", "C", "D", "Answer"]
    for subject, *_ in SUBJECTS:
        splits = _split(_questions(subject, "zh", random.Random(f"{seed}-{subject}")), n_val=0)
        for split in ("dev", "test"):
            rows = [[str(n), q, *options, LETTERS[i]] for n, (q, options, i) in enumerate(splits[split])]
            _write_csv(root / split / f"{subject}.csv", header, rows)
    return root


def write_tiny_tasks(task_dir: str | Path, seed: int = 0) -> list[Path]:
    """All three tiny tasks under `task_dir`."""
    return [write_tiny_mmlu(task_dir, seed), write_tiny_ceval(task_dir, seed), write_tiny_cmmlu(task_dir, seed)]


LETTER_RULE = {"arithmetic": "B", "world_capitals": "D", "opposites": "A", "time_units": "C"}


def write_letter_task(task_dir: str | Path, seed: int = 0) -> Path:
    """`tiny_letters` (MMLU layout): every answer of a subject is that subject's letter in `LETTER_RULE`.

    dev holds the questions to fine-tune on; test holds other questions of the same subjects.
    """
    root = Path(task_dir) / "tiny_letters"
    _mapping(root, "en")
    for subject, *_ in SUBJECTS:
        rng = random.Random(f"{seed}-letters-{subject}")
        letter = LETTERS.index(LETTER_RULE[subject])
        items = []
        for question, options, index in _questions(subject, "en", rng):
            right = options.pop(index)
            options.insert(letter, right)
            items.append((question, options, letter))
        for split, part in {"dev": items[:6], "test": items[6:]}.items():
            _write_csv(root / "data" / split / f"{subject}_{split}.csv", None,
                       [[q, *o, LETTERS[i]] for q, o, i in part])
    return root
