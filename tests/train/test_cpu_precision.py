"""`bf16: true` on a CPU-only machine: bf16 where the CPU computes it natively, float32 otherwise, said in one line."""

from __future__ import annotations

import contextlib
import json
import logging

import pytest

from lmforge.utils import hardware
from tests.train.conftest import tiny_args, train


class DtypeSeen:
    """Records the dtype of the base weights each training step computes with."""

    def __init__(self, monkeypatch):
        from lmforge.train.trainer import ForgeTrainer

        self.dtypes = set()
        original = ForgeTrainer.compute_loss

        def compute_loss(trainer, model, inputs, *args, **kwargs):
            self.dtypes.add(model.get_input_embeddings().weight.dtype)
            return original(trainer, model, inputs, *args, **kwargs)

        monkeypatch.setattr(ForgeTrainer, "compute_loss", compute_loss)


@contextlib.contextmanager
def bf16_lines():
    """The `bf16:` lines lmforge logs inside the block (its logger does not propagate to pytest's caplog)."""
    records: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("lmforge")
    logger.addHandler(handler)
    lines: list[str] = []
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        lines.extend(line for line in records if line.startswith("bf16:"))


@pytest.mark.parametrize("native", [False, True])
def test_bf16_follows_what_the_cpu_computes(native, monkeypatch, tiny_llama_dir, tmp_path):
    import torch

    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: native)
    seen = DtypeSeen(monkeypatch)
    out = tmp_path / "run"
    with bf16_lines() as lines:
        train(*tiny_args(tiny_llama_dir, out, bf16="true", max_steps=2))

    if native:
        assert lines == ["bf16: this CPU computes bf16 natively (AVX512-BF16 or AMX); training in bf16."]
        assert seen.dtypes == {torch.bfloat16}
    else:
        assert lines == ["bf16: this CPU has no native bf16 (AVX512-BF16 or AMX); training in float32 instead."]
        assert seen.dtypes == {torch.float32}
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2


@pytest.mark.parametrize("bf16, multiple", [("true", 16), ("false", 8)])
@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_bf16_batches_on_a_cpu_are_padded_to_a_multiple_of_16(bf16, multiple, stage, monkeypatch, tiny_llama_dir,
                                                              tmp_path):
    """oneDNN builds kernels per matrix shape in bf16 (float32 products have no such cost): bf16 batches on a CPU
    come in half as many lengths, with the padding masked and unlabelled as any other."""
    import transformers

    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: True)
    batches = []
    original = transformers.Trainer.training_step

    def training_step(trainer, model, inputs, *args, **kwargs):
        batches.append({key: inputs[key].clone() for key in inputs if key.endswith(("input_ids", "attention_mask"))})
        return original(trainer, model, inputs, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "training_step", training_step)
    extra = {"stage": "dpo", "dataset": "dpo_en_demo"} if stage == "dpo" else {"dataset": "alpaca_en_demo"}
    extra["cutoff_len"] = "256"
    train(*tiny_args(tiny_llama_dir, tmp_path / "run", bf16=bf16, max_steps=3, **extra))
    lengths = {ids.shape[1] for batch in batches for key, ids in batch.items() if key.endswith("input_ids")}
    assert len(batches) == 3 and lengths and all(length % multiple == 0 for length in lengths), lengths
    if multiple == 8:  # float32: the longest row decides the length, as before
        assert any(length % 16 for length in lengths), lengths
    for batch in batches:  # each row's real tokens are all there; what follows them is masked padding
        for key, mask in batch.items():
            if key.endswith("attention_mask"):
                assert int(mask.sum(-1).max()) > mask.shape[1] - multiple


@pytest.mark.parametrize("gpu_bf16, overrides, expected", [
    (True, {}, True),  # unset, on a GPU that computes bf16: chosen, said in one line
    (False, {}, False),  # unset, on a CPU or an older GPU: float32
    (True, {"bf16": "false"}, False),  # an explicit setting always wins
    (True, {"fp16": "true"}, False),
    (True, {"pure_bf16": "true"}, False),
])
def test_unset_bf16_is_chosen_where_the_gpu_computes_it(gpu_bf16, overrides, expected, monkeypatch, tiny_llama_dir,
                                                         tmp_path):
    from lmforge.commands.common import load_config
    from lmforge.train.args import build_training_args
    from lmforge.train.run import choose_precision

    monkeypatch.setattr(hardware, "cuda_has_bf16", lambda: gpu_bf16)
    cfg = load_config("train", tiny_args(tiny_llama_dir, tmp_path / "out", **overrides))
    assert cfg.train.bf16 is (None if "bf16" not in overrides else False)
    with bf16_lines() as lines:
        choose_precision(cfg)
    assert cfg.train.bf16 is expected
    assert lines == (["bf16: not set, and this GPU computes bf16 natively: training in bf16 mixed precision "
                      "(set bf16: false for float32)."] if expected else [])
    if not expected and not cfg.train.fp16:  # fp16 is refused on this CPU-only machine
        assert build_training_args(cfg, None).bf16 is False


@pytest.mark.parametrize("amx, hidden, overrides, expected", [
    (True, 896, {}, True),  # a 0.5B-wide model on an AMX CPU: bf16, said in one line
    (True, 128, {}, False),  # the tiny test model: bf16 is slower than float32 there
    (False, 896, {}, False),  # no AMX
    (True, 896, {"bf16": "false"}, False),  # an explicit setting always wins
    (True, 896, {"pure_bf16": "true"}, False),
])
def test_unset_bf16_is_chosen_on_amx_cpus_for_wide_models(amx, hidden, overrides, expected, monkeypatch,
                                                          tiny_llama_dir, tmp_path):
    import shutil

    from lmforge.commands.common import load_config
    from lmforge.train.run import choose_precision

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["hidden_size"] = hidden  # only the config is read to decide
    (model_dir / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(hardware, "cuda_has_bf16", lambda: False)
    monkeypatch.setattr(hardware, "cpu_only", lambda: True)
    monkeypatch.setattr(hardware, "cpu_has_amx", lambda: amx)
    cfg = load_config("train", tiny_args(model_dir, tmp_path / "out", **overrides))
    with bf16_lines() as lines:
        choose_precision(cfg)
    assert cfg.train.bf16 is expected
    assert lines == (["bf16: not set, and this CPU computes bf16 with AMX: training this model (hidden size 896) in "
                      "bf16 mixed precision (set bf16: false for float32)."] if expected else [])


def test_amx_is_read_from_the_cpu_flags(tmp_path):
    flags = {"amx": "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n",
             "avx512": "flags\t\t: fpu avx2 avx512f avx512_bf16\n"}
    for name, line in flags.items():
        info = tmp_path / name
        info.write_text("processor\t: 0\n" + line)
        assert hardware.cpu_has_amx(str(info)) is (name == "amx")
    assert hardware.cpu_has_amx(str(tmp_path / "missing")) is False  # not Linux: no AMX known
