"""Quantization settings that need no quantization library: detection of quantized checkpoints, the refusals.

The bitsandbytes runs (QLoRA, quantized chat) are in tests/train/test_quantization.py (`pytest -m quantization`).
"""

from __future__ import annotations

import sys

import pytest

from lmforge.config import parse_config
from lmforge.errors import UserError
from lmforge.model.quantization import prequantized_method
from tests.train.conftest import tiny_args, train


def test_quantized_checkpoints_are_recognised_by_their_config():
    from transformers import LlamaConfig

    assert prequantized_method(LlamaConfig()) is None
    assert prequantized_method(LlamaConfig(quantization_config={"quant_method": "gptq", "bits": 4})) == "gptq"
    assert prequantized_method(LlamaConfig(quantization_config={"quant_method": "AWQ"})) == "awq"


def test_missing_bitsandbytes_names_the_extra(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as without the quantization extra
    with pytest.raises(UserError) as err:
        train(*tiny_args(tiny_llama_dir, tmp_path / "x", quantization_bit=4))
    assert str(err.value) == ("quantization_bit=4 needs bitsandbytes: pip install 'lmforge[quantization]' "
                              "(or pip install bitsandbytes)")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args,problem", [
    (["quantization_bit=8", "quantization_method=eetq"], None),
    (["quantization_bit=4", "quantization_method=eetq"],
     "'quantization_bit' must be 8 with quantization_method eetq, got 4."),
    (["quantization_bit=5", "quantization_method=hqq"],
     "'quantization_bit' must be 1, 2, 3, 4 or 8 with quantization_method hqq, got 5."),
    (["quantization_bit=4", "quantization_method=gptq"],
     "'quantization_method' is 'gptq', which is not one of: bnb, hqq, eetq."),
    (["quantization_bit=4", "resize_vocab=true"],
     "'resize_vocab' cannot resize the embeddings of a quantized model; remove quantization_bit or resize_vocab."),
    (["quantization_bit=4", "adapter_name_or_path=a", "create_new_adapter=true"],
     "'create_new_adapter' merges the given adapter into the model, which a quantized model cannot take: remove "
     "create_new_adapter to keep training the adapter, or merge it into the unquantized base first (lmforge export)."),
    (["stage=dpo", "ref_model=m", "ref_model_quantization_bit=3"],
     "'ref_model_quantization_bit' must be 4 or 8 (bitsandbytes), got 3."),
])
def test_quantization_rules(args, problem):
    from lmforge.config import ConfigError

    argv = ["model_name_or_path=m", "do_train=true", "dataset=identity", "output_dir=out", *args]
    if problem is None:
        parse_config("train", argv)
        return
    with pytest.raises(ConfigError) as err:
        parse_config("train", argv)
    assert problem in str(err.value)
