"""The optimizers a run's extras ask for (GaLore, APOLLO, BAdam, Adam-mini, Muon): each is the one in use, and the
tiny model's loss falls under it. The marked tests need the galore, apollo, badam and adam-mini extras."""

from __future__ import annotations

import json

import pytest
from transformers import TrainerCallback

from lmforge.errors import UserError
from tests.train.conftest import tiny_args, train


def _run(model_dir, out, callbacks=(), **overrides) -> list[float]:
    """Full fine-tuning of the tiny Llama with `overrides`; the logged losses."""
    from lmforge.config import parse_config
    from lmforge.train.run import run

    settings = dict(finetuning_type="full", max_steps=12, learning_rate="1e-3")
    settings.update(overrides)
    run(parse_config("train", tiny_args(model_dir, out, **settings)), callbacks=list(callbacks))
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def _falls(losses: list[float]) -> None:
    assert losses[0] > losses[-1] + 0.1, losses


class Capture(TrainerCallback):
    """The optimizer the Trainer built (under accelerate's wrapper), and whatever `each_step` records."""

    def __init__(self, each_step=None):
        self.optimizer = self.model = None
        self.each_step = each_step
        self.steps = []

    def on_train_begin(self, args, state, control, optimizer=None, model=None, **kwargs):
        self.optimizer, self.model = getattr(optimizer, "optimizer", optimizer), model

    def on_step_begin(self, args, state, control, **kwargs):
        if self.each_step is not None:
            self.steps.append(self.each_step(self))


def _names(model) -> dict:
    return {id(p): n for n, p in model.named_parameters()}


@pytest.mark.extras
@pytest.mark.parametrize("layerwise", [False, True], ids=["galore", "galore_layerwise"])
def test_galore(tiny_llama_dir, tmp_path, layerwise):
    from galore_torch import GaLoreAdamW

    seen = Capture()
    losses = _run(tiny_llama_dir, tmp_path / "r", [seen], use_galore="true", galore_rank=8, galore_scale=1.0,
                  galore_layerwise=str(layerwise).lower(), learning_rate="5e-3")
    if layerwise:  # one GaLore optimizer per parameter, stepped during backward
        parts = seen.optimizer.optimizer_dict.values()
        assert type(seen.optimizer).__name__ == "LayerWiseDummyOptimizer"
    else:
        parts = [seen.optimizer]
    assert all(type(part) is GaLoreAdamW for part in parts)
    names = _names(seen.model)
    projected = {names[id(p)] for part in parts for g in part.param_groups if g.get("rank") == 8 for p in g["params"]}
    # "all": every linear layer of the decoder, not the output head nor the embeddings.
    assert len(projected) == 4 * 7 and all(".layers." in n and n.endswith("proj.weight") for n in projected)
    _falls(losses)


@pytest.mark.extras
def test_apollo(tiny_llama_dir, tmp_path):
    from apollo_torch import APOLLOAdamW

    seen = Capture()
    losses = _run(tiny_llama_dir, tmp_path / "r", [seen], use_apollo="true", apollo_rank=8, apollo_scale=1.0,
                  apollo_target="q_proj,v_proj", apollo_scale_front="true", learning_rate="5e-3")
    assert type(seen.optimizer) is APOLLOAdamW and seen.optimizer.scale_front
    names = _names(seen.model)
    low_rank = [g for g in seen.optimizer.param_groups if "rank" in g]
    assert [(g["rank"], g["proj"], g["scale_type"]) for g in low_rank] == [(8, "random", "channel")]
    assert sorted({names[id(p)].split(".")[-2] for p in low_rank[0]["params"]}) == ["q_proj", "v_proj"]
    _falls(losses)


def _trained_layers(capture) -> tuple[int, ...]:
    return tuple(sorted({int(n.split(".")[2]) for n, p in capture.model.named_parameters()
                         if p.requires_grad and ".layers." in n}))


