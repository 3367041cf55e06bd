"""Headless Debian chromium for the tests that look at pages (the service's, Airflow's, MLflow's)
the way a person would: one place that launches it, driven by Playwright."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"


@contextlib.contextmanager
def chromium_page(width: int = 1280, height: int = 800,
                  cookies: list[dict[str, Any]] | None = None) -> Iterator[Any]:
    """A Playwright page in headless chromium (`width` x `height` viewport, `cookies` set first);
    the test is skipped with the reason when Debian chromium is not installed."""
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip("Debian chromium is not installed (make system-deps installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-gpu"])
        try:
            context = browser.new_context(viewport={"width": width, "height": height})
            if cookies:
                context.add_cookies(cookies)
            yield context.new_page()
        finally:
            browser.close()
