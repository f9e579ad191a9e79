"""Where the time of ``python -m fusion demo`` goes, from a cold start (not run in CI).

Each figure is a fresh interpreter, so every import is paid as a new user pays it: Python with torch alone; the
command line's imports; the first optimiser (``torch.optim`` imports ``torch._dynamo`` on first use); loading the
offline digits; then the whole ``demo`` command on an empty workspace (seven models trained and saved) and once more
on the same workspace (every member reused, nothing trained). The training seconds of each member are read from the
stored metrics. Run it on a quiet machine, ``--repeats`` times, and read the minimum.

    .venv/bin/python bench/bench_demo.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROBES = {
    "python + import torch": "import torch",
    "python + import cli.main": "import cli.main",
    "+ first optimiser (torch._dynamo)": "import cli.main, torch; torch.optim.Adam(torch.nn.Linear(2, 2).parameters())",
    "+ load digits": "import cli.main, torch; torch.optim.Adam(torch.nn.Linear(2, 2).parameters()); "
    "from fusion.data import load_digits; load_digits()",
}


def wall(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall seconds of ``command`` in a fresh process and that process's peak resident memory (MiB, from the
    kernel's accounting of the child)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, command, stderr=process.stderr.read())
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rows: dict[str, list[tuple[float, float]]] = {}
    members: list[tuple[str, float]] = []
    for _ in range(args.repeats):
        for label, code in PROBES.items():
            rows.setdefault(label, []).append(wall([sys.executable, "-c", code], env))
        with tempfile.TemporaryDirectory() as folder:
            demo = [sys.executable, "-m", "fusion", "demo", "--workspace", folder, "--quiet", "--json"]
            rows.setdefault("python -m fusion demo (7 models trained)", []).append(wall(demo, env))
            rows.setdefault("python -m fusion demo again (7 reused)", []).append(wall(demo, env))
            models = Path(folder) / "models"
            members = sorted(
                (meta["name"], meta["metrics"]["train_seconds"])
                for meta in (json.loads((m / "meta.json").read_text()) for m in models.iterdir())
            )
    print(f"cold-start wall seconds, min (max) over {args.repeats} runs, and peak resident MiB, {os.cpu_count()} CPUs")
    for label, runs in rows.items():
        times = [t for t, _ in runs]
        print(f"  {label:<44} {min(times):6.2f} ({max(times):.2f})  {max(m for _, m in runs):6.0f} MiB")
    print("training seconds per member (last run):")
    for name, seconds in members:
        print(f"  {name:<44} {seconds:6.2f}")
    print(f"  {'sum':<44} {sum(s for _, s in members):6.2f}")


if __name__ == "__main__":
    main()
