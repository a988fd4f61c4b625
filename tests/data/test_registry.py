"""dataset_info.json -> DatasetSpec: fields, LLaMA-Factory's defaults, and every error by its text."""

from __future__ import annotations

import dataclasses
import os

import pytest

from lmforge.data.converters import register_converter
from lmforge.data.registry import OPENAI_TAGS, Columns, DatasetSpec, Tags, get_dataset_specs
from lmforge.errors import UserError


def one(info, name="d", dataset_dir=None):
    return get_dataset_specs([name], dataset_dir if dataset_dir is not None else info)[0]


def test_file_entry_gets_llamafactory_defaults(data_dir):
    root = data_dir({"identity": {"file_name": "identity.json"}})
    (spec,) = get_dataset_specs(["identity"], str(root))
    assert spec.name == "identity"
    assert (spec.load_from, spec.source, spec.file_name) == ("file", "identity.json", "identity.json")
    assert spec.info_path == str(root / "dataset_info.json")
    assert spec.dataset_dir == str(root)
    assert (spec.formatting, spec.ranking, spec.subset, spec.split, spec.folder, spec.num_samples) == (
        "alpaca", False, None, "train", None, None,
    )  # fmt: skip
    assert spec.columns == Columns(prompt="instruction", query="input", response="output", messages="conversations")
    assert spec.columns.history is spec.columns.system is spec.columns.kto_tag is None
    assert spec.tags == Tags("from", "value", "human", "gpt", "observation", "function_call", "system")
    assert spec.columns_given is False


def test_every_field_is_parsed():
    entry = {
        "hf_hub_url": "org/data",
        "formatting": "sharegpt",
        "ranking": True,
        "subset": "en",
        "split": "test",
        "folder": "sub",
        "num_samples": 7,
        "revision": "main",
        "columns": {k: f"c_{k}" for k in ("messages", "system", "tools", "images", "videos", "audios", "chosen", "rejected", "kto_tag")},
        "tags": {
            "role_tag": "r", "content_tag": "c", "user_tag": "u", "assistant_tag": "a",
            "observation_tag": "o", "function_tag": "f", "system_tag": "s",
        },
    }  # fmt: skip
    spec = one({"d": entry})
    assert (spec.load_from, spec.source, spec.hf_hub_url) == ("hf_hub", "org/data", "org/data")
    assert (spec.ranking, spec.subset, spec.split, spec.folder, spec.num_samples, spec.revision) == (
        True,
        "en",
        "test",
        "sub",
        7,
        "main",
    )
    assert spec.columns.messages == "c_messages" and spec.columns.kto_tag == "c_kto_tag"
    assert spec.columns.prompt is None  # a `columns` object replaces the defaults
    assert spec.tags == Tags("r", "c", "u", "a", "o", "f", "s")


def test_columns_object_replaces_default_columns():
    spec = one({"d": {"file_name": "wiki.txt", "columns": {"prompt": "text"}}})
    assert spec.columns == Columns(prompt="text", query=None, response=None, messages=None)
    assert spec.columns_given is True


def test_tags_object_overrides_only_the_tags_it_names():
    spec = one(
        {"d": {"file_name": "x.json", "formatting": "sharegpt", "tags": {"role_tag": "role", "content_tag": "content"}}}
    )
    assert spec.tags == Tags(role_tag="role", content_tag="content")
    assert spec.tags.system_tag == "system" and spec.tags.user_tag == "human"


def test_openai_defaults():
    spec = one({"d": {"file_name": "x.json", "formatting": "openai"}})
    assert spec.tags == OPENAI_TAGS
    assert dataclasses.astuple(spec.tags) == ("role", "content", "user", "assistant", "tool", "function_call", "system")
    assert spec.columns.messages == "conversations"
    spec = one({"d": {"file_name": "x.json", "formatting": "openai", "tags": {"observation_tag": "ipython"}}})
    assert spec.tags.observation_tag == "ipython" and spec.tags.role_tag == "role"


