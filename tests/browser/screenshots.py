"""Drive the app in a real browser: build the demo ensemble, then screenshot Home and Models.

Usage: ``python tests/browser/screenshots.py OUTDIR`` (writes ``OUTDIR/home.png`` and ``OUTDIR/models.png``).

Needs the ``playwright`` Python package and a Chromium binary (Debian's ``chromium``; set ``CHROMIUM`` to use another
path). ``playwright install`` is not needed: the system browser is launched directly. The app runs with a fresh
temporary workspace on a free port bound to 127.0.0.1, and the script fails if the page shows an exception or an
error message.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from playwright.sync_api import Page, expect, sync_playwright

REPO_ROOT = Path(__file__).resolve().parents[2]
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
JOB_TIMEOUT_MS = 600_000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def streamlit_server(workspace: Path) -> Iterator[str]:
    """``streamlit run app.py`` on a free port with ``workspace``; yields its URL, stops it afterwards."""
    port = free_port()
    # One intra-op thread: with the browser on the same small machine, a second torch thread mostly spins.
    env = {"OMP_NUM_THREADS": "1", **os.environ, "FUSIONLAB_WORKSPACE": str(workspace)}
    command = [
        sys.executable, "-m", "streamlit", "run", "app.py",
        "--server.headless", "true", "--server.port", str(port), "--server.address", "127.0.0.1",
    ]
    log = open(workspace.parent / "streamlit.log", "w")
    server = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not start; see {log.name}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def wait_until_idle(page: Page) -> None:
    """Wait until Streamlit has finished the current script run (its "running" indicator is gone)."""
    page.wait_for_timeout(300)
    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0, timeout=30_000)
    page.wait_for_timeout(500)


def assert_no_errors(page: Page, where: str) -> None:
    for test_id in ("stException", "stAlertContentError"):
        count = page.get_by_test_id(test_id).count()
        if count:
            texts = page.get_by_test_id(test_id).all_inner_texts()
            raise AssertionError(f"{where}: {count} {test_id} element(s): {texts}")


def take_screenshots(outdir: Path) -> list[Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="fusionlab-browser-") as folder,
        streamlit_server(Path(folder) / "workspace") as url,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(
            executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"), args=CHROMIUM_ARGS
        )
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(url)
        build = page.get_by_role("button", name="Build the demo ensemble")
        expect(build).to_be_enabled(timeout=60_000)
        build.click()
        expect(page.get_by_text("Build the demo ensemble: finished")).to_be_visible(timeout=JOB_TIMEOUT_MS)
        expect(page.get_by_test_id("stDataFrame")).to_be_visible()
        wait_until_idle(page)
        assert_no_errors(page, "home")
        home = outdir / "home.png"
        page.screenshot(path=str(home))

        page.get_by_test_id("stSidebarNav").get_by_text("Models").click()
        expect(page.get_by_text("Train new models")).to_be_visible(timeout=30_000)
        wait_until_idle(page)
        assert_no_errors(page, "models")
        models = outdir / "models.png"
        page.screenshot(path=str(models))
        browser.close()
    return [home, models]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    for path in take_screenshots(Path(sys.argv[1])):
        print(path)
