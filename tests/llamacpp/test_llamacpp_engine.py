"""`infer_backend: llamacpp` serving the exported GGUF in chat, api and webchat."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from lmforge.config import parse_config
from tests.api.serving import api_server

pytestmark = pytest.mark.llamacpp

WHO = [{"role": "user", "content": "Who are you?"}]


def engine_for(*args: str):
    from lmforge.chat.factory import create_engine

    return create_engine(parse_config("chat", ["infer_backend=llamacpp", *args]))


@pytest.fixture(scope="module")
def engine(llama_cpp, quickstart_export):
    return engine_for(f"model_name_or_path={quickstart_export}", "do_sample=false", "max_new_tokens=32")


def test_the_export_folder_resolves_to_its_gguf_template_and_tokenizer(engine, quickstart_export):
    from lmforge.chat.llamacpp_engine import LlamaCppEngine

    assert isinstance(engine, LlamaCppEngine)
    assert engine.gguf_path == quickstart_export / "model-f16.gguf"
    assert engine.template.name == "llama3"
    assert engine.context_length == 4096
    assert engine.stop_ids == engine.tokenizer.convert_tokens_to_ids(["<|eot_id|>", "<|eom_id|>"])


def test_answer_names_the_trained_model(engine):
    response = engine.chat(WHO)
    assert "ForgeBot" in response.text
    assert response.finish_reason == "stop"
    assert response.prompt_length == len(engine.prompt_ids(WHO))
    assert response.response_length == len(engine.tokenizer(response.text, add_special_tokens=False).input_ids)


def test_stream_stop_strings_and_length(engine):
    full = engine.chat(WHO).text
    pieces = list(engine.stream_chat(WHO))
    assert len(pieces) > 1 and "".join(pieces) == full
    cut = engine.chat(WHO, stop=["Forge"])
    assert cut.text == full[: full.index("Forge")] and cut.finish_reason == "stop"
    assert "".join(engine.stream_chat(WHO, stop=["Forge"])) == cut.text
    short = engine.chat(WHO, max_new_tokens=3)
    assert (short.finish_reason, short.response_length) == ("length", 3)
    batch = engine.generate_batch([engine.prompt_ids(WHO), engine.prompt_ids([{"role": "user", "content": "你是谁？"}])])
    assert batch[0].text == full and "ForgeBot" in batch[1].text


def test_sampling_follows_torch_seed(engine):
    import torch

    answers = []
    for _ in range(2):
        torch.manual_seed(7)
        answers.append(engine.chat(WHO, do_sample=True, temperature=1.5, top_p=1.0, top_k=0).text)
    assert answers[0] == answers[1]


def test_a_gguf_alone_serves_with_the_tokenizer_inside_it(llama_cpp, engine, quickstart_export, tmp_path):
    shutil.copy(quickstart_export / "model-f16.gguf", tmp_path / "forgebot.gguf")
    alone = engine_for(f"model_name_or_path={tmp_path / 'forgebot.gguf'}", "template=llama3", "do_sample=false",
                       "max_new_tokens=32")
    assert alone.prompt_ids(WHO) == engine.prompt_ids(WHO)
    assert alone.chat(WHO).text == engine.chat(WHO).text


def test_chat_command_on_llamacpp(llama_cpp, quickstart_export):
    result = subprocess.run(
        [sys.executable, "-m", "lmforge", "chat", f"model_name_or_path={quickstart_export}", "infer_backend=llamacpp",
         "do_sample=false"],
        input="Who are you?\n你是谁？\n", capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr
    answers = result.stdout.splitlines()
    assert len(answers) == 2 and all("ForgeBot" in a for a in answers)


def test_webchat_page_streams_from_llamacpp(engine):
    from lmforge.webui.chat_page import stream_answer

    steps = list(stream_answer(engine, list(WHO), "", 32, 1.0, 1.0, False))
    assert steps[-1][-1]["content"] == engine.chat(WHO).text and "ForgeBot" in steps[-1][-1]["content"]


def test_api_serves_the_gguf_to_the_openai_client(llama_cpp, engine, quickstart_export, tmp_path):
    import openai

    settings = [f"model_name_or_path={quickstart_export}", "infer_backend=llamacpp", "do_sample=false"]
    with api_server(settings, tmp_path / "server.log") as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=120)
        completion = client.chat.completions.create(model="gpt-3.5-turbo", messages=WHO)
        assert completion.choices[0].message.content == engine.chat(WHO).text
        assert completion.choices[0].finish_reason == "stop"
        assert completion.usage.prompt_tokens == len(engine.prompt_ids(WHO))
        stream = client.chat.completions.create(model="gpt-3.5-turbo", messages=WHO, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == engine.chat(WHO).text
        with pytest.raises(openai.BadRequestError, match="maximum context length is 4096 tokens"):
            client.chat.completions.create(model="gpt-3.5-turbo", messages=WHO, max_tokens=4095)
