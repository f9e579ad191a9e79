"""Refresh the README's screenshots: run the browser test (``tests/test_browser.py``) with
``FUSIONLAB_UPDATE_SCREENSHOTS=1``, which copies its full-height screenshot of every page to ``docs/screenshots/``.

Usage: ``.venv/bin/python tests/browser/screenshots.py`` (extra arguments go to pytest). Needs the ``playwright``
package and Debian's ``chromium`` (see ``harness.py``); the pictures are also left in ``test-artifacts/browser/``.
"""

from __future__ import annotations

import os
import subprocess
import sys

from harness import REPO_ROOT

if __name__ == "__main__":
    command = [sys.executable, "-m", "pytest", "-q", "tests/test_browser.py", *sys.argv[1:]]
    env = {**os.environ, "FUSIONLAB_UPDATE_SCREENSHOTS": "1"}
    sys.exit(subprocess.call(command, cwd=REPO_ROOT, env=env))
