"""GGUF files read back by an independent reader, transformers' own GGUF loader: logits, tokenizer, template."""

from __future__ import annotations

import pytest

from lmforge.data.templates import get_template
from tests.export.conftest import export, greedy_tokens, read_gguf

TEXT = "Who are you? I am a helpful assistant. 你好，很高兴认识你！ The quick brown fox jumps over 12345 dogs."
TOKENIZER_TEXTS = [
    TEXT,
    "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><think>x</think>  \n\n\t 3.14159 'll",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<tool_call>\n{\"a\": 1}\n</tool_call>",
]
# Largest logit difference allowed against the merged float32 model (its logits reach about 12).
TOLERANCE = {"f32": 0.0, "f16": 2e-2, "bf16": 1.5e-1, "q8_0": 5e-1}


def logits(model, tokenizer, text=TEXT):
    import torch

    with torch.inference_mode():
        return model(torch.tensor([tokenizer(text).input_ids])).logits


@pytest.fixture(scope="module")
def merged(quickstart_export):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(quickstart_export), AutoTokenizer.from_pretrained(quickstart_export)


@pytest.fixture(scope="module")
def exported_gguf(quickstart_export):
    return read_gguf(quickstart_export / "model-f16.gguf")


@pytest.mark.parametrize("gguf_type", ["f32", "f16", "bf16", "q8_0"])
def test_gguf_logits_match_the_merged_model(gguf_type, merged, tmp_path):
    from lmforge.export.gguf import write_gguf

    model, tokenizer = merged
    path = write_gguf(model, tokenizer, tmp_path / f"model-{gguf_type}.gguf", gguf_type)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # the temporary name is gone
    reread, _ = read_gguf(path)
    expected, got = logits(model, tokenizer), logits(reread, tokenizer)
    assert (got - expected).abs().max().item() <= TOLERANCE[gguf_type]
    agreement = (got.argmax(-1) == expected.argmax(-1)).float().mean().item()
    assert agreement == 1.0 if gguf_type != "q8_0" else agreement >= 0.9


def test_gguf_tokenizer_and_chat_template_read_back_identically(exported_gguf, merged):
    _, tokenizer = merged
    _, reread = exported_gguf
    for text in TOKENIZER_TEXTS:
        assert reread(text).input_ids == tokenizer(text).input_ids
        assert reread.decode(reread(text).input_ids) == tokenizer.decode(tokenizer(text).input_ids)
    assert (reread.bos_token, reread.eos_token) == ("<|begin_of_text|>", "<|eot_id|>")
    assert len(reread) == len(tokenizer)
    assert reread.chat_template == get_template("llama3").to_jinja(tokenizer)


def test_gguf_answers_with_the_trained_name_in_transformers(exported_gguf, merged):
    model, tokenizer = exported_gguf
    messages = [{"role": "user", "content": "Who are you?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert ids == merged[1].apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    answer = tokenizer.decode(greedy_tokens(model, ids, 16))
    assert "ForgeBot" in answer
    assert greedy_tokens(model, ids, 16) == greedy_tokens(merged[0], ids, 16)


def _save(model, tokenizer, folder):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def qwen3_dir(tiny_qwen_dir, tmp_path_factory):
    """A tiny Qwen3 shaped like the real ones: head_dim 128 apart from hidden_size, tied embeddings."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config

    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen_dir)
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=128, rms_norm_eps=1e-6,
                         tie_word_embeddings=True, max_position_embeddings=4096,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return _save(model, tokenizer, tmp_path_factory.mktemp("tiny-qwen3-hd128"))


@pytest.fixture(scope="module")
def mistral_dir(tiny_llama_dir, tmp_path_factory):
    """A tiny Mistral (llama.cpp runs it as the llama architecture) with the tiny byte-level tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, MistralConfig

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    config = MistralConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, sliding_window=None,
                           max_position_embeddings=4096)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return _save(model, tokenizer, tmp_path_factory.mktemp("tiny-mistral"))


@pytest.mark.parametrize(("arch", "template", "gguf_type"), [
    ("qwen2", "qwen", "f16"),
    ("qwen3", "qwen3", "f32"),
    ("mistral", "mistral", "f32"),
])
def test_gguf_export_of_other_architectures(arch, template, gguf_type, request, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = {"qwen2": "tiny_qwen_dir", "qwen3": "qwen3_dir", "mistral": "mistral_dir"}[arch]
    source = request.getfixturevalue(source)
    out = tmp_path / "gguf"
    assert export(f"model_name_or_path={source}", f"template={template}", f"export_dir={out}", "export_format=gguf",
                  f"gguf_type={gguf_type}") == 0
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "lmforge_export.json", f"model-{gguf_type}.gguf"]
    assert f"FROM ./model-{gguf_type}.gguf\n" in (out / "Modelfile").read_text()
    model, tokenizer = AutoModelForCausalLM.from_pretrained(source), AutoTokenizer.from_pretrained(source)
    reread, reread_tokenizer = read_gguf(out / f"model-{gguf_type}.gguf")
    for text in TOKENIZER_TEXTS:
        assert reread_tokenizer(text).input_ids == tokenizer(text).input_ids
    assert (logits(reread, tokenizer) - logits(model, tokenizer)).abs().max().item() <= TOLERANCE[gguf_type]


def test_unsupported_architecture_is_refused_before_loading(tiny_llama_dir, tmp_path, capsys):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=64))
    source = _save(model, tokenizer, tmp_path / "tiny-gpt2")
    capsys.readouterr()
    out = tmp_path / "out"
    assert export(f"model_name_or_path={source}", "template=llama3", f"export_dir={out}", "export_format=gguf") == 1
    assert capsys.readouterr().err == (
        "lmforge export: error: GGUF export does not support the 'gpt2' architecture yet; supported: llama, mistral, "
        "qwen2, qwen3. Export with export_format: safetensors instead.\n"
    )
    assert not out.exists()


def test_unsupported_rope_scaling_is_refused_before_loading(tiny_llama_dir, tmp_path, capsys):
    import json
    import shutil

    source = tmp_path / "dynamic-rope"
    shutil.copytree(tiny_llama_dir, source)
    config = json.loads((source / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    (source / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    assert export(f"model_name_or_path={source}", "template=llama3", f"export_dir={out}", "export_format=gguf") == 1
    assert capsys.readouterr().err == (
        "lmforge export: error: GGUF export does not support rope scaling 'dynamic' yet; supported: default, "
        "linear, llama3.\n"
    )
    assert not out.exists()
