"""LLaMA Pro: `lmforge expand-blocks` adds identity blocks, and use_llama_pro trains only those blocks."""

from __future__ import annotations

import json
import re

import pytest
import torch

from lmforge.cli import main
from tests.train.conftest import load_safetensors, tiny_args, train

PROBE = torch.tensor([[1, 5, 9, 20, 33, 41, 7, 300, 1200]])
COPIES = {2, 5}  # 4 layers, 2 added: a copy after layers 1 and 3 of the original


def layer_of(name: str) -> int | None:
    match = re.search(r"\.layers\.(\d+)\.", name)
    return int(match.group(1)) if match else None


def losses(output_dir) -> list[float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


@pytest.fixture(scope="module")
def expanded_dir(tiny_llama_dir, tmp_path_factory):
    """The tiny Llama with 2 blocks added, written by the command under LLaMA-Factory's flag names."""
    out = tmp_path_factory.mktemp("llama-pro") / "expanded"
    assert main(["expand-blocks", "--model_name_or_path", str(tiny_llama_dir), "--output_dir", str(out),
                 "--num_expand", "2"]) == 0
    return out


def test_expanded_model_computes_the_same_function(tiny_llama_dir, expanded_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert sorted(p.name for p in expanded_dir.parent.iterdir()) == ["expanded"]  # no staging folder left
    assert {p.name for p in expanded_dir.iterdir()} >= {"config.json", "generation_config.json", "model.safetensors",
                                                        "tokenizer.json", "tokenizer_config.json"}
    assert json.loads((expanded_dir / "config.json").read_text())["num_hidden_layers"] == 6
    original = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    expanded = AutoModelForCausalLM.from_pretrained(expanded_dir).eval()
    with torch.inference_mode():
        torch.testing.assert_close(expanded(input_ids=PROBE).logits, original(input_ids=PROBE).logits,
                                   atol=1e-5, rtol=0)
        # Each copy has its own KV-cache slot, so cached generation matches too.
        assert torch.equal(expanded.generate(PROBE, max_new_tokens=6, do_sample=False),
                           original.generate(PROBE, max_new_tokens=6, do_sample=False))
    assert [layer.self_attn.layer_idx for layer in expanded.model.layers] == list(range(6))

    before, after = load_safetensors(tiny_llama_dir / "model.safetensors"), load_safetensors(
        expanded_dir / "model.safetensors")
    source = {0: 0, 1: 1, 2: 1, 3: 2, 4: 3, 5: 3}  # expanded layer -> original layer
    for name, tensor in after.items():
        layer = layer_of(name)
        if layer is None:
            assert torch.equal(tensor, before[name])
            continue
        original_name = name.replace(f".layers.{layer}.", f".layers.{source[layer]}.")
        if layer in COPIES and name.endswith(("o_proj.weight", "down_proj.weight")):
            assert not tensor.any(), name
        else:
            assert torch.equal(tensor, before[original_name]), name
    assert AutoTokenizer.from_pretrained(expanded_dir)("hello").input_ids == AutoTokenizer.from_pretrained(
        tiny_llama_dir)("hello").input_ids

    # The shard size is passed on: a 1MB limit splits the model into several files.
    sharded = tmp_path / "sharded"
    assert main(["expand-blocks", str(tiny_llama_dir), str(sharded), "--num_expand", "1", "--shard_size", "1MB"]) == 0
    assert "Train them with use_llama_pro: true" in capsys.readouterr().out
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert json.loads((sharded / "config.json").read_text())["num_hidden_layers"] == 5


@pytest.mark.extras
def test_freeze_trains_only_the_expanded_blocks(expanded_dir, tmp_path, monkeypatch):
    from lmforge.model import adapters

    trainable: list[str] = []
    setup_freeze = adapters.setup_freeze

    def recording(model, ft):
        names = setup_freeze(model, ft)
        trainable.extend(name for name, param in model.named_parameters() if param.requires_grad)
        return names

    monkeypatch.setattr(adapters, "setup_freeze", recording)
    out = tmp_path / "freeze"
    train(*tiny_args(expanded_dir, out, finetuning_type="freeze", use_llama_pro="true", freeze_trainable_layers=2,
                     learning_rate="1e-3", max_steps=8))
    assert trainable and {layer_of(name) for name in trainable} == COPIES
    before = load_safetensors(expanded_dir / "model.safetensors")
    after = load_safetensors(out / "model.safetensors")
    assert set(before) == set(after)
    changed = {name for name in before if not torch.equal(before[name], after[name].to(before[name].dtype))}
    assert changed == {name for name in before if layer_of(name) in COPIES}
    assert losses(out)[-1] < losses(out)[0]


def test_freeze_modules_still_apply(expanded_dir):
    from lmforge.config import FinetuningArguments
    from lmforge.model.adapters import setup_freeze
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(expanded_dir)
    ft = FinetuningArguments(finetuning_type="freeze", use_llama_pro=True, freeze_trainable_layers=2,
                             freeze_trainable_modules=["mlp"], freeze_extra_modules=["embed_tokens"])
    names = setup_freeze(model, ft)
    assert names == [name for name, param in model.named_parameters() if param.requires_grad]
    assert set(names) == {name for name, _ in model.named_parameters()
                          if name.startswith(("model.layers.2.mlp.", "model.layers.5.mlp.", "model.embed_tokens."))}


@pytest.mark.extras
def test_lora_adapts_only_the_expanded_blocks(expanded_dir, tmp_path):
    out = tmp_path / "lora"
    train(*tiny_args(expanded_dir, out, use_llama_pro="true", freeze_trainable_layers=2, lora_target="all",
                     max_steps=6))
    keys = list(load_safetensors(out / "adapter_model.safetensors"))
    assert keys and {layer_of(key) for key in keys} == COPIES
    assert {key.split(".")[-3] for key in keys} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                    "down_proj"}
    assert losses(out)[-1] < losses(out)[0]


def test_bad_input_is_one_line(tiny_llama_dir, expanded_dir, tmp_path, capsys):
    def error_of(*argv: str) -> str:
        assert main(list(argv)) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return err.rstrip("\n").splitlines()[-1]

    out = tmp_path / "x"
    assert error_of("expand-blocks", str(tiny_llama_dir), str(out), "--num_expand", "3") == (
        "lmforge expand-blocks: error: num_expand must divide the model's 4 layers, so that the new blocks are evenly "
        "spaced; got 3. Choose one of: 1, 2, 4.")
    assert not out.exists() and not list(tmp_path.iterdir())
    assert error_of("expand-blocks", str(tiny_llama_dir), str(expanded_dir), "--num_expand", "2") == (
        f"lmforge expand-blocks: error: output_dir '{expanded_dir}' already exists and is not empty; choose a new "
        "folder (the expanded model is written whole into it).")
    assert error_of("expand-blocks", str(tiny_llama_dir), str(out), "--num_expand", "2", "--shard_size", "big") == (
        "lmforge expand-blocks: error: shard_size 'big' is not a size; write a whole number and a unit, e.g. 2GB, "
        "500MB or 1GiB.")
    assert error_of("train", *tiny_args(expanded_dir, out, finetuning_type="freeze", use_llama_pro="true",
                                        freeze_trainable_layers=4)) == (
        "lmforge train: error: use_llama_pro trains freeze_trainable_layers expanded blocks, evenly spaced, so it must "
        "be a positive divisor of the model's 6 layers; got 4. Set it to the --num_expand given to "
        "`lmforge expand-blocks`.")
