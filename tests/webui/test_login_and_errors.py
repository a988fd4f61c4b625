"""The web chat's login and its error messages: the settings, then the real page in headless Chromium.

The browser tests serve the page in this process through `webchat.launch`, the function `lmforge
webchat` serves it with (same Gradio settings, login included), so no model server has to start.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from lmforge.config import GeneratingArguments
from lmforge.errors import UserError
from lmforge.webui.webchat import is_loopback, login_settings
from tests.api.serving import free_port
from tests.webui.browser import chromium

REFUSED = ("lmforge webchat would serve 0.0.0.0 (reachable from other machines) without a login. Set "
           "GRADIO_AUTH=user:password (or GRADIO_AUTH_FILE to a file of user:password lines), or "
           "GRADIO_ALLOW_UNAUTHENTICATED=true to serve it open anyway.")


# -- settings ---------------------------------------------------------------------------------------
def test_loopback_addresses():
    assert all(map(is_loopback, ["127.0.0.1", "127.1.2.3", "localhost", "LOCALHOST", "::1", "[::1]"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.5", "example.com"]))


def test_login_is_optional_on_loopback_and_required_beyond_it():
    assert login_settings("127.0.0.1", False, {}) is None
    with pytest.raises(UserError) as refused:
        login_settings("0.0.0.0", False, {})
    assert str(refused.value) == REFUSED
    with pytest.raises(UserError, match=r"would serve a public share link \(GRADIO_SHARE\) without a login"):
        login_settings("127.0.0.1", True, {})
    assert login_settings("0.0.0.0", True, {"GRADIO_ALLOW_UNAUTHENTICATED": "true"}) is None
    assert login_settings("0.0.0.0", False, {"GRADIO_AUTH": "forge:pa:ss"}) == [("forge", "pa:ss")]


def test_logins_from_a_file(tmp_path):
    logins = tmp_path / "logins"
    logins.write_text("# who may chat\nforge:first secret\n\n  ada:second:secret\n")
    logins.chmod(0o600)
    env = {"GRADIO_AUTH": "root:third", "GRADIO_AUTH_FILE": str(logins)}
    assert login_settings("0.0.0.0", False, env) == [("root", "third"), ("forge", "first secret"),
                                                     ("ada", "second:secret")]


@pytest.mark.parametrize(("env", "message"), [
    ({"GRADIO_AUTH": "forge"}, "GRADIO_AUTH is not user:password (a user name, a colon, then the password)."),
    ({"GRADIO_AUTH": "forge:"}, "GRADIO_AUTH is not user:password"),
    ({"GRADIO_AUTH": ":s3cret-pass"}, "GRADIO_AUTH is not user:password"),
    ({"GRADIO_AUTH_FILE": "{tmp}/missing"}, "GRADIO_AUTH_FILE '{tmp}/missing' cannot be read (No such file or "
                                            "directory); give a file of user:password lines."),
    ({"GRADIO_AUTH_FILE": "{tmp}/bad"}, "Line 2 of GRADIO_AUTH_FILE '{tmp}/bad' is not user:password"),
    ({"GRADIO_ALLOW_UNAUTHENTICATED": "maybe"}, "GRADIO_ALLOW_UNAUTHENTICATED='maybe' is not a yes/no value"),
])
def test_bad_login_settings_are_one_line_errors_without_the_password(env, message, tmp_path):
    (tmp_path / "bad").write_text("forge:ok\ns3cret-pass\n")
    env = {k: v.format(tmp=tmp_path) for k, v in env.items()}
    with pytest.raises(UserError) as error:
        login_settings("0.0.0.0", False, env)
    assert str(error.value).startswith(message.format(tmp=tmp_path))
    assert "\n" not in str(error.value) and "s3cret-pass" not in str(error.value)


def test_webchat_refuses_an_open_page_beyond_loopback_before_loading_the_model(tiny_llama_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADIO_")}
    env.update(GRADIO_SERVER_NAME="0.0.0.0", GRADIO_ANALYTICS_ENABLED="False")
    done = subprocess.run([sys.executable, "-m", "lmforge", "webchat", f"model_name_or_path={tiny_llama_dir}"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"lmforge webchat: error: {REFUSED}"]
    assert done.stdout == ""


# -- the page in Chromium -----------------------------------------------------------------------------
@pytest.fixture()
def gradio_temp(tmp_path, monkeypatch):
    """Gradio writes its temp files under the test's folder."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    import gradio.routes

    monkeypatch.setattr(gradio.routes, "DEFAULT_TEMP_DIR", str(tmp_path / "gradio"))


@contextlib.contextmanager
def serving(engine, auth=None):
    """The chat page on `engine`, served as `lmforge webchat` serves it, on a free loopback port; yields its url."""
    from lmforge.webui.chat_page import build_chat_page
    from lmforge.webui.webchat import launch

    page = build_chat_page(engine)
    port = free_port()
    launch(page, "127.0.0.1", port, False, auth)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        page.close()


