"""The browser tests' fixtures: one ``streamlit run app.py`` server per test module on its own workspace (a module
overrides ``browser_workspace`` to start from prepared models), Chromium under Playwright, the server log and the
folder of screenshots (``test-artifacts/browser/``, a sub-folder per module other than ``test_browser``)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import NoReturn

import pytest

from browser.actions import PAGE_TIMEOUT_MS
from browser.harness import (
    CHROMIUM,
    CHROMIUM_ARGS,
    REPO_ROOT,
    VIEWPORT,
    missing_browser,
    streamlit_server,
    wait_until_idle,
)

try:
    from playwright.sync_api import Page, expect, sync_playwright
except ImportError:  # the browser_ready fixture skips the tests, or fails them in CI
    pass

__all__ = ["app_url", "artifacts", "browser_ready", "browser_workspace", "page", "server_log"]

ARTIFACTS = REPO_ROOT / "test-artifacts" / "browser"
IN_CI = os.environ.get("CI", "").lower() == "true"


def browser_unusable(reason: str) -> NoReturn:
    """Skip the browser test, except in CI, where it must run."""
    if IN_CI:
        pytest.fail(f"the browser test must run in CI, but {reason}")
    pytest.skip(f"browser test skipped: {reason}")


@pytest.fixture(scope="module")
def browser_ready() -> None:
    reason = missing_browser()
    if reason is not None:
        browser_unusable(reason)


@pytest.fixture(scope="module")
def artifacts(request: pytest.FixtureRequest) -> Path:
    """This module's screenshot folder, emptied of an earlier run's pictures and log."""
    module = request.module.__name__.rpartition(".")[2]
    folder = ARTIFACTS if module == "test_browser" else ARTIFACTS / module.removeprefix("test_browser_")
    folder.mkdir(parents=True, exist_ok=True)
    for stale in [*folder.glob("*.png"), *folder.glob("*.log")]:
        stale.unlink()
    return folder


@pytest.fixture(scope="module")
def server_log(tmp_path_factory: pytest.TempPathFactory, artifacts: Path) -> Iterator[Path]:
    """The server's output; copied to the artifacts at the end (written elsewhere first, so that two runs in one
    checkout do not write into each other's log)."""
    log = tmp_path_factory.mktemp("browser-log") / "streamlit.log"
    yield log
    if log.exists():
        shutil.copyfile(log, artifacts / log.name)


@pytest.fixture(scope="module")
def browser_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("browser") / "workspace"


@pytest.fixture(scope="module")
def app_url(browser_ready: None, server_log: Path, browser_workspace: Path) -> Iterator[str]:
    with streamlit_server(browser_workspace, server_log) as url:
        yield url


@pytest.fixture(scope="module")
def page(browser_ready: None, app_url: str) -> Iterator[Page]:
    with ExitStack() as stack:
        try:
            playwright = stack.enter_context(sync_playwright())
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=120_000)
        except Exception as exc:
            # Playwright's own Node.js needs libatomic1, which chromium does not pull in on a minimal Debian.
            browser_unusable(f"Playwright could not start {CHROMIUM} ({exc}); on Debian, apt-get install libatomic1")
        stack.callback(browser.close)
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(PAGE_TIMEOUT_MS)
        page.goto(app_url)
        expect(page.get_by_test_id("stSidebarNavLink").first).to_be_visible(timeout=PAGE_TIMEOUT_MS)
        wait_until_idle(page, PAGE_TIMEOUT_MS)
        yield page
