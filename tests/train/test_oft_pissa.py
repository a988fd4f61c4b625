"""OFT adapters (peft's OFTConfig) and PiSSA initialisation, trained, saved, merged and refused where they do not fit."""

from __future__ import annotations

import json

import pytest
import torch

from tests.train.conftest import tiny_args, train

PROBE = torch.tensor([[1, 5, 9, 20, 33, 41, 7]])


def logits_of(model) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=PROBE).logits.float()


def losses(output_dir) -> list[float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


@pytest.mark.extras
def test_oft_trains_rotations_and_exports_merged(tiny_llama_dir, tmp_path):
    from peft import PeftModel
    from peft.tuners.oft.layer import OFTLayer
    from transformers import AutoModelForCausalLM

    from lmforge.cli import main

    out = tmp_path / "oft"
    train(*tiny_args(tiny_llama_dir, out, finetuning_type="oft", oft_block_size=32, oft_target="q_proj,v_proj",
                     learning_rate="2e-2", max_steps=12))
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["peft_type"], config["oft_block_size"], sorted(config["target_modules"])) == (
        "OFT", 32, ["q_proj", "v_proj"])
    assert losses(out)[-1] < losses(out)[0] - 1.0

    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), out)
    rotated = [name for name, module in adapted.named_modules() if isinstance(module, OFTLayer)]
    assert len(rotated) == 2 * 4  # q_proj and v_proj of the tiny model's 4 layers
    base = logits_of(AutoModelForCausalLM.from_pretrained(tiny_llama_dir))
    on_the_fly = logits_of(adapted)
    assert (on_the_fly - base).abs().max() > 1e-2  # the rotations changed the model

    export_dir = tmp_path / "merged"
    assert main(["export", f"model_name_or_path={tiny_llama_dir}", f"adapter_name_or_path={out}",
                 "template=llama3", f"export_dir={export_dir}"]) == 0
    merged = AutoModelForCausalLM.from_pretrained(export_dir)
    assert not any(isinstance(m, OFTLayer) for m in merged.modules())
    torch.testing.assert_close(logits_of(merged), on_the_fly, atol=1e-4, rtol=1e-4)


def test_oft_block_size_must_divide_the_features(tiny_llama_dir, tmp_path, capsys):
    from lmforge.cli import main

    code = main(["train", *tiny_args(tiny_llama_dir, tmp_path / "bad", finetuning_type="oft", oft_block_size=48)])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("lmforge train: error: oft_block_size 48 does not divide the 128 input features of "
                   "'model.layers.0.self_attn.q_proj'; choose a divisor (or set oft_rank and oft_block_size: 0).")


@pytest.mark.extras
def test_pissa_starts_from_the_principal_components_and_converts_to_plain_lora(tiny_llama_dir, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = tmp_path / "pissa"
    train(*tiny_args(tiny_llama_dir, out, lora_target="q_proj,v_proj", lora_rank=4, pissa_init="true",
                     pissa_iter=-1, pissa_convert="true", learning_rate="1e-2", max_steps=10))

    # The initial adapter: B @ A is the best rank-4 approximation of the base weight (its top singular values).
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    weight = base.model.layers[0].self_attn.q_proj.weight.detach()
    init = load_file(str(out / "pissa_init" / "adapter_model.safetensors"))
    a = init["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    b = init["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    scale = 8 / 4  # lora_alpha (2 x rank) / rank
    torch.testing.assert_close(torch.linalg.svdvals(scale * b @ a)[:4], torch.linalg.svdvals(weight)[:4], atol=1e-4,
                               rtol=1e-4)
    assert json.loads((out / "pissa_backup" / "adapter_config.json").read_text())["init_lora_weights"] == "pissa"

    # The run folder holds a plain LoRA (rank 2r) that applies to the original base model.
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["r"], config["init_lora_weights"]) == (8, True)
    assert losses(out)[-1] < losses(out)[0]
    converted = PeftModel.from_pretrained(base, out)
    trained = _trained_logits(tiny_llama_dir, out)
    torch.testing.assert_close(logits_of(converted), trained, atol=1e-3, rtol=1e-3)


def _trained_logits(base_dir, out) -> torch.Tensor:
    """The trained PiSSA model as training left it: its residual base plus the raw adapter, rebuilt from disk."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    raw = json.loads((out / "pissa_backup" / "adapter_config.json").read_text())
    config = LoraConfig(r=raw["r"], lora_alpha=raw["lora_alpha"], target_modules=raw["target_modules"],
                        init_lora_weights="pissa")  # exact SVD: the same residual as in training
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), config)
    set_peft_model_state_dict(model, load_file(str(out / "pissa_backup" / "adapter_model.safetensors")))
    return logits_of(model)


@pytest.mark.extras
def test_a_raw_pissa_adapter_is_refused_on_the_base_model(tiny_llama_dir, tmp_path, capsys):
    from lmforge.cli import main

    out = tmp_path / "raw"
    train(*tiny_args(tiny_llama_dir, out, lora_target="q_proj", pissa_init="true", pissa_iter=2, max_steps=2))
    assert json.loads((out / "adapter_config.json").read_text())["init_lora_weights"] == "pissa_niter_2"
    assert not (out / "pissa_init").exists()
    code = main(["export", f"model_name_or_path={tiny_llama_dir}", f"adapter_name_or_path={out}", "template=llama3",
                 f"export_dir={tmp_path / 'merged'}"])
    assert code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"lmforge export: error: Adapter '{out}' is a PiSSA adapter saved as trained, which only fits the residual "
        "of its base model. Train with pissa_convert: true to save it as a plain LoRA that applies to the base model.")


@pytest.mark.parametrize(("settings", "message"), [
    (("finetuning_type=full", "pissa_init=true"),
     "'pissa_init' initialises a LoRA adapter: set finetuning_type: lora, or remove it."),
    (("stage=kto", "pissa_init=true", "dataset=kto_en_demo"),
     "'pissa_init' changes the base weights that stage kto's reference model is made of; remove it for this stage."),
    (("finetuning_type=oft", "oft_rank=4"),
     "finetuning_type oft needs exactly one of oft_rank and oft_block_size set, the other 0 (they are 4 and 32)."),
    (("pissa_convert=true",), "'pissa_convert' converts a PiSSA adapter: it needs pissa_init: true."),
])
def test_rules_of_oft_and_pissa(settings, message, tiny_llama_dir, tmp_path):
    from lmforge.config import parse_config
    from lmforge.config.parser import ConfigError

    with pytest.raises(ConfigError) as caught:
        parse_config("train", [*tiny_args(tiny_llama_dir, tmp_path / "x"), *settings])
    assert message in str(caught.value)