@pytest.mark.extras
def test_badam_layer_mode_switches_block_at_the_interval(tiny_llama_dir, tmp_path):
    from badam import BlockOptimizer

    seen = Capture(each_step=_trained_layers)
    losses = _run(tiny_llama_dir, tmp_path / "r", [seen], use_badam="true", badam_switch_interval=3,
                  badam_switch_mode="ascending", learning_rate="5e-3")
    assert type(seen.optimizer) is BlockOptimizer
    # One decoder layer at a time, in ascending order, 3 steps each (badam 1.4 counts the first block's steps
    # from 1, so it gets 2); the embeddings and the head are never trained.
    assert seen.steps == [(0,)] * 2 + [(1,)] * 3 + [(2,)] * 3 + [(3,)] * 3 + [(0,)]
    assert not any(p.requires_grad for n, p in seen.model.named_parameters() if ".layers." not in n)
    _falls(losses)


@pytest.mark.extras
def test_badam_ratio_mode_updates_a_share_of_each_weight(tiny_llama_dir, tmp_path):
    from badam import BlockOptimizerRatio

    before = {}

    def changed_share(capture):  # share of layer 0's q_proj changed by the previous step
        weight = dict(capture.model.named_parameters())["model.layers.0.self_attn.q_proj.weight"].detach()
        share = (weight != before["w"]).float().mean().item() if before else None
        before["w"] = weight.clone()
        return share

    seen = Capture(each_step=changed_share)
    losses = _run(tiny_llama_dir, tmp_path / "r", [seen], use_badam="true", badam_mode="ratio",
                  badam_update_ratio=0.25, learning_rate="2e-2")
    assert type(seen.optimizer) is BlockOptimizerRatio
    assert all(0 < share <= 0.25 + 1e-6 for share in seen.steps[1:]), seen.steps
    _falls(losses)


@pytest.mark.extras
def test_adam_mini_keeps_one_second_moment_per_head(tiny_llama_dir, tmp_path):
    from adam_mini import Adam_mini

    seen = Capture()
    losses = _run(tiny_llama_dir, tmp_path / "r", [seen], use_adam_mini="true", learning_rate="5e-3")
    assert type(seen.optimizer) is Adam_mini
    state = {name: seen.optimizer.state[p] for name, p in seen.model.named_parameters()}
    # The tiny Llama has 4 query heads and 2 key/value heads: one value per head, one per row elsewhere.
    assert state["model.layers.0.self_attn.q_proj.weight"]["vmean"].numel() == 4
    assert state["model.layers.0.self_attn.k_proj.weight"]["vmean"].numel() == 2
    assert state["model.layers.0.mlp.up_proj.weight"]["vmean"].numel() == 256
    _falls(losses)


@pytest.mark.extras
def test_muon_for_layer_matrices_adamw_for_the_rest(tiny_llama_dir, tmp_path):
    import torch

    from lmforge.train.optimizers import MuonWithAdamW

    seen = Capture()
    losses = _run(tiny_llama_dir, tmp_path / "r", [seen], use_muon="true", learning_rate="5e-3")
    assert type(seen.optimizer) is MuonWithAdamW
    muon, adamw = seen.optimizer.parts["muon"], seen.optimizer.parts["adamw"]
    assert type(muon) is torch.optim.Muon and type(adamw) is torch.optim.AdamW
    names = _names(seen.model)
    in_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    in_adamw = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert len(in_muon) == 4 * 7 and all(".layers." in n and n.endswith("proj.weight") for n in in_muon)
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
            "model.layers.0.input_layernorm.weight"} <= in_adamw
    assert in_muon | in_adamw == set(names.values()) and not in_muon & in_adamw
    assert all("momentum_buffer" in muon.state[p] for g in muon.param_groups for p in g["params"])
    _falls(losses)


