"""The datasets bundled in data/: registered, well-formed, and in step with the docs and the corpus."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / "data"
CORPUS_DIR = REPO_ROOT / "src" / "lmforge" / "testing" / "corpus"
CJK = re.compile(r"[\u4e00-\u9fff]")

# name -> (file, formatting, allowed row counts)
EXPECTED = {
    "identity": ("identity.json", "alpaca", range(90, 101)),
    "alpaca_en_demo": ("alpaca_en_demo.json", "alpaca", range(100, 141)),
    "alpaca_zh_demo": ("alpaca_zh_demo.json", "alpaca", range(100, 141)),
    "sharegpt_tools_demo": ("sharegpt_tools_demo.json", "sharegpt", range(25, 36)),
    "pretrain_demo": ("pretrain_demo.jsonl", "alpaca", range(50, 71)),
    "dpo_en_demo": ("dpo_en_demo.json", "alpaca", range(30, 61)),
    "dpo_zh_demo": ("dpo_zh_demo.json", "alpaca", range(25, 61)),
    "kto_en_demo": ("kto_en_demo.json", "alpaca", range(30, 61)),
    "mllm_demo": ("mllm_demo.json", "sharegpt", range(3, 7)),
    "mllm_video_demo": ("mllm_video_demo.json", "sharegpt", range(2, 5)),
}
MEDIA_DIR = DATA_DIR / "mllm_demo_data"  # the pictures and clips of the multimodal demos
MEDIA_KIND = {"mllm_demo": ("images", "<image>", ".png"), "mllm_video_demo": ("videos", "<video>", ".mp4")}
RANKED = {"dpo_en_demo", "dpo_zh_demo"}  # pairwise data: `ranking: true`
USER_ROLES = {"human", "observation"}
ASSISTANT_ROLES = {"gpt", "function_call"}


def _info() -> dict:
    return json.loads((DATA_DIR / "dataset_info.json").read_text(encoding="utf-8"))


def _rows(file_name: str) -> list:
    text = (DATA_DIR / file_name).read_text(encoding="utf-8")
    if file_name.endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


def _has_cjk(text: str) -> bool:
    return bool(CJK.search(text))


def test_registry_matches_files():
    info = _info()
    assert set(info) == set(EXPECTED)
    registered = {entry["file_name"] for entry in info.values()}
    on_disk = {p.name for p in DATA_DIR.iterdir() if p.name not in {"dataset_info.json", "README.md", MEDIA_DIR.name}}
    assert on_disk == registered, "every file in data/ must be registered, and every registered file must exist"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_entry_fields(name):
    entry = _info()[name]
    file_name, formatting, counts = EXPECTED[name]
    assert entry["file_name"] == file_name
    assert entry.get("formatting", "alpaca") == formatting
    assert entry.get("ranking", False) == (name in RANKED)
    allowed = {"file_name", "formatting", "columns", "tags", "ranking", "split", "subset", "folder", "num_samples"}
    assert set(entry) <= allowed
    assert len(_rows(file_name)) in counts


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_files_are_valid_utf8_json(name):
    file_name = EXPECTED[name][0]
    raw = (DATA_DIR / file_name).read_bytes()
    text = raw.decode("utf-8")
    assert text.endswith("\n")
    if file_name.endswith(".jsonl"):
        for line in text.splitlines():
            assert isinstance(json.loads(line), dict)
    else:
        assert isinstance(json.loads(text), list)


@pytest.mark.parametrize("name", ["identity", "alpaca_en_demo", "alpaca_zh_demo"])
def test_alpaca_rows(name):
    rows = _rows(EXPECTED[name][0])
    for row in rows:
        assert set(row) == {"instruction", "input", "output"}, row
        assert all(isinstance(v, str) for v in row.values()), row
        assert row["instruction"].strip() and row["output"].strip(), row
        assert row["output"] == row["output"].strip(), row
    keys = [(row["instruction"], row["input"]) for row in rows]
    assert len(set(keys)) == len(keys), "duplicate prompts"
    assert any(row["input"] for row in rows), "some rows should use the input column"


def test_identity_rows():
    rows = _rows("identity.json")
    assert all("{{name}}" in row["output"] for row in rows)
    with_author = sum("{{author}}" in row["output"] for row in rows)
    assert with_author >= 0.8 * len(rows)
    chinese = sum(_has_cjk(row["output"]) for row in rows)
    assert 0.4 * len(rows) <= chinese <= 0.6 * len(rows)
    prompts = {row["instruction"] for row in rows}
    assert {"hi", "hello", "Who are you?", "What is your name?", "你好", "你是谁？", "你叫什么名字？"} <= prompts
    # Short answers, so that a tiny model can memorize them.
    assert max(len(row["output"]) for row in rows) < 200
    # Placeholders are the only braces, spelled exactly.
    for row in rows:
        assert set(re.findall(r"\{\{\w+\}\}", row["output"])) <= {"{{name}}", "{{author}}"}
        assert "{" not in re.sub(r"\{\{(name|author)\}\}", "", row["output"])


def test_alpaca_languages():
    en = _rows("alpaca_en_demo.json")
    zh = _rows("alpaca_zh_demo.json")
    assert sum(_has_cjk(r["instruction"]) for r in en) <= 2  # a translation task or two
    assert all(_has_cjk(r["instruction"] + r["output"]) for r in zh)
    for rows in (en, zh):
        assert sum(bool(r["input"]) for r in rows) >= 20
        assert any("def " in r["output"] for r in rows), "some simple code"


def test_sharegpt_role_positions_and_counts():
    rows = _rows("sharegpt_tools_demo.json")
    for i, row in enumerate(rows):
        assert set(row) <= {"conversations", "system", "tools"}, i
        messages = row["conversations"]
        assert len(messages) >= 2 and len(messages) % 2 == 0, i
        for pos, message in enumerate(messages):
            assert set(message) == {"from", "value"}, i
            assert isinstance(message["value"], str) and message["value"].strip(), i
            allowed = USER_ROLES if pos % 2 == 0 else ASSISTANT_ROLES
            assert message["from"] in allowed, (i, pos, message["from"])
        assert messages[0]["from"] == "human", i
        assert messages[-1]["from"] == "gpt", i
        if "system" in row:
            assert isinstance(row["system"], str) and row["system"].strip(), i


def test_sharegpt_tool_calls():
    rows = _rows("sharegpt_tools_demo.json")
    calls = 0
    for i, row in enumerate(rows):
        tool_names: set[str] = set()
        if "tools" in row:
            assert isinstance(row["tools"], str), i
            tools = json.loads(row["tools"])
            assert isinstance(tools, list) and tools, i
            for tool in tools:
                assert set(tool) == {"name", "description", "parameters"}, i
                params = tool["parameters"]
                assert params["type"] == "object", i
                assert set(params["required"]) <= set(params["properties"]), i
                tool_names.add(tool["name"])
        messages = row["conversations"]
        for pos, message in enumerate(messages):
            if message["from"] == "function_call":
                calls += 1
                call = json.loads(message["value"])
                assert set(call) == {"name", "arguments"}, i
                assert isinstance(call["arguments"], dict), i
                assert call["name"] in tool_names, (i, call["name"])
                tool = next(t for t in json.loads(row["tools"]) if t["name"] == call["name"])
                assert set(tool["parameters"]["required"]) <= set(call["arguments"]), i
                assert set(call["arguments"]) <= set(tool["parameters"]["properties"]), i
                following = messages[pos + 1]
                assert following["from"] == "observation", i
                json.loads(following["value"])
                assert messages[pos + 2]["from"] == "gpt", i
            if message["from"] == "observation":
                assert messages[pos - 1]["from"] == "function_call", i
    assert calls >= 15


def test_sharegpt_mix():
    rows = _rows("sharegpt_tools_demo.json")
    assert sum("system" in row for row in rows) > len(rows) / 2
    assert sum("tools" in row for row in rows) > len(rows) / 2
    user_turns = [sum(m["from"] == "human" for m in row["conversations"]) for row in rows]
    assert sum(n >= 2 for n in user_turns) >= 5 and max(user_turns) >= 3
    chinese = sum(_has_cjk(row["conversations"][0]["value"]) for row in rows)
    assert 0.3 * len(rows) <= chinese <= 0.7 * len(rows)
    assert any("tools" in row and all(m["from"] in {"human", "gpt"} for m in row["conversations"]) for row in rows)


@pytest.mark.parametrize("name", sorted(RANKED))
def test_preference_rows(name):
    rows = _rows(EXPECTED[name][0])
    for i, row in enumerate(rows):
        assert set(row) == {"instruction", "input", "chosen", "rejected"}, i
        assert row["instruction"].strip() and row["chosen"].strip() and row["rejected"].strip(), i
        assert row["chosen"] != row["rejected"], i
    chinese = sum(_has_cjk(row["instruction"]) for row in rows)
    assert chinese == (len(rows) if name.endswith("_zh_demo") else 0)


def test_kto_rows():
    rows = _rows("kto_en_demo.json")
    for i, row in enumerate(rows):
        assert set(row) == {"instruction", "input", "output", "kto_tag"}, i
        assert isinstance(row["kto_tag"], bool), i
    desirable = sum(row["kto_tag"] for row in rows)
    assert 0 < desirable < len(rows), "KTO needs both desirable and undesirable examples"


def test_pretrain_rows():
    rows = _rows("pretrain_demo.jsonl")
    for row in rows:
        assert set(row) == {"text"}
        assert isinstance(row["text"], str) and len(row["text"]) > 40
        assert "\n" not in row["text"]
    chinese = sum(_has_cjk(row["text"]) for row in rows)
    assert 0.3 * len(rows) <= chinese <= 0.7 * len(rows)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_columns_exist_in_rows(name):
    entry = _info()[name]
    rows = _rows(entry["file_name"])
    columns = entry.get("columns", {})
    if EXPECTED[name][1] == "alpaca" and not columns:
        columns = {"prompt": "instruction", "query": "input", "response": "output"}
    present = set().union(*(row.keys() for row in rows))
    assert set(columns.values()) <= present


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_loads_with_datasets(name, tmp_path):
    datasets = pytest.importorskip("datasets")
    file_name = EXPECTED[name][0]
    dataset = datasets.load_dataset(
        "json", data_files=str(DATA_DIR / file_name), split="train", cache_dir=str(tmp_path)
    )
    assert dataset.num_rows == len(_rows(file_name))


def test_readme_documents_the_bundled_datasets():
    readme = (DATA_DIR / "README.md").read_text(encoding="utf-8")
    for field in ["file_name", "hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name",
                  "formatting", "ranking", "subset", "split", "folder", "num_samples", "columns", "tags"]:
        assert f"`{field}`" in readme, field
    for name, (file_name, _, _) in EXPECTED.items():
        match = re.search(rf"^\| `{name}` \| [^|]+ \| (\d+) \|", readme, re.MULTILINE)
        assert match, f"{name} missing from the bundled datasets table"
        assert int(match.group(1)) == len(_rows(file_name)), name


def test_tokenizer_corpus_covers_demo_data():
    corpus = set()
    for path in CORPUS_DIR.glob("*.txt"):
        corpus.update(line.strip() for line in path.read_text(encoding="utf-8").splitlines())

    def lines(text):
        return [line.strip() for line in str(text).splitlines() if line.strip()]

    missing = []
    for name in ("identity", "alpaca_en_demo", "alpaca_zh_demo"):
        for row in _rows(EXPECTED[name][0]):
            for value in row.values():
                missing += [line for line in lines(value) if line not in corpus]
    for row in _rows("sharegpt_tools_demo.json"):
        values = [m["value"] for m in row["conversations"]] + [row.get("system", ""), row.get("tools", "")]
        for value in values:
            missing += [line for line in lines(value) if line not in corpus]
    for row in _rows("pretrain_demo.jsonl"):
        missing += [line for line in lines(row["text"]) if line not in corpus]
    assert not missing, f"{len(missing)} demo lines are not in the tokenizer corpus, e.g. {missing[:3]}"


@pytest.mark.parametrize("name", sorted(MEDIA_KIND))
def test_multimodal_rows(name):
    column, placeholder, suffix = MEDIA_KIND[name]
    rows = _rows(EXPECTED[name][0])
    for i, row in enumerate(rows):
        assert set(row) == {"messages", column}, i
        messages = row["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2), i
        assert all(set(m) == {"role", "content"} and m["content"].strip() for m in messages), i
        text = "".join(m["content"] for m in messages)
        assert text.count(placeholder) == len(row[column]) >= 1, i
        assert all(placeholder not in m["content"] for m in messages if m["role"] == "assistant"), i
        assert all(path.startswith("mllm_demo_data/") and path.endswith(suffix) for path in row[column]), i
        assert all((DATA_DIR / path).is_file() for path in row[column]), i
    assert any(len(row["messages"]) > 2 for row in rows), "a multi-turn row"
    if name == "mllm_demo":
        assert any(len(row["images"]) > 1 for row in rows), "a row with several images"


def test_multimodal_media_are_used_and_small():
    used = {path for name, (column, _, _) in MEDIA_KIND.items() for row in _rows(EXPECTED[name][0])
            for path in row[column]}
    on_disk = {f"mllm_demo_data/{p.name}" for p in MEDIA_DIR.iterdir()}
    assert on_disk == used, "every picture and clip is used by a row, and every row's file exists"
    assert sum(p.stat().st_size for p in MEDIA_DIR.iterdir()) < 50_000


def test_multimodal_demo_is_what_the_script_writes(tmp_path):
    """scripts/make_mllm_demo.py writes the same rows, the same pictures and clips of the same frames."""
    import importlib.util

    pytest.importorskip("PIL")
    pytest.importorskip("av")
    import numpy as np
    from PIL import Image

    from lmforge.model.vl_processor import read_video

    spec = importlib.util.spec_from_file_location("make_mllm_demo", REPO_ROOT / "scripts" / "make_mllm_demo.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(tmp_path)
    for name in MEDIA_KIND:
        file_name = EXPECTED[name][0]
        assert (tmp_path / file_name).read_bytes() == (DATA_DIR / file_name).read_bytes(), name
    assert sorted(p.name for p in (tmp_path / MEDIA_DIR.name).iterdir()) == sorted(p.name for p in MEDIA_DIR.iterdir())
    for path in MEDIA_DIR.glob("*.png"):
        made = np.asarray(Image.open(tmp_path / MEDIA_DIR.name / path.name))
        assert np.array_equal(made, np.asarray(Image.open(path))), path.name
    for path in MEDIA_DIR.glob("*.mp4"):
        # Lossy: compare the decoded frames loosely, as encoder versions may differ by a few levels.
        made = read_video(tmp_path / MEDIA_DIR.name / path.name, fps=4, maxlen=64).frames.astype(int)
        kept = read_video(path, fps=4, maxlen=64).frames.astype(int)
        assert made.shape == kept.shape == (8, 112, 112, 3), path.name
        assert np.abs(made - kept).mean() < 2, path.name
