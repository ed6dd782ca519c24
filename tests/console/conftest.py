"""A headless Chromium (Debian's /usr/bin/chromium, driven by Playwright for Python; never a
downloaded browser build). scripts/browser-deps.sh installs both; without them the browser tests
skip with the reason."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

CHROMIUM = os.environ.get("PROMPTHUB_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


def _missing() -> str | None:
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        return f"Chromium not found at {CHROMIUM}: run scripts/browser-deps.sh (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed: pip install -e '.[dev]' or scripts/browser-deps.sh"
    return None


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    """One browser for a test module. Not longer: while Playwright's sync API is open it holds a
    running event loop in this thread, and later tests that call asyncio.run() would fail."""
    reason = _missing()
    if reason:
        print(f"\n*** SKIPPING BROWSER TESTS: {reason} ***")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()
