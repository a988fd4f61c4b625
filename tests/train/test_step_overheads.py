"""The per-step module walks the Trainer makes (train(), zero_grad(), the clipping's parameter list) are
skipped, and Adam updates CPU tensors in batches, without changing the modes, gradients, norms or weights a
step sees."""

from __future__ import annotations


def _lora_model(model_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    return get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))


def test_cheap_walks_keep_modes_and_clear_gradients(tiny_llama_dir):
    import torch

    from lmforge.train.trainer import _cheap_module_walks

    model = _lora_model(tiny_llama_dir)
    trainable = [p for p in model.parameters() if p.requires_grad]
    # As loaded: the layers in eval mode (from_pretrained), the PEFT wrapper around them in training mode.
    assert model.training and not model.get_base_model().training
    with _cheap_module_walks(model, trainable):
        model.train()
        assert all(m.training for m in model.modules())
        model.eval()  # evaluation in the middle of training: every module leaves training mode
        assert not any(m.training for m in model.modules())
        model.train()
        assert all(m.training for m in model.modules())
        ids = torch.arange(10, 26).reshape(2, 8)
        model(input_ids=ids, labels=ids).loss.backward()
        assert all(p.grad is not None for p in trainable)
        model.zero_grad()
        assert all(p.grad is None for p in model.parameters())
    # Outside the run the model's own methods are back.
    assert "train" not in model.__dict__ and "zero_grad" not in model.__dict__


def test_training_with_evaluation_logs_the_same_as_before(tiny_llama_dir, tmp_path, one_thread, monkeypatch):
    import json

    import pytest

    from lmforge.train import trainer as trainer_module
    from tests.train.conftest import tiny_args, train

    def run(out):
        # LoRA dropout makes the losses depend on every layer being in training mode.
        train(*tiny_args(tiny_llama_dir, out, max_steps=4, do_eval="true", val_size=8, eval_strategy="steps",
                         eval_steps=2, max_grad_norm=0.5, lora_dropout=0.2, seed=3))
        state = json.loads((out / "trainer_state.json").read_text())
        return [(e.get("loss"), e.get("grad_norm"), e.get("eval_loss")) for e in state["log_history"]
                if "loss" in e or "eval_loss" in e]

    fast = run(tmp_path / "fast")
    monkeypatch.setattr(trainer_module.ForgeTrainer, "_cheap_walks_possible", lambda self, model: False)
    monkeypatch.setattr(trainer_module, "_multi_tensor_on_cpu", lambda optimizer: None)
    slow = run(tmp_path / "slow")
    assert len(fast) == 6  # 4 training logs and 2 evaluations
    for got, expected in zip(fast, slow):
        assert [g is None for g in got] == [e is None for e in expected]
        assert [g for g in got if g is not None] == pytest.approx([e for e in expected if e is not None], rel=1e-5)


def test_adam_on_cpu_updates_in_batches_to_the_same_weights():
    import torch

    from lmforge.train.trainer import _multi_tensor_on_cpu

    def weights_after(batched: bool):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(shape)) for shape in [(8, 64), (64, 8), (8,), (3, 5, 7)] * 3]
        optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
        if batched:
            _multi_tensor_on_cpu(optimizer)
            assert all(group["foreach"] is True for group in optimizer.param_groups)
        generator = torch.Generator().manual_seed(1)
        for _ in range(5):
            for param in params:
                param.grad = torch.randn(param.shape, generator=generator)
            optimizer.step()
        return params

    for got, expected in zip(weights_after(True), weights_after(False)):
        assert torch.equal(got, expected)


