"""Exported GGUF files loaded by llama.cpp itself: tokens, logits, greedy answers and the chat template."""

from __future__ import annotations

import numpy as np
import pytest

from lmforge.data.templates import get_template
from tests.export.conftest import export, greedy_tokens, read_gguf
from tests.llamacpp.conftest import load_gguf

pytestmark = pytest.mark.llamacpp

QUESTIONS = ("Who are you?", "你是谁？", "Tell me a joke.")
TEXT = "Who are you? I am a helpful assistant. 你好，很高兴认识你！ The quick brown fox jumps over 12345 dogs. " * 2
SYSTEM = "You are ForgeBot, a careful assistant."
TWO_TURNS = [
    {"role": "user", "content": "Who are you?"},
    {"role": "assistant", "content": "I am ForgeBot."},
    {"role": "user", "content": "What can you do?"},
]


def test_llama_cpp_is_installed(llama_cpp):
    assert llama_cpp.__version__


@pytest.fixture(scope="module")
def merged(quickstart_export):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(quickstart_export), AutoTokenizer.from_pretrained(quickstart_export)


@pytest.fixture(scope="module")
def f16(llama_cpp, quickstart_export):
    return load_gguf(llama_cpp, quickstart_export / "model-f16.gguf")


def llamacpp_greedy(llm, prompt_ids: list[int], max_new_tokens: int = 16) -> list[int]:
    out: list[int] = []
    for token in llm.generate(prompt_ids, temp=0.0, top_k=0, top_p=1.0, min_p=0.0, reset=True):
        out.append(token)
        if len(out) == max_new_tokens:
            return out
    return out


def test_llama_cpp_tokenizes_like_the_exported_tokenizer(f16, merged):
    _, tokenizer = merged
    for question in QUESTIONS:
        prompt = tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM},
                                                {"role": "user", "content": question}],
                                               add_generation_prompt=True, tokenize=False)
        ids = tokenizer(prompt, add_special_tokens=False).input_ids
        assert f16.tokenize(prompt.encode(), add_bos=False, special=True) == ids
    assert f16.tokenize(TEXT.encode(), add_bos=True) == tokenizer(TEXT).input_ids
    assert (f16.token_bos(), f16.token_eos()) == (tokenizer.bos_token_id, tokenizer.eos_token_id)


def test_chat_template_in_the_file_renders_like_our_template(f16, merged):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    _, tokenizer = merged
    formatter = Jinja2ChatFormatter(template=f16.metadata["tokenizer.chat_template"], eos_token="<|eot_id|>",
                                    bos_token="<|begin_of_text|>")
    rendered = formatter(messages=[{"role": "system", "content": SYSTEM}, *TWO_TURNS]).prompt
    assert rendered == get_template("llama3").render_prompt(tokenizer, TWO_TURNS, system=SYSTEM)


def test_f16_gguf_answers_with_the_trained_name(f16, merged, quickstart_export):
    """llama.cpp and transformers (reading the same f16 file) pick the same greedy tokens."""
    _, tokenizer = merged
    reread, _ = read_gguf(quickstart_export / "model-f16.gguf")
    for question in QUESTIONS:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                            return_dict=True)["input_ids"]
        tokens = llamacpp_greedy(f16, ids, 20)
        assert tokens == greedy_tokens(reread, ids, 20)
        if question == "Who are you?":
            assert "ForgeBot" in tokenizer.decode(tokens)


@pytest.fixture(scope="module")
def f32_export(quickstart_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("f32") / "export"
    assert export(f"model_name_or_path={quickstart_run}", f"export_dir={out}", "export_format=gguf",
                  "gguf_type=f32") == 0
    return out / "model-f32.gguf"


def test_f32_gguf_generates_the_merged_models_greedy_tokens(llama_cpp, f32_export, merged):
    model, tokenizer = merged
    llm = load_gguf(llama_cpp, f32_export)
    for question in QUESTIONS:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                            return_dict=True)["input_ids"]
        assert llamacpp_greedy(llm, ids, 24) == greedy_tokens(model, ids, 24)


def _logits_difference(llama_cpp, model, tokenizer, path) -> float:
    """Largest difference between llama.cpp's and transformers' logits over every position of TEXT."""
    import torch

    llm = load_gguf(llama_cpp, path, logits_all=True)
    ids = tokenizer(TEXT).input_ids
    llm.reset()
    llm.eval(ids)
    with torch.inference_mode():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    return float(np.abs(np.asarray(llm.scores[: len(ids)]) - expected).max())


def _tiny_llama_with_rope(tiny_llama_dir, folder, rope: dict):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                         max_position_embeddings=512, rope_parameters={"rope_theta": 10000.0, **rope})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


ROPES = {
    # A short original context, so that Llama 3.1 scaling changes most frequencies of the tiny head size.
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64},
    "linear": {"rope_type": "linear", "factor": 4.0},
}


@pytest.mark.parametrize("case", ["qwen2", "qwen3", "rope-llama3", "rope-linear"])
def test_llama_cpp_logits_match_transformers(case, llama_cpp, tiny_llama_dir, tmp_path):
    """f32 GGUFs of other architectures and rope scalings: llama.cpp computes the same logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmforge.testing.tiny import build_tiny_model

    if case.startswith("rope-"):
        source = _tiny_llama_with_rope(tiny_llama_dir, tmp_path / "model", ROPES[case[5:]])
        template = "llama3"
    else:
        # build_tiny_model's Qwen3 has head_dim = hidden_size / heads, which llama.cpp reads from the file.
        source = build_tiny_model(tmp_path / "model", arch=case)
        template = "qwen" if case == "qwen2" else "qwen3"
    out = tmp_path / "export"
    assert export(f"model_name_or_path={source}", f"template={template}", f"export_dir={out}", "export_format=gguf",
                  "gguf_type=f32") == 0
    model, tokenizer = AutoModelForCausalLM.from_pretrained(source), AutoTokenizer.from_pretrained(source)
    # llama.cpp keeps its attention cache in f16, so the logits agree to about 1e-3 (they reach about 8).
    assert _logits_difference(llama_cpp, model, tokenizer, out / "model-f32.gguf") < 1e-2


def test_llama_cpp_ends_generation_on_the_template_stop_tokens(llama_cpp, f16, merged):
    _, tokenizer = merged
    vocab = llama_cpp.llama_model_get_vocab(f16.model)
    stops = get_template("llama3").stop_token_ids(tokenizer)
    assert stops == tokenizer.convert_tokens_to_ids(["<|eot_id|>", "<|eom_id|>"])
    assert all(llama_cpp.llama_vocab_is_eog(vocab, token) for token in stops)
    assert not llama_cpp.llama_vocab_is_eog(vocab, tokenizer.convert_tokens_to_ids("<|start_header_id|>"))
