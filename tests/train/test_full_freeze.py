"""full and freeze change exactly the parameters they should."""

from __future__ import annotations

import pytest
import torch

from tests.train.conftest import load_safetensors, tiny_args, train


def changed(before: dict, after: dict) -> set[str]:
    assert set(before) == set(after)
    return {name for name in before if not torch.equal(before[name], after[name].to(before[name].dtype))}


def test_full_changes_every_parameter(tiny_llama_dir, tmp_path):
    out = tmp_path / "full"
    train(*tiny_args(tiny_llama_dir, out, finetuning_type="full", learning_rate="1e-3"))
    before = load_safetensors(tiny_llama_dir / "model.safetensors")
    after = load_safetensors(out / "model.safetensors")
    assert changed(before, after) == set(before)
    assert not (out / "adapter_config.json").exists()
    assert all(t.dtype == torch.float32 for t in after.values())


@pytest.mark.parametrize(
    ("layers", "modules", "extra", "expected_prefixes"),
    [
        (1, "all", None, ["model.layers.3."]),
        (-2, "all", None, ["model.layers.0.", "model.layers.1."]),
        (2, "mlp", None, ["model.layers.2.mlp.", "model.layers.3.mlp."]),
        (1, "self_attn", "embed_tokens", ["model.layers.3.self_attn.", "model.embed_tokens."]),
    ],
)
def test_freeze_trains_only_the_chosen_layers(tiny_llama_dir, tmp_path, layers, modules, extra, expected_prefixes):
    out = tmp_path / "freeze"
    overrides = dict(finetuning_type="freeze", freeze_trainable_layers=layers, freeze_trainable_modules=modules,
                     learning_rate="1e-3")
    if extra:
        overrides["freeze_extra_modules"] = extra
    train(*tiny_args(tiny_llama_dir, out, **overrides))
    before = load_safetensors(tiny_llama_dir / "model.safetensors")
    after = load_safetensors(out / "model.safetensors")
    expected = {name for name in before if name.startswith(tuple(expected_prefixes))}
    assert expected and changed(before, after) == expected


def test_freeze_unknown_module_is_explained(tiny_llama_dir, tmp_path):
    from lmforge.errors import UserError

    with pytest.raises(UserError) as err:
        train(*tiny_args(tiny_llama_dir, tmp_path / "x", finetuning_type="freeze", freeze_trainable_modules="mlpp"))
    assert str(err.value).startswith("freeze_trainable_modules ['mlpp'] not found in the layers; choose from: ")
    assert "mlp" in str(err.value) and "self_attn" in str(err.value)


def test_lora_unknown_target_is_explained(tiny_llama_dir, tmp_path):
    from lmforge.errors import UserError

    with pytest.raises(UserError) as err:
        train(*tiny_args(tiny_llama_dir, tmp_path / "x", lora_target="q_proj,qv_proj"))
    assert str(err.value) == (
        "lora_target ['qv_proj'] not found in the model; its linear layers are: down_proj, gate_proj, k_proj, "
        "o_proj, q_proj, up_proj, v_proj (or use lora_target: all)."
    )