@pytest.mark.parametrize(
    ("entry", "env", "expected"),
    [
        ({"hf_hub_url": "h", "ms_hub_url": "m", "om_hub_url": "o", "file_name": "f"}, {}, ("hf_hub", "h")),
        ({"hf_hub_url": "h", "ms_hub_url": "m"}, {"USE_MODELSCOPE_HUB": "1"}, ("ms_hub", "m")),
        ({"ms_hub_url": "m"}, {}, ("ms_hub", "m")),
        ({"hf_hub_url": "h", "om_hub_url": "o"}, {"USE_OPENMIND_HUB": "true"}, ("om_hub", "o")),
        ({"om_hub_url": "o"}, {}, ("om_hub", "o")),
        ({"script_url": "s", "cloud_file_name": "s3://b/x.json", "file_name": "f"}, {}, ("script", "s")),
        ({"cloud_file_name": "s3://b/x.json", "file_name": "f"}, {}, ("cloud_file", "s3://b/x.json")),
        ({"file_name": "f"}, {}, ("file", "f")),
    ],
)
def test_source_precedence(monkeypatch, entry, env, expected):
    monkeypatch.delenv("USE_MODELSCOPE_HUB", raising=False)
    monkeypatch.delenv("USE_OPENMIND_HUB", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    spec = one({"d": entry})
    assert (spec.load_from, spec.source) == expected


def test_online_names_are_hub_ids(monkeypatch):
    monkeypatch.delenv("USE_MODELSCOPE_HUB", raising=False)
    monkeypatch.delenv("USE_OPENMIND_HUB", raising=False)
    specs = get_dataset_specs(["org/a", "org/b"], "ONLINE")
    assert [(s.name, s.load_from, s.source, s.formatting) for s in specs] == [
        ("org/a", "hf_hub", "org/a", "alpaca"),
        ("org/b", "hf_hub", "org/b", "alpaca"),
    ]
    monkeypatch.setenv("USE_MODELSCOPE_HUB", "1")
    assert get_dataset_specs(["org/a"], "ONLINE")[0].load_from == "ms_hub"


def test_names_as_comma_string_and_none():
    info = {"a": {"file_name": "a.json"}, "b": {"file_name": "b.json"}}
    assert [s.name for s in get_dataset_specs("b, a", info)] == ["b", "a"]
    assert get_dataset_specs(None, info) == []


def test_spec_is_immutable():
    spec = one({"d": {"file_name": "x.json"}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.formatting = "sharegpt"
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.columns.prompt = "q"
    assert isinstance(spec, DatasetSpec) and hash(spec)


def test_legacy_keys_are_accepted():
    spec = one({"d": {"file_name": "x.json", "file_sha1": "abc", "revision": "v1"}})
    assert spec.revision == "v1"


def test_registered_formatting_is_valid(monkeypatch):
    from lmforge.data import converters

    # A copy of the registry: the name registered here must not leak into later tests' error messages.
    monkeypatch.setattr(converters, "_CONVERTERS", dict(converters._CONVERTERS))
    register_converter("test_registry_fmt", lambda example, spec: {}, overwrite=True)
    spec = one({"d": {"file_name": "x.json", "formatting": "test_registry_fmt", "columns": {"messages": "m"}}})
    assert spec.formatting == "test_registry_fmt"


def test_bundled_dataset_info_parses(bundled_data):
    import json

    names = list(json.loads((bundled_data / "dataset_info.json").read_text()))
    specs = get_dataset_specs(names, str(bundled_data))
    assert [s.name for s in specs] == names
    assert all(s.load_from == "file" for s in specs)


# ---- errors, asserted by their text ---------------------------------------------------------


def error_of(names, dataset_dir) -> str:
    with pytest.raises(UserError) as info:
        get_dataset_specs(names, dataset_dir)
    return str(info.value)


def test_missing_dataset_info(tmp_path):
    message = error_of(["identity"], str(tmp_path / "nowhere"))
    assert message.startswith(f"dataset_info.json not found in '{tmp_path / 'nowhere'}'")
    assert "Set `dataset_dir` to the folder that holds it" in message


def test_missing_dataset_info_names_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = error_of(["identity"], "data")
    assert f"not found in '{tmp_path / 'data'}'" in message
    assert f"relative to the working directory {os.getcwd()}" in message


def test_invalid_json_names_file_line_and_column(tmp_path):
    path = tmp_path / "dataset_info.json"
    path.write_text('{\n  "a": {"file_name": "a.json"},\n  "b": {"file_name": "b.json",}\n}\n')
    message = error_of(["a"], str(tmp_path))
    assert message.startswith(
        f"Invalid JSON in {path} at line 3, column 31: Expecting property name enclosed in double quotes."
    )


def test_info_must_be_an_object(tmp_path):
    (tmp_path / "dataset_info.json").write_text('["identity"]')
    assert "must hold a JSON object that maps dataset names" in error_of(["identity"], str(tmp_path))


def test_unknown_dataset_name(data_dir):
    root = data_dir({"identity": {"file_name": "identity.json"}, "alpaca_en_demo": {"file_name": "a.json"}})
    message = error_of(["identiy"], str(root))
    assert message.startswith(
        f"Dataset 'identiy' is not defined in {root / 'dataset_info.json'}. Did you mean 'identity'? "
        "Defined: identity, alpaca_en_demo."
    )


def test_file_path_given_as_dataset_name(data_dir):
    root = data_dir({"identity": {"file_name": "identity.json"}})
    message = error_of(["my_data.json"], str(root))
    assert "takes names defined in dataset_info.json, not file paths" in message
    assert '"my_data": {"file_name": "my_data.json"}' in message


def test_unknown_entry_field(data_dir):
    root = data_dir({"mine": {"file_name": "m.json", "colums": {"prompt": "q"}}})
    message = error_of(["mine"], str(root))
    assert message == (
        f"Invalid dataset definition in {root / 'dataset_info.json'}: dataset 'mine' has unknown field 'colums'. "
        "Did you mean 'columns'? Valid fields: hf_hub_url, ms_hub_url, om_hub_url, script_url, cloud_file_name, "
        "file_name, formatting, ranking, subset, split, folder, num_samples, columns, tags, revision."
    )


def test_unknown_column_and_tag_keys():
    info = {
        "d": {"file_name": "x.json", "formatting": "sharegpt", "columns": {"mesages": "m"}, "tags": {"role_tg": "r"}}
    }
    message = error_of(["d"], info)
    assert "(1) dataset 'd' has unknown key 'mesages' in `columns`. Did you mean 'messages'?" in message
    assert "dataset 'd' has unknown key 'role_tg' in `tags`. Did you mean 'role_tag'?" in message


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            {"formatting": "sharegtp"},
            "dataset 'd' has formatting 'sharegtp'. Did you mean 'sharegpt'? Use one of: alpaca, sharegpt, openai",
        ),
        ({"ranking": "yes"}, "dataset 'd' has `ranking: \"yes\"`; it must be true or false."),
        ({"num_samples": 0}, "dataset 'd' has `num_samples: 0`; it must be a positive integer."),
        ({"num_samples": 2.5}, "dataset 'd' has `num_samples: 2.5`; it must be a positive integer."),
        ({"split": 3}, "dataset 'd' has `split: 3`; it must be a split name"),
        ({"subset": ["en"]}, "dataset 'd' has `subset: [\"en\"]`; it must be a non-empty string."),
        ({"columns": ["prompt"]}, "dataset 'd' has `columns` that is not an object"),
        ({"columns": {"prompt": 1}}, "dataset 'd' maps `columns.prompt` to 1; it must be a column name"),
        ({"tags": {"user_tag": 5}}, "dataset 'd' sets `tags.user_tag` to 5; it must be a string."),
        ({"columns": {"system": "sys"}}, "dataset 'd' maps no prompt column: a `columns` object replaces the defaults"),
        ({"formatting": "sharegpt", "columns": {"tools": "t"}}, "dataset 'd' (sharegpt) maps no `messages` column"),
        ({"ranking": True}, "dataset 'd' has `ranking: true` but no chosen/rejected columns"),
    ],
)
def test_wrong_types_and_values(entry, expected):
    message = error_of(["d"], {"d": {"file_name": "x.json", **entry}})
    assert message.startswith("Invalid dataset definition in the dataset_info dict: ")
    assert expected in message


def test_entry_without_source():
    message = error_of(["d"], {"d": {"formatting": "alpaca"}})
    assert message.endswith(
        "dataset 'd' has no source: give one of hf_hub_url, ms_hub_url, om_hub_url, script_url, cloud_file_name, "
        'file_name (for a local file: "file_name": "d.json").'
    )


def test_entry_not_an_object():
    assert "dataset 'd' must be a JSON object" in error_of(["d"], {"d": "x.json"})


def test_all_problems_are_reported_together():
    info = {"a": {"file_name": "a.json", "formating": "sharegpt"}, "b": {"file_name": "b.json", "ranking": 1}}
    message = error_of(["a", "b"], info)
    assert "(1) dataset 'a' has unknown field 'formating'. Did you mean 'formatting'?" in message
    assert "(2) dataset 'b' has `ranking: 1`" in message


def test_remote_info_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = error_of(["x"], "REMOTE:lmforge-tests/does-not-exist")
    assert message.startswith(
        "Cannot download dataset_info.json from the hub dataset repo 'lmforge-tests/does-not-exist'"
    )
