"""Pre-training with packing on a text dataset."""

from __future__ import annotations

import json

from tests.train.conftest import tiny_args, train


def test_pt_packs_text_into_full_blocks(tiny_llama_dir, tmp_path):
    out = tmp_path / "pt"
    metrics = train(*tiny_args(tiny_llama_dir, out, stage="pt", dataset="pretrain_demo", template="default",
                               cutoff_len=64, per_device_train_batch_size=2, max_steps=5, plot_loss="true"))
    # Every packed block is exactly cutoff_len real tokens: no padding is ever fed.
    assert metrics["num_input_tokens_seen"] == 5 * 2 * 64
    logged = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines() if "loss" in line]
    assert len(logged) == 5 and all(entry["loss"] > 0 for entry in logged)
    assert (out / "adapter_model.safetensors").is_file() and (out / "training_loss.png").is_file()
    assert json.loads((out / "lmforge_run.json").read_text())["stage"] == "pt"


def test_packed_token_counts_exclude_padding(tiny_llama_dir, tmp_path):
    counts = {}
    for mode in ("packing", "neat_packing"):
        metrics = train(*tiny_args(tiny_llama_dir, tmp_path / mode, **{mode: "true"}, cutoff_len=256, max_steps=2,
                                   disable_shuffling="true", per_device_train_batch_size=2))
        counts[mode] = metrics["num_input_tokens_seen"]
    # Both feed the same packed blocks; only real tokens count, never the padding tail of a block.
    assert 0 < counts["packing"] == counts["neat_packing"] < 2 * 2 * 256
