"""The inference engine on a trained run folder: adapters on the fly or merged, stop strings, streaming."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lmforge.config import parse_config
from lmforge.errors import UserError


def engine_for(*args: str):
    from lmforge.chat.hf_engine import HFEngine

    return HFEngine(parse_config("chat", list(args)))


@pytest.fixture(scope="module")
def run_engine(quickstart_run):
    return engine_for(f"model_name_or_path={quickstart_run}", "do_sample=false", "max_new_tokens=32")


def test_run_folder_resolves_base_adapter_and_template(run_engine, quickstart_run, tiny_llama_dir):
    assert run_engine.resolved.base == str(tiny_llama_dir)
    assert run_engine.resolved.adapters == (str(quickstart_run),)
    assert run_engine.template.name == "llama3"


def test_trained_answer_names_itself(run_engine):
    response = run_engine.chat([{"role": "user", "content": "Who are you?"}])
    assert "ForgeBot" in response.text
    assert response.finish_reason == "stop"
    assert response.prompt_length == len(run_engine.prompt_ids([{"role": "user", "content": "Who are you?"}]))


def test_merged_adapter_gives_the_same_greedy_tokens(run_engine, quickstart_run):
    merged = engine_for(f"model_name_or_path={quickstart_run}", "do_sample=false", "max_new_tokens=32",
                        "merge_adapters=true")
    for question in ("Who are you?", "你是谁？", "Tell me a joke."):
        messages = [{"role": "user", "content": question}]
        ids = run_engine.prompt_ids(messages)
        assert merged.prompt_ids(messages) == ids
        a = run_engine.model.generate(**_inputs(ids), max_new_tokens=16, do_sample=False)
        b = merged.model.generate(**_inputs(ids), max_new_tokens=16, do_sample=False)
        assert a.tolist() == b.tolist()


def _inputs(ids):
    import torch

    tensor = torch.tensor([ids])
    return {"input_ids": tensor, "attention_mask": torch.ones_like(tensor)}


def test_stop_strings_are_honoured(run_engine):
    messages = [{"role": "user", "content": "Who are you?"}]
    full = run_engine.chat(messages).text
    assert "ForgeBot" in full
    cut = run_engine.chat(messages, stop=["Forge"])
    assert cut.text == full[: full.index("Forge")]
    assert cut.finish_reason == "stop"
    streamed = "".join(run_engine.stream_chat(messages, stop=["Forge"]))
    assert streamed == cut.text


def test_streaming_equals_the_complete_answer(run_engine):
    messages = [{"role": "user", "content": "What is your name?"}]
    pieces = list(run_engine.stream_chat(messages))
    assert len(pieces) > 1
    assert "".join(pieces) == run_engine.chat(messages).text


def test_length_finish_reason(run_engine):
    response = run_engine.chat([{"role": "user", "content": "Who are you?"}], max_new_tokens=3)
    assert response.finish_reason == "length" and response.response_length == 3


def test_batch_generation_matches_single(run_engine):
    questions = ["Who are you?", "你好"]
    prompts = [run_engine.prompt_ids([{"role": "user", "content": q}]) for q in questions]
    batch = run_engine.generate_batch(prompts)
    single = [run_engine.generate_batch([p])[0] for p in prompts]
    assert [r.text for r in batch] == [r.text for r in single]


def test_missing_adapter_is_a_clear_error(tiny_llama_dir, tmp_path):
    with pytest.raises(UserError) as err:
        engine_for(f"model_name_or_path={tiny_llama_dir}", f"adapter_name_or_path={tmp_path / 'none'}", "template=llama3")
    assert str(err.value) == (
        f"Adapter '{tmp_path / 'none'}' not found: expected {tmp_path / 'none' / 'adapter_config.json'}. "
        "Point adapter_name_or_path at a LoRA training output_dir."
    )


def test_incompatible_adapter_names_both_models(quickstart_run, tiny_qwen_dir):
    with pytest.raises(UserError) as err:
        engine_for(f"model_name_or_path={tiny_qwen_dir}", f"adapter_name_or_path={quickstart_run}", "template=qwen")
    message = str(err.value)
    assert message.startswith(f"Adapter '{quickstart_run}' does not fit the model '{tiny_qwen_dir}' (it was trained on ")


def test_chat_command_scripted(quickstart_run):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "lmforge", "chat", f"model_name_or_path={quickstart_run}", "do_sample=false"],
        input="Who are you?\nclear\n你是谁？\nexit\nnever read\n", capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    answers = result.stdout.splitlines()
    assert len(answers) == 2
    assert "ForgeBot" in answers[0] and "ForgeBot" in answers[1]


def test_hf_engine_refuses_other_backends(tiny_llama_dir):
    # predict and eval build the transformers engine directly; the other engines serve chat, webchat and api.
    with pytest.raises(UserError) as err:
        engine_for(f"model_name_or_path={tiny_llama_dir}", "template=llama3", "infer_backend=vllm")
    assert str(err.value) == ("infer_backend: vllm is served by `lmforge chat`, `webchat` and `api`; "
                              "use infer_backend: huggingface here.")