@pytest.mark.extras
def test_muon_resumes_from_its_checkpoint(tiny_llama_dir, tmp_path):
    import torch

    # A warmup longer than the run: the rate at step k is the same whatever max_steps, and differs every step.
    schedule = dict(use_muon="true", lr_scheduler_type="constant_with_warmup", warmup_steps=8, learning_rate="8e-3")
    first = tmp_path / "first"
    _run(tiny_llama_dir, first, max_steps=4, save_steps=2, **schedule)
    saved = torch.load(first / "checkpoint-4" / "optimizer.pt", weights_only=True)
    assert set(saved) == {"muon", "adamw"}

    def record(capture):  # each part's rates, and Muon's momentum of the first layer matrix
        parts = capture.optimizer.parts
        first_matrix = parts["muon"].param_groups[0]["params"][0]
        return ({g["lr"] for part in parts.values() for g in part.param_groups},
                parts["muon"].state[first_matrix]["momentum_buffer"].clone())

    seen = Capture(each_step=record)
    losses = _run(tiny_llama_dir, tmp_path / "second", [seen], max_steps=6,
                  resume_from_checkpoint=first / "checkpoint-4", **schedule)
    state = json.loads((tmp_path / "second" / "trainer_state.json").read_text())
    assert state["global_step"] == 6 and len(losses) == 6  # the 4 restored log entries, then steps 5 and 6
    assert [e["step"] for e in state["log_history"] if "loss" in e][-2:] == [5, 6]
    # The momentum comes back from the checkpoint, and the scheduler's rate reaches both parts after the
    # checkpoint's groups replaced theirs.
    assert torch.equal(seen.steps[0][1], saved["muon"]["state"][0]["momentum_buffer"])
    rates = [sorted(step_rates) for step_rates, _ in seen.steps]
    assert [len(r) for r in rates] == [1, 1] and [r[0] for r in rates] == pytest.approx([8e-3 * 4 / 8, 8e-3 * 5 / 8])
    muon, adamw = seen.optimizer.parts["muon"], seen.optimizer.parts["adamw"]
    assert seen.optimizer.param_groups == [*muon.param_groups, *adamw.param_groups]


@pytest.mark.parametrize(("switch", "module", "extra"), [("use_galore", "galore_torch", "galore"),
                                                        ("use_badam", "badam", "badam"),
                                                        ("use_adam_mini", "adam_mini", "adam-mini")])
def test_a_missing_package_is_one_line(tiny_llama_dir, tmp_path, monkeypatch, switch, module, extra):
    import sys

    monkeypatch.setitem(sys.modules, module, None)  # Python's own marker of a module that is not there
    with pytest.raises(UserError) as err:
        train(*tiny_args(tiny_llama_dir, tmp_path / "r", finetuning_type="full", **{switch: "true"}))
    assert str(err.value) == f'{switch} needs the {extra} extra: pip install "lmforge[{extra}]"'


@pytest.mark.parametrize(("settings", "message"), [
    (("finetuning_type=full", "use_galore=true", "use_muon=true"),
     "use_galore and use_muon each replace the optimizer; keep one of them."),
    (("use_badam=true",),
     "use_badam trains the model's own weights, not a lora adapter; set finetuning_type: full (or freeze), or "
     "remove it."),
    (("use_adam_mini=true",),
     "use_adam_mini partitions the model's own weights, not a lora adapter; set finetuning_type: full (or freeze)."),
    (("use_muon=true", "loraplus_lr_ratio=16"),
     "'loraplus_lr_ratio' builds its own optimizer, so it cannot be combined with use_muon."),
    (("finetuning_type=full", "use_galore=true", "galore_layerwise=true", "gradient_accumulation_steps=4"),
     "layer-wise GaLore/APOLLO updates each layer during backward, so it needs gradient_accumulation_steps: 1."),
    (("finetuning_type=full", "use_llama_pro=true"),
     "'use_llama_pro' trains the expanded blocks with finetuning_type freeze or lora (it is full)."),
    (("finetuning_type=full", "use_badam=true", "badam_mode=block"),
     "'badam_mode' is 'block', which is not one of: layer, ratio."),
])
def test_rules_of_the_optimizers_and_llama_pro(settings, message, tiny_llama_dir, tmp_path):
    from lmforge.config import parse_config
    from lmforge.config.parser import ConfigError

    with pytest.raises(ConfigError) as caught:
        parse_config("train", [*tiny_args(tiny_llama_dir, tmp_path / "x"), *settings])
    assert message in str(caught.value)