def send(page, text: str) -> None:
    page.locator("#query textarea").fill(text)
    page.locator("#send").click()


def toast(page) -> str:
    """The text of the error shown on the page (title, close mark and message)."""
    body = page.locator("[data-testid=toast-body]")
    body.wait_for()
    return body.inner_text()


@pytest.fixture()
def no_system_prompt_model(tiny_llama_dir, tmp_path):
    """The tiny Llama with a chat template that refuses system prompts, as Gemma's and Mistral's older ones do."""
    folder = tmp_path / "no-system"
    shutil.copytree(tiny_llama_dir, folder)
    template = folder / "chat_template.jinja"
    template.write_text("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported "
                        "(internal detail /srv/models/secret-path)') }}{% endif %}" + template.read_text())
    return folder


def test_login_page_refuses_a_wrong_password_and_engine_failures_show_a_reference(
        no_system_prompt_model, gradio_temp, tmp_path, capfd):
    from playwright.sync_api import expect

    from lmforge.chat.hf_engine import HFEngine
    from lmforge.config import parse_config

    logins = tmp_path / "logins"
    logins.write_text("forge:s3cret:pass\n")
    logins.chmod(0o600)
    auth = login_settings("127.0.0.1", False, {"GRADIO_AUTH_FILE": str(logins)})
    engine = HFEngine(parse_config("webchat", [f"model_name_or_path={no_system_prompt_model}", "do_sample=false",
                                               "max_new_tokens=4"]))
    with serving(engine, auth) as url, chromium() as browser:
        # Not only the page: the API behind it is closed without a login too.
        with pytest.raises(urllib.error.HTTPError) as closed:
            urllib.request.urlopen(f"{url}config", timeout=10)
        assert closed.value.code == 401

        page = browser.new_page()
        page.set_default_timeout(30_000)
        page.goto(url)
        expect(page.get_by_role("heading", name="Login")).to_be_visible()
        expect(page.get_by_text("Log in to chat with the model.")).to_be_visible()
        for password in ("wrong", "s3cret:pass"):
            page.locator("[data-testid=textbox]").fill("forge")
            page.locator("[data-testid=password]").fill(password)
            page.get_by_role("button", name="Login").click()
            if password == "wrong":
                expect(page.get_by_text("Incorrect Credentials")).to_be_visible()
                expect(page.locator("#send")).to_have_count(0)
        page.locator("#send").wait_for()

        # The model's template raises on a system prompt: the page says so in general terms, with a reference.
        page.locator("#system textarea").fill("Be brief.")
        send(page, "Hi")
        shown = toast(page)
        match = re.search(r"The answer could not be generated \(an error on the server, reference ([0-9a-f]{8})\)\. "
                          r"The server log has the details\.", shown)
        assert match, shown
        assert "System role" not in page.locator("body").inner_text()
        assert "secret-path" not in page.content()
        log = capfd.readouterr().err
        assert f"webchat: generating an answer failed (reference {match.group(1)})" in log
        assert "Traceback" in log and "System role not supported" in log

        # The page is usable again: without the system prompt the model answers.
        expect(page.locator("#send")).to_be_enabled()
        page.locator("[data-testid=toast-close]").click()
        page.locator("#system textarea").fill("")
        send(page, "Hi again")
        expect(page.locator("#chatbot [data-testid=user]")).to_have_count(2)
        expect(page.locator("#send")).to_be_enabled()
        expect(page.locator("[data-testid=toast-body]")).to_have_count(0)


class ContextFullEngine:
    """Streams the start of an answer, then fails as llama.cpp's engine does when the prompt outgrows its context."""

    generating = GeneratingArguments(do_sample=False)

    def stream_chat(self, messages, system=None, tools=None, **overrides):
        yield "I am "
        raise UserError("The prompt has 5000 tokens, but llama.cpp's context holds 4096 <n_ctx>. Raise llamacpp_n_ctx "
                        "or clear the history.")


def test_a_user_error_shows_its_own_one_line_message(gradio_temp, capfd):
    from playwright.sync_api import expect

    with serving(ContextFullEngine()) as url, chromium() as browser:
        page = browser.new_page()
        page.set_default_timeout(30_000)
        page.goto(url)
        send(page, "Who are you?")
        # Shown as plain text (the <n_ctx> is not swallowed as HTML), the partial answer kept, the input unlocked.
        assert toast(page).splitlines()[-1] == ("The prompt has 5000 tokens, but llama.cpp's context holds 4096 "
                                                "<n_ctx>. Raise llamacpp_n_ctx or clear the history.")
        expect(page.locator("#chatbot [data-testid=bot]")).to_have_text("I am")
        expect(page.locator("#send")).to_be_enabled()
    log = capfd.readouterr().err
    assert "webchat: The prompt has 5000 tokens" in log and "Traceback" not in log
