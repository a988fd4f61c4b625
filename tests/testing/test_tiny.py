"""The tiny offline models: deterministic, loadable, and with a tokenizer that fits the templates."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from lmforge.errors import UserError
from lmforge.testing.tiny import (
    ADDED_TOKENS,
    ARCHITECTURES,
    DEFAULT_VOCAB_SIZE,
    SIZES,
    SPECIAL_TOKENS,
    _model_config,
    build_tiny_model,
    build_tokenizer,
)

CHINESE_TEXTS = [
    "你好！我是一个人工智能助手，很高兴为您提供帮助。",
    "北京今天晴，气温二十六摄氏度。",
    "饕餮、麒麟和貔貅都是不常见的字。",  # rare characters fall back to bytes
    "混合 English 和中文，还有数字 42 与标点：“引号”。",
]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Every architecture built twice, into two different folders."""
    return {
        arch: tuple(build_tiny_model(tmp_path_factory.mktemp(f"{arch}-{i}"), arch=arch) for i in range(2))
        for arch in ARCHITECTURES
    }


@pytest.fixture(scope="module")
def tokenizers(builds):
    from transformers import AutoTokenizer

    return {arch: AutoTokenizer.from_pretrained(first) for arch, (first, _) in builds.items()}


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("filename", ["model.safetensors", "tokenizer.json", "config.json", "tokenizer_config.json"])
def test_build_is_byte_identical(builds, arch, filename):
    first, second = builds[arch]
    assert (first / filename).is_file()
    assert _sha256(first / filename) == _sha256(second / filename)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_loads_and_generates(builds, arch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = builds[arch][0]
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == arch
    assert model.config.vocab_size == len(tokenizer)
    inputs = tokenizer("Who are you?", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert out.shape == (1, inputs["input_ids"].shape[1] + 5)
    assert int(out.max()) < len(tokenizer)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_special_and_added_tokens_are_single_ids(tokenizers, arch):
    tokenizer = tokenizers[arch]
    ids = []
    for token in SPECIAL_TOKENS + ADDED_TOKENS:
        encoded = tokenizer.encode(token, add_special_tokens=False)
        assert encoded == [tokenizer.convert_tokens_to_ids(token)], token
        ids.extend(encoded)
    assert len(set(ids)) == len(ids)
    # Special tokens are recognized inside running text too.
    text = "<|im_start|>user\nhi<|im_end|>"
    encoded = tokenizer.encode(text, add_special_tokens=False)
    assert encoded[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert encoded[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_vocab_is_nearly_full(tokenizers, arch):
    tokenizer = tokenizers[arch]
    assert tokenizer.vocab_size > 3000
    assert tokenizer.vocab_size <= DEFAULT_VOCAB_SIZE
    assert len(tokenizer) == tokenizer.vocab_size + len(ADDED_TOKENS)


def test_llama_tokenizer_adds_bos(tokenizers):
    tokenizer = tokenizers["llama"]
    bos_id = tokenizer.convert_tokens_to_ids("<|begin_of_text|>")
    assert tokenizer.bos_token == "<|begin_of_text|>"
    assert tokenizer.eos_token == "<|end_of_text|>"
    ids = tokenizer.encode("hello world")
    assert ids[0] == bos_id
    assert ids[1:] == tokenizer.encode("hello world", add_special_tokens=False)
    assert ids.count(bos_id) == 1


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_qwen_tokenizer_adds_no_bos(tokenizers, arch):
    tokenizer = tokenizers[arch]
    assert tokenizer.bos_token is None
    assert tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.encode("hello world") == tokenizer.encode("hello world", add_special_tokens=False)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("text", CHINESE_TEXTS)
def test_chinese_round_trips(tokenizers, arch, text):
    tokenizer = tokenizers[arch]
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text


def test_corpus_teaches_common_words(tokenizers):
    """Words of the demo data and the tool-calling JSON are whole tokens, not byte soup."""
    tokenizer = tokenizers["qwen2"]
    for word in [" assistant", " developed", "name", "arguments", "location", " temperature"]:
        assert len(tokenizer.encode(word, add_special_tokens=False)) == 1, word
    assert len(tokenizer.encode("我是一个人工智能助手", add_special_tokens=False)) <= 4


def test_chat_templates(tokenizers):
    messages = [{"role": "user", "content": "hi"}]
    llama = tokenizers["llama"].apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert llama == "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>" \
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    qwen = tokenizers["qwen2"].apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert qwen == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_half_billion_size_on_meta_device(tokenizers, arch):
    """The benchmark size has Qwen2.5-0.5B's shape; built without allocating any weights."""
    import torch
    from transformers import AutoModelForCausalLM

    config = _model_config(arch, SIZES["0.5b"], tokenizers[arch])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert model.lm_head.weight.device.type == "meta"
    assert config.vocab_size == 151936
    n_params = model.num_parameters()
    assert abs(n_params - 0.494e9) / 0.494e9 < 0.01, n_params


def test_unknown_arch_and_size_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="architecture"):
        build_tiny_model(tmp_path / "a", arch="gpt2")
    with pytest.raises(UserError, match="size"):
        build_tiny_model(tmp_path / "b", size="70b")


def test_tokenizer_is_deterministic_in_process():
    first = build_tokenizer("qwen2").backend_tokenizer.to_str()
    second = build_tokenizer("qwen2").backend_tokenizer.to_str()
    assert first == second


def test_bfloat16_storage_rounds_the_float32_weights(builds, tmp_path):
    """`dtype="bfloat16"` writes the same model as released checkpoints are stored: each weight is the float32
    build's value rounded to bf16, and transformers loads it in bf16 when asked for the checkpoint's dtype."""
    import json

    import torch
    from safetensors.torch import load_file

    path = build_tiny_model(tmp_path / "bf16", arch="qwen2", dtype="bfloat16")
    wide = load_file(builds["qwen2"][0] / "model.safetensors")
    narrow = load_file(path / "model.safetensors")
    assert narrow.keys() == wide.keys()
    for name, tensor in narrow.items():
        assert tensor.dtype == torch.bfloat16, name
        assert torch.equal(tensor, wide[name].to(torch.bfloat16)), name
    assert json.loads((path / "config.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((path / "lmforge_tiny.json").read_text())["dtype"] == "bfloat16"
    with pytest.raises(UserError, match="Unknown tiny-model dtype 'float8'. Choose one of: float32, bfloat16."):
        build_tiny_model(tmp_path / "bad", dtype="float8")
