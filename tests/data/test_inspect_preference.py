"""`lmforge data preview` and `data check` on preference pairs and KTO rows."""

from __future__ import annotations

import json

from tests.conftest import DATA_DIR
from tests.data.test_inspect import run


def _base(model, stage, dataset):
    return [f"model_name_or_path={model}", f"stage={stage}", "do_train=true", f"dataset={dataset}",
            f"dataset_dir={DATA_DIR}", "template=llama3", "output_dir=unused", "cutoff_len=64"]


def test_preview_shows_chosen_and_rejected_side_by_side(capsys, tiny_llama_dir):
    code, out, _ = run(capsys, "preview", *_base(tiny_llama_dir, "dpo", "dpo_en_demo"), "--num", "1")
    assert code == 0
    header = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nTell me about the moon.<|eot_id|>" \
             "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert ("--- sample 1: dpo_en_demo row 0 (chosen 51 tokens, 29 trained; rejected 41 tokens, 19 trained) ---\n"
            f"[chosen]\n{header}[[Sure! It is Earth's only natural satellite and reflects sunlight. Hope this helps!"
            f"<|eot_id|>]]\n[rejected]\n{header}[[No. I will not talk about the moon with you. Ask someone else."
            "<|eot_id|>]]\n") in out
    code, out, _ = run(capsys, "preview", *_base(tiny_llama_dir, "dpo", "dpo_en_demo"), "--num", "2", "--json")
    samples = json.loads(out)["samples"]
    assert [(s["row"], s["chosen_tokens"], s["rejected_trained_tokens"]) for s in samples] == [(0, 51, 19), (1, 48, 17)]


def test_preview_marks_desirable_and_undesirable_kto_answers(capsys, tiny_llama_dir):
    code, out, _ = run(capsys, "preview", *_base(tiny_llama_dir, "kto", "kto_en_demo"), "--num", "2")
    assert code == 0
    assert "--- sample 1: kto_en_demo row 0 (50 tokens, 29 trained, desirable) ---" in out
    assert "--- sample 2: kto_en_demo row 1 (37 tokens, 17 trained, undesirable) ---" in out
    assert "[[No. I will not talk about rain with you. Ask someone else.<|eot_id|>]]" in out


def test_check_measures_a_pair_by_its_longer_sequence(capsys, tiny_llama_dir):
    code, out, _ = run(capsys, "check", *_base(tiny_llama_dir, "dpo", "dpo_en_demo"), "--json")
    assert code == 0
    result = json.loads(out)
    assert result["datasets"] == {"dpo_en_demo": {"rows": 42, "dropped": 0, "warnings": 0}}
    lengths = result["splits"]["train"]["lengths"]
    assert (lengths["samples"], lengths["min"], lengths["max"], lengths["over_cutoff"]) == (42, 38, 54, 0)


def test_a_dataset_of_the_wrong_shape_for_the_stage_is_one_error(capsys, tiny_llama_dir):
    code, _, err = run(capsys, "check", *_base(tiny_llama_dir, "sft", "dpo_en_demo"))
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        f"lmforge data: error: Dataset 'dpo_en_demo' is preference data (`ranking: true` in "
        f"{DATA_DIR}/dataset_info.json) and cannot train stage 'sft'; use it with stage rm or dpo, or pick a "
        "dataset without `ranking`.")
    code, _, err = run(capsys, "check", *_base(tiny_llama_dir, "sft", "kto_en_demo"))
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        f"lmforge data: error: Dataset 'kto_en_demo' is KTO feedback data (a `kto_tag` column in "
        f"{DATA_DIR}/dataset_info.json) and cannot train stage 'sft'; use it with stage kto, or remove `kto_tag` "
        "from its `columns`.")
