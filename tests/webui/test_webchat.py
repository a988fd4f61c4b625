"""`lmforge webchat` end to end: the real command serves the trained quick-start run, driven in headless Chromium.

Chromium comes from Debian (`apt-get install -y chromium`), never from `playwright install`; without it
these tests fail (not skip) and say how to install it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.serving import free_port
from tests.webui.browser import chromium, wait_until_serving

STARTUP_TIMEOUT_S = 240  # import torch + gradio and load the model, on a busy 2-core machine
ANSWER_TIMEOUT_MS = 60_000


@contextlib.contextmanager
def running_webchat(run_dir: Path, tmp: Path, *extra: str) -> Iterator[dict]:
    """Start `python -m lmforge webchat` on a free port; yield its url, port and log once the page answers."""
    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1",
               GRADIO_TEMP_DIR=str(tmp / "gradio"), TMPDIR=str(tmp), MPLCONFIGDIR=str(tmp / "matplotlib"),
               PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    # The defaults are under test (no login on loopback): the developer's own settings must not leak in.
    for name in ("GRADIO_SERVER_NAME", "GRADIO_SHARE", "GRADIO_AUTH", "GRADIO_AUTH_FILE", "GRADIO_ALLOW_UNAUTHENTICATED"):
        env.pop(name, None)
    log_path = tmp / "webchat.log"
    command = [sys.executable, "-m", "lmforge", "webchat", f"model_name_or_path={run_dir}", "do_sample=false", *extra]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_serving(process, url, log_path, "webchat", STARTUP_TIMEOUT_S)
        yield {"url": url, "port": port, "log": log_path}
    finally:
        process.send_signal(signal.SIGINT)  # Gradio's own shutdown path
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@pytest.fixture(scope="module")
def webchat(quickstart_run, tmp_path_factory):
    with running_webchat(quickstart_run, tmp_path_factory.mktemp("webchat")) as server:
        yield server


@contextlib.contextmanager
def chromium_page(url: str):
    """A headless Debian Chromium page on `url`; fails the test if Chromium is not installed."""
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(30_000)
        page.goto(url)
        page.locator("#send").wait_for()
        yield page


# Records every distinct text the last assistant message shows, as the DOM changes.
RECORD_BOT_TEXT = """() => {
  window.botTexts = [];
  const chat = document.querySelector('#chatbot');
  new MutationObserver(() => {
    const bots = chat.querySelectorAll('[data-testid=bot]');
    const text = bots.length ? bots[bots.length - 1].innerText.trim() : null;
    const seen = window.botTexts;
    if (text !== null && seen[seen.length - 1] !== text) seen.push(text);
  }).observe(chat, {subtree: true, childList: true, characterData: true});
}"""
HAS_ANSWERS = "n => document.querySelectorAll('#chatbot [data-testid=bot]').length === n"


def messages(page, role: str) -> list[str]:
    return [t.strip() for t in page.locator(f"#chatbot [data-testid={role}]").all_inner_texts()]


def send(page, text: str, answers: int, via_enter: bool = False) -> str:
    """Type `text`, send it, wait until the chat holds `answers` complete assistant messages; return the last."""
    from playwright.sync_api import expect

    box = page.locator("#query textarea")
    box.fill(text)
    if via_enter:
        box.press("Enter")
    else:
        page.locator("#send").click()
    page.wait_for_function(HAS_ANSWERS, arg=answers, timeout=ANSWER_TIMEOUT_MS)
    # The input is locked (in the same update that shows the question) until the answer is final.
    expect(page.locator("#send")).to_be_enabled(timeout=ANSWER_TIMEOUT_MS)
    return messages(page, "bot")[-1]


def test_chat_streams_keeps_history_and_clears(webchat, tmp_path):
    from playwright.sync_api import expect

    with chromium_page(webchat["url"]) as page:
        expect(page.locator("#system textarea")).to_have_value("")
        expect(page.locator("#do_sample input")).not_to_be_checked()  # do_sample=false on the command line
        page.evaluate(RECORD_BOT_TEXT)
        final = send(page, "Who are you?", answers=1)
        assert "ForgeBot" in final
        # Streamed: the browser showed at least one partial answer before the final one.
        shown = page.evaluate("window.botTexts")
        partial = [t for t in shown if t and len(t) < len(final) and final.startswith(t)]
        assert partial, f"no partial answer was shown before the final one; texts seen: {shown}"
        assert shown[-1] == final
        expect(page.locator("#query textarea")).to_have_value("")
        page.screenshot(path=str(tmp_path / "webchat.png"), full_page=True)

        # The history is kept: a second turn (sent with Enter) adds to the chat.
        send(page, "What is your name?", answers=2, via_enter=True)
        assert messages(page, "user") == ["Who are you?", "What is your name?"]

        page.locator("#clear").click()
        expect(page.locator("#chatbot [data-testid=user]")).to_have_count(0)
        expect(page.locator("#chatbot [data-testid=bot]")).to_have_count(0)
        # Cleared for the model too, not only on screen: the next turn starts a new conversation.
        send(page, "Who are you?", answers=1)
        assert messages(page, "user") == ["Who are you?"]


def test_sampling_checkbox_unlocks_top_p_and_temperature(webchat):
    from playwright.sync_api import expect

    with chromium_page(webchat["url"]) as page:
        sliders = [page.locator(f"#{name} input[type=range]") for name in ("top_p", "temperature")]
        for slider in sliders:
            expect(slider).to_be_disabled()
        page.locator("#do_sample input").check()
        for slider in sliders:
            expect(slider).to_be_enabled()
        expect(page.locator("#max_new_tokens input[type=number]")).to_have_value("1024")


def non_loopback_ipv4() -> list[str]:
    """This machine's IPv4 addresses other than loopback (none in a network-less sandbox)."""
    found = set()
    with contextlib.suppress(OSError):
        found.update(info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET))
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("192.0.2.1", 9))  # UDP connect sends nothing; it only picks the outgoing interface
        found.add(sock.getsockname()[0])
    return sorted(a for a in found if not a.startswith("127.") and a != "0.0.0.0")


def listening_addresses(port: int) -> list[str]:
    """Local addresses listening on `port`, from /proc/net/tcp{,6} (Linux)."""
    addresses = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            host, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                # The kernel writes each 32-bit word of the address in host (little-endian) order.
                raw = b"".join(bytes.fromhex(host[i:i + 8])[::-1] for i in range(0, len(host), 8))
                addresses.append(socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw))
    return addresses


def test_server_listens_on_loopback_only(webchat):
    log = webchat["log"].read_text()
    assert f"lmforge webchat: running on http://127.0.0.1:{webchat['port']}/" in log
    assert "share link" not in log and "gradio.live" not in log
    if Path("/proc/net/tcp").exists():
        assert listening_addresses(webchat["port"]) == ["127.0.0.1"]
    for address in non_loopback_ipv4():
        with pytest.raises(OSError):  # refused: nothing listens there
            socket.create_connection((address, webchat["port"]), timeout=3).close()
