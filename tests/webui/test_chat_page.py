"""The chat page without a browser: server settings, the streaming callback, the defaults on the page."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lmforge.config import GeneratingArguments
from lmforge.errors import UserError
from lmforge.webui.webchat import server_settings


def test_server_settings_default_to_this_machine_only():
    assert server_settings({}) == ("127.0.0.1", 7860, False)
    assert server_settings({"GRADIO_SERVER_NAME": "", "GRADIO_SERVER_PORT": "", "GRADIO_SHARE": ""}) == (
        "127.0.0.1", 7860, False)


def test_server_settings_from_the_environment():
    env = {"GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "8123", "GRADIO_SHARE": "True"}
    assert server_settings(env) == ("0.0.0.0", 8123, True)
    assert server_settings({"GRADIO_SHARE": "false"})[2] is False


@pytest.mark.parametrize(("env", "message"), [
    ({"GRADIO_SERVER_PORT": "web"}, "GRADIO_SERVER_PORT='web' is not a port number; expected 1-65535"),
    ({"GRADIO_SERVER_PORT": "70000"}, "GRADIO_SERVER_PORT='70000' is not a port number"),
    ({"GRADIO_SHARE": "maybe"}, "GRADIO_SHARE='maybe' is not a yes/no value; use one of: 1, true"),
])
def test_bad_server_settings_are_user_errors(env, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        server_settings(env)


class FakeEngine:
    """Streams a fixed answer in pieces and records what it was asked."""

    def __init__(self, generating=None):
        self.generating = generating or GeneratingArguments()
        self.calls = []

    def stream_chat(self, messages, system=None, tools=None, **overrides):
        self.calls.append((list(messages), system, overrides))
        yield from ("I am ", "Forge", "Bot.")


def test_stream_answer_grows_the_last_message_and_passes_the_settings():
    from lmforge.webui.chat_page import stream_answer

    engine = FakeEngine()
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
               {"role": "user", "content": "Who are you?"}]
    steps = list(stream_answer(engine, history, "  ", 64.0, 0.5, 0.3, False))
    assert [s[-1]["content"] for s in steps] == ["", "I am ", "I am Forge", "I am ForgeBot."]
    assert all(s[:-1] == history and s[-1]["role"] == "assistant" for s in steps)
    # The whole history reaches the engine; a blank system prompt means the template's default.
    assert engine.calls == [(history, None, dict(max_new_tokens=64, top_p=0.5, temperature=0.3, do_sample=False))]
    list(stream_answer(engine, history, "Be brief.", 8, 0.9, 1.0, True))
    assert engine.calls[-1][1] == "Be brief." and engine.calls[-1][2]["do_sample"] is True


def test_stream_answer_without_a_new_message_generates_nothing():
    from lmforge.webui.chat_page import add_user_turn, stream_answer

    engine = FakeEngine()
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    assert add_user_turn("   ", history)[2:4] == (history, history)
    assert list(stream_answer(engine, history, "", 8, 1.0, 1.0, False)) == [history]
    assert engine.calls == []
    added = add_user_turn(" Who are you? \n", history)[2]
    assert added == [*history, {"role": "user", "content": "Who are you?"}] and len(history) == 2


@pytest.fixture()
def gr(tmp_path, monkeypatch):
    """Gradio, writing into the test's temp dir: building a page creates Gradio's temp folder."""
    folder = str(tmp_path / "gradio")
    monkeypatch.setenv("GRADIO_TEMP_DIR", folder)  # read when gradio is first imported
    import gradio
    import gradio.routes

    monkeypatch.setattr(gradio.routes, "DEFAULT_TEMP_DIR", folder)  # in case it was imported before
    return gradio


def test_page_starts_from_the_configured_generation_settings(gr, tmp_path):
    from lmforge.webui.chat_page import render_chat

    settings = GeneratingArguments(do_sample=False, temperature=0.2, top_p=0.8, max_new_tokens=8192,
                                   system="You are ForgeBot.")
    with gr.Blocks():
        parts = render_chat(FakeEngine(settings))
    assert parts["system"].value == "You are ForgeBot."
    assert parts["do_sample"].value is False
    # A default outside the slider's range widens it instead of being clipped.
    assert (parts["max_new_tokens"].value, parts["max_new_tokens"].maximum) == (8192, 8192)
    assert (parts["top_p"].value, parts["temperature"].value) == (0.8, 0.2)
    assert parts["top_p"].interactive is False and parts["temperature"].interactive is False
    with gr.Blocks():
        parts = render_chat(FakeEngine())
    assert parts["system"].value == "" and parts["do_sample"].value is True and parts["top_p"].interactive
    assert (tmp_path / "gradio").is_dir()


def test_webchat_help_does_not_import_gradio():
    code = ("import sys; from lmforge.cli import main; assert main(['webchat', '--help']) == 0; "
            "heavy = {'gradio', 'torch'} & set(sys.modules); assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Usage: lmforge webchat CONFIG.yaml" in done.stdout


def test_an_uploaded_image_goes_with_its_message_and_shows_as_a_file():
    from lmforge.chat.base import Media
    from lmforge.webui.chat_page import add_user_turn, display, stream_answer

    _, _, shown, history, image, video = add_user_turn("What colour?", [], "/uploads/red.png", None)
    assert history == [{"role": "user", "content": "<image>What colour?", "images": ["/uploads/red.png"]}]
    assert shown == [{"role": "user", "content": {"path": "/uploads/red.png"}},
                     {"role": "user", "content": "What colour?"}]
    assert (image, video) == (None, None)  # the uploads are cleared for the next message
    history = [*history, {"role": "assistant", "content": "Red."}]
    # A placeholder typed by the user is where the image goes; no second one is added.
    history = add_user_turn("And <image> this one?", history, "/uploads/blue.png", None)[3]
    assert history[-1]["content"] == "And <image> this one?"
    engine = FakeEngine()
    list(stream_answer(engine, history, "", 8, 1.0, 1.0, False))
    messages, _, overrides = engine.calls[0]
    assert messages == [{"role": "user", "content": "<image>What colour?"}, {"role": "assistant", "content": "Red."},
                        {"role": "user", "content": "And <image> this one?"}]
    assert overrides["media"] == Media(images=("/uploads/red.png", "/uploads/blue.png"))
    assert display(history)[3] == {"role": "user", "content": {"path": "/uploads/blue.png"}}
