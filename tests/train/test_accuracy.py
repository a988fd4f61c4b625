"""`do_eval` with `compute_accuracy`: token accuracy on the supervised tokens, without generation."""

from __future__ import annotations

import json

from tests.train.conftest import DATA_DIR, QUICKSTART, train


def _direct_accuracy(base_dir, adapter_dir, rows: int) -> float:
    """Mean per-sample share of answer tokens that the model predicts exactly (argmax), one sample at a time."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmforge.data.templates import get_template

    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir).eval()
    template = get_template("llama3", tokenizer)
    identity = json.loads((DATA_DIR / "identity.json").read_text(encoding="utf-8"))[:rows]
    scores = []
    for row in identity:
        answer = row["output"].replace("{{name}}", "ForgeBot").replace("{{author}}", "the lmforge team")
        prompt_ids, answer_ids = template.encode_oneturn(
            tokenizer, [{"role": "user", "content": row["instruction"]}, {"role": "assistant", "content": answer}])
        ids = list(prompt_ids) + list(answer_ids)
        with torch.no_grad():
            predicted = model(torch.tensor([ids])).logits[0].argmax(-1).tolist()
        # The token at position t is predicted at t - 1.
        hits = [predicted[t - 1] == ids[t] for t in range(len(prompt_ids), len(ids))]
        scores.append(sum(hits) / len(hits))
    return sum(scores) / len(scores)


def test_eval_accuracy_matches_a_direct_computation(quickstart_run, tiny_llama_dir, tmp_path):
    out = tmp_path / "eval"
    metrics = train(str(QUICKSTART), f"model_name_or_path={tiny_llama_dir}", f"adapter_name_or_path={quickstart_run}",
                    f"dataset_dir={DATA_DIR}", f"output_dir={out}", "do_train=false", "do_eval=true",
                    "eval_dataset=identity", "compute_accuracy=true", "max_samples=16", "per_device_eval_batch_size=3")
    expected = _direct_accuracy(tiny_llama_dir, quickstart_run, rows=16)
    assert abs(metrics["eval_accuracy"] - expected) < 1e-6
    assert metrics["eval_accuracy"] > 0.8  # the trained adapter knows these answers
    saved = json.loads((out / "eval_results.json").read_text(encoding="utf-8"))
    assert saved["eval_accuracy"] == metrics["eval_accuracy"] and "eval_loss" in saved