def test_adapter_input_cast_is_skipped_under_autocast_only(tiny_llama_dir):
    """bf16 weights with float32 LoRA adapters, as `bf16: true` trains: PEFT's cast of each adapted input to
    float32 is skipped while autocast is on (the adapter's linear casts it straight back), which gives the same
    loss and gradients bit for bit; outside autocast the adapter still gets float32 inputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lmforge.model.adapters import cast_inputs_outside_autocast_only

    def model_and_grads(skip: bool):
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.bfloat16)
        model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
        for param in model.parameters():
            if param.requires_grad:
                param.data = param.data.float()
        if skip:
            cast_inputs_outside_autocast_only(model)
        ids = torch.arange(10, 42).reshape(2, 16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
        return model, loss.detach(), grads

    plain_model, plain_loss, plain_grads = model_and_grads(skip=False)
    model, loss, grads = model_and_grads(skip=True)
    assert torch.equal(loss, plain_loss)
    assert grads.keys() == plain_grads.keys() and len(grads) == 4 * 7 * 2
    assert all(torch.equal(grads[name], plain_grads[name]) for name in grads)

    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not layer.cast_input_dtype_enabled
    assert layer.cast_input_dtype_enabled
    seen = []
    handle = layer.lora_A["default"].register_forward_pre_hook(lambda _m, args: seen.append(args[0].dtype))
    ids = torch.arange(10, 26).reshape(2, 8)
    with torch.no_grad():  # inference outside autocast: the float32 adapter gets float32 inputs, as in PEFT
        logits = model(input_ids=ids).logits
        plain_logits = plain_model(input_ids=ids).logits
    handle.remove()
    assert seen == [torch.float32]
    assert torch.equal(logits, plain_logits)


def test_the_default_optimizer_is_fused_adamw_and_trains_as_the_loop_does(tiny_llama_dir, tmp_path, one_thread):
    """Unset, `optim` is transformers' own default, adamw_torch_fused: one kernel updates every trained tensor (on a
    CPU too). A run's losses and gradient norms are those of adamw_torch's update, up to float rounding."""
    import json

    import pytest
    import torch
    from transformers import Trainer

    from lmforge.commands.common import load_config
    from lmforge.train.args import build_training_args
    from tests.train.conftest import tiny_args, train

    cfg = load_config("train", tiny_args(tiny_llama_dir, tmp_path / "unused"))
    assert cfg.train.optim == "adamw_torch_fused"
    optimizer_class, kwargs = Trainer.get_optimizer_cls_and_kwargs(build_training_args(cfg, None))
    assert optimizer_class is torch.optim.AdamW and kwargs["fused"] is True

    def run(out, **keys):
        train(*tiny_args(tiny_llama_dir, out, max_steps=6, max_grad_norm=0.5, seed=3, **keys))
        state = json.loads((out / "trainer_state.json").read_text())
        return [value for e in state["log_history"] if "loss" in e for value in (e["loss"], e["grad_norm"])]

    fused = run(tmp_path / "fused")
    loop = run(tmp_path / "loop", optim="adamw_torch")
    assert len(fused) == 12 and len(set(fused[::2])) > 1  # six steps, and the loss moved
    assert fused == pytest.approx(loop, rel=1e-4)


def _lora_step(model_dir, scale_weights: bool, precision: str = "bf16", **lora_keys):
    """One step of LoRA training, as `bf16: true` trains (a bf16 model, float32 adapters, bf16 autocast) or in
    float32: the loss, the adapters' gradients and the model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lmforge.model.adapters import scale_lora_weights_not_outputs

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16)
    model = get_peft_model(base, LoraConfig(target_modules="all-linear", init_lora_weights=False, **lora_keys))
    for param in model.parameters():
        if param.requires_grad or precision == "float32":
            param.data = param.data.float()
    if scale_weights:
        scale_lora_weights_not_outputs(model)
    ids = torch.arange(10, 42).reshape(2, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters() if p.requires_grad}, model


