"""LLaMA Board's data files: both languages say everything, every listed model has a real template."""

from __future__ import annotations

import string

from lmforge.config.finetune import IMPLEMENTED_STAGES
from lmforge.data.templates import list_templates
from lmforge.webui import choices, locales


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_both_languages_have_every_string_with_the_same_placeholders():
    english, chinese = locales.strings("en"), locales.strings("zh")
    assert set(english) == set(chinese)
    assert set(english["messages"]) == set(chinese["messages"])
    for key, text in english["messages"].items():
        assert _fields(text) == _fields(chinese["messages"][key]), key
    for key in english:
        if key != "messages":
            assert bool(english[key]["label"]) == bool(chinese[key]["label"]), key


def test_every_listed_model_has_a_registered_template_and_a_family():
    families = choices.model_families()
    assert {"Qwen2.5", "Llama 3", "Qwen2-VL"} <= set(families)
    templates = set(list_templates())
    for models in families.values():
        for name, entry in models.items():
            assert entry["template"] in templates, name
            assert entry["path"], name
    assert choices.model_entry("Qwen2.5-0.5B-Instruct") == {"path": "Qwen/Qwen2.5-0.5B-Instruct", "template": "qwen"}


def test_the_stage_list_is_the_cli_s():
    assert choices.stages() == list(IMPLEMENTED_STAGES)


def test_datasets_are_filtered_by_what_the_stage_trains_on(tmp_path):
    from tests.conftest import DATA_DIR

    assert set(choices.datasets_for_stage(str(DATA_DIR), "dpo")[0]) == {"dpo_en_demo", "dpo_zh_demo"}
    assert choices.datasets_for_stage(str(DATA_DIR), "kto")[0] == ["kto_en_demo"]
    sft, problems = choices.datasets_for_stage(str(DATA_DIR), "sft")
    assert "identity" in sft and "dpo_en_demo" not in sft and "kto_en_demo" not in sft and problems == []
    (tmp_path / "dataset_info.json").write_text('{"a": {"file_name": "a.json",}}')
    names, problems = choices.datasets_for_stage(str(tmp_path), "sft")
    assert names == [] and len(problems) == 1
    assert problems[0].startswith(f"Invalid JSON in {tmp_path / 'dataset_info.json'} at line 1")
