"""Open pages in a real headless Chromium (Debian's, installed by .ci/run) through Playwright.

Every page opened here records its console errors, failed requests and uncaught exceptions, and leaves a full-page
screenshot in `test-artifacts/` (or SEGMENTS_TEST_ARTIFACTS) for a person to look at after the run.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ARTIFACTS = Path(os.environ.get("SEGMENTS_TEST_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts"))
# Without the networking flags Chromium keeps trying to reach Google's hosts, which this sandbox refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]


def chromium_path() -> str:
    path = os.environ.get("SEGMENTS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        # CI installs it (.ci/run); a developer's machine may not have it.
        if os.environ.get("CI"):
            pytest.fail("Chromium is not installed: .ci/run installs Debian's chromium package")
        pytest.skip("Chromium is not installed (apt-get install chromium, or set SEGMENTS_CHROMIUM)")
    return path


@dataclass
class OpenedPage:
    page: object  # playwright.sync_api.Page
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return self.console_errors + self.page_errors + self.failed_requests


@contextmanager
def browser():
    """One Chromium for a test module: `with browser() as b: opened = open_page(b, url, "name")`."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


def open_page(instance, url: str, screenshot_name: str, width: int = 1280,
              headers: dict[str, str] | None = None) -> OpenedPage:
    """Load `url` (file:// or http://127.0.0.1), wait for the network to settle, screenshot the whole page.
    `headers` go with every request of the page (e.g. the service's API key)."""
    page = instance.new_page(viewport={"width": width, "height": 900}, extra_http_headers=headers)
    opened = OpenedPage(page)
    page.on("console", lambda m: opened.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: opened.page_errors.append(str(exc)))
    page.on("requestfailed", lambda r: opened.failed_requests.append(f"{r.url}: {r.failure}"))
    page.goto(url, wait_until="networkidle")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{screenshot_name}.png"), full_page=True)
    return opened