def test_lora_scaling_on_the_weight_gives_the_same_step(tiny_llama_dir):
    """LLaMA-Factory's default scaling (lora_alpha = 2 * rank, a power of two): the loss and every gradient are
    PEFT's bit for bit, in bf16 and in float32. Another scaling (1.5) rounds differently in bf16, and is no
    further than PEFT's own from the float32 step."""
    import torch

    for precision in ("bf16", "float32"):
        loss, grads, model = _lora_step(tiny_llama_dir, True, precision, r=4, lora_alpha=8)
        plain_loss, plain_grads, _ = _lora_step(tiny_llama_dir, False, precision, r=4, lora_alpha=8)
        down_proj = model.base_model.model.model.layers[0].mlp.down_proj
        assert down_proj.forward.__name__ == "_lora_forward_scaling_the_weight"
        assert torch.equal(loss, plain_loss)
        assert grads.keys() == plain_grads.keys() and len(grads) == 4 * 7 * 2
        assert all(torch.equal(grads[name], plain_grads[name]) for name in grads)

    def distance(got: dict, expected: dict) -> float:
        return max(float((got[n] - expected[n]).norm() / expected[n].norm()) for n in expected)

    loss, grads, _ = _lora_step(tiny_llama_dir, True, r=4, lora_alpha=6)
    plain_loss, plain_grads, _ = _lora_step(tiny_llama_dir, False, r=4, lora_alpha=6)
    exact_loss, exact_grads, _ = _lora_step(tiny_llama_dir, False, "float32", r=4, lora_alpha=6)
    assert not torch.equal(loss, plain_loss)
    assert abs(float(loss - exact_loss)) <= 1.5 * abs(float(plain_loss - exact_loss))
    assert 0 < distance(grads, exact_grads) <= 1.5 * distance(plain_grads, exact_grads) < 0.1


def test_lora_scaling_on_the_weight_leaves_other_adapters_to_peft(tiny_llama_dir):
    """DoRA, a bias on lora_B, disabled and merged adapters and per-row adapter names go through PEFT's forward."""
    import torch

    for keys in ({"use_dora": True}, {"lora_bias": True}):
        loss, grads, model = _lora_step(tiny_llama_dir, True, r=4, **keys)
        plain_loss, plain_grads, _ = _lora_step(tiny_llama_dir, False, r=4, **keys)
        assert torch.equal(loss, plain_loss) and all(torch.equal(grads[n], plain_grads[n]) for n in grads)

    _, _, model = _lora_step(tiny_llama_dir, True, r=4)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    x = torch.randn(2, 3, layer.in_features).bfloat16()
    with torch.no_grad():
        base = layer.base_layer(x)
        with model.disable_adapter():
            assert torch.equal(layer(x), base)
        adapted = layer(x)
        assert not torch.equal(adapted, base)
        mixed = layer(x, adapter_names=["default", "__base__"])  # the second row without its adapter
        assert torch.equal(mixed[1], base[1])
        torch.testing.assert_close(mixed[0], adapted[0], rtol=0.02, atol=0.02)
        layer.merge()
        assert layer.merged
        torch.testing.assert_close(layer(x), adapted, rtol=0.02, atol=0.02)


def test_lora_training_loads_with_the_weight_scaling_except_under_deepspeed(tiny_llama_dir, tmp_path):
    from lmforge.commands.common import load_config
    from lmforge.model.tokenizer import load_tokenizer_and_template
    from lmforge.train.common import load_trainable_model
    from tests.train.conftest import tiny_args

    def down_proj_forward(deepspeed: str | None) -> str:
        cfg = load_config("train", tiny_args(tiny_llama_dir, tmp_path / "out"))
        cfg.train.deepspeed = deepspeed  # set after validation: only what the loader decides from is under test
        tokenizer, template = load_tokenizer_and_template(cfg.model, cfg.data)
        model = load_trainable_model(cfg, tokenizer, template)
        return model.base_model.model.model.layers[0].mlp.down_proj.forward.__name__

    assert down_proj_forward(None) == "_lora_forward_scaling_the_weight"
    assert down_proj_forward("ds_z3_config.json") == "forward"  # PEFT's own: ZeRO-3 gathers weights per module
