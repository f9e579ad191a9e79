"""Drive the app in a real browser: the Streamlit server, Debian's Chromium under Playwright, and what a check of a
page needs (waiting until a script run has ended, finding errors, full-height screenshots).

Shared by ``tests/test_browser.py`` and ``tests/browser/screenshots.py``. Needs the ``playwright`` Python package and a
Chromium binary (Debian's ``chromium``; set ``CHROMIUM`` to use another path); ``playwright install`` is not needed:
the system browser is launched directly, with a fresh profile (Playwright makes a temporary ``--user-data-dir`` for
every ``launch``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 900}
SERVER_START_SECONDS = 90
MAX_SCREENSHOT_HEIGHT = 12_000
POLL_MS = 250

CHART = '[data-testid="stPlotlyChart"] .js-plotly-plot .main-svg'
TABLE = '[data-testid="stDataFrame"]'
ERROR_ELEMENTS = ("stException", "stAlertContentError")
UNEXPECTED_ERROR = re.compile(r"^\s*Unexpected error")
TRACEBACK = "Traceback (most recent call last)"


def missing_browser() -> str | None:
    """Why the browser cannot be driven here (no ``playwright`` package, no Chromium binary), or ``None``."""
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install -r requirements.txt)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM)"
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def log_tail(log: Path, lines: int = 40) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


@contextmanager
def streamlit_server(workspace: Path, log: Path) -> Iterator[str]:
    """``streamlit run app.py`` headless on a free port of 127.0.0.1, on the CPU, with a fresh ``workspace``; yields its
    URL once ``/_stcore/health`` answers, and stops the server (its whole process group) afterwards. Its output goes
    to ``log``.
    """
    port = free_port()
    # One intra-op thread: with the browser on the same small machine, a second torch thread mostly spins.
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "FUSIONLAB_DEVICE": "cpu",
        "FUSIONLAB_WORKSPACE": str(workspace),
        "FUSIONLAB_DATA": str(workspace.parent / "data"),
    }
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "app.py",
        "--server.headless",
        "true",
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        # An edited source file would otherwise put a "Rerun?" prompt in the status widget, which reads as "busy".
        "--server.fileWatcherType",
        "none",
        "--browser.gatherUsageStats",
        "false",
    ]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as output:
        server = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while not healthy(url):
            if server.poll() is not None:
                raise RuntimeError(f"streamlit exited with status {server.returncode}:\n{log_tail(log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no answer from {url} within {SERVER_START_SECONDS} s:\n{log_tail(log)}")
            time.sleep(0.5)
        yield url
    finally:
        stop_process_group(server)


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
            return response.read().strip() == b"ok"
    except OSError:
        return False


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process's group (it was started in its own session), SIGKILL if it is still there after 15 s."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)
    except ProcessLookupError:
        pass


def main_area(page: Page) -> Locator:
    return page.get_by_test_id("stMain")


def wait_until_idle(page: Page, timeout_ms: int = 60_000, quiet_polls: int = 4) -> None:
    """Wait until Streamlit has finished its script run: no "running" status widget and no stale elements, seen
    ``quiet_polls`` times in a row (a rerun can start right after another ends, e.g. when a job's fragment reruns the
    page)."""
    deadline = time.monotonic() + timeout_ms / 1000
    quiet = 0
    while quiet < quiet_polls:
        busy = page.evaluate(
            '() => document.querySelector(\'[data-testid="stStatusWidget"], [data-stale="true"]\') !== null'
        )
        quiet = 0 if busy else quiet + 1
        if time.monotonic() > deadline:
            raise AssertionError(f"the app was still running after {timeout_ms / 1000:.0f} s")
        page.wait_for_timeout(POLL_MS)


def page_errors(page: Page) -> list[str]:
    """The texts of every exception and error message on the page, and of any message that starts with
    "Unexpected error" (how ``ui.errors.report_errors`` shows an exception it caught)."""
    errors = []
    for test_id in ERROR_ELEMENTS:
        errors += [f"{test_id}: {text}" for text in page.get_by_test_id(test_id).all_inner_texts()]
    alerts = page.get_by_test_id("stAlert").all_inner_texts()
    errors += [f"stAlert: {text}" for text in alerts if UNEXPECTED_ERROR.match(text)]
    return errors


def save_full_page(page: Page, path: Path, width: int = VIEWPORT["width"]) -> Path:
    """Screenshot the whole page, figures included, ``width`` pixels wide: Streamlit scrolls inside ``stMain``, not
    the document, so the viewport is made as tall as that element's content for the picture, then put back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if width != VIEWPORT["width"]:
        page.set_viewport_size({"width": width, "height": VIEWPORT["height"]})
        wait_until_idle(page)
    page.mouse.move(width // 2, 1)  # off the sidebar, whose hover shows its collapse button
    measure = """() => {
        const main = document.querySelector('[data-testid="stMain"]') || document.querySelector('section.main');
        return Math.max(main ? main.scrollHeight : 0, document.documentElement.scrollHeight);
    }"""
    height = VIEWPORT["height"]
    for _ in range(5):  # plotly's figures re-layout when the viewport grows, which can change the height again
        needed = min(int(page.evaluate(measure)), MAX_SCREENSHOT_HEIGHT)
        if needed <= height:
            break
        height = needed
        page.set_viewport_size({"width": width, "height": height})
        wait_for_stable_height(page, measure)
    page.screenshot(path=str(path), full_page=True, animations="disabled")
    page.set_viewport_size(VIEWPORT)
    return path


def wait_for_stable_height(page: Page, measure: str, polls: int = 3, timeout_ms: int = 10_000) -> None:
    deadline = time.monotonic() + timeout_ms / 1000
    last, same = None, 0
    while same < polls and time.monotonic() < deadline:
        height = page.evaluate(measure)
        same = same + 1 if height == last else 0
        last = height
        page.wait_for_timeout(POLL_MS)
