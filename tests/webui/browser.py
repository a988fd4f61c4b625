"""Headless Debian Chromium driven by Playwright, for the tests that use the real page."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import urllib.request

import pytest

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]


@contextlib.contextmanager
def chromium():
    """A headless Chromium browser; fails the test (never skips) if Debian's Chromium is not installed."""
    executable = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(executable, os.X_OK):
        pytest.fail("Chromium is not installed, and these tests drive the page in a real browser. Install it "
                    "with `apt-get update && apt-get install -y chromium` (as root); do not run `playwright install`.")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def wait_until_serving(process, url: str, log_path, name: str, timeout_s: float) -> None:
    """Wait until the page server `process` (command `name`) said "running on" in its log and `url` answers 200."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            pytest.fail(f"lmforge {name} exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"lmforge {name} did not answer on {url} in {timeout_s} s:\n{log_path.read_text()[-3000:]}")
        if "running on" in log_path.read_text():
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
        time.sleep(0.5)
