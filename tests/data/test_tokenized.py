"""tokenized_path: save/load round trip, atomic writes and the error texts."""

from __future__ import annotations

import os

import pytest
from datasets import Dataset

from lmforge.data.tokenized import load_tokenized, save_tokenized
from lmforge.errors import UserError


def _split(n: int, packed: bool = False) -> Dataset:
    rows = []
    for i in range(n):
        row = {
            "input_ids": [1, 2, i],
            "attention_mask": [1, 1, 1],
            "labels": [-100, 2, i],
            "_dataset": "demo",
            "_row": i,
            "_drop": "",
        }
        if packed:
            row["position_ids"] = [0, 1, 2]
        rows.append(row)
    return Dataset.from_list(rows)


def test_round_trip_keeps_only_model_columns(tmp_path):
    target = tmp_path / "tok"
    save_tokenized({"train": _split(3), "validation": _split(2)}, target)
    assert sorted(os.listdir(tmp_path)) == ["tok"]  # no staging folder left behind
    splits = load_tokenized(target, columns=["input_ids", "attention_mask", "labels"])
    assert splits.train.column_names == ["input_ids", "attention_mask", "labels"]
    assert splits.train["input_ids"] == [[1, 2, 0], [1, 2, 1], [1, 2, 2]]
    assert splits.eval["labels"] == [[-100, 2, 0], [-100, 2, 1]]
    assert splits.eval_by_name == {}


def test_packed_columns_and_per_dataset_eval(tmp_path):
    target = tmp_path / "packed"
    save_tokenized({"train": _split(2, packed=True), "validation_alpaca": _split(1, packed=True)}, target)
    splits = load_tokenized(target, columns=["input_ids", "attention_mask", "labels", "position_ids"])
    assert splits.train["position_ids"] == [[0, 1, 2], [0, 1, 2]]
    assert splits.eval is None
    assert list(splits.eval_by_name) == ["alpaca"]


def test_existing_path_is_not_replaced_without_overwrite(tmp_path):
    target = tmp_path / "tok"
    save_tokenized({"train": _split(1)}, target)
    with pytest.raises(UserError, match=r"tokenized_path '.*tok' already exists\. Delete it"):
        save_tokenized({"train": _split(2)}, target)
    save_tokenized({"train": _split(2)}, target, overwrite=True)
    assert len(load_tokenized(target).train) == 2
    assert sorted(os.listdir(tmp_path)) == ["tok"]


def test_interrupted_save_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    from datasets import DatasetDict

    def boom(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(DatasetDict, "save_to_disk", boom)
    with pytest.raises(KeyboardInterrupt):
        save_tokenized({"train": _split(1)}, tmp_path / "tok")
    assert os.listdir(tmp_path) == []


def test_folder_that_is_not_a_saved_dataset(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hi")
    with pytest.raises(UserError) as info:
        load_tokenized(tmp_path / "junk")
    assert str(info.value) == (
        f"tokenized_path '{tmp_path / 'junk'}' is not a saved tokenized dataset (no dataset_dict.json). "
        "Point tokenized_path at a folder written by an earlier run, or at a path that does not exist yet to create it."
    )
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"tokenized_path '.*file' is not a folder\."):
        load_tokenized(tmp_path / "file")


def test_saved_with_different_columns(tmp_path):
    target = tmp_path / "tok"
    save_tokenized({"train": _split(1)}, target)
    with pytest.raises(UserError) as info:
        load_tokenized(target, columns=["input_ids", "attention_mask", "labels", "position_ids"])
    assert str(info.value) == (
        f"tokenized_path '{target}' split 'train' was saved with columns ['attention_mask', 'input_ids', 'labels'], "
        "but this run needs ['attention_mask', 'input_ids', 'labels', 'position_ids'] (a different stage or packing "
        "setting). Delete the folder or choose another tokenized_path."
    )
