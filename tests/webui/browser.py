"""Headless Debian Chromium driven by Playwright, for the tests that use the real page."""

from __future__ import annotations

import contextlib
import os
import shutil

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
