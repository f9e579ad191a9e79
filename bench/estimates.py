"""The app's time estimates against the measured runs, on the demo models in a temporary workspace (not run in CI).

For every job kind the app estimates before it starts, in the order the pages meet them: the demo build (Home), the
landscape of two models (a line), of a fused CNN and its parents (three lines, the aligned lines with and without
REPAIR, and the plane) and of random directions around one model (a 2-D plane), the Hessian analysis of one model and
of three with the page's defaults, and the steps of the Neuron Transplantation demo. Each row times the estimate,
then the run, ``--repeats`` times on fresh workspaces, and prints the estimate with its range, the measured seconds
and each run's ratio (a dash where the run took under 0.05 s: a step with nothing to train). Run it once on a quiet
machine and once under load (other processes busy on the same cores): every ratio should lie within 1.5x.

    .venv/bin/python bench/estimates.py [--json] [--device cpu] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.cost import CostEstimate, SlowAnalysisWarning  # noqa: E402
from analysis.hessian_config import HessianConfig  # noqa: E402
from analysis.landscape import LandscapeConfig  # noqa: E402
from fusion.workspace import Workspace  # noqa: E402
from studies import runs  # noqa: E402
from studies.pipeline import build_demo_ensemble, fuse_and_save  # noqa: E402
from studies.story import STEP_TITLES, Story, StoryOptions, advance_story  # noqa: E402


def row(job: str, estimate: Callable[[], CostEstimate | None], run: Callable[[], Any]) -> dict[str, Any]:
    """Estimate, then run, one job; the seconds the estimate itself took are reported too."""
    started = time.perf_counter()
    cost = estimate()
    estimating = time.perf_counter() - started
    started = time.perf_counter()
    run()
    measured = time.perf_counter() - started
    if cost is None:
        return {"job": job, "estimate": None, "low": None, "high": None, "measured": measured, "ratio": None}
    return {
        "job": job,
        "estimate": cost.seconds,
        "low": cost.low_seconds,
        "high": cost.high_seconds,
        "measured": measured,
        "ratio": cost.seconds / measured,
        "estimating": estimating,
    }


def measure(device: torch.device) -> list[dict[str, Any]]:
    """Every row, on a fresh workspace."""
    ws = Workspace(tempfile.mkdtemp(prefix="fusionlab-estimates-"))
    rows = [row("demo build (7 models)", lambda: runs.demo_build_cost(ws, device=device), lambda: build(ws, device))]
    records = {r.name: r.id for r in ws.records()}
    mlp, cnn = records["demo mlp · seed 0"], [records[f"demo cnn · seed {s}"] for s in range(3)]
    fused = fuse_and_save(ws, cnn[:2], "ot", device=device).record.id
    line, grid = LandscapeConfig(resolution=21), LandscapeConfig(resolution=11)
    rows.append(
        row(
            "landscape: line, 21 points",
            lambda: runs.landscape_cost(ws, cnn[1:], "interpolation", line, 1, device),
            lambda: runs.landscape_of(ws, cnn[1:], "interpolation", line, 1, device),
        )
    )
    rows.append(
        row(
            "landscape: random 2-D, 11x11",
            lambda: runs.landscape_cost(ws, cnn[2:], "random", grid, 2, device),
            lambda: runs.landscape_of(ws, cnn[2:], "random", grid, 2, device),
        )
    )
    rows.append(
        row(
            "landscape: fusion (lines + plane 11x11)",
            lambda: runs.fusion_landscape_cost(ws, fused, grid, device),
            lambda: runs.fusion_landscape(ws, fused, grid, device),
        )
    )
    hessian = HessianConfig()
    for job, ids in (("Hessian: 1 model (MLP)", [mlp]), ("Hessian: 3 models (CNN A, B, fused)", [*cnn[:2], fused])):
        rows.append(
            row(
                job,
                lambda ids=ids: runs.hessian_cost_of(ws, ids, hessian, "test", device),
                lambda ids=ids: runs.hessians_of(ws, ids, hessian, "test", device),
            )
        )
    story = Story(StoryOptions())
    for title in STEP_TITLES:
        current = story
        result: list[Story] = []
        rows.append(
            row(
                f"NT demo: {title.lower()}",
                lambda current=current: runs.story_step_cost(ws, current, device),
                lambda current=current, result=result: result.append(advance_story(ws, current, device)),
            )
        )
        story = result[0]
    return rows


def build(ws: Workspace, device: torch.device) -> None:
    build_demo_ensemble(ws, device=device)


def summary(repeats: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per job over the repeats: the median estimate, range ends and measurement, and every ratio."""
    rows = []
    for runs_of_job in zip(*repeats):
        row = {"job": runs_of_job[0]["job"], "measured": statistics.median(r["measured"] for r in runs_of_job)}
        if runs_of_job[0]["estimate"] is None:
            rows.append({**row, "estimate": None})
            continue
        for key in ("estimate", "low", "high"):
            row[key] = statistics.median(r[key] for r in runs_of_job)
        rows.append({**row, "ratios": [r["ratio"] for r in runs_of_job]})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    header = "| job | estimate (range), median | measured, median | estimate / measured, each run |"
    lines = [header, "|---|---|---|---|"]
    for r in rows:
        if r["estimate"] is None:
            lines.append(f"| {r['job']} | not estimated (no training) | {r['measured']:.2f} s | |")
            continue
        estimate = f"{r['estimate']:.2f} s ({r['low']:.2f}-{r['high']:.2f})"
        ratios = ", ".join("-" if r["measured"] < 0.05 else f"{ratio:.2f}" for ratio in r["ratios"])
        lines.append(f"| {r['job']} | {estimate} | {r['measured']:.2f} s | {ratios} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="fresh workspaces, one after the other")
    args = parser.parse_args()
    warnings.simplefilter("ignore", SlowAnalysisWarning)
    repeats = [measure(torch.device(args.device)) for _ in range(args.repeats)]
    print(json.dumps(repeats, indent=2) if args.json else table(summary(repeats)))


if __name__ == "__main__":
    main()
